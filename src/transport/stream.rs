//! The stream transport over a driver socket (TCP or Unix).
//!
//! # Read path (R1–R3)
//! One receive in flight at most. Its completion is *always* used: the bytes
//! go to the held queue of the [`Delivery`], whatever happened in between.
//! `pause_reading()` only sets a flag, it never cancels the receive (R2); a
//! new receive is issued only once the held queue is empty and reading is
//! not paused (R3). Where the driver provides receive buffers (`poll`), a
//! receive goes out with none and an idle connection holds no receive
//! buffer at all; elsewhere single-shot receives take buffers from the
//! loop's pool and give them back after delivery, so an idle connection
//! holds at most the one buffer of its receive in flight.
//!
//! Where the driver offers it, the one receive is a multishot
//! ([`Op::RecvMulti`]) over the driver's buffer ring: it stays armed, each
//! arrival completes with exactly its bytes, and an idle connection holds
//! no buffer at all. The same rules hold: a completion that arrives while
//! reading is paused is held, never dropped (R2); because an armed
//! multishot would go on reading (and the peer would never feel the
//! pause), that first held arrival also asks the driver to stop it, and
//! whatever still comes before its final completion is held too. A new one
//! is armed only once the final completion came (`ENOBUFS`: the ring ran
//! dry, nothing was lost; or the kernel ended it after some bytes), the
//! held queue is empty and reading is not paused (R3).
//!
//! # Write path (W1–W3)
//! Writes append to a queue of `Bytes`; one vectored send is in flight at a
//! time and takes up to [`MAX_SEND_SLICES`] slices. The buffered size counts
//! bytes not yet acknowledged by the kernel, and drives the water marks.
//! `close()` waits for the queue to drain; `abort()` cancels what is in
//! flight. The socket is closed only once every op on it has completed (O3).

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::rc::{Rc, Weak};

use super::delivery::{dispatch, Delivery};
use super::flow::{DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER};
use super::shared::{TransportCore, TransportImpl};
use super::Transport;
use crate::address::Address;
use crate::driver::{is_cancelled, Completion, Op, OpKey, SocketId};
use crate::event_loop::{Handle, OpOwner, Resource};
use crate::protocol::AnyProtocol;

/// Most slices one vectored send carries.
const MAX_SEND_SLICES: usize = 64;

/// A transport over a connected stream socket.
pub(crate) struct StreamTransport {
    /// This transport, for the completion handlers of its ops.
    this: Weak<StreamTransport>,
    core: TransportCore,
    socket: SocketId,
    peer: Option<Address>,
    local: Option<Address>,
    socket_state: RefCell<SocketState>,
    /// What runs once the socket is released (one closure, however many
    /// were registered: see `on_release`).
    release_hook: RefCell<Option<Box<dyn FnOnce()>>>,
    /// Our entry in the loop's resources (shut down when the loop closes).
    resource_key: usize,
}

/// The ops in flight on the socket, and how far its closing got.
struct SocketState {
    /// The receive in flight: single-shot, or an armed multishot.
    recv: Option<OpKey>,
    /// Receives are multishot (the driver offers them).
    multishot: bool,
    /// The armed multishot was asked to stop (bytes came while paused).
    multishot_stopping: bool,
    /// EOF or an error came from the socket: no more receives.
    read_done: bool,
    /// Test-only: the receive in flight was cancelled by `pause_reading`.
    #[cfg(any(feature = "broken-pause-cancels", feature = "broken-pause-drops-ready"))]
    recv_cancelled_by_pause: bool,
    send: Option<OpKey>,
    /// The socket read EOF while a send was in flight: the EOF waits for
    /// that send's result. The kernel reports a reset once, to whichever
    /// op runs first; a send that took it leaves the receive reading 0, and
    /// the cut connection must not pass for a clean end.
    eof_waits_for_send: bool,
    eof_requested: bool,
    /// The `SHUT_WR` was submitted (once).
    eof_sent: bool,
    shutdown: Option<OpKey>,
    closing: bool,
    aborted: bool,
    socket_closed: bool,
}

impl StreamTransport {
    /// Wraps a connected socket; `connection_made` is delivered on the next step.
    pub(crate) fn start(handle: &Handle, socket: SocketId, protocol: AnyProtocol) -> Transport {
        let (peer, local) = handle.with_driver(|driver| {
            (
                driver.peer_addr(socket).ok(),
                driver.local_addr(socket).ok(),
            )
        });
        let transport = Rc::new_cyclic(|this: &Weak<StreamTransport>| StreamTransport {
            this: this.clone(),
            core: TransportCore::new(
                handle,
                this.clone(),
                Delivery::new(protocol),
                (DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER),
            ),
            socket,
            peer,
            local,
            socket_state: RefCell::new(SocketState {
                recv: None,
                multishot: handle.supports_multishot_recv(),
                multishot_stopping: false,
                read_done: false,
                #[cfg(any(
                    feature = "broken-pause-cancels",
                    feature = "broken-pause-drops-ready"
                ))]
                recv_cancelled_by_pause: false,
                send: None,
                eof_waits_for_send: false,
                eof_requested: false,
                eof_sent: false,
                shutdown: None,
                closing: false,
                aborted: false,
                socket_closed: false,
            }),
            release_hook: RefCell::default(),
            resource_key: handle.register(this.clone(), true),
        });
        #[cfg(feature = "broken-early-delivery")]
        {
            // Broken on purpose (tests only): read at once and announce the
            // connection later, as a scheduled callback.
            transport.pump_read();
            let delayed = transport.clone();
            handle.call_later(std::time::Duration::from_millis(1), move || {
                delayed.core.schedule()
            });
            return Transport(transport);
        }
        #[allow(unreachable_code)]
        {
            transport.core.schedule();
            Transport(transport)
        }
    }

    fn strong(&self) -> Rc<StreamTransport> {
        self.this.upgrade().expect("transport used after drop")
    }

    fn pump_read(&self) {
        let mut state = self.socket_state.borrow_mut();
        let delivery = self.core.delivery();
        if state.recv.is_some()
            || state.read_done
            || state.closing
            || delivery.read_paused
            || delivery.has_held()
            || delivery.is_lost()
        {
            return;
        }
        drop(delivery);
        self.submit_recv(&mut state);
    }

    /// Submits a receive; the caller checked that one may be issued (R2,
    /// R3: at most one in flight, none while paused or holding data).
    fn submit_recv(&self, state: &mut SocketState) {
        let Some(event_loop) = self.core.event_loop() else {
            return;
        };
        if state.multishot {
            // The transport stays registered as the owner of every
            // arrival until the final completion.
            state.recv = Some(event_loop.submit_owned(
                Op::RecvMulti {
                    socket: self.socket,
                    buf: Vec::new(),
                },
                self.strong(),
            ));
            return;
        }
        let buf = event_loop.take_recv_buf();
        state.recv = Some(event_loop.submit_owned(
            Op::Recv {
                socket: self.socket,
                buf,
            },
            self.strong(),
        ));
    }

    fn on_recv(&self, completion: Completion) {
        let (Op::Recv { buf, .. } | Op::RecvMulti { buf, .. }) = completion.op else {
            unreachable!("recv handler got {}", completion.op.name())
        };
        let mut state = self.socket_state.borrow_mut();
        if !completion.more {
            state.recv = None;
            state.multishot_stopping = false;
        }
        #[cfg(any(feature = "broken-pause-cancels", feature = "broken-pause-drops-ready"))]
        if std::mem::take(&mut state.recv_cancelled_by_pause) {
            // The asyncio bug, kept to prove the tests catch it: the cancel was
            // "successful" as far as we care, so the completion is ignored.
            drop(state);
            self.core.schedule();
            return;
        }
        match completion.result {
            Ok(0) => {
                state.read_done = true;
                state.eof_waits_for_send = state.send.is_some();
                let eof_now = !state.eof_waits_for_send;
                drop(state);
                self.recycle(buf);
                if eof_now {
                    self.core.delivery_mut().push_eof();
                }
            }
            Ok(n) if state.closing => {
                // Bytes that raced with close(): accounted for, not delivered.
                drop(state);
                self.core.delivery_mut().push_discarded(n);
                self.recycle(buf);
            }
            Ok(_) => {
                if state.multishot && self.core.delivery().read_paused {
                    self.hold_multishot_arrival(&mut state, completion.more);
                    // BROKEN ON PURPOSE (`broken-multishot-drops-after-pause`),
                    // a test-only feature: an arrival of an armed multishot
                    // after the pause is dropped, as if pausing had stopped it.
                    #[cfg(feature = "broken-multishot-drops-after-pause")]
                    {
                        drop(state);
                        self.core.schedule();
                        return;
                    }
                }
                drop(state);
                // Always keep the bytes (O2), whatever happened meanwhile.
                self.core.delivery_mut().push_data(buf);
            }
            // The buffer ring ran dry: the multishot ended having taken
            // nothing; `pump_read` arms a new one if reading goes on.
            Err(e) if state.multishot && e.raw_os_error() == Some(libc::ENOBUFS) => {
                tracing::debug!(socket = ?self.socket, "multishot receive ran out of ring buffers");
                drop(state);
            }
            Err(e) if is_cancelled(&e) => {
                drop(state);
                self.recycle(buf);
            }
            // BROKEN ON PURPOSE (`broken-error-as-eof`), a test-only
            // feature: while paused, a receive error is queued behind the
            // held data as the end of the stream, so that data is not lost;
            // the application then sees a clean EOF where the connection was
            // cut (hidden truncation, the class of T4).
            #[cfg(feature = "broken-error-as-eof")]
            Err(_) if self.core.delivery().read_paused => {
                state.read_done = true;
                drop(state);
                self.core.delivery_mut().push_eof();
            }
            Err(e) => {
                state.read_done = true;
                drop(state);
                self.fail(e);
            }
        }
        self.core.schedule();
    }

    /// Bytes of the armed multishot came while reading is paused: they are
    /// held (the caller keeps them), and the multishot is asked to stop so
    /// the socket stops being read; arrivals that beat the cancel are held
    /// too (R2), and resuming arms a new one after its final completion.
    fn hold_multishot_arrival(&self, state: &mut SocketState, more: bool) {
        let Some(event_loop) = self.core.event_loop() else {
            return;
        };
        event_loop.with_driver(|driver| driver.count_multishot_held());
        if let (true, false, Some(key)) = (more, state.multishot_stopping, state.recv) {
            state.multishot_stopping = true;
            event_loop.cancel(key);
        }
    }

    fn pump_write(&self) {
        let mut state = self.socket_state.borrow_mut();
        if state.send.is_some() || state.aborted || state.socket_closed {
            return;
        }
        let Some(event_loop) = self.core.event_loop() else {
            return;
        };
        // Most runs (after a send or a receive completed) find nothing
        // written: then no `Vec` is taken from the pool and given back.
        if self.write_buffer_size() > 0 {
            let mut bufs = event_loop.take_send_vec();
            let offset = self.core.with_send_queue(|queue| {
                queue.seal();
                queue.front_chunks(MAX_SEND_SLICES, &mut bufs)
            });
            if !bufs.is_empty() {
                state.send = Some(event_loop.submit_owned(
                    Op::Send {
                        socket: self.socket,
                        bufs,
                        offset,
                    },
                    self.strong(),
                ));
                return;
            }
            event_loop.give_send_vec(bufs);
        }
        if state.eof_requested && !state.eof_sent && !state.closing {
            state.eof_sent = true;
            state.shutdown = Some(event_loop.submit_owned(
                Op::Shutdown {
                    socket: self.socket,
                    how: Shutdown::Write,
                },
                self.strong(),
            ));
            return;
        }
        if state.closing && !self.core.delivery().is_lost() {
            drop(state);
            // Everything written went out: the graceful close completes.
            self.core.delivery_mut().lose(None);
            self.core.schedule();
        }
    }

    fn on_send(&self, completion: Completion) {
        let mut state = self.socket_state.borrow_mut();
        state.send = None;
        // An EOF read while this send was in flight: a clean end unless the
        // send took a reset's error (then `fail` below reports it instead).
        let eof_waited = std::mem::take(&mut state.eof_waits_for_send);
        if eof_waited && !matches!(&completion.result, Err(e) if !is_cancelled(e)) {
            self.core.delivery_mut().push_eof();
        }
        match completion.result {
            // After abort the queue is gone: a send that completed anyway
            // (cancel raced, or landed mid-transfer) only counts as sent.
            Ok(sent) if state.aborted => self
                .core
                .with_send_queue(|queue| queue.passed_on_after_clear(sent)),
            Ok(sent) => self.core.with_send_queue(|queue| queue.advance(sent)),
            Err(e) if is_cancelled(&e) => {}
            Err(e) => {
                drop(state);
                self.fail(e);
            }
        }
        // The Bytes of the send are released here (W3); its `Vec` is reused.
        if let (Op::Send { bufs, .. }, Some(event_loop)) = (completion.op, self.core.event_loop()) {
            event_loop.give_send_vec(bufs);
        }
        self.core.schedule();
    }

    fn on_shutdown(&self, completion: Completion) {
        self.socket_state.borrow_mut().shutdown = None;
        if let Err(e) = completion.result {
            if !is_cancelled(&e) && e.raw_os_error() != Some(libc::ENOTCONN) {
                self.fail(e);
            }
        }
        self.core.schedule();
    }

    /// Drops the write queue, cancels every op in flight.
    fn teardown(&self) {
        let mut state = self.socket_state.borrow_mut();
        state.closing = true;
        state.aborted = true;
        let keys: Vec<OpKey> = [state.recv, state.send, state.shutdown]
            .into_iter()
            .flatten()
            .collect();
        drop(state);
        self.core.discard_unsent();
        if let Some(event_loop) = self.core.event_loop() {
            for key in keys {
                event_loop.cancel(key);
            }
        }
    }

    /// Closes the socket once nothing is in flight on it and the protocol has
    /// been told (O3: the kernel never writes into memory we freed).
    fn maybe_release_socket(&self) {
        let mut state = self.socket_state.borrow_mut();
        if state.socket_closed || !self.core.delivery().finished {
            return;
        }
        if state.recv.is_some() || state.send.is_some() || state.shutdown.is_some() {
            return;
        }
        state.socket_closed = true;
        drop(state);
        if let Some(event_loop) = self.core.event_loop() {
            event_loop.with_driver(|driver| driver.close(self.socket));
            event_loop.unregister(self.resource_key, true);
        }
        let hook = self.release_hook.borrow_mut().take();
        if let Some(f) = hook {
            f();
        }
    }
}

/// The completions of the transport's receive, send and shutdown.
impl OpOwner for StreamTransport {
    fn complete(self: Rc<Self>, completion: Completion) {
        match completion.op {
            Op::Recv { .. } | Op::RecvMulti { .. } => self.on_recv(completion),
            Op::Send { .. } => self.on_send(completion),
            Op::Shutdown { .. } => self.on_shutdown(completion),
            ref other => unreachable!("a transport got the completion of {}", other.name()),
        }
    }
}

impl Resource for StreamTransport {
    fn shut_down(self: Rc<Self>) {
        TransportImpl::abort(&*self);
    }
}

impl TransportImpl for StreamTransport {
    fn core(&self) -> &TransportCore {
        &self.core
    }

    /// Delivers what is deliverable, then keeps the read and write pumps going.
    fn run(&self) {
        dispatch(self);
        self.pump_read();
        self.pump_write();
        self.maybe_release_socket();
    }

    fn accepts_writes(&self) -> bool {
        let state = self.socket_state.borrow();
        !state.closing && !state.eof_requested
    }

    /// Ends the connection with `error`: drops unsent data, cancels ops.
    fn fail(&self, error: io::Error) {
        tracing::debug!(peer = ?self.peer, %error, "connection lost");
        self.teardown();
        self.core.delivery_mut().lose(Some(error));
        self.core.schedule();
    }

    fn recycle(&self, buf: Vec<u8>) {
        if let Some(event_loop) = self.core.event_loop() {
            event_loop.give_recv_buf(buf);
        }
    }

    fn write_eof(&self) -> io::Result<()> {
        let mut state = self.socket_state.borrow_mut();
        if state.closing || state.eof_requested {
            return Ok(());
        }
        state.eof_requested = true;
        drop(state);
        self.core.schedule();
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn count_read_pause(&self) {
        let recv = self.socket_state.borrow().recv;
        if let Some(event_loop) = self.core.event_loop() {
            event_loop.with_driver(|driver| driver.count_read_pause(recv));
        }
    }

    #[cfg(feature = "broken-pause-cancels")]
    fn pause_reading(&self) {
        let mut delivery = self.core.delivery_mut();
        if delivery.read_paused {
            return;
        }
        delivery.read_paused = true;
        drop(delivery);
        self.count_read_pause();
        let mut state = self.socket_state.borrow_mut();
        if let Some(key) = state.recv {
            state.recv_cancelled_by_pause = true;
            drop(state);
            if let Some(event_loop) = self.core.event_loop() {
                event_loop.cancel(key);
            }
        }
    }

    // BROKEN ON PURPOSE (`broken-double-recv`), a test-only feature
    // (bpo-26819): resuming starts a receive at once, without looking for
    // the one still in flight, as asyncio's proactor `resume_reading()`
    // called `_loop_reading()`. Two receives are then in flight on one
    // socket, and the transport keeps track of the second only.
    #[cfg(feature = "broken-double-recv")]
    fn resume_reading(&self) {
        let mut delivery = self.core.delivery_mut();
        if std::mem::take(&mut delivery.read_paused) && !delivery.has_held() {
            drop(delivery);
            let mut state = self.socket_state.borrow_mut();
            if !state.read_done && !state.closing {
                self.submit_recv(&mut state);
            }
        }
        self.core.schedule();
    }

    // BROKEN ON PURPOSE (`broken-pause-drops-ready`), a test-only feature:
    // bpo-33694 reduced to its window. A receive still pending is left alone
    // (R2 looks kept), but one whose completion is ready and not yet reaped
    // is cancelled, and `on_recv` ignores what it returns, as asyncio did
    // when `CancelIoEx` failed with `ERROR_NOT_FOUND`: those bytes vanish.
    #[cfg(feature = "broken-pause-drops-ready")]
    fn pause_reading(&self) {
        self.core.delivery_mut().read_paused = true;
        let mut state = self.socket_state.borrow_mut();
        if let (Some(key), Some(event_loop)) = (state.recv, self.core.event_loop()) {
            if event_loop.with_driver(|driver| driver.completion_ready(key)) {
                state.recv_cancelled_by_pause = true;
                event_loop.cancel(key);
            }
        }
    }

    fn close(&self) {
        let mut state = self.socket_state.borrow_mut();
        if state.closing {
            return;
        }
        state.closing = true;
        let recv = state.recv;
        drop(state);
        // Receive nothing more: held data is dropped (counted), and the
        // receive in flight is asked to stop; its completion still arrives
        // and its bytes are counted as discarded.
        self.core.delivery_mut().close_reading();
        if let (Some(key), Some(event_loop)) = (recv, self.core.event_loop()) {
            event_loop.cancel(key);
        }
        self.core.schedule();
    }

    fn abort(&self) {
        if self.core.delivery().is_lost() {
            return;
        }
        self.teardown();
        self.core.delivery_mut().lose(None);
        self.core.schedule();
    }

    fn is_closing(&self) -> bool {
        self.socket_state.borrow().closing || self.core.delivery().is_lost()
    }

    fn peer_addr(&self) -> Option<Address> {
        self.peer.clone()
    }

    fn local_addr(&self) -> Option<Address> {
        self.local.clone()
    }

    fn is_released(&self) -> bool {
        self.socket_state.borrow().socket_closed
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        let kernel = self
            .core
            .event_loop()
            .is_some_and(|h| h.driver_kind() != crate::DriverKind::Sim);
        (kernel && !self.socket_state.borrow().socket_closed).then_some(self.socket.0)
    }

    fn on_release(&self, f: Box<dyn FnOnce()>) {
        if self.is_released() {
            f();
            return;
        }
        // Hooks run in the order they came: a second one is chained after
        // the first (rare: a TLS connection's timer and its server).
        let mut hook = self.release_hook.borrow_mut();
        *hook = Some(match hook.take() {
            None => f,
            Some(first) => Box::new(move || {
                first();
                f();
            }),
        });
    }
}
