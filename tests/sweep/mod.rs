//! The random workload of `tests/sim_sweep.rs`, one seed at a time.
//!
//! Per seed: TCP or Unix sockets, faults on for a third of the seeds, and
//! one to five clients, each plain, TLS or STARTTLS, each ending its
//! connection its own way. Three servers echo (plain, TLS, STARTTLS). Reading
//! is paused from every source (`pauses`). Every protocol is the invariant
//! checker (`Recorder`: R1–R4, W2, L4), and `check` holds every stream to
//! exactly what its peer sent.

pub mod check;
pub mod peers;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proactor::{
    Address, DriverKind, DriverStats, EventLoop, ServerOptions, SimConfig, SimStats, Transport,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::util::pauses::{Board, PauseCounts, SharedRng, Source};
use crate::util::{crash_fast, localhost, pattern, sleep, wait_until};
use peers::{server_options, Client, Ctx, Security, ServerConn, SharedRec};

/// How a client ends its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Wait for the whole echo, then close.
    Close,
    /// Half-close after writing (plain only); close on the echo's EOF.
    WriteEof,
    /// Abort at a random moment.
    Abort,
    /// Close while the echo is still coming back: the close cancels a
    /// receive that may complete at the same moment (the bpo-33694 race).
    CloseEarly,
}

/// What one seed did, over its connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub pauses: PauseCounts,
    /// Connections per security: plain, TLS, STARTTLS.
    pub conns: [u64; 3],
    /// STARTTLS upgrades on the server; of those, with the raw transport
    /// holding data, and with bytes passed as unconsumed.
    pub upgrades: u64,
    pub upgrades_holding_data: u64,
    pub upgrades_with_unconsumed: u64,
    /// Connects (or handshakes, upgrades) that failed.
    pub connect_failures: u64,
    /// Connections that ended with an error (either side).
    pub errors: u64,
    /// Ends checked against exactly what the peer sent (a clean EOF).
    pub exact_ends: u64,
    pub unix: u64,
    pub faults: u64,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.pauses.add(&o.pauses);
        for i in 0..3 {
            self.conns[i] += o.conns[i];
        }
        self.upgrades += o.upgrades;
        self.upgrades_holding_data += o.upgrades_holding_data;
        self.upgrades_with_unconsumed += o.upgrades_with_unconsumed;
        self.connect_failures += o.connect_failures;
        self.errors += o.errors;
        self.exact_ends += o.exact_ends;
        self.unix += o.unix;
        self.faults += o.faults;
    }
}

/// What one seed did, for determinism checks and the sweep's report.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub stats: DriverStats,
    pub sim: SimStats,
    pub totals: Totals,
    pub trace: Option<String>,
    pub events: Vec<String>,
}

/// Whether seed `seed` runs with faults on.
pub fn faults_on(seed: u64) -> bool {
    seed % 3 == 2
}

fn addr(unix: bool, seed: u64, name: &str) -> Address {
    if unix {
        Address::Unix(format!("/sim-sweep/{seed}/{name}.sock").into())
    } else {
        localhost()
    }
}

fn pick_client(rng: &SharedRng) -> (Security, Ending, usize) {
    let mut r = rng.borrow_mut();
    let security = match r.random_range(0..8) {
        0..=3 => Security::Plain,
        4..=5 => Security::Tls,
        _ => Security::StartTls,
    };
    let mut ending = match r.random_range(0..20) {
        0..=2 => Ending::Abort,
        3..=8 => Ending::WriteEof,
        9..=12 => Ending::CloseEarly,
        _ => Ending::Close,
    };
    if security != Security::Plain && ending == Ending::WriteEof {
        ending = Ending::Close; // TLS cannot half-close
    }
    let max = if security == Security::Plain {
        200_000
    } else {
        80_000
    };
    (security, ending, r.random_range(1..max))
}

/// Runs one random workload on `seed` and checks every invariant.
pub fn run(seed: u64) -> Outcome {
    let faults = faults_on(seed);
    let config = if faults {
        SimConfig::with_faults(seed)
    } else {
        SimConfig::with_seed(seed)
    };
    let lp = crash_fast(
        EventLoop::builder()
            .driver(DriverKind::Sim)
            .sim_config(config),
    )
    .build()
    .unwrap();
    let h = lp.handle();
    let rng: SharedRng = Rc::new(RefCell::new(SmallRng::seed_from_u64(seed ^ 0x5eed)));
    let ctx = Ctx {
        h: h.clone(),
        rng: rng.clone(),
        board: Board::new(&h, &rng),
    };
    let (events, totals) = lp.run_until_complete(workload(ctx, seed, faults)).unwrap();
    Outcome {
        stats: h.driver_stats(),
        sim: h.sim_stats().unwrap_or_default(),
        totals,
        trace: h.driver_trace(),
        events,
    }
}

async fn workload(ctx: Ctx, seed: u64, faults: bool) -> (Vec<String>, Totals) {
    let (h, rng) = (ctx.h.clone(), ctx.rng.clone());
    let unix = rng.borrow_mut().random_bool(0.25);
    // A small backlog now and then: TCP connects then wait for room,
    // retransmitting their SYN (the sim's kernel timers).
    let backlog = if rng.borrow_mut().random_bool(0.3) {
        1
    } else {
        64
    };
    let options = || ServerOptions {
        backlog,
        ..ServerOptions::default()
    };
    let conns: Rc<RefCell<Vec<ServerConn>>> = Rc::default();
    let (c1, k1) = (ctx.clone(), conns.clone());
    let plain_srv = h
        .create_server_with(
            addr(unix, seed, "plain"),
            move || peers::echo_server(&c1, Security::Plain, &k1).into(),
            options(),
        )
        .unwrap();
    let (c2, k2) = (ctx.clone(), conns.clone());
    let tls_srv = h
        .create_tls_server_with(
            addr(unix, seed, "tls"),
            move || peers::echo_server(&c2, Security::Tls, &k2).into(),
            server_options(),
            options(),
        )
        .unwrap();
    // Every STARTTLS client of a seed sends the same plaintext length.
    let starttls_plain = rng.borrow_mut().random_range(1..3000);
    let (c3, k3) = (ctx.clone(), conns.clone());
    let starttls_srv = h
        .create_server_with(
            addr(unix, seed, "starttls"),
            move || peers::starttls_server(&c3, starttls_plain, &k3).into(),
            options(),
        )
        .unwrap();
    ctx.board.start_timers();
    ctx.board.start_task();

    let n = rng.borrow_mut().random_range(2..=5);
    let mut clients: Vec<Client> = Vec::new();
    for i in 0..n {
        let (security, ending, len) = pick_client(&rng);
        // The STARTTLS server reads exactly its plaintext length first.
        let (len, plain) = if security == Security::StartTls {
            (len.max(starttls_plain), starttls_plain)
        } else {
            (len, 0)
        };
        let payload = pattern(i as u64 + 1, 0, len);
        let (c, first) = peers::client(&ctx, security, ending, payload, plain);
        let server_addr = match security {
            Security::Plain => plain_srv.local_addr(),
            Security::Tls => tls_srv.local_addr(),
            Security::StartTls => starttls_srv.local_addr(),
        };
        let accepted_before = conns.borrow().len();
        let connected = peers::connect(&ctx, server_addr, &c, first).await;
        if unix && connected {
            // Unix addresses cannot tell clients apart: one connection at a
            // time, so the server's accept order is the clients' order (a
            // TLS handshake that failed was connected, and is accepted).
            wait_until(&h, Duration::from_secs(60), "accepted", || {
                conns.borrow().len() > accepted_before
            })
            .await;
            c.server.set(Some(accepted_before));
        }
        clients.push(c);
    }

    drive(&ctx, &clients).await;
    ctx.board.stop();
    for s in [&plain_srv, &tls_srv, &starttls_srv] {
        s.close();
    }
    wait_until(
        &h,
        Duration::from_secs(600),
        "every connection released",
        || {
            let t = h.table_sizes();
            t.transports == 0 && t.ops_in_flight == 0
        },
    )
    .await;
    wait_until(&h, Duration::from_secs(60), "every pause resumed", || {
        ctx.board.resumes_due() == 0
    })
    .await;
    // A resume queues the transport's delivery behind this task's wake-up:
    // wait for what the checks require, every started protocol told
    // `connection_lost` (a protocol never told fails here, by time limit).
    let told = |r: &SharedRec| {
        let r = r.borrow();
        r.made == 0 || r.lost > 0
    };
    wait_until(
        &h,
        Duration::from_secs(60),
        "every protocol told connection_lost",
        || {
            clients.iter().all(|c| told(&c.app))
                && conns
                    .borrow()
                    .iter()
                    .all(|s| s.app.borrow().as_ref().is_none_or(told))
        },
    )
    .await;
    let mut totals = Totals {
        pauses: ctx.board.counts.borrow().clone(),
        unix: u64::from(unix),
        faults: u64::from(faults),
        ..Totals::default()
    };
    let events = check::check(&clients, &conns.borrow(), unix, faults, &mut totals);
    (events, totals)
}

/// Runs the clients to their ends: endings, and pauses from this task.
async fn drive(ctx: &Ctx, clients: &[Client]) {
    let (h, rng) = (&ctx.h, &ctx.rng);
    let start = h.now();
    loop {
        let mut all_done = true;
        for c in clients {
            if c.done() {
                continue;
            }
            all_done = false;
            let Some(t) = c.transport.borrow().clone() else {
                continue;
            };
            end_maybe(ctx, c, &t);
            let (toggle, resume) = {
                let mut g = rng.borrow_mut();
                (g.random_bool(0.2), g.random_bool(0.3))
            };
            let tls = c.security != Security::Plain;
            if toggle {
                if t.is_reading() {
                    ctx.board.pause(&t, tls, Source::Task);
                } else {
                    t.resume_reading();
                }
            } else if !t.is_reading() && resume {
                t.resume_reading();
            }
        }
        if all_done {
            return;
        }
        assert!(
            h.now() - start < Duration::from_secs(1000),
            "workload stalled"
        );
        let d = ctx.micros(100, 2000);
        sleep(h, d).await;
    }
}

fn end_maybe(ctx: &Ctx, c: &Client, t: &Transport) {
    let got = c.app.borrow().data.len();
    let expected = c.expected();
    // An abort while a send is in flight cancels it: the cancel may race
    // with its completion, or land mid-transfer (IOCP).
    let sending = t.get_write_buffer_size() > 0;
    match c.ending {
        Ending::Abort if ctx.chance(if sending { 0.3 } else { 0.05 }) => {
            c.cut_short.set(got < expected);
            t.abort();
        }
        Ending::Close if got >= expected => t.close(),
        Ending::CloseEarly if got >= expected / 2 => {
            c.cut_short.set(got < expected);
            t.close();
        }
        _ => {}
    }
}
