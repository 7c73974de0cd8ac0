//! R4 and L4: callback order, and every transport method called from every
//! callback without panics or nested callbacks. Runs on uring, poll and sim.

mod util;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proactor::Transport;
use util::*;

#[derive(Clone, Copy, Debug)]
enum Method {
    Write,
    PauseReading,
    Close,
    Abort,
    WriteEof,
    SetLimits,
}

#[derive(Clone, Copy, Debug)]
enum Callback {
    Made,
    Data,
    Eof,
    PauseWriting,
    ResumeWriting,
    Lost,
}

fn call(m: Method, t: &Transport) {
    match m {
        Method::Write => t.write(&[b'x'; 100_000]),
        Method::PauseReading => {
            t.pause_reading();
            t.resume_reading();
            t.pause_reading();
        }
        Method::Close => t.close(),
        Method::Abort => t.abort(),
        // Ok from every callback: after close or abort it does nothing.
        Method::WriteEof => t.write_eof().expect("write_eof"),
        Method::SetLimits => t.set_write_buffer_limits(Some(1), Some(0)).unwrap(),
    }
}

fn hooks_for(cb: Callback, m: Method) -> Hooks {
    let mut h = Hooks::default();
    let f = move |t: &Transport, ()| call(m, t);
    match cb {
        Callback::Made => h.made = Some(Box::new(f)),
        Callback::Data => h.data_len = Some(Box::new(move |t: &Transport, _| call(m, t))),
        Callback::Eof => {
            h.eof = Some(Box::new(move |t: &Transport| {
                call(m, t);
                true
            }))
        }
        Callback::PauseWriting => h.pause_writing = Some(Box::new(f)),
        Callback::ResumeWriting => h.resume_writing = Some(Box::new(f)),
        Callback::Lost => h.lost = Some(Box::new(f)),
    }
    h
}

/// L4 + R4: each method from each callback. The server protocol is the one
/// under test; the client sends data, forces back-pressure, then half-closes.
#[test]
fn l4_every_method_from_every_callback() {
    let callbacks = [
        Callback::Made,
        Callback::Data,
        Callback::Eof,
        Callback::PauseWriting,
        Callback::ResumeWriting,
        Callback::Lost,
    ];
    let methods = [
        Method::Write,
        Method::PauseReading,
        Method::Close,
        Method::Abort,
        Method::WriteEof,
        Method::SetLimits,
    ];
    on_every_driver("l4_every_method_from_every_callback", |lp| {
        for cb in callbacks {
            for m in methods {
                let h = lp.handle();
                lp.run_until_complete(async move {
                    let srec: Rc<RefCell<Option<Rc<RefCell<Rec>>>>> = Rc::default();
                    let s2 = srec.clone();
                    let server = h
                        .create_server(localhost(), move || {
                            let mut hooks = hooks_for(cb, m);
                            // Make the server write enough to pause and resume.
                            let mut inner_made = hooks.made.take();
                            hooks.made = Some(Box::new(move |t: &Transport, ()| {
                                t.set_write_buffer_limits(Some(1024), Some(0)).unwrap();
                                t.write(&[b'y'; 64 * 1024]);
                                if let Some(f) = inner_made.as_mut() {
                                    f(t, ());
                                }
                            }));
                            let (p, rec) = Recorder::with_hooks(hooks);
                            *s2.borrow_mut() = Some(rec);
                            p
                        })
                        .unwrap();
                    let (cp, crec) = Recorder::with_hooks(Hooks {
                        eof: Some(Box::new(|_t: &Transport| false)),
                        ..Hooks::default()
                    });
                    let client = h.create_connection(server.local_addr(), cp).await.unwrap();
                    client.write(b"some request bytes");
                    // Half-close once the server has the request, or will
                    // not read it: it paused reading or ended the connection
                    // from an earlier callback.
                    let what = format!("{cb:?}/{m:?}: request delivered");
                    wait_until(&h, Duration::from_secs(10), &what, || {
                        srec.borrow().as_ref().is_some_and(|r| {
                            let r = r.borrow();
                            !r.data.is_empty()
                                || r.lost == 1
                                || r.transport
                                    .as_ref()
                                    .is_some_and(|t| t.is_closing() || !t.is_reading())
                        })
                    })
                    .await;
                    client.write_eof().expect("the client's write_eof");
                    let what = format!("{cb:?}/{m:?}: server connection_lost");
                    wait_until(&h, Duration::from_secs(10), &what, || {
                        srec.borrow().as_ref().is_some_and(|r| {
                            let r = r.borrow();
                            // Paused reading may hold the EOF: resume so the connection can end.
                            if r.lost == 0 {
                                if let Some(t) = &r.transport {
                                    t.resume_reading();
                                    if r.eof == 1 {
                                        t.close();
                                    }
                                }
                            }
                            r.lost == 1
                        })
                    })
                    .await;
                    client.abort();
                    wait_until(&h, Duration::from_secs(10), "client lost", || {
                        crec.borrow().lost == 1
                    })
                    .await;
                    let rec = srec.borrow().clone().unwrap();
                    let t = {
                        let r = rec.borrow();
                        r.assert_ok();
                        assert_eq!(r.made, 1, "{cb:?}/{m:?}");
                        assert_eq!(r.lost, 1, "{cb:?}/{m:?}");
                        crec.borrow().assert_ok();
                        r.transport.clone().unwrap()
                    };
                    let what = format!("{cb:?}/{m:?}: socket released");
                    wait_until(&h, Duration::from_secs(10), &what, || t.is_released()).await;
                    assert!(t.ledger().balanced(), "{:?}", t.ledger());
                    server.close();
                })
                .unwrap();
            }
        }
    });
}

/// R4: data never before connection_made, even when the peer's bytes are
/// already waiting when the connection is accepted.
#[test]
fn r4_connection_made_precedes_early_data() {
    on_every_driver("r4_connection_made_precedes_early_data", |lp| {
        let h = lp.handle();
        lp.run_until_complete(async move {
            let recs: Rc<RefCell<Vec<Rc<RefCell<Rec>>>>> = Rc::default();
            let r2 = recs.clone();
            let server = h
                .create_server(localhost(), move || {
                    let (p, rec) = Recorder::new();
                    r2.borrow_mut().push(rec);
                    p
                })
                .unwrap();
            let (cp, _c) = Recorder::new();
            let client = h.create_connection(server.local_addr(), cp).await.unwrap();
            client.write(b"early bytes");
            client.close();
            wait_until(&h, Duration::from_secs(10), "server lost", || {
                recs.borrow().first().is_some_and(|r| r.borrow().lost == 1)
            })
            .await;
            let r = recs.borrow()[0].clone();
            let r = r.borrow();
            r.assert_closed_cleanly();
            assert_eq!(r.data, b"early bytes");
            assert_eq!(r.trace.front().map(String::as_str), Some("made"));
            server.close();
        })
        .unwrap();
    });
}

/// set_protocol mid-stream: the new protocol gets the rest, nothing lost or
/// repeated, and a paused write side is announced to it first.
#[test]
fn r1_set_protocol_carries_data_and_write_pause() {
    on_every_driver("r1_set_protocol_carries_state", |lp| {
        let h = lp.handle();
        lp.run_until_complete(async move {
            let second: Rc<RefCell<Option<Rc<RefCell<Rec>>>>> = Rc::default();
            let first: Rc<RefCell<Option<Rc<RefCell<Rec>>>>> = Rc::default();
            let (f2, s2) = (first.clone(), second.clone());
            let server = h
                .create_server(localhost(), move || {
                    let s3 = s2.clone();
                    let (p, rec) = Recorder::with_hooks(Hooks {
                        data_len: Some(Box::new(move |t: &Transport, _n| {
                            if s3.borrow().is_some() {
                                return;
                            }
                            // Pause reading and writing, then swap protocols.
                            t.pause_reading();
                            t.set_write_buffer_limits(Some(0), Some(0)).unwrap();
                            t.write(b"z");
                            let (_, rec2) = Recorder::new();
                            let mut rec2m = rec2.borrow_mut();
                            rec2m.made = 1; // the new protocol continues the connection
                            rec2m.transport = Some(t.clone());
                            drop(rec2m);
                            *s3.borrow_mut() = Some(rec2.clone());
                            t.set_protocol(Recorder::continuing(rec2, t.clone(), Hooks::default()));
                        })),
                        ..Hooks::default()
                    });
                    *f2.borrow_mut() = Some(rec);
                    p
                })
                .unwrap();
            let (cp, _c) = Recorder::new();
            let client = h.create_connection(server.local_addr(), cp).await.unwrap();
            let payload = pattern(5, 0, 300_000);
            client.write(&payload);
            wait_until(&h, Duration::from_secs(10), "swap", || {
                second.borrow().is_some()
            })
            .await;
            let rec2 = second.borrow().clone().unwrap();
            let t = rec2.borrow().transport.clone().unwrap();
            // Paused inside data_received: no receive is issued, nothing
            // reaches either protocol until the resume. An armed multishot
            // receive brings every arrival of the turn (the rest of the
            // pausing chunk's batch) and those before it stops: held (R2).
            next_turn(&h).await;
            assert!(rec2.borrow().data.is_empty(), "R3: nothing while paused");
            let held = t.ledger().held;
            assert!(
                held == 0 || h.driver_stats().multishot_completions > 0,
                "no receive issued while paused, yet {held} bytes held"
            );
            t.resume_reading();
            client.close();
            wait_until(&h, Duration::from_secs(10), "lost", || {
                rec2.borrow().lost == 1
            })
            .await;
            let rec1 = first.borrow().clone().unwrap();
            let (a, b) = (rec1.borrow(), rec2.borrow());
            a.assert_ok();
            b.assert_ok();
            assert_eq!(a.lost, 0, "the old protocol is not told connection_lost");
            let mut all = a.data.clone();
            all.extend_from_slice(&b.data);
            assert!(
                all == payload,
                "R1 across set_protocol: {} + {}",
                a.data.len(),
                b.data.len()
            );
            assert_eq!(a.pauses, 0, "the old protocol was swapped out first");
            assert_eq!(
                (b.pauses, b.resumes),
                (1, 1),
                "the new protocol learned that writing is paused, then resumed: {:?}",
                b.trace
            );
            assert_eq!(
                b.trace.front().map(String::as_str),
                Some("pause_writing"),
                "the pause comes first, before any data: {:?}",
                b.trace
            );
            server.close();
        })
        .unwrap();
    });
}
