//! L3: clients that reset before the server accepts them are one
//! connection's failure; they never make the server stop accepting others.
//!
//! A storm of clients connects and resets at once (`SO_LINGER` 0) while a
//! well-behaved client makes one new connection per round trip. On `uring`
//! and `poll` the storm is four threads on real sockets, which keep the
//! server's accept queue busy but never full (a full queue drops the
//! well-behaved client's SYN, whatever the server does); on `sim` it is four
//! tasks on the loop, and the simulator reports a connection reset before
//! its accept as `ECONNABORTED` (BSD's behaviour,
//! `SimConfig::reset_accept_abort_prob`), so the server's handling of
//! per-connection accept errors is exercised over the seeds.
//!
//! The driver-level half (a peer that reset before its accept is accepted
//! with its address) is a unit test of the private drivers:
//! `src/driver/tests_accept.rs`. A burst of connections larger than the
//! loop's completion queue is accepted whole (on `uring` with multishot
//! accept, the kernel ends the server's multishot accept there, and the
//! server arms it again).

mod util;

use std::cell::{Cell, RefCell};
use std::net::TcpStream;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proactor::{
    Address, BaseProtocol, DriverKind, EventLoop, Handle, Protocol, SimConfig, SocketOptions,
    Transport,
};
use util::*;

/// Threads (kernel drivers) or tasks (sim) connecting and resetting.
const STORM: usize = 4;
/// Round trips of the well-behaved client, each on a new connection.
const ROUNDS: usize = 40;
/// Worst round trip allowed on the kernel drivers (wall clock, on a loaded
/// 2-core machine). The accept back-off starts at 10 ms and doubles to 1 s:
/// backing off on these errors makes round trips of seconds.
const KERNEL_LIMIT: Duration = Duration::from_millis(500);
/// Worst round trip allowed on `sim` (virtual time; one back-off is 10 ms).
const SIM_LIMIT: Duration = Duration::from_millis(5);
/// Sim: pause of each storm task between two resets (the sim takes 5 µs a step).
const STORM_PACE: Duration = Duration::from_micros(40);
/// A round that takes longer than this fails the test at once.
const ROUND_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Echo {
    t: Option<Transport>,
}
impl BaseProtocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }
}
impl Protocol for Echo {
    fn data_received(&mut self, data: &[u8]) {
        if let Some(t) = &self.t {
            t.write(data);
        }
    }
}

/// Counts the bytes echoed back to the well-behaved client.
struct Pinger {
    got: Rc<Cell<usize>>,
}
impl BaseProtocol for Pinger {}
impl Protocol for Pinger {
    fn data_received(&mut self, data: &[u8]) {
        self.got.set(self.got.get() + data.len());
    }
}

/// A client that only resets.
struct Silent;
impl BaseProtocol for Silent {}
impl Protocol for Silent {
    fn data_received(&mut self, _: &[u8]) {}
}

fn reset_options() -> SocketOptions {
    SocketOptions {
        linger: Some(Duration::ZERO),
        ..SocketOptions::default()
    }
}

/// Storm connections the kernel drivers' storm leaves unaccepted at most:
/// a quarter of the listen backlog (1,024), so the accept queue always holds
/// reset connections but never fills. A full queue drops SYNs, the
/// well-behaved client's too, and its kernel resends one a second later
/// whatever the server does: the storm threads outrun a server thread that
/// is off the CPU for a few milliseconds on a loaded 2-core machine.
const STORM_UNACCEPTED_MAX: u64 = 256;

/// Kernel drivers: threads that connect and reset as fast as they can, as
/// long as at most [`STORM_UNACCEPTED_MAX`] of their connections wait for
/// the server's accept (`accepted` counts the connections it started).
fn storm_threads(
    addr: Address,
    stop: Arc<AtomicBool>,
    resets: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<()>> {
    let addr = addr.as_inet().expect("inet listener");
    (0..STORM)
        .map(|_| {
            let stop = stop.clone();
            let resets = resets.clone();
            let accepted = accepted.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let waiting = resets
                        .load(Ordering::Relaxed)
                        .saturating_sub(accepted.load(Ordering::Relaxed));
                    if waiting >= STORM_UNACCEPTED_MAX {
                        std::thread::sleep(Duration::from_micros(50));
                        continue;
                    }
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                        Ok(s) => {
                            let s = socket2::Socket::from(s);
                            s.set_linger(Some(Duration::ZERO)).unwrap();
                            drop(s); // RST
                            resets.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("a storm connect failed: {e}"),
                    }
                }
            })
        })
        .collect()
}

/// Sim: tasks on the loop that connect and reset.
fn storm_tasks(h: &Handle, addr: Address, stop: Rc<Cell<bool>>, resets: Rc<Cell<u64>>) {
    for _ in 0..STORM {
        let h2 = h.clone();
        let addr = addr.clone();
        let stop = stop.clone();
        let resets = resets.clone();
        h.spawn(async move {
            while !stop.get() {
                // A refused connect (full backlog) only paces the storm.
                if let Ok(t) = h2
                    .create_connection_with(addr.clone(), Silent.into(), reset_options())
                    .await
                {
                    t.abort(); // RST
                    resets.set(resets.get() + 1);
                }
                // Pace the storm below one connection per step (the server
                // accepts one per loop turn): a full backlog refuses the
                // well-behaved client too, whatever the server does.
                sleep(&h2, STORM_PACE).await;
            }
        });
    }
}

/// One round trip of the well-behaved client on a new connection.
async fn round_trip(h: &Handle, addr: &Address) -> Duration {
    let start = h.now();
    let got = Rc::new(Cell::new(0));
    let deadline = start + ROUND_TIMEOUT;
    let t = loop {
        match h
            .create_connection(addr.clone(), Pinger { got: got.clone() })
            .await
        {
            Ok(t) => break t,
            // A backlog filled while the server did not accept: try again,
            // as a kernel's SYN retransmission would (the time counts).
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                assert!(
                    h.now() < deadline,
                    "the well-behaved client was refused for {ROUND_TIMEOUT:?}"
                );
                sleep(h, Duration::from_millis(1)).await;
            }
            Err(e) => panic!("the well-behaved client cannot connect: {e}"),
        }
    };
    t.write(b"ping");
    while got.get() < 4 {
        assert!(
            h.now() < deadline,
            "the well-behaved client waited more than {ROUND_TIMEOUT:?} for its echo"
        );
        sleep(h, Duration::from_micros(100)).await;
    }
    let rtt = h.now().duration_since(start);
    t.close();
    rtt
}

fn reset_storm(lp: &EventLoop) {
    let h = lp.handle();
    let kind = h.driver_kind();
    let worst: Rc<RefCell<Vec<Duration>>> = Rc::default();
    let w = worst.clone();
    let (resets, accept_errors) = lp
        .run_until_complete(async move {
            // Connections the server started, storm and well-behaved ones:
            // the storm threads stay below the backlog with it.
            let accepted = Arc::new(AtomicU64::new(0));
            let counted = accepted.clone();
            let server = h
                .create_server(localhost(), move || {
                    counted.fetch_add(1, Ordering::Relaxed);
                    Echo::default()
                })
                .unwrap();
            let addr = server.local_addr();
            let stop_threads = Arc::new(AtomicBool::new(false));
            let thread_resets = Arc::new(AtomicU64::new(0));
            let stop_tasks = Rc::new(Cell::new(false));
            let task_resets = Rc::new(Cell::new(0u64));
            let threads = if kind == DriverKind::Sim {
                storm_tasks(&h, addr.clone(), stop_tasks.clone(), task_resets.clone());
                Vec::new()
            } else {
                storm_threads(
                    addr.clone(),
                    stop_threads.clone(),
                    thread_resets.clone(),
                    accepted,
                )
            };
            let resets = || thread_resets.load(Ordering::Relaxed) + task_resets.get();
            wait_until(&h, Duration::from_secs(10), "the storm under way", || {
                resets() >= 50
            })
            .await;
            let resets_before = resets();
            for _ in 0..ROUNDS {
                let rtt = round_trip(&h, &addr).await;
                w.borrow_mut().push(rtt);
            }
            assert!(
                resets() > resets_before,
                "the storm went on while the well-behaved client was measured"
            );
            stop_threads.store(true, Ordering::Relaxed);
            stop_tasks.set(true);
            for t in threads {
                t.join().unwrap();
            }
            assert!(!server.is_closed(), "L3: the server keeps serving");
            let accept_errors = server.accept_errors();
            server.close();
            server.abort_clients();
            (resets(), accept_errors)
        })
        .unwrap();
    let rtts = worst.borrow();
    let max = rtts.iter().max().copied().unwrap_or_default();
    let mut sorted = rtts.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    eprintln!(
        "reset storm on {kind}: {resets} resets, {accept_errors} accept errors, \
         round trip median {median:?}, worst {max:?}"
    );
    if kind == DriverKind::Sim {
        // Every reset before accept is reported as ECONNABORTED here
        // (reset_accept_abort_prob = 1): the storm reached the accept path.
        assert!(
            accept_errors > 0,
            "sim: {resets} resets, none reached the accept path as ECONNABORTED"
        );
    }
    let limit = if kind == DriverKind::Sim {
        SIM_LIMIT
    } else {
        KERNEL_LIMIT
    };
    assert!(
        max < limit,
        "L3: a reset storm stalled the server on {kind}: worst round trip {max:?} (limit {limit:?})"
    );
}

#[test]
fn l3_reset_storm_never_stalls_accept() {
    on_every_driver_with(
        "l3_reset_storm_never_stalls_accept",
        |seed| SimConfig {
            reset_accept_abort_prob: 1.0,
            ..SimConfig::with_seed(seed)
        },
        |lp| reset_storm(&lp),
    );
}

/// Connections in one burst.
const BURST: usize = 300;

/// A burst of connections larger than the loop's completion queue (a ring
/// of 8 entries, 64 CQEs): on `uring` with multishot accept the kernel ends
/// the server's multishot accept when the queue overflows, and the server
/// must arm it again; every connection is accepted. The clients stay
/// connected until the count is checked.
fn burst_on(lp: &EventLoop) {
    let h = lp.handle();
    let accepted = lp
        .run_until_complete(async move {
            let server = h.create_server(localhost(), Echo::default).unwrap();
            let addr = server.local_addr().as_inet().unwrap();
            let clients = std::thread::spawn(move || {
                (0..BURST)
                    .map(|_| TcpStream::connect(addr).unwrap())
                    .collect::<Vec<_>>()
            });
            wait_until(
                &h,
                Duration::from_secs(20),
                "every burst connection accepted",
                || server.accepted() == BURST as u64,
            )
            .await;
            let clients = clients.join().unwrap();
            let accepted = server.accepted();
            server.close();
            server.abort_clients();
            drop(clients);
            accepted
        })
        .unwrap();
    assert_eq!(accepted, BURST as u64);
}

#[test]
fn l3_a_burst_beyond_the_completion_queue_is_accepted_whole() {
    for (kind, multishot) in [
        (DriverKind::Uring, true),
        (DriverKind::Uring, false),
        (DriverKind::Poll, false),
    ] {
        let wanted = std::env::var("PROACTOR_TEST_DRIVERS")
            .map_or(true, |v| v.split(',').any(|s| s.trim() == kind.name()));
        if !wanted {
            continue;
        }
        let built = EventLoop::builder()
            .driver(kind)
            .uring_entries(8)
            .uring_multishot_accept(multishot)
            .build();
        match built {
            Ok(lp) => burst_on(&lp),
            Err(e) => eprintln!("skipping {kind}: {e}"),
        }
    }
}

/// A multishot accept hands over the whole listen backlog in one kernel
/// call: the server starts at most 32 of those connections per loop turn
/// (the rest wait, in order), so one turn never spends itself starting
/// hundreds; past 512 waiting it holds the accept, and every connection
/// still starts; `close()` closes the ones not started yet. Before the
/// pacing, all 300 of a burst started in one turn.
#[test]
fn l3_a_multishot_accept_starts_connections_a_turn_at_a_time() {
    let wanted = std::env::var("PROACTOR_TEST_DRIVERS")
        .map_or(true, |v| v.split(',').any(|s| s.trim() == "uring"));
    if !wanted {
        return;
    }
    let lp = match EventLoop::builder()
        .driver(DriverKind::Uring)
        .uring_multishot_accept(true)
        .build()
    {
        Ok(lp) => lp,
        Err(e) => return eprintln!("skipping uring: {e}"),
    };
    let h = lp.handle();
    let server = h.create_server(localhost(), Echo::default).unwrap();
    let addr = server.local_addr().as_inet().unwrap();
    // More than the 512 the server lets wait: it holds the accept meanwhile
    // (the listen backlog, 1,024, keeps the rest) and arms it again.
    const FIRST: usize = 700;
    let clients: Vec<TcpStream> = (0..FIRST)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let mut per_turn = Vec::new();
    let mut turns = 0;
    while server.accepted() < FIRST as u64 {
        turns += 1;
        assert!(turns < 10_000, "accepted {} of {FIRST}", server.accepted());
        let before = server.accepted();
        turn(&h);
        per_turn.push(server.accepted() - before);
    }
    let most = per_turn.iter().copied().max().unwrap_or(0);
    if most == 1 {
        // One connection per turn: the kernel has no multishot accept.
        return eprintln!("skipping: no multishot accept on this kernel");
    }
    assert!(
        most <= 32,
        "{most} connections started in one turn: {per_turn:?}"
    );
    // A second burst, taken by the kernel and not started yet when the
    // server closes: those sockets are closed, not leaked or started.
    let late: Vec<TcpStream> = (0..BURST)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let started_before = server.accepted();
    while server.accepted() == started_before {
        turn(&h);
    }
    server.close();
    for _ in 0..10 {
        turn(&h);
    }
    let started = (server.accepted() - started_before) as usize;
    assert!(
        started < BURST,
        "every late connection started before close()"
    );
    // The server's FIN (or reset) reaches a closed one's client at once
    // on loopback; a started one stays open (would block).
    std::thread::sleep(Duration::from_millis(200));
    let mut ended = 0;
    for mut c in late {
        c.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        match std::io::Read::read(&mut c, &mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok(0) | Err(_) => ended += 1,
            Ok(_) => panic!("a late connection got data it never sent"),
        }
    }
    assert!(
        ended >= BURST - started,
        "{ended} late connections ended, {} were never started",
        BURST - started
    );
    server.abort_clients();
    drop(clients);
    lp.close().unwrap();
}

/// One loop turn that returns within a millisecond even with nothing to do.
fn turn(h: &Handle) {
    h.call_later(Duration::from_millis(1), || {});
    h.run_once().unwrap();
}
