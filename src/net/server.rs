//! Listening servers: accept loop with back-off (L3) and connection tracking.
//!
//! Where the driver offers it ([`Op::AcceptMulti`], io_uring), one multishot
//! accept stays armed and hands over every connection the kernel accepts;
//! when the kernel ends it (an error, or it stopped after one more), the
//! server arms it again, at once or after a back-off, exactly as it would
//! a single-shot [`Op::Accept`] after the same result.
//!
//! A multishot accept takes the whole listen backlog in one kernel call
//! (over a thousand connections under a storm), so its connections are not
//! started at once: they wait in arrival order and at most
//! [`STARTS_PER_TURN`] start per loop turn, so that one turn never spends
//! itself starting them while new connections overflow the backlog. Past
//! [`UNSTARTED_MAX`] waiting, the accept is cancelled and armed again once
//! they are down to half: the listen backlog pushes back, as it does on a
//! loop accepting one connection per turn.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use slab::Slab;

use crate::address::Address;
use crate::driver::socket::{classify_accept_error, AcceptError};
use crate::driver::{is_cancelled, Completion, Op, OpKey, SocketId};
use crate::event_loop::{
    guarded, ExceptionContext, ExceptionSource, Handle, OpOwner, Resource, TimerHandle, WeakHandle,
};
use crate::net::ServerOptions;
use crate::protocol::AnyProtocol;
use crate::transport::{StreamTransport, Transport};

/// Connections a multishot accept handed over that start in one loop turn.
const STARTS_PER_TURN: usize = 32;
/// Connections waiting to start above which the multishot accept is
/// cancelled (armed again when half are started).
const UNSTARTED_MAX: usize = 512;

/// First pause after an accept error; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Builds the transport for an accepted socket (plain by default; the TLS
/// layer supplies one that wraps the protocol).
pub(crate) type Starter = Rc<dyn Fn(&Handle, SocketId, AnyProtocol) -> Transport>;

/// A listening server. Dropping the handle does not stop it; call
/// [`Server::close`].
#[derive(Clone)]
pub struct Server {
    inner: Rc<Inner>,
}

struct Inner {
    handle: WeakHandle,
    listener: SocketId,
    addr: Address,
    factory: Box<dyn Fn() -> AnyProtocol>,
    starter: Starter,
    options: ServerOptions,
    state: RefCell<State>,
    /// Our entry in the loop's resources (closed when the loop closes).
    resource_key: Cell<Option<usize>>,
}

impl Resource for Inner {
    fn shut_down(self: Rc<Self>) {
        Server { inner: self }.close();
    }
}

/// The owner of a multishot accept: every completion, up to its final one.
impl OpOwner for Inner {
    fn complete(self: Rc<Self>, completion: Completion) {
        Server { inner: self }.on_accept(completion);
    }
}

#[derive(Default)]
struct State {
    accept: Option<OpKey>,
    backoff: Option<TimerHandle>,
    next_backoff: Duration,
    closed: bool,
    listener_closed: bool,
    /// The accepted connections whose socket is not released yet; each
    /// removes itself when it is (see `start_connection`).
    connections: Slab<Transport>,
    accepted: u64,
    accept_errors: u64,
    waiters: Vec<Waker>,
    /// Sockets a multishot accept handed over that are not started yet,
    /// oldest first.
    unstarted: VecDeque<SocketId>,
    /// A [`Server::start_unstarted`] callback is scheduled.
    starts_scheduled: bool,
    /// The multishot accept was cancelled for too many unstarted sockets:
    /// not armed again until they are down to half.
    accept_held: bool,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.borrow();
        f.debug_struct("Server")
            .field("addr", &self.inner.addr)
            .field("closed", &state.closed)
            .field("connections", &state.connections.len())
            .finish()
    }
}

impl Handle {
    /// Listens on `addr` and runs a protocol from `factory` on every accepted
    /// connection. Port 0 picks a free port: see [`Server::local_addr`].
    ///
    /// The server accepts from the next loop step on, until
    /// [`Server::close`]. A failed accept never stops it (L3): an error of
    /// one incoming connection is skipped, resource exhaustion (`EMFILE`,
    /// `ENOBUFS`...) pauses accepting: 10 ms, doubling up to 1 s. A panic in
    /// `factory` refuses that one connection (L5).
    ///
    /// # Errors
    /// The listening socket cannot be created, bound (address in use, no
    /// permission, a Unix path that exists) or put in listening mode.
    ///
    /// # Examples
    ///
    /// ```
    /// use proactor::{Address, BaseProtocol, EventLoop, Protocol, Transport};
    ///
    /// /// Writes back what it receives.
    /// #[derive(Default)]
    /// struct Echo(Option<Transport>);
    ///
    /// impl BaseProtocol for Echo {
    ///     fn connection_made(&mut self, transport: Transport) {
    ///         self.0 = Some(transport);
    ///     }
    /// }
    ///
    /// impl Protocol for Echo {
    ///     fn data_received(&mut self, data: &[u8]) {
    ///         if let Some(t) = &self.0 {
    ///             t.write(data);
    ///         }
    ///     }
    /// }
    ///
    /// let event_loop = EventLoop::new()?;
    /// let addr: Address = "127.0.0.1:0".parse()?;
    /// let server = event_loop.handle().create_server(addr, Echo::default)?;
    /// println!("listening on {}", server.local_addr());
    /// // event_loop.run_forever()? would serve until `stop()`.
    /// server.close();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn create_server<P, F>(&self, addr: impl Into<Address>, factory: F) -> io::Result<Server>
    where
        P: Into<AnyProtocol>,
        F: Fn() -> P + 'static,
    {
        self.create_server_with(
            addr.into(),
            move || factory().into(),
            ServerOptions::default(),
        )
    }

    /// [`Handle::create_server`] with options.
    ///
    /// # Errors
    /// As [`Handle::create_server`].
    pub fn create_server_with(
        &self,
        addr: Address,
        factory: impl Fn() -> AnyProtocol + 'static,
        options: ServerOptions,
    ) -> io::Result<Server> {
        let starter: Starter = Rc::new(StreamTransport::start);
        self.create_server_inner(addr, Box::new(factory), options, starter)
    }

    pub(crate) fn create_server_inner(
        &self,
        addr: Address,
        factory: Box<dyn Fn() -> AnyProtocol>,
        options: ServerOptions,
        starter: Starter,
    ) -> io::Result<Server> {
        let listener = self.with_driver(|d| d.listen(&addr, options.backlog))?;
        Ok(self.serve(listener, addr, factory, options, starter))
    }

    /// Serves on a listening socket the driver owns: from the next step on,
    /// accepted connections get a protocol from `factory`.
    pub(crate) fn serve(
        &self,
        listener: SocketId,
        addr: Address,
        factory: Box<dyn Fn() -> AnyProtocol>,
        options: ServerOptions,
        starter: Starter,
    ) -> Server {
        let bound = self.with_driver(|d| d.local_addr(listener)).unwrap_or(addr);
        let server = Server {
            inner: Rc::new(Inner {
                handle: self.downgrade(),
                listener,
                addr: bound,
                factory,
                starter,
                options,
                state: RefCell::new(State {
                    next_backoff: MIN_BACKOFF,
                    ..State::default()
                }),
                resource_key: Cell::new(None),
            }),
        };
        let weak: Weak<Inner> = Rc::downgrade(&server.inner);
        let key = self.register(weak, false);
        server.inner.resource_key.set(Some(key));
        server.arm();
        server
    }
}

impl Server {
    /// The address the server listens on (with the real port if 0 was asked).
    pub fn local_addr(&self) -> Address {
        self.inner.addr.clone()
    }

    /// Whether [`Server::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.state.borrow().closed
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.inner.state.borrow().accepted
    }

    /// Accept errors survived so far (L3).
    pub fn accept_errors(&self) -> u64 {
        self.inner.state.borrow().accept_errors
    }

    /// Connections whose transport is still open.
    pub fn active_connections(&self) -> usize {
        self.inner.state.borrow().connections.len()
    }

    /// Stops accepting and closes the listening socket; existing connections
    /// go on (asyncio's `Server.close`).
    pub fn close(&self) {
        let mut state = self.inner.state.borrow_mut();
        if state.closed {
            return;
        }
        state.closed = true;
        let accept = state.accept;
        let backoff = state.backoff.take();
        let unstarted = std::mem::take(&mut state.unstarted);
        drop(state);
        if let Some(t) = backoff {
            t.cancel();
        }
        if let Some(h) = self.inner.handle.upgrade() {
            // Accepted but never handed to a protocol: closed cleanly.
            h.with_driver(|d| unstarted.into_iter().for_each(|s| d.close(s)));
        }
        match (accept, self.inner.handle.upgrade()) {
            (Some(k), Some(h)) => h.cancel(k),
            _ => self.close_listener(),
        }
    }

    /// Closes every connection gracefully.
    pub fn close_clients(&self) {
        for t in self.connections() {
            t.close();
        }
    }

    /// Aborts every connection.
    pub fn abort_clients(&self) {
        for t in self.connections() {
            t.abort();
        }
    }

    /// The open connections (a copy: closing one changes the set).
    fn connections(&self) -> Vec<Transport> {
        let state = self.inner.state.borrow();
        state.connections.iter().map(|(_, t)| t.clone()).collect()
    }

    /// Resolves once the server is closed and every connection it accepted
    /// has been released.
    pub fn wait_closed(&self) -> WaitClosed {
        WaitClosed {
            server: self.clone(),
        }
    }

    fn close_listener(&self) {
        let mut state = self.inner.state.borrow_mut();
        if state.listener_closed {
            return;
        }
        state.listener_closed = true;
        drop(state);
        if let Some(h) = self.inner.handle.upgrade() {
            if let Some(key) = self.inner.resource_key.take() {
                h.unregister(key, false);
            }
            // The driver unlinks a Unix listener's path as it closes it.
            h.with_driver(|d| d.close(self.inner.listener));
        }
        self.notify();
    }

    fn notify(&self) {
        let waiters = std::mem::take(&mut self.inner.state.borrow_mut().waiters);
        for w in waiters {
            w.wake();
        }
    }

    /// Keeps one accept in flight.
    fn arm(&self) {
        let Some(h) = self.inner.handle.upgrade() else {
            return;
        };
        let mut state = self.inner.state.borrow_mut();
        if state.closed || state.accept.is_some() || state.accept_held {
            return;
        }
        let listener = self.inner.listener;
        state.accept = Some(if h.supports_multishot_accept() {
            let owner: Rc<dyn OpOwner> = self.inner.clone();
            h.submit_owned(
                Op::AcceptMulti {
                    listener,
                    accepted: None,
                },
                owner,
            )
        } else {
            let server = self.clone();
            h.submit(
                Op::Accept {
                    listener,
                    accepted: None,
                },
                Box::new(move |c| server.on_accept(c)),
            )
        });
    }

    fn on_accept(&self, c: Completion) {
        let Some(h) = self.inner.handle.upgrade() else {
            return;
        };
        let more = c.more;
        if !more {
            // The accept (single-shot, or the multishot's final completion)
            // is over: whatever follows arms the next one.
            self.inner.state.borrow_mut().accept = None;
        }
        let multishot = matches!(c.op, Op::AcceptMulti { .. });
        let accepted = match c.op {
            Op::Accept { accepted, .. } | Op::AcceptMulti { accepted, .. } => accepted,
            _ => None,
        };
        match (c.result, accepted) {
            (Ok(_), Some((socket, _peer))) => {
                if self.inner.state.borrow().closed {
                    // The accept won the race with close(): the connection was
                    // never handed to anyone, so close it cleanly.
                    h.with_driver(|d| d.close(socket));
                } else if multishot {
                    self.queue_start(&h, socket);
                } else {
                    self.start_connection(&h, socket);
                }
                self.inner.state.borrow_mut().next_backoff = MIN_BACKOFF;
                if more {
                    return; // still armed
                }
                self.arm();
            }
            (Err(e), _) if is_cancelled(&e) => self.rearm_if_drained(),
            (Err(e), _) if classify_accept_error(&e) == AcceptError::Connection => {
                // L3: one incoming connection failed (a peer that reset before
                // it was accepted, a firewall...): skip it and accept the
                // next one at once. Backing off here would let any client
                // stall the server by resetting.
                tracing::debug!(addr = %self.inner.addr, error = %e, "accept: connection failed; next");
                let mut state = self.inner.state.borrow_mut();
                state.accept_errors += 1;
                state.next_backoff = MIN_BACKOFF;
                drop(state);
                self.arm();
            }
            (Err(e), _) => {
                self.backoff(&h, e);
                return;
            }
            (Ok(_), None) => {
                self.backoff(&h, io::Error::other("accept completed without a socket"));
                return;
            }
        }
        // A multishot accept still armed keeps the listener open until its
        // final completion (the cancel `close` asked for).
        if !more && self.inner.state.borrow().closed {
            self.close_listener();
        }
    }

    /// Queues a socket of the multishot accept to start in a later turn;
    /// cancels the accept if too many wait.
    fn queue_start(&self, h: &Handle, socket: SocketId) {
        let mut state = self.inner.state.borrow_mut();
        state.unstarted.push_back(socket);
        let cancel = match state.accept {
            Some(key) if state.unstarted.len() > UNSTARTED_MAX && !state.accept_held => {
                state.accept_held = true;
                Some(key)
            }
            _ => None,
        };
        drop(state);
        if let Some(key) = cancel {
            tracing::debug!(addr = %self.inner.addr, "accept: {UNSTARTED_MAX} connections wait to start; holding the accept");
            h.cancel(key);
        }
        self.schedule_starts(h);
    }

    fn schedule_starts(&self, h: &Handle) {
        let mut state = self.inner.state.borrow_mut();
        if state.starts_scheduled || state.unstarted.is_empty() {
            return;
        }
        state.starts_scheduled = true;
        drop(state);
        let server = self.clone();
        h.call_soon(move || server.start_unstarted());
    }

    /// Starts up to [`STARTS_PER_TURN`] waiting connections; the rest wait
    /// for the next turn.
    fn start_unstarted(&self) {
        let Some(h) = self.inner.handle.upgrade() else {
            return;
        };
        self.inner.state.borrow_mut().starts_scheduled = false;
        for _ in 0..STARTS_PER_TURN {
            let next = {
                let mut state = self.inner.state.borrow_mut();
                if state.closed {
                    break; // close() closed them
                }
                state.unstarted.pop_front()
            };
            let Some(socket) = next else {
                break;
            };
            self.start_connection(&h, socket);
        }
        self.rearm_if_drained();
        self.schedule_starts(&h);
    }

    /// Arms the held multishot accept again once its final completion came
    /// and the waiting connections are down to half of [`UNSTARTED_MAX`].
    fn rearm_if_drained(&self) {
        let mut state = self.inner.state.borrow_mut();
        let drained = state.unstarted.len() <= UNSTARTED_MAX / 2;
        if !(state.accept_held && state.accept.is_none() && drained) {
            return;
        }
        state.accept_held = false;
        let waiting = state.backoff.is_some();
        drop(state);
        if !waiting {
            self.arm();
        }
    }

    fn start_connection(&self, h: &Handle, socket: SocketId) {
        if let Err(e) = self.inner.options.socket.apply(h, socket) {
            tracing::warn!(%e, "could not set options on an accepted socket");
        }
        let protocol = match guarded(|| (self.inner.factory)()) {
            Ok(p) => p,
            Err(payload) => {
                // L5: this connection is refused; the server keeps accepting.
                let peer = h.with_driver(|d| d.peer_addr(socket).ok());
                h.with_driver(|d| d.close(socket));
                h.report_exception(
                    ExceptionContext::from_panic(ExceptionSource::ProtocolFactory, payload)
                        .with_addresses(peer, Some(self.inner.addr.clone())),
                );
                return;
            }
        };
        let t = (self.inner.starter)(h, socket, protocol);
        let key = {
            let mut state = self.inner.state.borrow_mut();
            state.accepted += 1;
            state.connections.insert(t.clone())
        };
        let server = self.clone();
        t.on_release(Box::new(move || server.released(key)));
    }

    /// The connection under `key` released its socket: the server forgets it.
    fn released(&self, key: usize) {
        let t = self.inner.state.borrow_mut().connections.try_remove(key);
        self.notify();
        // Dropped outside the borrow (it may be the transport's last handle).
        drop(t);
    }

    /// L3: resource exhaustion (or a broken listener) never ends the server;
    /// wait, then accept again. The pause doubles up to [`MAX_BACKOFF`] and
    /// starts over after a successful accept.
    fn backoff(&self, h: &Handle, error: io::Error) {
        let mut state = self.inner.state.borrow_mut();
        state.accept_errors += 1;
        if state.closed {
            drop(state);
            self.close_listener();
            return;
        }
        let delay = state.next_backoff;
        state.next_backoff = (delay * 2).min(MAX_BACKOFF);
        if classify_accept_error(&error) == AcceptError::Resources {
            tracing::warn!(addr = %self.inner.addr, %error, ?delay, "accept: out of resources; backing off");
        } else {
            tracing::error!(addr = %self.inner.addr, %error, ?delay, "accept failed; backing off");
        }
        let server = self.clone();
        state.backoff = Some(h.call_later(delay, move || {
            server.inner.state.borrow_mut().backoff = None;
            server.arm();
        }));
    }
}

/// Future returned by [`Server::wait_closed`].
#[derive(Debug)]
pub struct WaitClosed {
    server: Server,
}

impl Future for WaitClosed {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let s = &self.server;
        let done =
            s.is_closed() && s.inner.state.borrow().listener_closed && s.active_connections() == 0;
        if done {
            return Poll::Ready(());
        }
        // Connections wake us when they are released (see `start_connection`).
        s.inner.state.borrow_mut().waiters.push(cx.waker().clone());
        Poll::Pending
    }
}
