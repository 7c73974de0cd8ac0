//! L5: a panic in application code (any protocol callback, a server's
//! protocol factory, a task, a `call_soon`/`call_later` callback) is caught
//! at the loop boundary and handed to the exception handler; the connection
//! it belongs to is aborted, with `connection_lost(Some(error))`; every other
//! connection and the server go on. Runs on uring, poll and sim.

mod util;

use std::cell::RefCell;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Duration;

use proactor::{
    AnyProtocol, BaseProtocol, BufferedProtocol, CallbackPanicked, EventLoop, ExceptionSource,
    Handle, JoinError, Protocol, Server, Transport,
};
use util::*;

const LIMIT: Duration = Duration::from_secs(10);

/// Keeps the expected `boom` panics out of the output (the default hook
/// prints every panic, caught or not); other panics print as usual.
fn quiet_booms() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !msg.starts_with("boom") {
                default(info);
            }
        }));
    });
}

/// What the exception handler was told: (source, message, peer).
type Caught = Rc<RefCell<Vec<(ExceptionSource, String, Option<proactor::Address>)>>>;

/// Installs a recording (non-crashing) exception handler.
fn record_exceptions(h: &Handle) -> Caught {
    quiet_booms();
    let caught: Caught = Rc::default();
    let c = caught.clone();
    h.set_exception_handler(move |_, ctx| {
        c.borrow_mut()
            .push((ctx.source, ctx.message.clone(), ctx.peer.clone()));
    });
    caught
}

/// Which callback of [`Bomb`] panics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    Made,
    Data,
    Eof,
    PauseWriting,
    ResumeWriting,
    Lost,
}

/// What a [`Bomb`] protocol saw.
#[derive(Default, Debug)]
struct Seen {
    lost: u32,
    lost_error: Option<String>,
    panicked: bool,
    data: Vec<u8>,
}

/// An echo protocol that panics in one callback, once; `BIG!` in the data
/// makes it answer 4 MiB, so its write side crosses its marks.
struct Bomb {
    at: At,
    seen: Rc<RefCell<Seen>>,
    t: Option<Transport>,
}

impl Bomb {
    fn boom(&mut self, here: At) {
        if self.at == here && !self.seen.borrow().panicked {
            self.seen.borrow_mut().panicked = true;
            panic!("boom in {here:?}");
        }
    }
}

impl BaseProtocol for Bomb {
    fn connection_made(&mut self, t: Transport) {
        // Small marks: the 64 KiB reply below pauses writing, draining resumes.
        t.set_write_buffer_limits(Some(1024), Some(0)).unwrap();
        self.t = Some(t);
        self.boom(At::Made);
    }
    fn connection_lost(&mut self, e: Option<io::Error>) {
        {
            let mut s = self.seen.borrow_mut();
            s.lost += 1;
            s.lost_error = e.as_ref().map(|e| {
                assert!(
                    CallbackPanicked::of(e).is_some() || !s.panicked,
                    "the error says a callback panicked: {e}"
                );
                e.to_string()
            });
        }
        self.boom(At::Lost);
    }
    fn eof_received(&mut self) -> bool {
        self.boom(At::Eof);
        false
    }
    fn pause_writing(&mut self) {
        self.boom(At::PauseWriting);
    }
    fn resume_writing(&mut self) {
        self.boom(At::ResumeWriting);
    }
}

impl Protocol for Bomb {
    fn data_received(&mut self, data: &[u8]) {
        let big = {
            let mut s = self.seen.borrow_mut();
            s.data.extend_from_slice(data);
            // The sim may split the request over several reads.
            s.data.ends_with(b"BIG!")
        };
        let t = self.t.clone().unwrap();
        if big {
            t.write(&vec![b'x'; 4 << 20]);
        } else {
            t.write(data);
        }
        self.boom(At::Data);
    }
}

/// Sends `msg` on `client` and waits until its echo is back in `rec`.
async fn ping(h: &Handle, client: &Transport, rec: &Rc<RefCell<Rec>>, msg: &[u8]) {
    let want = rec.borrow().data.len() + msg.len();
    client.write(msg);
    wait_until(h, LIMIT, "echo", || rec.borrow().data.len() >= want).await;
    assert!(rec.borrow().data.ends_with(msg), "echo intact");
}

async fn connect(h: &Handle, server: &Server) -> (Transport, Rc<RefCell<Rec>>) {
    let (p, rec) = Recorder::new();
    let t = h.create_connection(server.local_addr(), p).await.unwrap();
    (t, rec)
}

/// One connection's protocol panics in callback `at`: that connection is
/// aborted with a `CallbackPanicked` error (unless `connection_lost` was
/// the one that panicked), the handler hears it with the peer's address, a
/// bystander keeps echoing and the server keeps accepting.
#[test]
fn l5_panic_in_each_protocol_callback_aborts_only_that_connection() {
    for at in [
        At::Made,
        At::Data,
        At::Eof,
        At::PauseWriting,
        At::ResumeWriting,
        At::Lost,
    ] {
        on_every_driver(&format!("l5_panic_in_{at:?}"), |lp| {
            let h = lp.handle();
            let caught = record_exceptions(&h);
            lp.run_until_complete(async move {
                let victim: Rc<RefCell<Seen>> = Rc::default();
                let first = Rc::new(std::cell::Cell::new(true));
                let (v2, f2) = (victim.clone(), first.clone());
                let server = h
                    .create_server(localhost(), move || -> AnyProtocol {
                        if f2.replace(false) {
                            Bomb {
                                at,
                                seen: v2.clone(),
                                t: None,
                            }
                            .into()
                        } else {
                            Echo(None).into()
                        }
                    })
                    .unwrap();
                let (a, arec) = connect(&h, &server).await;
                wait_until(&h, LIMIT, "victim accepted", || !first.get()).await;
                let (b, brec) = connect(&h, &server).await;
                ping(&h, &b, &brec, b"before").await;
                match at {
                    At::Made | At::Data => a.write(b"hello"),
                    At::Eof | At::Lost => a.write_eof().unwrap(),
                    At::PauseWriting | At::ResumeWriting => {
                        // The reply outgrows every socket buffer while we
                        // do not read: the victim pauses, then resumes.
                        a.pause_reading();
                        a.write(b"BIG!");
                        // Its 4 MiB reply is written inside data_received,
                        // far over the high mark: pause_writing follows.
                        wait_until(&h, LIMIT, "the victim got BIG!", || {
                            victim.borrow().data.ends_with(b"BIG!")
                        })
                        .await;
                        a.resume_reading();
                    }
                }
                wait_until(&h, LIMIT, "the victim's connection ends", || {
                    victim.borrow().lost == 1
                })
                .await;
                wait_until(&h, LIMIT, "the victim's peer sees the end", || {
                    arec.borrow().lost == 1 || arec.borrow().eof == 1
                })
                .await;
                {
                    let v = victim.borrow();
                    assert!(v.panicked, "{at:?} ran");
                    if at != At::Lost {
                        let e = v.lost_error.as_deref().unwrap_or_default();
                        assert!(
                            e.contains("panicked") && e.contains("boom"),
                            "connection_lost(Some(CallbackPanicked)): {:?}",
                            v.lost_error
                        );
                    }
                }
                // Everything else goes on.
                ping(&h, &b, &brec, b"after").await;
                let (c, crec) = connect(&h, &server).await;
                ping(&h, &c, &crec, b"new").await;
                let caught = caught.borrow();
                assert_eq!(caught.len(), 1, "one report: {caught:?}");
                let (source, message, peer) = &caught[0];
                assert!(matches!(source, ExceptionSource::Protocol(_)), "{source:?}");
                assert!(message.contains("boom"), "{message}");
                assert_eq!(peer.as_ref(), a.local_addr().as_ref(), "the victim's peer");
                drop(caught);
                b.close();
                c.close();
                a.abort();
                server.close();
            })
            .unwrap();
        });
    }
}

/// A buffered protocol that panics in `buffer_updated`: same outcome, and
/// the bytes of the chunk it did not take are discarded, not lost track of.
#[test]
fn l5_panic_in_buffer_updated_aborts_only_that_connection() {
    struct BufBomb(Option<Transport>, [u8; 4], Rc<RefCell<Seen>>);
    impl BaseProtocol for BufBomb {
        fn connection_made(&mut self, t: Transport) {
            self.0 = Some(t);
        }
        fn connection_lost(&mut self, e: Option<io::Error>) {
            let mut s = self.2.borrow_mut();
            s.lost += 1;
            s.lost_error = e.map(|e| e.to_string());
            let l = self.0.as_ref().unwrap().ledger();
            assert!(l.balanced() && l.held == 0, "ledger {l:?}");
        }
    }
    impl BufferedProtocol for BufBomb {
        fn get_buffer(&mut self, _: usize) -> &mut [u8] {
            &mut self.1
        }
        fn buffer_updated(&mut self, _: usize) {
            panic!("boom in buffer_updated");
        }
    }
    on_every_driver("l5_panic_in_buffer_updated", |lp| {
        let h = lp.handle();
        let caught = record_exceptions(&h);
        lp.run_until_complete(async move {
            let seen: Rc<RefCell<Seen>> = Rc::default();
            let s2 = seen.clone();
            let server = h
                .create_server(localhost(), move || {
                    AnyProtocol::buffered(BufBomb(None, [0; 4], s2.clone()))
                })
                .unwrap();
            let (a, _) = connect(&h, &server).await;
            a.write(&[7; 100]);
            wait_until(&h, LIMIT, "lost", || seen.borrow().lost == 1).await;
            let e = seen.borrow().lost_error.clone().unwrap_or_default();
            assert!(e.contains("buffer_updated panicked: boom"), "{e}");
            assert_eq!(caught.borrow().len(), 1);
            a.close();
            server.close();
        })
        .unwrap();
    });
}

/// A factory that panics refuses that one connection (its socket is
/// closed); the next connection is served.
#[test]
fn l5_panic_in_protocol_factory_refuses_one_connection() {
    on_every_driver("l5_panic_in_protocol_factory", |lp| {
        let h = lp.handle();
        let caught = record_exceptions(&h);
        lp.run_until_complete(async move {
            let calls = Rc::new(std::cell::Cell::new(0));
            let c2 = calls.clone();
            let server = h
                .create_server(localhost(), move || {
                    c2.set(c2.get() + 1);
                    if c2.get() == 1 {
                        panic!("boom in factory");
                    }
                    Echo(None)
                })
                .unwrap();
            let (a, arec) = connect(&h, &server).await;
            wait_until(&h, LIMIT, "refused connection ends", || {
                arec.borrow().lost == 1 || arec.borrow().eof == 1
            })
            .await;
            let (b, brec) = connect(&h, &server).await;
            ping(&h, &b, &brec, b"served").await;
            assert_eq!(calls.get(), 2);
            let caught = caught.borrow();
            assert_eq!(caught.len(), 1, "{caught:?}");
            assert_eq!(caught[0].0, ExceptionSource::ProtocolFactory);
            assert!(caught[0].1.contains("boom in factory"));
            drop(caught);
            a.abort();
            b.close();
            server.close();
        })
        .unwrap();
    });
}

/// A panicking task resolves its `JoinHandle` to `JoinError::Panicked`;
/// panicking `call_soon` and `call_later` callbacks are reported; a
/// connection echoes throughout and later callbacks still run.
#[test]
fn l5_panic_in_task_and_callbacks_is_reported_and_the_loop_goes_on() {
    on_every_driver("l5_panic_in_task_and_callbacks", |lp| {
        let h = lp.handle();
        let caught = record_exceptions(&h);
        lp.run_until_complete(async move {
            let server = h.create_server(localhost(), || Echo(None)).unwrap();
            let (b, brec) = connect(&h, &server).await;
            let join = h.spawn(async { panic!("boom in task") });
            let later_ran = Rc::new(std::cell::Cell::new(0));
            h.call_soon(|| panic!("boom in call_soon"));
            h.call_later(Duration::from_millis(2), || panic!("boom in call_later"));
            let l2 = later_ran.clone();
            h.call_later(Duration::from_millis(3), move || l2.set(l2.get() + 1));
            let err = join.await.expect_err("the task panicked");
            assert_eq!(err, JoinError::Panicked("boom in task".into()));
            ping(&h, &b, &brec, b"still here").await;
            wait_until(&h, LIMIT, "later callback", || later_ran.get() == 1).await;
            let ok = h.spawn(async { 42 }).await;
            assert_eq!(ok, Ok(42));
            let caught = caught.borrow();
            let sources: Vec<_> = caught.iter().map(|c| c.0).collect();
            assert_eq!(caught.len(), 3, "{caught:?}");
            assert!(sources.contains(&ExceptionSource::Task));
            assert_eq!(
                sources
                    .iter()
                    .filter(|s| **s == ExceptionSource::Callback)
                    .count(),
                2
            );
            drop(caught);
            b.close();
            server.close();
        })
        .unwrap();
    });
}

/// Crash-fast: a handler that re-raises makes the panic unwind out of
/// `run_forever`; the loop is consistent afterwards (not running, the
/// panicking connection aborted, the bystander still echoing).
#[test]
fn l5_crash_fast_handler_reraises_and_the_loop_runs_again() {
    on_every_driver("l5_crash_fast", |lp| {
        quiet_booms();
        let h = lp.handle();
        h.set_exception_handler(|_, ctx| ctx.resume_unwind());
        let server = h
            .create_server(localhost(), || Bomb {
                at: At::Data,
                seen: Rc::default(),
                t: None,
            })
            .unwrap();
        let (bp, brec) = Recorder::new();
        let (ap, arec) = Recorder::new();
        let echo = h.create_server(localhost(), || Echo(None)).unwrap();
        let hh = h.clone();
        let (saddr, eaddr) = (server.local_addr(), echo.local_addr());
        let clients: Rc<RefCell<Vec<Transport>>> = Rc::default();
        let cl = clients.clone();
        h.spawn(async move {
            let a = hh.create_connection(saddr, ap).await.unwrap();
            let b = hh.create_connection(eaddr, bp).await.unwrap();
            a.write(b"hello");
            cl.borrow_mut().extend([a, b]);
        });
        let unwound = catch_unwind(AssertUnwindSafe(|| lp.run_forever()));
        let payload = unwound.expect_err("the panic re-raised out of run_forever");
        assert_eq!(
            payload.downcast_ref::<String>().map(String::as_str),
            Some("boom in Data")
        );
        assert!(!h.is_running(), "the loop is not left 'running'");
        // Run again: the victim's connection ends, the bystander echoes.
        h.set_exception_handler(|_, _| {});
        let hh = h.clone();
        lp.run_until_complete(async move {
            wait_until(&hh, LIMIT, "victim's peer sees the end", || {
                arec.borrow().lost == 1 || arec.borrow().eof == 1
            })
            .await;
            let b = clients.borrow()[1].clone();
            ping(&hh, &b, &brec, b"alive").await;
            for c in clients.borrow().iter() {
                c.abort();
            }
            server.close();
            echo.close();
        })
        .unwrap();
    });
}

/// `run_until_complete`'s own future panicking resumes the panic in the
/// caller; the loop stays usable.
#[test]
fn l5_run_until_complete_reraises_its_futures_panic() {
    quiet_booms();
    on_every_driver("l5_run_until_complete_reraises", |lp| {
        let unwound = catch_unwind(AssertUnwindSafe(|| {
            lp.run_until_complete(async { panic!("boom in main") })
        }));
        let payload = unwound.expect_err("re-raised");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom in main"));
        assert!(!lp.handle().is_running());
        assert_eq!(lp.run_until_complete(async { 7 }).unwrap(), 7);
    });
}

/// The default handler logs and keeps going (no handler set).
#[test]
fn l5_default_handler_keeps_the_loop_running() {
    quiet_booms();
    let lp = EventLoop::builder()
        .driver(proactor::DriverKind::Sim)
        .build()
        .unwrap();
    let h = lp.handle();
    h.call_soon(|| panic!("boom with the default handler"));
    let h2 = h.clone();
    h.call_later(Duration::from_millis(1), move || h2.stop());
    lp.run_forever().unwrap();
}
