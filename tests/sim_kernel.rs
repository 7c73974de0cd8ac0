//! The simulator's kernel behaviours as the transports and the loop meet
//! them (the driver-level tests are in `src/driver/sim/tests_kernel.rs`):
//!
//! - an abort whose cancel lands mid-send ("aborted after N bytes", IOCP's
//!   shape, reported as the partial success `Ok(N)`) loses none of the N
//!   bytes and counts them as sent: the peer gets exactly those (R1, W3);
//! - a TCP write to a peer that closed is accepted and lost, and the next
//!   one fails the connection; on a Unix socket the first fails (W1);
//! - timers never fire early when waits are interrupted (`EINTR`) or come
//!   back empty (L1);
//! - a loop with nothing that can ever progress (no op can complete, only
//!   "never" timers) fails with the driver's trace instead of blocking.

mod util;

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::time::Duration;

use proactor::{Address, DriverKind, EventLoop, RunError, SimConfig, Transport};
use util::*;

fn sim(config: SimConfig) -> EventLoop {
    crash_fast(
        EventLoop::builder()
            .driver(DriverKind::Sim)
            .sim_config(config),
    )
    .build()
    .unwrap()
}

/// The server reads everything; from its `data_received` (its read just
/// made room) it aborts the client, whose send may then be in flight with
/// room: the cancel lands mid-transfer. The server then sees EOF after
/// exactly the bytes the client's ledger counts as sent.
#[test]
fn an_abort_landing_mid_send_loses_none_of_the_bytes_it_moved() {
    let mut partial = 0;
    for seed in sim_seeds(60) {
        let lp = sim(SimConfig {
            cancel_race_prob: 0.0,
            partial_cancel_prob: 1.0,
            ..SimConfig::with_seed(seed)
        });
        let h = lp.handle();
        let client: Rc<RefCell<Option<Transport>>> = Rc::default();
        let (c2, calls) = (client.clone(), Rc::new(Cell::new(0u32)));
        let (server_side, srec) = Recorder::with_hooks(Hooks {
            data: Some(Box::new(move |_t: &Transport, _d: &[u8]| {
                calls.set(calls.get() + 1);
                if calls.get() == 3 {
                    if let Some(c) = c2.borrow().as_ref() {
                        c.abort();
                    }
                }
            })),
            ..Hooks::default()
        });
        let slot = RefCell::new(Some(server_side));
        let payload = pattern(seed + 1, 0, 2_000_000);
        let (p2, h2) = (payload.clone(), h.clone());
        let sent = lp
            .run_until_complete(async move {
                let server = h2
                    .create_server(localhost(), move || slot.borrow_mut().take().unwrap())
                    .unwrap();
                let (cp, crec) = Recorder::new();
                let t = h2.create_connection(server.local_addr(), cp).await.unwrap();
                t.write(&p2);
                *client.borrow_mut() = Some(t.clone());
                wait_until(&h2, Duration::from_secs(60), "both ends lost", || {
                    crec.borrow().lost == 1 && srec.borrow().lost == 1
                })
                .await;
                let s = srec.borrow();
                s.assert_ok();
                crec.borrow().assert_ok();
                let sent = t.ledger().sent as usize;
                assert!(s.eof == 1, "seed {seed}: {}", s.summary());
                assert!(
                    s.data == p2[..sent],
                    "seed {seed}: the server got {} bytes, the client sent {sent}",
                    s.data.len()
                );
                server.close();
                sent
            })
            .unwrap();
        assert!(sent < payload.len(), "seed {seed}: the abort came too late");
        partial += h.sim_stats().unwrap().partial_cancels;
    }
    assert!(partial > 0, "no cancel landed mid-send");
}

/// What a client that writes twice to a server that closed at once sees.
fn write_to_closed_peer(addr: Address) -> (Option<io::ErrorKind>, u64) {
    let lp = sim(SimConfig::calm(1));
    let h = lp.handle();
    lp.run_until_complete(async move {
        let server = h
            .create_server_with(
                addr,
                || {
                    let (p, _rec) = Recorder::with_hooks(Hooks {
                        made: Some(Box::new(|t: &Transport, ()| t.close())),
                        ..Hooks::default()
                    });
                    p.into()
                },
                proactor::ServerOptions::default(),
            )
            .unwrap();
        let (cp, crec) = Recorder::with_hooks(Hooks {
            eof: Some(Box::new(|_t: &Transport| true)), // keep writing
            ..Hooks::default()
        });
        let t = h.create_connection(server.local_addr(), cp).await.unwrap();
        wait_until(&h, Duration::from_secs(1), "EOF", || crec.borrow().eof == 1).await;
        t.write(b"first");
        sleep(&h, Duration::from_millis(1)).await;
        t.write(b"second");
        wait_until(&h, Duration::from_secs(1), "lost", || {
            crec.borrow().lost == 1
        })
        .await;
        crec.borrow().assert_ok();
        server.close();
        let kind = crec.borrow().lost_kind;
        (kind, t.ledger().sent)
    })
    .unwrap()
}

/// TCP: the first write after the peer closed is accepted (its bytes are
/// lost: the peer's kernel answers with a reset) and the next fails the
/// connection with `EPIPE`; Unix: the first write fails at once.
#[test]
fn a_write_to_a_closed_peer_fails_the_connection_tcp_after_one_unix_at_once() {
    let (kind, sent) = write_to_closed_peer(localhost());
    assert_eq!(kind, Some(io::ErrorKind::BrokenPipe));
    assert_eq!(sent, 5, "tcp: the first write went out");
    let unix = Address::Unix("/sim-kernel/closed-peer.sock".into());
    let (kind, sent) = write_to_closed_peer(unix);
    assert_eq!(kind, Some(io::ErrorKind::BrokenPipe));
    assert_eq!(sent, 0, "unix: nothing went out");
}

/// L1 with every wait that could block interrupted by a signal and every
/// zero-timeout wait empty (as often as the simulator allows): timers fire
/// in order and never early.
#[test]
fn timers_never_fire_early_when_waits_are_interrupted_or_empty() {
    for seed in 0..8 {
        let lp = sim(SimConfig {
            eintr_prob: 1.0,
            empty_poll_prob: 1.0,
            ..SimConfig::with_seed(seed)
        });
        let h = lp.handle();
        let fired: Rc<RefCell<Vec<(u32, Duration)>>> = Rc::default();
        let start = h.now();
        for (i, ms) in [5u64, 1, 30, 2, 2, 17].into_iter().enumerate() {
            let (f, h2) = (fired.clone(), h.clone());
            h.call_later(Duration::from_millis(ms), move || {
                f.borrow_mut().push((i as u32, h2.now() - start));
            });
        }
        let h2 = h.clone();
        h.call_later(Duration::from_millis(40), move || h2.stop());
        lp.run_forever().unwrap();
        let fired = fired.borrow();
        assert_eq!(fired.len(), 6);
        for &(i, at) in fired.iter() {
            let due = Duration::from_millis([5, 1, 30, 2, 2, 17][i as usize]);
            assert!(
                at >= due,
                "seed {seed}: timer {i} fired at {at:?}, due {due:?}"
            );
        }
        let s = h.sim_stats().unwrap();
        assert!(s.interrupted_waits > 0, "{s:?}");
    }
}

fn stalled(e: RunError) -> String {
    let RunError::Io(e) = e else {
        panic!("not a driver error: {e}")
    };
    let msg = e.to_string();
    assert!(msg.contains("sim driver stalled"), "{msg}");
    assert!(
        msg.contains("sim seed=3"),
        "the trace is in the error: {msg}"
    );
    msg
}

/// Nothing can ever progress: the loop fails with the trace (after the
/// stall timeout of real time, for a wake from another thread that does
/// not come) instead of blocking for ever. A "never" timer
/// (`Duration::MAX`) is not progress; an ordinary one is.
#[test]
fn a_loop_that_can_never_progress_fails_with_its_trace() {
    let config = || SimConfig {
        stall_timeout: Duration::from_millis(100),
        eintr_prob: 0.0,
        ..SimConfig::with_seed(3)
    };
    // A task waiting for data on a connection whose peer never writes.
    let lp = sim(config());
    let h = lp.handle();
    let err = lp
        .run_until_complete(async move {
            let server = h.create_server(localhost(), || Recorder::new().0).unwrap();
            let (cp, crec) = Recorder::new();
            let _t = h.create_connection(server.local_addr(), cp).await.unwrap();
            std::future::poll_fn(|_| {
                if crec.borrow().data.is_empty() {
                    std::task::Poll::Pending
                } else {
                    std::task::Poll::Ready(())
                }
            })
            .await;
        })
        .unwrap_err();
    let msg = stalled(err);
    assert!(msg.contains("no timer"), "{msg}");
    // Only a timer that never fires.
    let lp = sim(config());
    let h = lp.handle();
    h.call_later(Duration::MAX, || panic!("a never timer fired"));
    let msg = stalled(RunError::Io(lp.run_forever().unwrap_err()));
    assert!(msg.contains("only timers that never fire"), "{msg}");
    // An ordinary far timer (a day) is progress: the clock jumps there.
    let lp = sim(config());
    let h = lp.handle();
    let (h2, start) = (h.clone(), h.now());
    h.call_later(Duration::from_secs(86_400), move || h2.stop());
    lp.run_forever().unwrap();
    assert!(h.now() - start >= Duration::from_secs(86_400));
}
