//! The two ends of a sweep connection: the server's protocols (an echo,
//! plain or over TLS, and a STARTTLS protocol that upgrades from a timer or
//! a task while its raw transport holds data) and the client's (the same
//! echo check, and the client half of STARTTLS).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Duration;

use proactor::tls::{self, TlsOptions};
use proactor::{Address, Handle, Transport};
use rand::Rng;

use crate::util::pauses::{Board, SharedRng, Source};
use crate::util::{sleep, Hooks, Rec, Recorder};

/// An Ed25519 certificate with a fixed serial: its signatures have one
/// length, so every TLS flight does too and a seed replays byte for byte
/// (ECDSA's DER signatures vary in length).
fn cert() -> &'static (String, String) {
    static CERT: OnceLock<(String, String)> = OnceLock::new();
    CERT.get_or_init(|| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.serial_number = Some(rcgen::SerialNumber::from(1u64));
        let cert = params.self_signed(&key).expect("self-signed");
        (cert.pem(), key.serialize_pem())
    })
}

pub fn server_options() -> TlsOptions {
    let (c, k) = cert();
    TlsOptions::server(tls::server_config_from_pem(c.as_bytes(), k.as_bytes()).unwrap())
}

pub fn client_options() -> TlsOptions {
    TlsOptions::client(
        tls::client_config_with_ca_pem(cert().0.as_bytes()).unwrap(),
        "localhost",
    )
    .unwrap()
}

pub type SharedRec = Rc<RefCell<Rec>>;

/// How a connection is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Security {
    Plain,
    /// TLS from the first byte.
    Tls,
    /// Plaintext first, then `start_tls` on the live connection.
    StartTls,
}

/// What every protocol of one workload shares.
#[derive(Clone)]
pub struct Ctx {
    pub h: Handle,
    pub rng: SharedRng,
    pub board: Rc<Board>,
}

impl Ctx {
    pub fn chance(&self, p: f64) -> bool {
        self.rng.borrow_mut().random_bool(p)
    }

    pub fn micros(&self, lo: u64, hi: u64) -> Duration {
        Duration::from_micros(self.rng.borrow_mut().random_range(lo..hi))
    }

    /// Writes `data` in random-sized pieces.
    pub fn write_chunks(&self, t: &Transport, data: &[u8]) {
        let mut off = 0;
        while off < data.len() {
            let step = self
                .rng
                .borrow_mut()
                .random_range(1..70_000)
                .min(data.len() - off);
            t.write(&data[off..off + step]);
            off += step;
        }
    }
}

/// One server connection as the checks see it.
pub struct ServerConn {
    pub security: Security,
    /// The protocol it started with (the plaintext phase, for STARTTLS).
    pub first: SharedRec,
    /// The application's protocol: `first`, or the one STARTTLS installed.
    pub app: Rc<RefCell<Option<SharedRec>>>,
    /// STARTTLS: at `start_tls`, the bytes the raw transport held and the
    /// bytes passed as unconsumed (both belong to the TLS stream).
    pub upgrade: Rc<Cell<Option<(u64, usize)>>>,
    pub failed: Rc<RefCell<Option<String>>>,
    /// The server aborted the connection itself.
    pub cut: Rc<Cell<bool>>,
}

impl ServerConn {
    /// The peer's address, once the connection was made.
    pub fn peer(&self) -> Option<Address> {
        let t = self.first.borrow().transport.clone();
        t.and_then(|t| t.peer_addr())
    }
}

/// The echo every server connection runs (plain or over TLS): writes back
/// what it gets, pauses itself now and then inside `data_received`, pauses
/// other connections, and closes after EOF. Now and then, while an echo is
/// being sent, it aborts (and sets `cut`): that send's cancel races with
/// its completion or lands mid-transfer.
pub fn echo_hooks(ctx: &Ctx, tls: bool, cut: &Rc<Cell<bool>>) -> Hooks {
    let id: Rc<Cell<Option<usize>>> = Rc::default();
    let (c1, c2, c3, id2, id3, cut) = (
        ctx.clone(),
        ctx.clone(),
        ctx.clone(),
        id.clone(),
        id.clone(),
        cut.clone(),
    );
    Hooks {
        made: Some(Box::new(move |t: &Transport, ()| {
            id.set(Some(c1.board.add(t, tls)));
            c1.board.maybe_small_water_marks(t);
        })),
        resume_writing: Some(Box::new(move |_t: &Transport, ()| {
            c3.board.pause_others(id3.get());
        })),
        data: Some(Box::new(move |t: &Transport, d: &[u8]| {
            let sending = t.get_write_buffer_size() > 0;
            t.write(d);
            if sending && c2.chance(0.03) {
                cut.set(true);
                t.abort();
                return;
            }
            if c2.chance(0.3) {
                c2.board.pause_briefly(t, tls, Source::DataReceived, 3000);
            }
            if c2.chance(0.5) {
                c2.board.pause_another(id2.get());
            }
        })),
        eof: Some(Box::new(|t: &Transport| {
            t.close();
            true
        })),
        ..Hooks::default()
    }
}

/// A plain or TLS echo connection of the server.
pub fn echo_server(
    ctx: &Ctx,
    security: Security,
    conns: &Rc<RefCell<Vec<ServerConn>>>,
) -> Recorder {
    let tls = security == Security::Tls;
    let cut: Rc<Cell<bool>> = Rc::default();
    let mut hooks = echo_hooks(ctx, tls, &cut);
    let rec_slot: Rc<RefCell<Option<SharedRec>>> = Rc::default();
    if !tls && ctx.chance(0.2) {
        // Swaps to a fresh protocol (same record) after its first data.
        let inner = hooks.data.take().expect("echo has a data hook");
        let inner = Rc::new(RefCell::new(inner));
        let (swapped, slot, ctx2, cut2) = (
            Rc::new(Cell::new(false)),
            rec_slot.clone(),
            ctx.clone(),
            cut.clone(),
        );
        hooks.data = Some(Box::new(move |t: &Transport, d: &[u8]| {
            (inner.borrow_mut())(t, d);
            if !swapped.replace(true) {
                let rec = slot.borrow().clone().expect("recorded");
                let mut next = echo_hooks(&ctx2, false, &cut2);
                next.made = None;
                t.set_protocol(Recorder::continuing(rec, t.clone(), next));
            }
        }));
    }
    let (p, rec) = Recorder::with_hooks(hooks);
    *rec_slot.borrow_mut() = Some(rec.clone());
    conns.borrow_mut().push(ServerConn {
        security,
        first: rec.clone(),
        app: Rc::new(RefCell::new(Some(rec))),
        upgrade: Rc::default(),
        failed: Rc::default(),
        cut,
    });
    p
}

/// The server half of STARTTLS: echoes `plain` bytes of plaintext, then,
/// from a timer or a task, pauses reading (the client's ClientHello then
/// lands in the raw transport and is held there) and starts TLS a moment
/// later, handing over what it holds; bytes that reached `data_received`
/// after the plaintext go to the engine as unconsumed (T3).
pub fn starttls_server(ctx: &Ctx, plain: usize, conns: &Rc<RefCell<Vec<ServerConn>>>) -> Recorder {
    let app: Rc<RefCell<Option<SharedRec>>> = Rc::default();
    let upgrade: Rc<Cell<Option<(u64, usize)>>> = Rc::default();
    let failed: Rc<RefCell<Option<String>>> = Rc::default();
    let cut: Rc<Cell<bool>> = Rc::default();
    let seen = Rc::new(Cell::new(0usize));
    let stash: Rc<RefCell<Vec<u8>>> = Rc::default();
    let (ctx2, app2, up2, failed2, cut2) = (
        ctx.clone(),
        app.clone(),
        upgrade.clone(),
        failed.clone(),
        cut.clone(),
    );
    let hooks = Hooks {
        data: Some(Box::new(move |t: &Transport, d: &[u8]| {
            let before = seen.get();
            seen.set(before + d.len());
            let echo = d.len().min(plain.saturating_sub(before));
            t.write(&d[..echo]);
            stash.borrow_mut().extend_from_slice(&d[echo..]);
            if before < plain && before + d.len() >= plain {
                schedule_upgrade(&ctx2, t, &stash, &app2, &up2, &failed2, &cut2);
            }
        })),
        eof: Some(Box::new(|t: &Transport| {
            t.close();
            true
        })),
        ..Hooks::default()
    };
    let (p, rec) = Recorder::with_hooks(hooks);
    conns.borrow_mut().push(ServerConn {
        security: Security::StartTls,
        first: rec,
        app,
        upgrade,
        failed,
        cut,
    });
    p
}

fn schedule_upgrade(
    ctx: &Ctx,
    t: &Transport,
    stash: &Rc<RefCell<Vec<u8>>>,
    app: &Rc<RefCell<Option<SharedRec>>>,
    upgrade: &Rc<Cell<Option<(u64, usize)>>>,
    failed: &Rc<RefCell<Option<String>>>,
    cut: &Rc<Cell<bool>>,
) {
    let (ctx2, raw, stash, app, upgrade, failed, cut) = (
        ctx.clone(),
        t.clone(),
        stash.clone(),
        app.clone(),
        upgrade.clone(),
        failed.clone(),
        cut.clone(),
    );
    let start = move || {
        let held = raw.ledger().held;
        let unconsumed = std::mem::take(&mut *stash.borrow_mut());
        upgrade.set(Some((held, unconsumed.len())));
        let (p, rec) = Recorder::with_hooks(echo_hooks(&ctx2, true, &cut));
        *app.borrow_mut() = Some(rec);
        let options = server_options()
            .call_connection_made(true)
            .unconsumed(unconsumed);
        let fut = ctx2.h.start_tls(&raw, p, options);
        ctx2.h.spawn(async move {
            if let Err(e) = fut.await {
                *failed.borrow_mut() = Some(format!("server start_tls: {e}"));
            }
        });
    };
    let (first, then) = (ctx.micros(0, 600), ctx.micros(0, 1500));
    let t = t.clone();
    let board = ctx.board.clone();
    if ctx.chance(0.5) {
        let h = ctx.h.clone();
        ctx.h.call_later(first, move || {
            board.pause(&t, false, Source::Timer);
            h.call_later(then, start);
        });
    } else {
        let h = ctx.h.clone();
        ctx.h.spawn(async move {
            sleep(&h, first).await;
            board.pause(&t, false, Source::Task);
            sleep(&h, then).await;
            start();
        });
    }
}

/// One client connection as the workload drives it and the checks see it.
pub struct Client {
    pub security: Security,
    pub ending: super::Ending,
    pub payload: Vec<u8>,
    /// STARTTLS: plaintext bytes before the upgrade (0 otherwise).
    pub plain: usize,
    /// STARTTLS: the plaintext phase's protocol.
    pub pre: Option<SharedRec>,
    /// The application's protocol (over TLS for TLS and STARTTLS).
    pub app: SharedRec,
    /// The application's transport, once connected (and upgraded).
    pub transport: Rc<RefCell<Option<Transport>>>,
    /// The plain transport underneath, once connected.
    pub raw: Rc<RefCell<Option<Transport>>>,
    /// Why connecting or upgrading failed.
    pub failed: Rc<RefCell<Option<String>>>,
    /// The client closed or aborted before its echo was complete.
    pub cut_short: Rc<Cell<bool>>,
    /// Unix: the index of its server connection (accept order).
    pub server: Cell<Option<usize>>,
}

impl Client {
    /// Whether this client is over: it failed, or its protocol heard
    /// `connection_lost` (the plaintext one's, if it never upgraded).
    pub fn done(&self) -> bool {
        if self.failed.borrow().is_some() || self.app.borrow().lost > 0 {
            return true;
        }
        self.pre
            .as_ref()
            .is_some_and(|p| p.borrow().lost > 0 && self.app.borrow().made == 0)
    }

    /// Bytes the application expects back.
    pub fn expected(&self) -> usize {
        self.payload.len() - self.plain
    }
}

/// The client's echo protocol: pauses another connection now and then.
/// With `abort`, an `Abort` client may also abort inside `data_received`
/// (setting `cut` if its `expected` echo is not complete): its own send may
/// then be in flight with room, so the abort's cancel races with it or
/// lands mid-transfer.
fn client_hooks(ctx: &Ctx, tls: bool, abort: Option<(Rc<Cell<bool>>, usize)>) -> Hooks {
    let id: Rc<Cell<Option<usize>>> = Rc::default();
    let (c1, c2, c3, id2, id3) = (
        ctx.clone(),
        ctx.clone(),
        ctx.clone(),
        id.clone(),
        id.clone(),
    );
    let mut got = 0;
    Hooks {
        made: Some(Box::new(move |t: &Transport, ()| {
            id.set(Some(c1.board.add(t, tls)));
            c1.board.maybe_small_water_marks(t);
        })),
        resume_writing: Some(Box::new(move |_t: &Transport, ()| {
            c3.board.pause_others(id3.get());
        })),
        data: Some(Box::new(move |t: &Transport, d: &[u8]| {
            got += d.len();
            if c2.chance(0.5) {
                c2.board.pause_another(id2.get());
            }
            if let Some((cut, expected)) = &abort {
                if c2.chance(0.1) {
                    cut.set(got < *expected);
                    t.abort();
                }
            }
        })),
        eof: Some(Box::new(|_t: &Transport| false)),
        ..Hooks::default()
    }
}

/// A new client and the protocol to connect with: its echo check, or for
/// STARTTLS the plaintext protocol that upgrades once its `plain` bytes came
/// back (from inside `data_received`, a timer or a task, at random).
pub fn client(
    ctx: &Ctx,
    security: Security,
    ending: super::Ending,
    payload: Vec<u8>,
    plain: usize,
) -> (Client, Recorder) {
    let cut_short: Rc<Cell<bool>> = Rc::default();
    let abort =
        (ending == super::Ending::Abort).then(|| (cut_short.clone(), payload.len() - plain));
    let hooks = client_hooks(ctx, security != Security::Plain, abort);
    let (app, app_rec) = Recorder::with_hooks(hooks);
    let mut c = Client {
        security,
        ending,
        payload,
        plain,
        pre: None,
        app: app_rec,
        transport: Rc::default(),
        raw: Rc::default(),
        failed: Rc::default(),
        cut_short,
        server: Cell::new(None),
    };
    if security != Security::StartTls {
        return (c, app);
    }
    let app = Rc::new(RefCell::new(Some(app)));
    let rest = c.payload[plain..].to_vec();
    let (ctx2, transport, failed) = (ctx.clone(), c.transport.clone(), c.failed.clone());
    let echoed = Rc::new(Cell::new(0usize));
    let hooks = Hooks {
        data: Some(Box::new(move |t: &Transport, d: &[u8]| {
            let before = echoed.get();
            echoed.set(before + d.len());
            if before >= plain || before + d.len() < plain {
                return;
            }
            let Some(app) = app.borrow_mut().take() else {
                return;
            };
            let (ctx3, t, rest) = (ctx2.clone(), t.clone(), rest.clone());
            let (transport, failed) = (transport.clone(), failed.clone());
            let upgrade = move || {
                let options = client_options().call_connection_made(true);
                let fut = ctx3.h.start_tls(&t, app, options);
                let ctx4 = ctx3.clone();
                ctx3.h.spawn(async move {
                    match fut.await {
                        Ok(tls) => {
                            ctx4.write_chunks(&tls, &rest);
                            *transport.borrow_mut() = Some(tls);
                        }
                        Err(e) => *failed.borrow_mut() = Some(format!("client start_tls: {e}")),
                    }
                });
            };
            let delay = ctx2.micros(0, 800);
            let from = ctx2.rng.borrow_mut().random_range(0..3);
            match from {
                0 => upgrade(),
                1 => {
                    let _ = ctx2.h.call_later(delay, upgrade);
                }
                _ => {
                    let h = ctx2.h.clone();
                    // Detached: the task runs on its own.
                    drop(ctx2.h.spawn(async move {
                        sleep(&h, delay).await;
                        upgrade();
                    }));
                }
            }
        })),
        eof: Some(Box::new(|_t: &Transport| false)),
        ..Hooks::default()
    };
    let (pre, pre_rec) = Recorder::with_hooks(hooks);
    c.pre = Some(pre_rec);
    (c, pre)
}

/// Connects client `c` with `first` (its echo protocol, or its plaintext
/// STARTTLS protocol) and writes its payload (the plaintext part, for
/// STARTTLS: the rest follows the upgrade). Returns whether a connection
/// was made, even if its TLS handshake then failed: whether the server
/// accepts (or accepted) one.
pub async fn connect(ctx: &Ctx, addr: Address, c: &Client, first: Recorder) -> bool {
    let h = &ctx.h;
    let connected = match c.security {
        Security::Tls => h.create_tls_connection(addr, first, client_options()).await,
        Security::Plain | Security::StartTls => h.create_connection(addr, first).await,
    };
    let t = match connected {
        Ok(t) => t,
        Err(e) => {
            *c.failed.borrow_mut() = Some(format!("connect: {e}"));
            use std::io::ErrorKind::*;
            return !matches!(
                e.kind(),
                ConnectionRefused | WouldBlock | TimedOut | NotFound
            );
        }
    };
    *c.raw.borrow_mut() = Some(t.raw_transport());
    match c.security {
        Security::StartTls => ctx.write_chunks(&t, &c.payload[..c.plain]),
        Security::Plain | Security::Tls => {
            ctx.write_chunks(&t, &c.payload);
            if c.ending == super::Ending::WriteEof {
                t.write_eof().unwrap();
            }
            *c.transport.borrow_mut() = Some(t);
        }
    }
    true
}
