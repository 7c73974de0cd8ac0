//! R5: a `BufferedProtocol` that pauses, closes, aborts or switches protocol
//! inside `buffer_updated` gets no more bytes of the same received chunk; the
//! rest is held and goes, in order and exactly once, to whichever protocol is
//! current when reading resumes. Runs on uring, poll and sim (several seeds).

mod util;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proactor::{Handle, Server, Transport};
use util::*;

const LIMIT: Duration = Duration::from_secs(10);

type Shared<T> = Rc<RefCell<Option<T>>>;

/// A server whose first connection runs `protocol()`.
fn server_with(h: &Handle, protocol: impl Fn() -> proactor::AnyProtocol + 'static) -> Server {
    h.create_server(localhost(), protocol).expect("listen")
}

/// Pauses on every byte (1-byte buffers); a timer resumes every millisecond.
/// Before the fix the whole chunk was fed while paused (R3 violations).
#[test]
fn r5_buffered_pause_inside_buffer_updated_holds_the_rest_of_the_chunk() {
    on_every_driver("r5_buffered_pause_holds_rest", |lp| {
        let h = lp.handle();
        lp.run_until_complete(async move {
            let rec: Shared<Rc<RefCell<Rec>>> = Rc::default();
            let r2 = rec.clone();
            let server = server_with(&h, move || {
                let (p, rec) = BufRecorder::create(
                    &[1],
                    Some(Box::new(|t: &Transport, _: &[u8]| t.pause_reading())),
                );
                *r2.borrow_mut() = Some(rec);
                p
            });
            let (cp, _) = Recorder::new();
            let client = h.create_connection(server.local_addr(), cp).await.unwrap();
            let payload = pattern(7, 0, 100);
            client.write(&payload);
            wait_until(&h, LIMIT, "first byte", || {
                rec.borrow()
                    .as_ref()
                    .is_some_and(|r| !r.borrow().data.is_empty())
            })
            .await;
            let srec = rec.borrow().clone().unwrap();
            let t = srec.borrow().transport.clone().unwrap();
            // Paused after byte 1: the rest of that chunk is held, and no
            // receive is issued while paused.
            next_turn(&h).await;
            assert_eq!(
                srec.borrow().data.len(),
                1,
                "R3: one byte, then paused; got {:?}",
                srec.borrow().summary()
            );
            let l = t.ledger();
            assert_eq!(l.delivered, 1, "the ledger counts only what was delivered");
            assert!(l.held >= 1, "the rest of the chunk is held: {l:?}");
            assert_eq!(l.received, l.delivered + l.held, "{l:?}");
            // Each resume delivers exactly one byte, then the hook pauses.
            while srec.borrow().data.len() < payload.len() {
                let before = srec.borrow().data.len();
                t.resume_reading();
                wait_until(&h, LIMIT, "one more byte after resume", || {
                    srec.borrow().data.len() > before
                })
                .await;
                assert_eq!(
                    srec.borrow().data.len(),
                    before + 1,
                    "R5: one byte per resume, then paused again"
                );
                assert!(!t.is_reading(), "paused again by the hook");
            }
            assert_eq!(srec.borrow().data, payload, "R1: every byte once, in order");
            assert_eq!(srec.borrow().data_calls, 100, "one byte per buffer_updated");
            client.close();
            t.resume_reading();
            wait_until(&h, LIMIT, "server connection lost", || {
                srec.borrow().lost == 1
            })
            .await;
            srec.borrow().assert_closed_cleanly();
            server.close();
        })
        .unwrap();
    });
}

/// `set_protocol` on the `\n` of `hello\nworld` (one write): the old
/// protocol gets `hello\n`, the new one `world`. Before the fix the old
/// protocol got all of it and the new one nothing.
#[test]
fn r5_buffered_set_protocol_mid_chunk_hands_the_tail_to_the_new_protocol() {
    on_every_driver("r5_buffered_set_protocol_mid_chunk", |lp| {
        let h = lp.handle();
        lp.run_until_complete(async move {
            let old: Shared<Rc<RefCell<Rec>>> = Rc::default();
            // set_protocol does not call connection_made on the new protocol.
            let new = Rc::new(RefCell::new(Rec {
                made: 1,
                ..Rec::default()
            }));
            let (o2, n2) = (old.clone(), new.clone());
            let server = server_with(&h, move || {
                let n3 = n2.clone();
                let (p, rec) = BufRecorder::create(
                    &[1],
                    Some(Box::new(move |t: &Transport, got: &[u8]| {
                        if got == b"\n" {
                            t.set_protocol(Recorder::continuing(
                                n3.clone(),
                                t.clone(),
                                Hooks::default(),
                            ));
                        }
                    })),
                );
                *o2.borrow_mut() = Some(rec);
                p
            });
            let (cp, _) = Recorder::new();
            let client = h.create_connection(server.local_addr(), cp).await.unwrap();
            client.write(b"hello\nworld");
            // Wait for all 11 bytes, whichever protocol got them, so that a
            // tail given to the wrong one fails below, by name, at once.
            wait_until(&h, LIMIT, "all of hello\\nworld delivered", || {
                let got = old.borrow().as_ref().map_or(0, |o| o.borrow().data.len());
                got + new.borrow().data.len() >= 11
            })
            .await;
            let old = old.borrow().clone().unwrap();
            assert_eq!(
                old.borrow().data,
                b"hello\n",
                "old protocol: up to the switch"
            );
            assert_eq!(new.borrow().data, b"world", "new protocol: the tail, once");
            client.close();
            wait_until(&h, LIMIT, "lost", || new.borrow().lost == 1).await;
            new.borrow().assert_ok();
            old.borrow().assert_ok();
            server.close();
        })
        .unwrap();
    });
}

/// `close()` or `abort()` inside `buffer_updated`: no more bytes, no
/// `eof_received`, `connection_lost` once, ledger balanced (the rest of the
/// chunk counted as discarded, not delivered).
#[test]
fn r5_buffered_close_or_abort_inside_buffer_updated_stops_the_chunk() {
    for abort in [false, true] {
        on_every_driver("r5_buffered_close_inside_buffer_updated", |lp| {
            let h = lp.handle();
            lp.run_until_complete(async move {
                let rec: Shared<Rc<RefCell<Rec>>> = Rc::default();
                let r2 = rec.clone();
                let server = server_with(&h, move || {
                    let (p, rec) = BufRecorder::create(
                        &[3],
                        Some(Box::new(
                            move |t: &Transport, _: &[u8]| {
                                if abort {
                                    t.abort()
                                } else {
                                    t.close()
                                }
                            },
                        )),
                    );
                    *r2.borrow_mut() = Some(rec);
                    p
                });
                let (cp, crec) = Recorder::new();
                let client = h.create_connection(server.local_addr(), cp).await.unwrap();
                client.write(&pattern(3, 0, 100));
                client.write_eof().unwrap();
                wait_until(&h, LIMIT, "server lost", || {
                    rec.borrow().as_ref().is_some_and(|r| r.borrow().lost == 1)
                })
                .await;
                let srec = rec.borrow().clone().unwrap();
                {
                    let s = srec.borrow();
                    s.assert_closed_cleanly();
                    assert_eq!(s.data, pattern(3, 0, 3), "one buffer, then nothing");
                    assert_eq!(s.eof, 0, "no eof_received after close/abort");
                    let l = s.transport.as_ref().unwrap().ledger();
                    assert_eq!(l.delivered, 3, "{l:?}");
                    assert_eq!(l.received, l.delivered + l.discarded, "{l:?}");
                }
                wait_until(&h, LIMIT, "client lost", || crec.borrow().lost == 1).await;
                server.close();
            })
            .unwrap();
        });
    }
}

/// `close()` from a timer while the peer's FIN is on its way and the
/// receive is in flight: whatever that receive returns (EOF included, the
/// cancel racing its completion), `eof_received` is never called after the
/// application closed. Twenty connections close at twenty different moments.
#[test]
fn r4_no_eof_received_after_close() {
    on_every_driver("r4_no_eof_received_after_close", |lp| {
        let h = lp.handle();
        lp.run_until_complete(async move {
            const N: u64 = 20;
            let recs: Rc<RefCell<Vec<Rc<RefCell<Rec>>>>> = Rc::default();
            let eof_after_close = Rc::new(std::cell::Cell::new(0));
            let (r2, e2) = (recs.clone(), eof_after_close.clone());
            let h2 = h.clone();
            let server = h
                .create_server(localhost(), move || {
                    let k = r2.borrow().len() as u64;
                    let h3 = h2.clone();
                    let e3 = e2.clone();
                    let hooks = Hooks {
                        eof: Some(Box::new(move |t: &Transport| {
                            if t.is_closing() {
                                e3.set(e3.get() + 1);
                            }
                            false
                        })),
                        made: Some(Box::new(move |t: &Transport, ()| {
                            // Unsent data keeps the closing transport alive
                            // while the receive's completion arrives.
                            t.write(&[0u8; 100_000]);
                            let t = t.clone();
                            h3.call_later(Duration::from_micros(k * 50), move || t.close());
                        })),
                        ..Hooks::default()
                    };
                    let (p, rec) = Recorder::with_hooks(hooks);
                    r2.borrow_mut().push(rec);
                    p
                })
                .unwrap();
            let mut clients = Vec::new();
            for _ in 0..N {
                let (cp, _) = Recorder::new();
                let c = h.create_connection(server.local_addr(), cp).await.unwrap();
                c.write_eof().unwrap();
                clients.push(c);
            }
            wait_until(&h, LIMIT, "every server connection lost", || {
                let r = recs.borrow();
                r.len() == N as usize && r.iter().all(|r| r.borrow().lost == 1)
            })
            .await;
            for r in recs.borrow().iter() {
                r.borrow().assert_ok();
            }
            assert_eq!(eof_after_close.get(), 0, "eof_received after close()");
            server.close();
        })
        .unwrap();
    });
}
