//! R5 sweep: server connections run a `BufferedProtocol` that takes random
//! buffer sizes (1 B to 64 KiB) and, at random bytes of a received chunk,
//! pauses (a timer resumes it), switches to a fresh protocol, or starts TLS
//! (STARTTLS with the client's ClientHello pipelined right behind the
//! plaintext, so it often sits in the same chunk as the last plaintext
//! byte). Every byte must reach the right protocol exactly once, in order.
//! PROACTOR_SIM_SEEDS sets the number of seeds (default 300),
//! PROACTOR_SIM_SEED replays one.

mod tls_support;
mod util;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use proactor::{
    AnyProtocol, BaseProtocol, BufferedProtocol, DriverKind, EventLoop, Handle, Transport,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use util::pauses::Board;
use util::window::WindowCheck;
use util::*;

type SharedRng = Rc<RefCell<SmallRng>>;

/// What the server side of one connection saw, across protocol switches.
#[derive(Default)]
struct Side {
    /// Plaintext bytes, in order, from every protocol of the connection.
    data: Vec<u8>,
    violations: Vec<String>,
    switches: u32,
    pauses: u32,
    upgraded: bool,
    /// Bytes of the chunk left after the STARTTLS byte (the ClientHello's
    /// start, when pipelined into the same read).
    tail_at_upgrade: usize,
    lost: u32,
}

type SharedSide = Rc<RefCell<Side>>;

/// The server's buffered protocol; a switch installs a fresh one that
/// continues the same [`Side`] and byte count.
struct Sweeper {
    h: Handle,
    rng: SharedRng,
    side: SharedSide,
    transport: Option<Transport>,
    buf: Vec<u8>,
    /// Bytes of the chunk left when the last buffer was asked for.
    last_hint: usize,
    /// Bytes taken so far on this connection (all protocols).
    consumed: Rc<Cell<usize>>,
    /// Plaintext length before STARTTLS, for TLS connections.
    starttls_at: Option<usize>,
    /// Pauses of other connections, and this connection's id there.
    board: Rc<Board>,
    id: Rc<Cell<Option<usize>>>,
}

impl Sweeper {
    fn fresh(&self) -> Sweeper {
        Sweeper {
            h: self.h.clone(),
            rng: self.rng.clone(),
            side: self.side.clone(),
            transport: self.transport.clone(),
            buf: Vec::new(),
            last_hint: 0,
            consumed: self.consumed.clone(),
            starttls_at: self.starttls_at,
            board: self.board.clone(),
            id: self.id.clone(),
        }
    }

    fn violation(&self, what: String) {
        self.side.borrow_mut().violations.push(what);
    }

    /// Upgrades in the middle of `buffer_updated`: the rest of the chunk
    /// (the ClientHello, often) must go to the TLS engine (R5, T3).
    fn start_tls(&self, t: &Transport) {
        self.side.borrow_mut().upgraded = true;
        if let Some(id) = self.id.get() {
            self.board.remove(id); // TLS runs the raw transport now
        }
        let (side, side2) = (self.side.clone(), self.side.clone());
        let board = self.board.clone();
        let (app, _rec) = Recorder::with_hooks(Hooks {
            made: Some(Box::new(move |t: &Transport, ()| {
                board.add(t, true);
            })),
            data: Some(Box::new(move |t: &Transport, d: &[u8]| {
                side.borrow_mut().data.extend_from_slice(d);
                t.write(d);
            })),
            lost: Some(Box::new(move |_t: &Transport, ()| {
                side2.borrow_mut().lost += 1
            })),
            eof: Some(Box::new(|_t: &Transport| false)),
            ..Hooks::default()
        });
        let options = tls_support::server_options().call_connection_made(true);
        let fut = self.h.start_tls(t, app, options);
        let side = self.side.clone();
        self.h.spawn(async move {
            if let Err(e) = fut.await {
                side.borrow_mut()
                    .violations
                    .push(format!("server start_tls failed: {e}"));
            }
        });
    }
}

impl BaseProtocol for Sweeper {
    fn connection_made(&mut self, t: Transport) {
        self.id.set(Some(self.board.add(&t, false)));
        self.board.maybe_small_water_marks(&t);
        self.transport = Some(t);
    }
    fn resume_writing(&mut self) {
        self.board.pause_others(self.id.get());
    }
    fn connection_lost(&mut self, _e: Option<std::io::Error>) {
        self.side.borrow_mut().lost += 1;
    }
    fn eof_received(&mut self) -> bool {
        false
    }
}

impl BufferedProtocol for Sweeper {
    fn get_buffer(&mut self, size_hint: usize) -> &mut [u8] {
        let mut size = {
            let mut r = self.rng.borrow_mut();
            match r.random_range(0..3) {
                0 => r.random_range(1..=16),
                1 => r.random_range(17..=4096),
                _ => r.random_range(4097..=65536),
            }
        };
        if size_hint == 0 {
            self.violation("get_buffer(0)".into());
        }
        self.last_hint = size_hint;
        if let Some(at) = self.starttls_at {
            // A STARTTLS protocol reads no further than its command.
            size = size.min(at.saturating_sub(self.consumed.get())).max(1);
        }
        self.buf.resize(size, 0);
        &mut self.buf
    }

    fn buffer_updated(&mut self, n: usize) {
        let Some(t) = self.transport.clone() else {
            return self.violation("buffer_updated before connection_made".into());
        };
        if !t.is_reading() {
            self.violation(format!("R5: buffer_updated({n}) while paused or closing"));
        }
        if self.side.borrow().upgraded {
            self.violation(format!("R5: buffer_updated({n}) after start_tls"));
        }
        let chunk = self.buf[..n].to_vec();
        self.side.borrow_mut().data.extend_from_slice(&chunk);
        self.consumed.set(self.consumed.get() + n);
        if let Some(at) = self.starttls_at {
            if self.consumed.get() == at {
                self.side.borrow_mut().tail_at_upgrade = self.last_hint - n;
                return self.start_tls(&t);
            }
        } else {
            t.write(&chunk);
        }
        if self.rng.borrow_mut().random_bool(0.3) {
            self.board.pause_another(self.id.get());
        }
        let mut r = self.rng.borrow_mut();
        if r.random_bool(0.05) {
            self.side.borrow_mut().pauses += 1;
            t.pause_reading();
            let delay = Duration::from_micros(r.random_range(0..2000));
            let t2 = t.clone();
            self.h.call_later(delay, move || t2.resume_reading());
        } else if r.random_bool(0.03) {
            drop(r);
            self.side.borrow_mut().switches += 1;
            t.set_protocol(AnyProtocol::buffered(self.fresh()));
        }
    }
}

/// A client protocol's hooks: on the pause board (its id in `id`), small
/// write water marks now and then, and other connections paused from its
/// `resume_writing` (in the turn that reaped its send).
fn client_hooks(board: &Rc<Board>, tls: bool, id: &Rc<Cell<Option<usize>>>) -> Hooks {
    let (b1, b2, id1, id2) = (board.clone(), board.clone(), id.clone(), id.clone());
    Hooks {
        made: Some(Box::new(move |t: &Transport, ()| {
            id1.set(Some(b1.add(t, tls)));
            b1.maybe_small_water_marks(t);
        })),
        resume_writing: Some(Box::new(move |_t: &Transport, ()| {
            b2.pause_others(id2.get());
        })),
        ..Hooks::default()
    }
}

/// One client: its payload, where STARTTLS happens, and what it got back.
struct Client {
    raw: Transport,
    payload: Vec<u8>,
    starttls_at: Option<usize>,
    tls: Rc<RefCell<Option<Transport>>>,
    echo: Rc<RefCell<Rec>>,
    side: SharedSide,
}

fn run_workload(seed: u64) -> ((u32, u32, u32), proactor::DriverStats) {
    let lp = crash_fast(EventLoop::builder().driver(DriverKind::Sim).sim_seed(seed))
        .build()
        .unwrap();
    let h = lp.handle();
    let stats_of = h.clone();
    let rng: SharedRng = Rc::new(RefCell::new(SmallRng::seed_from_u64(seed ^ 0xb0ff)));
    // Pauses from timers, a task and other connections, besides the
    // server's own in `buffer_updated` and the clients' below.
    let board = Board::new(&h, &rng);
    let totals = lp
        .run_until_complete(async move {
            let sides: Rc<RefCell<Vec<SharedSide>>> = Rc::default();
            let plan: Rc<RefCell<Vec<Option<usize>>>> = Rc::default();
            let (hs, rs, ss, ps) = (h.clone(), rng.clone(), sides.clone(), plan.clone());
            let bs = board.clone();
            let server = h
                .create_server(localhost(), move || {
                    let i = ss.borrow().len();
                    let starttls_at = ps.borrow()[i];
                    let side: SharedSide = Rc::default();
                    ss.borrow_mut().push(side.clone());
                    AnyProtocol::buffered(Sweeper {
                        h: hs.clone(),
                        rng: rs.clone(),
                        side,
                        transport: None,
                        buf: Vec::new(),
                        last_hint: 0,
                        consumed: Rc::default(),
                        starttls_at,
                        board: bs.clone(),
                        id: Rc::default(),
                    })
                })
                .unwrap();
            board.start_timers();
            board.start_task();
            let n = rng.borrow_mut().random_range(2..=4);
            let mut clients = Vec::new();
            for i in 0..n {
                let (len, starttls_at) = {
                    let mut r = rng.borrow_mut();
                    let len = r.random_range(1..150_000usize);
                    let tls = r
                        .random_bool(0.4)
                        .then(|| r.random_range(1..=len.min(3000)));
                    (len, tls)
                };
                plan.borrow_mut().push(starttls_at);
                let payload = pattern(i + 1, 0, len);
                let raw_id: Rc<Cell<Option<usize>>> = Rc::default();
                let (cp, echo) = Recorder::with_hooks(client_hooks(&board, false, &raw_id));
                let raw = h.create_connection(server.local_addr(), cp).await.unwrap();
                // One connection at a time, so accept order matches the plan.
                wait_until(&h, Duration::from_secs(10), "accepted", || {
                    sides.borrow().len() == i as usize + 1
                })
                .await;
                let side = sides.borrow()[i as usize].clone();
                let plain_len = starttls_at.unwrap_or(len);
                let mut off = 0;
                while off < plain_len {
                    let step = rng
                        .borrow_mut()
                        .random_range(1..20_000)
                        .min(plain_len - off);
                    raw.write(&payload[off..off + step]);
                    off += step;
                }
                let tls: Rc<RefCell<Option<Transport>>> = Rc::default();
                if starttls_at.is_some() {
                    // Pipelined: the ClientHello follows the plaintext at once.
                    let (tp, tls_echo) =
                        Recorder::with_hooks(client_hooks(&board, true, &Rc::default()));
                    if let Some(id) = raw_id.get() {
                        board.remove(id); // TLS runs the raw transport now
                    }
                    let options = tls_support::client_options().call_connection_made(true);
                    let fut = h.start_tls(&raw, tp, options);
                    let (t2, rest) = (tls.clone(), payload[plain_len..].to_vec());
                    h.spawn(async move {
                        let t = fut.await.expect("client start_tls");
                        t.write(&rest);
                        *t2.borrow_mut() = Some(t);
                    });
                    clients.push(Client {
                        raw,
                        payload,
                        starttls_at,
                        tls,
                        echo: tls_echo,
                        side,
                    });
                } else {
                    clients.push(Client {
                        raw,
                        payload,
                        starttls_at,
                        tls,
                        echo,
                        side,
                    });
                }
            }
            // Client-side pause/resume storms; close once the echo is complete.
            let mut turns = 0u32;
            loop {
                let mut done = true;
                for c in &clients {
                    let expected = c.payload.len() - c.starttls_at.unwrap_or(0);
                    let t = match c.starttls_at {
                        Some(_) => c.tls.borrow().clone(),
                        None => Some(c.raw.clone()),
                    };
                    let Some(t) = t else {
                        done = false;
                        continue;
                    };
                    if c.echo.borrow().data.len() < expected {
                        done = false;
                        let mut r = rng.borrow_mut();
                        if r.random_bool(0.2) {
                            if t.is_reading() {
                                t.pause_reading();
                            } else {
                                t.resume_reading();
                            }
                        }
                    } else {
                        t.resume_reading();
                    }
                }
                if done {
                    break;
                }
                turns += 1;
                assert!(turns < 100_000, "workload stalled");
                let d = Duration::from_micros(rng.borrow_mut().random_range(50..1500));
                sleep(&h, d).await;
            }
            let mut totals = (0, 0, 0);
            for (i, c) in clients.iter().enumerate() {
                let side = c.side.borrow();
                assert!(
                    side.violations.is_empty(),
                    "conn {i}: {:?}",
                    side.violations
                );
                assert!(
                    side.data == c.payload,
                    "conn {i}: the server got {} of {} bytes, in order, once? starttls at {:?}",
                    side.data.len(),
                    c.payload.len(),
                    c.starttls_at
                );
                let expected = &c.payload[c.starttls_at.unwrap_or(0)..];
                assert!(c.echo.borrow().data == expected, "conn {i}: echo exact");
                c.echo.borrow().assert_ok();
                totals.0 += side.pauses;
                totals.1 += side.switches;
                totals.2 += u32::from(side.upgraded && side.tail_at_upgrade > 0);
                match &*c.tls.borrow() {
                    Some(t) => t.close(),
                    None => c.raw.close(),
                }
            }
            board.stop();
            server.close();
            wait_until(&h, Duration::from_secs(60), "server sides lost", || {
                sides.borrow().iter().all(|s| s.borrow().lost >= 1)
            })
            .await;
            totals
        })
        .unwrap();
    (totals, stats_of.driver_stats())
}

#[test]
fn sweep_buffered_protocols_pause_switch_and_start_tls_mid_chunk() {
    let seeds = sim_seeds(300);
    let started = Instant::now();
    let mut totals = (0, 0, 0);
    let mut window = WindowCheck::new("buffered sweep");
    for &seed in &seeds {
        let r = std::panic::catch_unwind(|| run_workload(seed));
        match r {
            Ok((t, stats)) => {
                window.add(seed, &stats);
                totals.0 += t.0;
                totals.1 += t.1;
                totals.2 += t.2;
            }
            Err(p) => {
                eprintln!(
                    "buffered sweep failed on seed {seed}; replay with:\n  PROACTOR_SIM_SEED={seed} cargo test --release --test sim_sweep_buffered"
                );
                std::panic::resume_unwind(p)
            }
        }
    }
    println!(
        "buffered sweep: {} seeds in {:.1}s: {} pauses, {} protocol switches, {} STARTTLS upgrades with the ClientHello in the same chunk, 0 bytes lost",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        totals.0,
        totals.1,
        totals.2
    );
    if seeds.len() >= 100 {
        assert!(
            totals.0 > 0 && totals.1 > 0 && totals.2 > 0,
            "the sweep pauses, switches and upgrades"
        );
    }
    window.report();
    window.assert_every_ten_seeds();
}
