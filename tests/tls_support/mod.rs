//! Shared support of the `tls_*` tests: the driver matrix, a throwaway
//! certificate, TLS options, and small protocols.
#![allow(dead_code)]

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Duration;

use proactor::tls::{self, TlsOptions};
use proactor::{BaseProtocol, EventLoop, Handle, Protocol, Transport};

// The one driver matrix lives in `tests/util` (every TLS test includes it).
use crate::util::matrix::{self, Plan, Seeds};

/// Runs `scenario` on the driver matrix (see `tests/matrix`): uring where
/// io_uring works, poll, and sim over the contract seeds. `sim_skip` names
/// why a test cannot run on sim (external processes), if it cannot.
pub fn drivers(test: &str, sim_skip: Option<&str>, scenario: impl Fn(&EventLoop)) {
    let plan = Plan {
        sim_skip,
        ..Plan::new(test)
    };
    matrix::run(plan, |lp| scenario(&lp))
}

/// [`drivers`] with a sim sweep of `default` seeds instead of the
/// contract's few: for tests that force a race the simulator explores.
/// `PROACTOR_SIM_SEED` replays one seed; `PROACTOR_SIM_SEEDS` resizes it.
pub fn drivers_sweep(test: &str, default: u64, scenario: impl Fn(&EventLoop)) {
    let plan = Plan {
        seeds: Seeds::Sweep(default),
        ..Plan::new(test)
    };
    matrix::run(plan, |lp| scenario(&lp))
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, as PEM.
pub fn cert() -> &'static (String, String) {
    static CERT: OnceLock<(String, String)> = OnceLock::new();
    CERT.get_or_init(|| {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let ck = rcgen::generate_simple_self_signed(names).expect("rcgen");
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    })
}

/// Writes the certificate and key to files (for external peers).
pub fn cert_files() -> &'static (std::path::PathBuf, std::path::PathBuf) {
    static FILES: OnceLock<(std::path::PathBuf, std::path::PathBuf)> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("proactor-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k) = cert();
        let cp = dir.join("cert.pem");
        let kp = dir.join("key.pem");
        std::fs::write(&cp, c).unwrap();
        std::fs::write(&kp, k).unwrap();
        (cp, kp)
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

pub fn localhost() -> proactor::Address {
    "127.0.0.1:0".parse().unwrap()
}

/// Whether an external program (a real peer) can be run. Where it cannot,
/// the test says so and is skipped, unless `PROACTOR_REQUIRE_PEERS=1` (set
/// in CI, which installs the peers): there a missing peer fails the test.
pub fn have(program: &str, version_arg: &str) -> bool {
    let ran = std::process::Command::new(program)
        .arg(version_arg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    let why = match ran {
        Ok(status) if status.success() => return true,
        Ok(status) => format!("`{program} {version_arg}` exited {status}"),
        Err(e) => format!("`{program}` cannot run: {e}"),
    };
    assert!(
        std::env::var("PROACTOR_REQUIRE_PEERS").as_deref() != Ok("1"),
        "{why}, but PROACTOR_REQUIRE_PEERS=1: a real-peer test may not be skipped"
    );
    // Past the harness's capture, so the skip shows in the test output.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED real peer: {why}");
    false
}

/// What an [`Echo`] or a [`Sink`] saw.
#[derive(Default, Debug)]
pub struct Seen {
    pub transport: Option<Transport>,
    pub made: u32,
    pub data: Vec<u8>,
    pub eof: u32,
    pub lost: u32,
    pub error: Option<io::Error>,
    /// Loop time of `connection_lost` (set by protocols that know it).
    pub lost_at: Option<std::time::Instant>,
}

pub type Shared = Rc<RefCell<Seen>>;

pub fn shared() -> Shared {
    Rc::default()
}

/// Records everything; echoes if `echo`.
pub struct Sink {
    pub seen: Shared,
    pub echo: bool,
}

impl Sink {
    pub fn new(seen: &Shared) -> Sink {
        Sink {
            seen: seen.clone(),
            echo: false,
        }
    }
    pub fn echo(seen: &Shared) -> Sink {
        Sink {
            seen: seen.clone(),
            echo: true,
        }
    }
}

impl BaseProtocol for Sink {
    fn connection_made(&mut self, t: Transport) {
        let mut s = self.seen.borrow_mut();
        s.made += 1;
        s.transport = Some(t);
    }
    fn connection_lost(&mut self, e: Option<io::Error>) {
        let mut s = self.seen.borrow_mut();
        assert_eq!(s.lost, 0, "connection_lost twice");
        s.lost += 1;
        s.error = e;
    }
    fn eof_received(&mut self) -> bool {
        self.seen.borrow_mut().eof += 1;
        false
    }
}

impl Protocol for Sink {
    fn data_received(&mut self, data: &[u8]) {
        let mut s = self.seen.borrow_mut();
        assert_eq!(s.lost, 0, "data after connection_lost");
        if let Some(t) = &s.transport {
            assert!(
                t.is_reading() || t.is_closing(),
                "R3: data_received({} bytes) while reading is paused",
                data.len()
            );
        }
        s.data.extend_from_slice(data);
        assert!(
            !self.echo || s.transport.is_some(),
            "data before the transport is known"
        );
        if self.echo {
            if let Some(t) = &s.transport {
                t.write(data);
            }
        }
    }
}

/// Waits (on loop time) until `cond` holds; panics after `limit`.
pub async fn until(h: &Handle, limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = h.now() + limit;
    while !cond() {
        assert!(h.now() < deadline, "timed out after {limit:?}: {what}");
        sleep(h, Duration::from_millis(1)).await;
    }
}

/// Sleeps on the loop clock.
pub async fn sleep(h: &Handle, d: Duration) {
    let (tx, rx) = futures_channel_like::channel();
    h.call_later(d, move || tx.fire());
    rx.await
}

/// A tiny one-shot without extra dependencies.
pub mod futures_channel_like {
    use std::cell::RefCell;
    use std::future::Future;
    use std::pin::Pin;
    use std::rc::Rc;
    use std::task::{Context, Poll, Waker};

    #[derive(Default)]
    struct Inner {
        done: bool,
        waker: Option<Waker>,
    }
    pub struct Tx(Rc<RefCell<Inner>>);
    pub struct Rx(Rc<RefCell<Inner>>);
    pub fn channel() -> (Tx, Rx) {
        let i = Rc::new(RefCell::new(Inner::default()));
        (Tx(i.clone()), Rx(i))
    }
    impl Tx {
        pub fn fire(self) {
            let w = {
                let mut i = self.0.borrow_mut();
                i.done = true;
                i.waker.take()
            };
            if let Some(w) = w {
                w.wake();
            }
        }
    }
    impl Future for Rx {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let mut i = self.0.borrow_mut();
            if i.done {
                Poll::Ready(())
            } else {
                i.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// A deterministic byte pattern.
pub fn pattern(stream: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let x =
                i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
            (x >> 56) as u8
        })
        .collect()
}

/// The TLS error kind inside an io::Error, as text, for assertions.
pub fn tls_cause(e: &io::Error) -> String {
    match tls::TlsError::of(e) {
        Some(t) => format!("{t:?}"),
        None => format!("io:{:?}:{e}", e.kind()),
    }
}

// ---------------------------------------------------------------------------
// A hand-driven rustls peer over a plain transport, for peers that misbehave
// on purpose (never answer close_notify, truncate, pipeline data).

use std::io::{Read as _, Write as _};
use std::sync::Arc;

/// State of a [`ManualPeer`].
pub struct PeerState {
    pub conn: rustls::Connection,
    pub transport: Option<Transport>,
    pub plaintext: Vec<u8>,
    /// The peer's close_notify arrived.
    pub close_notify: bool,
    pub eof: bool,
    pub lost: bool,
    pub error: Option<String>,
    /// Don't send the ClientHello at connection_made (the test sends it).
    pub hold_hello: bool,
    /// Plaintext bytes to read before the TLS stream starts (STARTTLS).
    pub skip_plain: usize,
    pub plain_prefix: Vec<u8>,
    /// Don't send engine output from `data_received` (the test flushes).
    pub hold_output: bool,
}

pub type PeerRef = Rc<RefCell<PeerState>>;

impl PeerState {
    /// Moves the engine's output to the transport.
    pub fn flush(&mut self) {
        let out = self.take_output();
        if let Some(t) = &self.transport {
            if !out.is_empty() {
                t.write(&out);
            }
        }
    }
    /// The engine's pending output.
    pub fn take_output(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut out).unwrap();
        }
        out
    }
    pub fn write(&mut self, data: &[u8]) {
        self.conn.writer().write_all(data).unwrap();
        self.flush();
    }
    pub fn close_notify(&mut self) {
        self.conn.send_close_notify();
        self.flush();
    }
    pub fn handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }
}

/// A plain protocol running a rustls engine by hand.
pub struct ManualPeer(pub PeerRef);

impl ManualPeer {
    pub fn client() -> (ManualPeer, PeerRef) {
        let cfg = proactor::tls::client_config_with_ca_pem(cert().0.as_bytes()).unwrap();
        let mut c = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
        c.set_buffer_limit(None);
        Self::with(rustls::Connection::Client(c))
    }
    pub fn server() -> (ManualPeer, PeerRef) {
        let (c, k) = cert();
        let cfg: Arc<rustls::ServerConfig> =
            proactor::tls::server_config_from_pem(c.as_bytes(), k.as_bytes()).unwrap();
        let mut s = rustls::ServerConnection::new(cfg).unwrap();
        s.set_buffer_limit(None);
        Self::with(rustls::Connection::Server(s))
    }
    fn with(conn: rustls::Connection) -> (ManualPeer, PeerRef) {
        let st = Rc::new(RefCell::new(PeerState {
            conn,
            transport: None,
            plaintext: Vec::new(),
            close_notify: false,
            eof: false,
            lost: false,
            error: None,
            hold_hello: false,
            skip_plain: 0,
            plain_prefix: Vec::new(),
            hold_output: false,
        }));
        (ManualPeer(st.clone()), st)
    }
}

impl BaseProtocol for ManualPeer {
    fn connection_made(&mut self, t: Transport) {
        let mut s = self.0.borrow_mut();
        s.transport = Some(t);
        if !s.hold_hello {
            s.flush(); // a client's ClientHello
        }
    }
    fn connection_lost(&mut self, e: Option<io::Error>) {
        let mut s = self.0.borrow_mut();
        s.lost = true;
        if let Some(e) = e {
            s.error.get_or_insert(e.to_string());
        }
    }
    fn eof_received(&mut self) -> bool {
        self.0.borrow_mut().eof = true;
        true
    }
}

impl Protocol for ManualPeer {
    fn data_received(&mut self, mut data: &[u8]) {
        let mut s = self.0.borrow_mut();
        if s.error.is_some() {
            return;
        }
        if s.skip_plain > 0 {
            let n = s.skip_plain.min(data.len());
            s.plain_prefix.extend_from_slice(&data[..n]);
            s.skip_plain -= n;
            data = &data[n..];
        }
        while !data.is_empty() {
            match s.conn.read_tls(&mut data) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    s.error = Some(e.to_string());
                    break;
                }
            }
            match s.conn.process_new_packets() {
                Ok(io) => {
                    let n = io.plaintext_bytes_to_read();
                    let mut buf = vec![0; n];
                    s.conn.reader().read_exact(&mut buf).unwrap();
                    s.plaintext.extend_from_slice(&buf);
                    if io.peer_has_closed() {
                        s.close_notify = true;
                    }
                }
                Err(e) => {
                    s.error = Some(e.to_string());
                    break;
                }
            }
        }
        if !s.hold_output {
            s.flush();
        }
    }
}

// ---------------------------------------------------------------------------
// A STARTTLS line server: echoes lines in plaintext; on `STARTTLS` answers
// `READY\r\n` and upgrades, handing the rest of the read to the engine (T3);
// then echoes over TLS.

/// What a [`StarttlsLine`] connection saw.
#[derive(Default)]
pub struct Upgrade {
    pub plain_lines: Vec<Vec<u8>>,
    /// Bytes after the STARTTLS line in the same read.
    pub unconsumed: usize,
    /// The start_tls outcome (Ok: the TLS transport).
    pub result: Option<Result<Transport, io::Error>>,
    /// What the application saw over TLS.
    pub secured: Shared,
}

pub type UpgradeRef = Rc<RefCell<Upgrade>>;

pub struct StarttlsLine {
    pub h: Handle,
    pub buf: Vec<u8>,
    pub t: Option<Transport>,
    pub up: UpgradeRef,
    pub upgraded: bool,
    pub handshake_timeout: Duration,
}

impl StarttlsLine {
    pub fn new(h: &Handle, up: &UpgradeRef) -> StarttlsLine {
        StarttlsLine {
            h: h.clone(),
            buf: Vec::new(),
            t: None,
            up: up.clone(),
            upgraded: false,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl BaseProtocol for StarttlsLine {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }
}

impl Protocol for StarttlsLine {
    fn data_received(&mut self, data: &[u8]) {
        assert!(!self.upgraded, "old protocol got data after start_tls");
        self.buf.extend_from_slice(data);
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            let t = self.t.clone().unwrap();
            if line.trim_ascii() == b"STARTTLS" {
                t.write(b"READY\r\n");
                let rest = std::mem::take(&mut self.buf);
                self.upgraded = true;
                let secured = {
                    let mut u = self.up.borrow_mut();
                    u.unconsumed = rest.len();
                    u.secured.clone()
                };
                let opts = server_options()
                    .unconsumed(rest)
                    .handshake_timeout(self.handshake_timeout);
                let fut = self.h.start_tls(&t, Sink::echo(&secured), opts);
                let up = self.up.clone();
                self.h.spawn(async move {
                    let r = fut.await;
                    if let Ok(tls) = &r {
                        // Before any data: the first-data-after-wakeup order.
                        secured.borrow_mut().transport = Some(tls.clone());
                    }
                    up.borrow_mut().result = Some(r);
                });
                return;
            }
            self.up.borrow_mut().plain_lines.push(line.clone());
            t.write(&line);
        }
    }
}
