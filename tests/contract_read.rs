//! R1–R3: every byte delivered exactly once, in order, across pause/resume.
//! Every test runs on uring, poll and sim (several seeds).

mod util;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proactor::{Handle, Server, Transport};
use util::*;

type Recs = Rc<RefCell<Vec<Rc<RefCell<Rec>>>>>;

/// A server whose connections record into `recs`, each with hooks from `hooks`.
fn recording_server(h: &Handle, hooks: impl Fn() -> Hooks + 'static) -> (Server, Recs) {
    let recs: Recs = Rc::default();
    let r = recs.clone();
    let server = h
        .create_server(localhost(), move || {
            let (p, rec) = Recorder::with_hooks(hooks());
            r.borrow_mut().push(rec);
            p
        })
        .expect("listen");
    (server, recs)
}

async fn first_connection(h: &Handle, recs: &Recs) -> (Rc<RefCell<Rec>>, Transport) {
    wait_until(h, Duration::from_secs(10), "server connection_made", || {
        recs.borrow().first().is_some_and(|r| r.borrow().made == 1)
    })
    .await;
    let rec = recs.borrow()[0].clone();
    let t = rec.borrow().transport.clone().unwrap();
    (rec, t)
}

/// R2: bytes already on the wire when `pause_reading()` is called, with the
/// receive in flight, arrive after resume — exactly once, in order. Pausing
/// and resuming while that receive is in flight neither cancels it nor
/// issues a second one: one receive per transport at most (bpo-26819: a
/// resume that started another read).
#[test]
fn r2_pause_with_receive_in_flight_delivers_bytes_after_resume() {
    on_every_driver("r2_pause_with_receive_in_flight", |lp| {
        let h = lp.handle();
        lp.run_until_complete(async move {
            let (server, recs) = recording_server(&h, Hooks::default);
            let (cp, _crec) = Recorder::new();
            let client = h.create_connection(server.local_addr(), cp).await.unwrap();
            let (srec, st) = first_connection(&h, &recs).await;
            // Let the server's receive reach the kernel, then pause with it in flight.
            sleep(&h, Duration::from_millis(5)).await;
            let idle = h.table_sizes().ops_in_flight;
            for _ in 0..3 {
                st.pause_reading();
                sleep(&h, Duration::from_millis(1)).await;
                st.resume_reading();
                sleep(&h, Duration::from_millis(1)).await;
            }
            assert_eq!(
                h.table_sizes().ops_in_flight,
                idle,
                "R2: pause/resume with a receive in flight issue no other op"
            );
            st.pause_reading();
            let payload = pattern(1, 0, 200_000);
            client.write(&payload);
            sleep(&h, Duration::from_millis(100)).await;
            assert!(
                srec.borrow().data.is_empty(),
                "R3: nothing delivered while paused"
            );
            let held = st.ledger().held;
            assert!(
                held > 0,
                "the in-flight receive completed while paused and was held (R2)"
            );
            st.resume_reading();
            wait_until(
                &h,
                Duration::from_secs(10),
                "all bytes after resume",
                || srec.borrow().data.len() >= payload.len(),
            )
            .await;
            assert!(srec.borrow().data == payload, "R1: bytes exact, in order");
            srec.borrow().assert_ok();
            client.close();
            wait_until(&h, Duration::from_secs(10), "server sees close", || {
                srec.borrow().lost == 1
            })
            .await;
            srec.borrow().assert_closed_cleanly();
            let ledger = st.ledger();
            assert!(ledger.balanced() && ledger.discarded == 0, "{ledger:?}");
            server.close();
        })
        .unwrap();
    });
}

/// Sends `total` patterned bytes from a client to a server whose reading is
/// paused and resumed by `storm`, and checks every byte.
fn storm(
    test: &str,
    total: usize,
    hooks: fn(&Handle) -> Hooks,
    driver_storm: fn(&Handle, Transport, Recs),
) {
    on_every_driver(test, |lp| {
        let h = lp.handle();
        lp.run_until_complete(async move {
            let hh = h.clone();
            let (server, recs) = recording_server(&h, move || hooks(&hh));
            let (cp, _crec) = Recorder::new();
            let client = h.create_connection(server.local_addr(), cp).await.unwrap();
            // The client writes at once: bytes may be on the wire before the
            // server's connection_made, and must wait for it (R4).
            let payload = pattern(7, 0, total);
            for chunk in payload.chunks(7919) {
                client.write(chunk);
            }
            client.close();
            let (srec, st) = first_connection(&h, &recs).await;
            driver_storm(&h, st.clone(), recs.clone());
            wait_until(
                &h,
                Duration::from_secs(30),
                "all bytes through the storm",
                || {
                    let r = srec.borrow();
                    r.data.len() >= payload.len() || r.lost > 0
                },
            )
            .await;
            st.resume_reading();
            wait_until(
                &h,
                Duration::from_secs(30),
                "server connection_lost",
                || srec.borrow().lost == 1,
            )
            .await;
            let r = srec.borrow();
            r.assert_ok();
            assert_eq!(
                r.data.len(),
                payload.len(),
                "R1: nothing lost: {}",
                r.summary()
            );
            assert!(r.data == payload, "R1: bytes in order, none duplicated");
            let ledger = st.ledger();
            assert!(ledger.balanced(), "{ledger:?}");
            server.close();
        })
        .unwrap();
    });
}

fn no_hooks(_: &Handle) -> Hooks {
    Hooks::default()
}

fn nothing(_: &Handle, _: Transport, _: Recs) {}

/// R1/R3: pause inside `data_received`, resume from the next callback.
#[test]
fn r1_pause_resume_storm_from_data_received() {
    fn hooks(h: &Handle) -> Hooks {
        let h = h.clone();
        Hooks {
            data_len: Some(Box::new(move |t: &Transport, _n: usize| {
                t.pause_reading();
                let t = t.clone();
                h.call_soon(move || t.resume_reading());
            })),
            ..Hooks::default()
        }
    }
    storm(
        "r1_pause_resume_storm_from_data_received",
        2_000_000,
        hooks,
        nothing,
    );
}

/// R1/R3: a timer toggles reading every millisecond.
#[test]
fn r1_pause_resume_storm_from_timers() {
    fn toggle(h: &Handle, t: Transport, recs: Recs) {
        fn tick(h: Handle, t: Transport, n: u32) {
            if t.is_closing() {
                return;
            }
            if n % 2 == 0 {
                t.pause_reading();
            } else {
                t.resume_reading();
            }
            let h2 = h.clone();
            h.call_later(Duration::from_millis(1), move || tick(h2, t, n + 1));
        }
        let _ = recs;
        tick(h.clone(), t, 0);
    }
    storm(
        "r1_pause_resume_storm_from_timers",
        2_000_000,
        no_hooks,
        toggle,
    );
}

/// R1/R3: another connection's callbacks pause and resume this one.
#[test]
fn r1_pause_resume_from_another_connections_callbacks() {
    on_every_driver("r1_pause_resume_from_another_connection", |lp| {
        let h = lp.handle();
        lp.run_until_complete(async move {
            let (server, recs) = recording_server(&h, Hooks::default);
            let (pa, _ra) = Recorder::new();
            let a = h.create_connection(server.local_addr(), pa).await.unwrap();
            let (arec, at) = first_connection(&h, &recs).await;
            // Connection B's server side toggles A's reading on each chunk.
            let target = at.clone();
            let toggles = Rc::new(std::cell::Cell::new(0u32));
            let tg = toggles.clone();
            let (pb, _rb) = Recorder::new();
            let b = h.create_connection(server.local_addr(), pb).await.unwrap();
            wait_until(&h, Duration::from_secs(10), "B accepted", || {
                recs.borrow().len() == 2 && recs.borrow()[1].borrow().made == 1
            })
            .await;
            let bt = recs.borrow()[1].borrow().transport.clone();
            let _ = bt;
            // Install the toggling hook on B's server protocol via set_protocol.
            let brec = recs.borrow()[1].clone();
            let bserver = brec.borrow().transport.clone().unwrap();
            let hooks = Hooks {
                data_len: Some(Box::new(move |_t: &Transport, _n: usize| {
                    tg.set(tg.get() + 1);
                    if target.is_reading() {
                        target.pause_reading();
                    } else {
                        target.resume_reading();
                    }
                })),
                ..Hooks::default()
            };
            bserver.set_protocol(Recorder::continuing(brec.clone(), bserver.clone(), hooks));
            let pa_bytes = pattern(3, 0, 1_000_000);
            let pb_bytes = pattern(4, 0, 1_000_000);
            for (ca, cb) in pa_bytes.chunks(4096).zip(pb_bytes.chunks(4096)) {
                a.write(ca);
                b.write(cb);
            }
            b.close();
            wait_until(&h, Duration::from_secs(30), "B done", || {
                brec.borrow().lost == 1
            })
            .await;
            at.resume_reading();
            a.close();
            wait_until(&h, Duration::from_secs(30), "A done", || {
                arec.borrow().lost == 1
            })
            .await;
            assert!(toggles.get() > 0);
            for (rec, bytes) in [(&arec, &pa_bytes), (&brec, &pb_bytes)] {
                let r = rec.borrow();
                r.assert_closed_cleanly();
                assert!(r.data == *bytes, "R1 exact: {}", r.summary());
            }
            server.close();
        })
        .unwrap();
    });
}

/// R3: while paused, an EOF that arrives is held too; it comes after the
/// data. A reset that arrives while paused (the receive in flight fails) is
/// not an EOF: `connection_lost` gets the error, `eof_received` is never
/// called — a cut connection never passes for a complete one (no hidden
/// truncation, as T4 asks of TLS).
#[test]
fn r3_eof_is_held_while_paused() {
    for reset in [false, true] {
        on_every_driver("r3_eof_is_held_while_paused", |lp| {
            let h = lp.handle();
            lp.run_until_complete(async move {
                let (server, recs) = recording_server(&h, Hooks::default);
                let (cp, _crec) = Recorder::new();
                let options = proactor::SocketOptions {
                    // Closing sends a reset (RST), not a FIN.
                    linger: reset.then_some(Duration::ZERO),
                    ..proactor::SocketOptions::default()
                };
                let client = h
                    .create_connection_with(server.local_addr(), cp.into(), options)
                    .await
                    .unwrap();
                let (srec, st) = first_connection(&h, &recs).await;
                // The server's receive is in flight (R2: pausing keeps it).
                st.pause_reading();
                if reset {
                    client.abort();
                } else {
                    client.write(b"hello");
                    client.write_eof().unwrap();
                }
                sleep(&h, Duration::from_millis(50)).await;
                assert_eq!(srec.borrow().eof, 0);
                assert!(srec.borrow().data.is_empty());
                st.resume_reading();
                wait_until(&h, Duration::from_secs(10), "connection_lost", || {
                    srec.borrow().lost == 1
                })
                .await;
                let r = srec.borrow();
                if reset {
                    r.assert_ok();
                    assert!(
                        r.eof == 0 && r.lost_error.is_some(),
                        "a reset while paused is an error, not a clean EOF: {}",
                        r.summary()
                    );
                } else {
                    r.assert_closed_cleanly();
                    assert_eq!(r.data, b"hello");
                    assert_eq!(r.eof, 1);
                    client.close();
                }
                server.close();
            })
            .unwrap();
        });
    }
}
