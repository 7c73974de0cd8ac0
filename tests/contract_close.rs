//! The loop's lifecycle as asyncio users expect it: closing a loop leaves no
//! socket open, a dropped connect future cancels its connect, and no
//! application object is dropped while the loop's state is borrowed (its
//! destructor may call back into the loop). Runs on uring, poll and sim.
//! Every test holds [`fd_count_lock`]: they count the process's descriptors.

mod util;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use proactor::{DriverKind, Handle, Transport};
use util::*;

const LIMIT: Duration = Duration::from_secs(10);

/// `EventLoop::close` with a server, open connections (both ends on the
/// loop) and unsent data: every transport is aborted (its protocol hears
/// `connection_lost` once), the listener is closed, and the process has as
/// many descriptors as before the server existed.
#[test]
fn close_aborts_transports_and_closes_listeners() {
    let _fds = fd_count_lock();
    on_every_driver("close_aborts_transports", |lp| {
        let h = lp.handle();
        let fds_before = open_fds();
        let recs: Rc<RefCell<Vec<Rc<RefCell<Rec>>>>> = Rc::default();
        let (r2, r3) = (recs.clone(), recs.clone());
        let (transports, server) = lp
            .run_until_complete({
                let h = h.clone();
                async move {
                    let server = h
                        .create_server(localhost(), move || {
                            let (p, rec) = Recorder::new();
                            r2.borrow_mut().push(rec);
                            p
                        })
                        .unwrap();
                    let mut clients = Vec::new();
                    for i in 0..10 {
                        let (p, rec) = Recorder::new();
                        let c = h.create_connection(server.local_addr(), p).await.unwrap();
                        c.write(&pattern(i, 0, 500_000));
                        clients.push((c, rec));
                    }
                    wait_until(&h, LIMIT, "all accepted", || r3.borrow().len() == 10).await;
                    (clients, server)
                }
            })
            .unwrap();
        assert_eq!(recs.borrow().len(), 10);
        assert!(h.driver_kind() == DriverKind::Sim || open_fds() >= fds_before + 21);
        lp.close().unwrap();
        assert!(h.is_closed());
        for (t, rec) in &transports {
            assert!(t.is_released(), "client socket closed");
            assert_eq!(rec.borrow().lost, 1, "client told connection_lost once");
        }
        for rec in recs.borrow().iter() {
            let r = rec.borrow();
            assert_eq!(r.lost, 1, "server side told connection_lost once");
            assert!(r.transport.as_ref().unwrap().is_released());
        }
        assert!(server.is_closed());
        assert_eq!(h.table_sizes().transports, 0);
        if h.driver_kind() != DriverKind::Sim {
            assert_eq!(open_fds(), fds_before, "no descriptor left open");
        }
        drop(transports);
    });
}

/// Dropping a `create_connection` future while the connect is in flight
/// cancels the connect and closes its socket at once: nothing stays in
/// flight until the kernel gives up (minutes for an unanswered SYN).
#[test]
fn dropping_a_connect_future_cancels_the_connect_and_closes_the_socket() {
    let _fds = fd_count_lock();
    on_every_driver("dropping_connect_future", |lp| {
        let h = lp.handle();
        let real = h.driver_kind() != DriverKind::Sim;
        // A listener whose accept queue is full: further SYNs go unanswered
        // and a connect hangs (on sim the connect is simply dropped early).
        let (_full, addr) = full_listener();
        let fds_before = open_fds();
        lp.run_until_complete({
            let h = h.clone();
            async move {
                let (p, rec) = Recorder::new();
                let fut = Box::pin(h.create_connection(addr, p));
                let mut fut = Some(fut);
                if real {
                    // Poll it for a while: the connect stays in flight.
                    let f = fut.as_mut().unwrap();
                    for _ in 0..20 {
                        assert!(poll_once(f).is_pending());
                        sleep(&h, Duration::from_millis(5)).await;
                    }
                    assert_eq!(h.table_sizes().ops_in_flight, 1, "connect in flight");
                    assert_eq!(open_fds(), fds_before + 1, "its socket is open");
                }
                drop(fut.take());
                wait_until(&h, LIMIT, "connect cancelled", || {
                    h.table_sizes().ops_in_flight == 0
                })
                .await;
                assert_eq!(rec.borrow().made, 0, "the protocol never started");
                if real {
                    assert_eq!(open_fds(), fds_before, "socket closed");
                }
            }
        })
        .unwrap();
    });
}

/// A listener (kernel drivers) whose accept queue is full, and its address.
fn full_listener() -> (Vec<std::net::TcpStream>, proactor::Address) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let mut held = Vec::new();
    // Fill the queue: connects that complete, then ones that would hang.
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(50)) {
            Ok(c) => held.push(c),
            Err(_) => break,
        }
    }
    std::mem::forget(s);
    (held, addr.into())
}

/// Calls back into the loop (and into a transport) when dropped.
struct Reentrant {
    h: Handle,
    t: Option<Transport>,
    dropped: Rc<Cell<u32>>,
}

impl Drop for Reentrant {
    fn drop(&mut self) {
        self.dropped.set(self.dropped.get() + 1);
        self.h.call_soon(|| {});
        self.h.call_later(Duration::from_millis(1), || {}).cancel();
        drop(self.h.spawn(async {}));
        if let Some(t) = &self.t {
            t.pause_reading();
            t.resume_reading();
            let _ = t.get_write_buffer_size();
        }
    }
}

/// No timer closure, protocol or task is dropped while the loop's state is
/// borrowed: cancelling a timer, replacing a protocol from outside a
/// callback, and closing the loop with timers and tasks pending all drop
/// objects whose destructors call the loop and the transport.
#[test]
fn destructors_that_call_the_loop_are_safe() {
    let _fds = fd_count_lock();
    on_every_driver("destructors_call_the_loop", |lp| {
        let h = lp.handle();
        let dropped = Rc::new(Cell::new(0));
        // A cancelled timer drops its closure.
        let guard = Reentrant {
            h: h.clone(),
            t: None,
            dropped: dropped.clone(),
        };
        let timer = h.call_later(Duration::from_secs(60), move || drop(guard));
        assert!(timer.cancel());
        assert_eq!(dropped.get(), 1, "the timer's closure was dropped");

        // A protocol replaced from a timer (outside any callback).
        lp.run_until_complete({
            let (h, dropped) = (h.clone(), dropped.clone());
            async move {
                struct Proto(Reentrant);
                impl proactor::BaseProtocol for Proto {
                    fn connection_made(&mut self, t: Transport) {
                        self.0.t = Some(t);
                    }
                }
                impl proactor::Protocol for Proto {
                    fn data_received(&mut self, _: &[u8]) {}
                }
                let server = h.create_server(localhost(), || Recorder::new().0).unwrap();
                let p = Proto(Reentrant {
                    h: h.clone(),
                    t: None,
                    dropped: dropped.clone(),
                });
                let c = h.create_connection(server.local_addr(), p).await.unwrap();
                sleep(&h, Duration::from_millis(1)).await;
                let (c2, d2) = (c.clone(), dropped.clone());
                h.call_later(Duration::from_millis(1), move || {
                    c2.set_protocol(Recorder::new().0);
                    assert_eq!(d2.get(), 2, "the displaced protocol was dropped");
                });
                wait_until(&h, LIMIT, "protocol replaced", || dropped.get() == 2).await;
                c.close();
                server.close();
            }
        })
        .unwrap();

        // Closing the loop drops pending timers and tasks.
        for _ in 0..3 {
            let g = Reentrant {
                h: h.clone(),
                t: None,
                dropped: dropped.clone(),
            };
            h.call_later(Duration::from_secs(60), move || drop(g));
            let g = Reentrant {
                h: h.clone(),
                t: None,
                dropped: dropped.clone(),
            };
            drop(h.spawn(async move {
                let _g = g;
                std::future::pending::<()>().await;
            }));
        }
        lp.close().unwrap();
        assert_eq!(dropped.get(), 2 + 6, "every timer and task dropped");
    });
}
