//! R1–R3: every byte delivered exactly once, in order, across pause/resume.
//! Every test runs on uring, poll and sim (several seeds).

mod util;

use std::cell::{Cell, RefCell};
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
/// receive in flight, arrive after resume — exactly once, in order.
#[test]
fn r2_pause_with_receive_in_flight_delivers_bytes_after_resume() {
    on_every_driver("r2_pause_with_receive_in_flight", |lp| {
        let h = lp.handle();
        lp.run_until_complete(async move {
            let (server, recs) = recording_server(&h, Hooks::default);
            let (cp, _crec) = Recorder::new();
            let client = h.create_connection(server.local_addr(), cp).await.unwrap();
            let (srec, st) = first_connection(&h, &recs).await;
            // One loop turn: the server's first receive is submitted (it is
            // queued at connection_made and goes out with the turn's batch).
            next_turn(&h).await;
            // Pausing and resuming with the receive in flight issue no other
            // op (R2: one receive in flight, ever).
            let idle = h.table_sizes().ops_in_flight;
            for _ in 0..3 {
                st.pause_reading();
                next_turn(&h).await;
                st.resume_reading();
                next_turn(&h).await;
            }
            assert_eq!(
                h.table_sizes().ops_in_flight,
                idle,
                "R2: pause/resume with a receive in flight issue no other op"
            );
            st.pause_reading();
            let payload = pattern(1, 0, 200_000);
            client.write(&payload);
            wait_until(
                &h,
                Duration::from_secs(10),
                "the receive in flight completes while paused and is held (R2)",
                || st.ledger().held > 0,
            )
            .await;
            let held = st.ledger();
            assert!(
                srec.borrow().data.is_empty(),
                "R3: nothing delivered while paused"
            );
            assert_eq!(
                (held.delivered, held.received),
                (0, held.held),
                "R2/R3: the one receive in flight was held, none was issued after it"
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

/// Receive buffers are at most this big (the loop's pool): a payload of `n`
/// bytes takes at least `n / RECV_BUF` receives.
const RECV_BUF: usize = 64 * 1024;

/// Sends `payload` from a client to a server, in `slices` writes, each made
/// by `write_slice` when the scenario asks for it, and checks every byte.
/// Returns the server's record and transport once the connection is closed.
async fn transfer(
    h: &Handle,
    recs_hooks: impl Fn() -> Hooks + 'static,
    payload: &[u8],
    drive: impl AsyncFnOnce(&Transport, &Transport, &Rc<RefCell<Rec>>),
) -> (Rc<RefCell<Rec>>, Transport) {
    let (server, recs) = recording_server(h, recs_hooks);
    let (cp, _crec) = Recorder::new();
    let client = h.create_connection(server.local_addr(), cp).await.unwrap();
    let (srec, st) = first_connection(h, &recs).await;
    drive(&client, &st, &srec).await;
    finish_transfer(h, &client, &srec, &st, payload).await;
    server.close();
    (srec, st)
}

/// Closes the client, resumes the server once everything arrived, and
/// checks that the server got exactly `payload`, then a clean end.
async fn finish_transfer(
    h: &Handle,
    client: &Transport,
    srec: &Rc<RefCell<Rec>>,
    st: &Transport,
    payload: &[u8],
) {
    client.close();
    wait_until(h, Duration::from_secs(30), "all bytes through", || {
        let r = srec.borrow();
        r.data.len() >= payload.len() || r.lost > 0
    })
    .await;
    st.resume_reading();
    wait_until(h, Duration::from_secs(30), "server connection_lost", || {
        srec.borrow().lost == 1
    })
    .await;
    let r = srec.borrow();
    r.assert_closed_cleanly();
    assert_eq!(
        r.data.len(),
        payload.len(),
        "R1: nothing lost: {}",
        r.summary()
    );
    assert!(r.data == payload, "R1: bytes in order, none duplicated");
    let ledger = st.ledger();
    assert!(ledger.balanced(), "{ledger:?}");
}

/// R1/R3: pause inside `data_received`, resume from the next callback. Every
/// chunk is followed by a pause and a resume, so 2 MB make at least 31
/// pause/resume cycles mid-stream.
#[test]
fn r1_pause_resume_storm_from_data_received() {
    on_every_driver("r1_pause_resume_storm_from_data_received", |lp| {
        let h = lp.handle();
        lp.run_until_complete(async move {
            let cycles = Rc::new(Cell::new(0u64));
            let (hh, c2) = (h.clone(), cycles.clone());
            let hooks = move || {
                let (h, cycles) = (hh.clone(), c2.clone());
                Hooks {
                    data_len: Some(Box::new(move |t: &Transport, _n: usize| {
                        t.pause_reading();
                        let (t, cycles) = (t.clone(), cycles.clone());
                        h.call_soon(move || {
                            assert!(!t.is_reading() || t.is_closing(), "still paused");
                            t.resume_reading();
                            cycles.set(cycles.get() + 1);
                        });
                    })),
                    ..Hooks::default()
                }
            };
            let payload = pattern(7, 0, 2_000_000);
            let p = payload.clone();
            let (srec, _) = transfer(&h, hooks, &payload, async move |client, _, _| {
                for chunk in p.chunks(7919) {
                    client.write(chunk);
                }
            })
            .await;
            let calls = srec.borrow().data_calls;
            assert!(
                calls >= (payload.len() / RECV_BUF) as u64,
                "{calls} data_received calls for {} bytes",
                payload.len()
            );
            // The last chunk's resume may find the connection closed.
            assert!(
                cycles.get() + 1 >= calls,
                "a pause/resume cycle after every chunk: {} cycles, {calls} chunks",
                cycles.get()
            );
        })
        .unwrap();
    });
}

/// R1/R2/R3: a timer toggles reading every millisecond, and the client
/// writes its next slice right after each pause: every pause has bytes
/// arriving while it lasts. The receive in flight at the pause completes
/// and is held (R2), and nothing is delivered until the resume (R3, checked
/// by the recorder), so most resumes find bytes held.
#[test]
fn r1_pause_resume_storm_from_timers() {
    const SLICES: usize = 40;
    on_every_driver("r1_pause_resume_storm_from_timers", |lp| {
        let h = lp.handle();
        lp.run_until_complete(async move {
            let payload = pattern(7, 0, 2_000_000);
            let p = payload.clone();
            let hh = h.clone();
            let held_at_resume = Rc::new(Cell::new(0usize));
            let held = held_at_resume.clone();
            transfer(&h, Hooks::default, &payload, async move |client, st, _| {
                for slice in p.chunks(p.len().div_ceil(SLICES)) {
                    st.pause_reading();
                    client.write(slice);
                    sleep(&hh, Duration::from_millis(1)).await;
                    if st.ledger().held > 0 {
                        held.set(held.get() + 1);
                    }
                    st.resume_reading();
                    sleep(&hh, Duration::from_millis(1)).await;
                }
            })
            .await;
            assert!(
                held_at_resume.get() >= SLICES / 2,
                "R2: bytes were held at {} of {SLICES} resumes",
                held_at_resume.get()
            );
        })
        .unwrap();
    });
}

/// R1/R3: another connection's callbacks pause and resume this one. B's
/// server protocol pauses A on each `P` it receives and resumes it on each
/// `R`; the test goes in lock-step, so each toggle provably lands while A
/// has bytes in flight: after `P`, A's next bytes are held, not delivered;
/// after `R`, they are delivered.
#[test]
fn r1_pause_resume_from_another_connections_callbacks() {
    const ROUNDS: u64 = 10;
    const SLICE: usize = 50_000;
    on_every_driver("r1_pause_resume_from_another_connection", |lp| {
        let h = lp.handle();
        lp.run_until_complete(async move {
            let (server, recs) = recording_server(&h, Hooks::default);
            let (pa, _ra) = Recorder::new();
            let a = h.create_connection(server.local_addr(), pa).await.unwrap();
            let (arec, at) = first_connection(&h, &recs).await;
            let (pb, _rb) = Recorder::new();
            let b = h.create_connection(server.local_addr(), pb).await.unwrap();
            wait_until(&h, Duration::from_secs(10), "B accepted", || {
                recs.borrow().len() == 2 && recs.borrow()[1].borrow().made == 1
            })
            .await;
            // Install the toggling hook on B's server protocol via set_protocol.
            let brec = recs.borrow()[1].clone();
            let bserver = brec.borrow().transport.clone().unwrap();
            let target = at.clone();
            let toggles = Rc::new(Cell::new(0u64));
            let tg = toggles.clone();
            let hooks = Hooks {
                data: Some(Box::new(move |_t: &Transport, data: &[u8]| {
                    for &c in data {
                        match c {
                            b'P' => target.pause_reading(),
                            b'R' => target.resume_reading(),
                            _ => panic!("unexpected command {c}"),
                        }
                        tg.set(tg.get() + 1);
                    }
                })),
                ..Hooks::default()
            };
            bserver.set_protocol(Recorder::continuing(brec.clone(), bserver.clone(), hooks));
            let a_bytes = pattern(3, 0, SLICE * ROUNDS as usize);
            for (round, slice) in a_bytes.chunks(SLICE).enumerate() {
                let before = arec.borrow().data.len();
                b.write(b"P");
                wait_until(&h, Duration::from_secs(10), "B's P paused A", || {
                    !at.is_reading()
                })
                .await;
                a.write(slice);
                wait_until(
                    &h,
                    Duration::from_secs(10),
                    "A's bytes held while paused",
                    || at.ledger().held > 0,
                )
                .await;
                assert_eq!(
                    arec.borrow().data.len(),
                    before,
                    "R3: round {round}: nothing delivered to A while B kept it paused"
                );
                b.write(b"R");
                wait_until(&h, Duration::from_secs(10), "A's slice after B's R", || {
                    arec.borrow().data.len() == before + slice.len()
                })
                .await;
            }
            assert_eq!(toggles.get(), 2 * ROUNDS, "one toggle per command byte");
            a.close();
            b.close();
            for rec in [&arec, &brec] {
                wait_until(&h, Duration::from_secs(10), "closed", || {
                    rec.borrow().lost == 1
                })
                .await;
                rec.borrow().assert_closed_cleanly();
            }
            assert!(arec.borrow().data == a_bytes, "R1 exact");
            assert_eq!(brec.borrow().data, b"PR".repeat(ROUNDS as usize));
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
                    // The receive in flight fails; nothing else is issued.
                    wait_until(&h, Duration::from_secs(10), "the receive ends", || {
                        h.table_sizes().ops_in_flight <= 1
                    })
                    .await;
                    next_turn(&h).await;
                } else {
                    client.write(b"hello");
                    client.write_eof().unwrap();
                    // The receive in flight completes (on sim perhaps short)
                    // and is held; no other is issued while paused, so the
                    // EOF waits too.
                    wait_until(&h, Duration::from_secs(10), "the bytes are held", || {
                        st.ledger().held > 0
                    })
                    .await;
                    assert_eq!(st.ledger().received, st.ledger().held, "R3: none delivered");
                }
                assert_eq!(srec.borrow().eof, 0, "R3: no EOF while paused");
                assert!(srec.borrow().data.is_empty(), "R3: no data while paused");
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

/// R1/R4: the client writes at once, so bytes may be on the wire before the
/// server's `connection_made` (they must wait for it), while the server
/// pauses in every `data_received` and resumes from the next callback.
#[test]
fn r1_r4_storm_with_bytes_before_connection_made() {
    on_every_driver("r1_r4_storm_with_bytes_before_connection_made", |lp| {
        let h = lp.handle();
        lp.run_until_complete(async move {
            let hh = h.clone();
            let hooks = move || {
                let h = hh.clone();
                Hooks {
                    data_len: Some(Box::new(move |t: &Transport, _n: usize| {
                        t.pause_reading();
                        let t = t.clone();
                        h.call_soon(move || t.resume_reading());
                    })),
                    ..Hooks::default()
                }
            };
            let (server, recs) = recording_server(&h, hooks);
            let (cp, _crec) = Recorder::new();
            let client = h.create_connection(server.local_addr(), cp).await.unwrap();
            let payload = pattern(7, 0, 2_000_000);
            for chunk in payload.chunks(7919) {
                client.write(chunk);
            }
            client.close();
            let (srec, st) = first_connection(&h, &recs).await;
            finish_transfer(&h, &client, &srec, &st, &payload).await;
            server.close();
        })
        .unwrap();
    });
}

/// R1/R2/R3: another connection's callbacks toggle this one at random
/// moments of a 1 MB stream in both directions: pauses land while a
/// receive is in flight, and (on sim) while its completion is ready but
/// not yet reaped, the bpo-33694 window.
#[test]
fn r1_random_toggles_from_another_connections_callbacks() {
    on_every_driver("r1_random_toggles_from_another_connection", |lp| {
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
            assert!(
                toggles.get() >= 10,
                "B toggled A on every chunk: {}",
                toggles.get()
            );
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
