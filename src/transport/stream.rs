//! The stream transport over a driver socket (TCP or Unix).
//!
//! # Read path (R1–R3)
//! One receive in flight at most. Its completion is *always* used: the bytes
//! go to the held queue of the [`Delivery`], whatever happened in between.
//! `pause_reading()` only sets a flag, it never cancels the receive (R2); a
//! new receive is issued only once the held queue is empty and reading is
//! not paused (R3). Receive buffers come from the loop's pool and go back to
//! it after delivery, so an idle connection holds at most the one buffer of
//! its receive in flight; a kernel buffer ring can replace the pool later
//! without touching the layers above.
//!
//! # Write path (W1–W3)
//! Writes append to a queue of `Bytes`; one vectored send is in flight at a
//! time and takes up to [`MAX_SEND_SLICES`] slices. The buffered size counts
//! bytes not yet acknowledged by the kernel, and drives the water marks.
//! `close()` waits for the queue to drain; `abort()` cancels what is in
//! flight. The socket is closed only once every op on it has completed (O3).

use std::cell::{Cell, RefCell, RefMut};
use std::collections::VecDeque;
use std::io;
use std::net::Shutdown;
use std::rc::{Rc, Weak};

use bytes::{Bytes, BytesMut};

use super::delivery::{dispatch, Delivery, DeliveryHost, Ledger};
use super::flow::{WriteEdges, WriteFlow, DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER};
use super::{TlsInfo, Transport, TransportImpl};
use crate::address::Address;
use crate::driver::{is_cancelled, Completion, Op, OpKey, SocketId};
use crate::event_loop::{Handle, Resource, WeakHandle};
use crate::protocol::AnyProtocol;

/// Most slices one vectored send carries.
const MAX_SEND_SLICES: usize = 64;
/// Writes smaller than this are copied into a coalescing buffer.
const COALESCE_BELOW: usize = 16 * 1024;

/// A transport over a connected stream socket.
pub(crate) struct StreamTransport {
    socket: SocketId,
    lp: WeakHandle,
    me: Weak<StreamTransport>,
    st: RefCell<State>,
    delivery: RefCell<Delivery>,
    /// A dispatch is queued on the loop.
    scheduled: Cell<bool>,
    peer: Option<Address>,
    local: Option<Address>,
    release_hooks: RefCell<Vec<Box<dyn FnOnce()>>>,
    /// Our entry in the loop's resources (shut down when the loop closes).
    resource_key: usize,
}

struct State {
    recv: Option<OpKey>,
    /// EOF or an error came from the socket: no more receives.
    read_done: bool,
    /// Test-only: the receive in flight was cancelled by `pause_reading`.
    #[cfg(feature = "broken-pause-cancels")]
    recv_cancelled_by_pause: bool,

    queue: VecDeque<Bytes>,
    /// Bytes of `queue[0]` already sent.
    front_sent: usize,
    /// Small writes not yet moved into `queue`.
    pending: BytesMut,
    /// Bytes written and not yet acknowledged (queue + pending).
    buffered: usize,
    send: Option<OpKey>,
    flow: WriteFlow,

    eof_requested: bool,
    /// The `SHUT_WR` was submitted (once).
    eof_sent: bool,
    shutdown: Option<OpKey>,
    closing: bool,
    aborted: bool,
    socket_closed: bool,
    dropped_writes: u64,
}

impl StreamTransport {
    /// Wraps a connected socket; `connection_made` is delivered on the next step.
    pub(crate) fn start(handle: &Handle, socket: SocketId, protocol: AnyProtocol) -> Transport {
        let (peer, local) =
            handle.with_driver(|d| (d.peer_addr(socket).ok(), d.local_addr(socket).ok()));
        let t = Rc::new_cyclic(|me: &Weak<StreamTransport>| StreamTransport {
            socket,
            lp: handle.downgrade(),
            me: me.clone(),
            st: RefCell::new(State {
                recv: None,
                read_done: false,
                #[cfg(feature = "broken-pause-cancels")]
                recv_cancelled_by_pause: false,
                queue: VecDeque::new(),
                front_sent: 0,
                pending: BytesMut::new(),
                buffered: 0,
                send: None,
                flow: WriteFlow::new(DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER),
                eof_requested: false,
                eof_sent: false,
                shutdown: None,
                closing: false,
                aborted: false,
                socket_closed: false,
                dropped_writes: 0,
            }),
            delivery: RefCell::new(Delivery::new(protocol)),
            scheduled: Cell::new(false),
            peer,
            local,
            release_hooks: RefCell::default(),
            resource_key: handle.register(me.clone(), true),
        });
        #[cfg(feature = "broken-early-delivery")]
        {
            // Broken on purpose (tests only): read at once and announce the
            // connection later, as a scheduled callback.
            t.pump_read();
            let me = t.clone();
            handle.call_later(std::time::Duration::from_millis(1), move || me.schedule());
            return Transport(t);
        }
        #[allow(unreachable_code)]
        {
            t.schedule();
            Transport(t)
        }
    }

    fn rc(&self) -> Rc<StreamTransport> {
        self.me.upgrade().expect("transport used after drop")
    }

    /// Queues a dispatch (and the pumps after it) on the loop, once.
    fn schedule(&self) {
        if self.scheduled.replace(true) {
            return;
        }
        let Some(h) = self.lp.upgrade() else { return };
        let me = self.rc();
        h.call_soon_internal(move || {
            me.scheduled.set(false);
            me.run();
        });
    }

    /// Delivers what is deliverable, then keeps the read and write pumps going.
    fn run(&self) {
        dispatch(self);
        self.pump_read();
        self.pump_write();
        self.maybe_release_socket();
    }

    fn pump_read(&self) {
        let mut st = self.st.borrow_mut();
        let d = self.delivery.borrow();
        if st.recv.is_some()
            || st.read_done
            || st.closing
            || d.read_paused
            || d.has_held()
            || d.is_lost()
        {
            return;
        }
        drop(d);
        let Some(h) = self.lp.upgrade() else { return };
        let buf = h.take_recv_buf();
        let me = self.rc();
        st.recv = Some(h.submit(
            Op::Recv {
                socket: self.socket,
                buf,
            },
            Box::new(move |c| me.on_recv(c)),
        ));
    }

    fn on_recv(&self, c: Completion) {
        let Op::Recv { buf, .. } = c.op else {
            unreachable!("recv handler got {}", c.op.name())
        };
        let mut st = self.st.borrow_mut();
        st.recv = None;
        #[cfg(feature = "broken-pause-cancels")]
        if std::mem::take(&mut st.recv_cancelled_by_pause) {
            // The asyncio bug, kept to prove the tests catch it: the cancel was
            // "successful" as far as we care, so the completion is ignored.
            drop(st);
            self.schedule();
            return;
        }
        match c.result {
            Ok(0) => {
                st.read_done = true;
                drop(st);
                if let Some(h) = self.lp.upgrade() {
                    h.give_recv_buf(buf);
                }
                self.delivery.borrow_mut().push_eof();
            }
            Ok(n) if st.closing => {
                // Bytes that raced with close(): accounted for, not delivered.
                drop(st);
                self.delivery.borrow_mut().push_discarded(n);
                self.recycle(buf);
            }
            Ok(_) => {
                drop(st);
                // Always keep the bytes (O2), whatever happened meanwhile.
                self.delivery.borrow_mut().push_data(buf);
            }
            Err(e) if is_cancelled(&e) => {
                drop(st);
                if let Some(h) = self.lp.upgrade() {
                    h.give_recv_buf(buf);
                }
            }
            Err(e) => {
                st.read_done = true;
                drop(st);
                self.fatal(e);
            }
        }
        self.schedule();
    }

    fn pump_write(&self) {
        let mut st = self.st.borrow_mut();
        if st.send.is_some() || st.aborted || st.socket_closed {
            return;
        }
        if !st.pending.is_empty() {
            let chunk = st.pending.split().freeze();
            st.queue.push_back(chunk);
        }
        let Some(h) = self.lp.upgrade() else { return };
        if !st.queue.is_empty() {
            let bufs: Vec<Bytes> = st.queue.iter().take(MAX_SEND_SLICES).cloned().collect();
            let offset = st.front_sent;
            let me = self.rc();
            st.send = Some(h.submit(
                Op::Send {
                    socket: self.socket,
                    bufs,
                    offset,
                },
                Box::new(move |c| me.on_send(c)),
            ));
            return;
        }
        if st.eof_requested && !st.eof_sent && !st.closing {
            st.eof_sent = true;
            let me = self.rc();
            st.shutdown = Some(h.submit(
                Op::Shutdown {
                    socket: self.socket,
                    how: Shutdown::Write,
                },
                Box::new(move |c| me.on_shutdown(c)),
            ));
            return;
        }
        if st.closing && !self.delivery.borrow().is_lost() {
            drop(st);
            // Everything written went out: the graceful close completes.
            self.delivery.borrow_mut().lose(None);
            self.schedule();
        }
    }

    fn on_send(&self, c: Completion) {
        let mut st = self.st.borrow_mut();
        st.send = None;
        match c.result {
            // After abort the queue is gone: a send that completed anyway
            // (cancel raced) has nothing left to account for.
            Ok(_) if st.aborted => {}
            Ok(mut n) => {
                st.buffered -= n;
                while n > 0 {
                    let Some(front) = st.queue.front().map(|b| b.len() - st.front_sent) else {
                        unreachable!("sent more than was queued");
                    };
                    if n >= front {
                        n -= front;
                        st.queue.pop_front();
                        st.front_sent = 0;
                    } else {
                        st.front_sent += n;
                        n = 0;
                    }
                }
                let size = st.buffered;
                st.flow.update(size);
            }
            Err(e) if is_cancelled(&e) => {}
            Err(e) => {
                drop(st);
                self.fatal(e);
            }
        }
        // `c.op` (and the Bytes it holds) is released here: W3.
        self.schedule();
    }

    fn on_shutdown(&self, c: Completion) {
        self.st.borrow_mut().shutdown = None;
        if let Err(e) = c.result {
            if !is_cancelled(&e) && e.raw_os_error() != Some(libc::ENOTCONN) {
                self.fatal(e);
            }
        }
        self.schedule();
    }

    /// Ends the connection with `error`: drops unsent data, cancels ops.
    fn fatal(&self, error: io::Error) {
        tracing::debug!(peer = ?self.peer, %error, "connection lost");
        self.teardown();
        self.delivery.borrow_mut().lose(Some(error));
        self.schedule();
    }

    /// Drops the write queue, cancels every op in flight.
    fn teardown(&self) {
        let mut st = self.st.borrow_mut();
        st.closing = true;
        st.aborted = true;
        st.queue.clear();
        st.pending.clear();
        st.front_sent = 0;
        st.buffered = 0;
        st.flow.update(0);
        let keys: Vec<OpKey> = [st.recv, st.send, st.shutdown]
            .into_iter()
            .flatten()
            .collect();
        drop(st);
        if let Some(h) = self.lp.upgrade() {
            for k in keys {
                h.cancel(k);
            }
        }
    }

    /// Closes the socket once nothing is in flight on it and the protocol has
    /// been told (O3: the kernel never writes into memory we freed).
    fn maybe_release_socket(&self) {
        let mut st = self.st.borrow_mut();
        if st.socket_closed || !self.delivery.borrow().finished {
            return;
        }
        if st.recv.is_some() || st.send.is_some() || st.shutdown.is_some() {
            return;
        }
        st.socket_closed = true;
        drop(st);
        if let Some(h) = self.lp.upgrade() {
            h.with_driver(|d| d.close(self.socket));
            h.unregister(self.resource_key, true);
        }
        let hooks = std::mem::take(&mut *self.release_hooks.borrow_mut());
        for f in hooks {
            f();
        }
    }

    fn append(&self, data: Option<&[u8]>, bytes: Option<Bytes>) {
        let len = data.map_or(0, <[u8]>::len) + bytes.as_ref().map_or(0, Bytes::len);
        if len == 0 {
            return;
        }
        let mut st = self.st.borrow_mut();
        if st.closing || st.eof_requested {
            st.dropped_writes += 1;
            if st.dropped_writes == 1 || st.dropped_writes.is_power_of_two() {
                tracing::warn!(
                    peer = ?self.peer,
                    "write after close or write_eof dropped ({} so far)",
                    st.dropped_writes
                );
            }
            return;
        }
        match (data, bytes) {
            (Some(d), _) if d.len() < COALESCE_BELOW => st.pending.extend_from_slice(d),
            (Some(d), _) => {
                let chunk = st.pending.split().freeze();
                if !chunk.is_empty() {
                    st.queue.push_back(chunk);
                }
                st.queue.push_back(Bytes::copy_from_slice(d));
            }
            (None, Some(b)) => {
                let chunk = st.pending.split().freeze();
                if !chunk.is_empty() {
                    st.queue.push_back(chunk);
                }
                st.queue.push_back(b);
            }
            (None, None) => return,
        }
        st.buffered += len;
        let size = st.buffered;
        st.flow.update(size);
        drop(st);
        self.schedule();
    }
}

impl Resource for StreamTransport {
    fn shut_down(self: Rc<Self>) {
        TransportImpl::abort(&*self);
    }
}

impl DeliveryHost for StreamTransport {
    fn delivery(&self) -> RefMut<'_, Delivery> {
        self.delivery.borrow_mut()
    }
    fn write_edges(&self) -> WriteEdges {
        self.st.borrow().flow.edges()
    }
    fn handle(&self) -> Transport {
        Transport(self.rc())
    }
    fn close_after_eof(&self) {
        TransportImpl::close(self)
    }
    fn fail(&self, error: io::Error) {
        self.fatal(error)
    }
    fn recycle(&self, buf: Vec<u8>) {
        if let Some(h) = self.lp.upgrade() {
            h.give_recv_buf(buf);
        }
    }
}

impl TransportImpl for StreamTransport {
    fn write(&self, data: &[u8]) {
        self.append(Some(data), None)
    }

    fn write_bytes(&self, data: Bytes) {
        self.append(None, Some(data))
    }

    fn write_eof(&self) -> io::Result<()> {
        let mut st = self.st.borrow_mut();
        if st.closing || st.eof_requested {
            return Ok(());
        }
        st.eof_requested = true;
        drop(st);
        self.schedule();
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn pause_reading(&self) {
        let mut d = self.delivery.borrow_mut();
        if d.read_paused {
            return;
        }
        d.read_paused = true;
        drop(d);
        #[cfg(feature = "broken-pause-cancels")]
        {
            let mut st = self.st.borrow_mut();
            if let Some(k) = st.recv {
                st.recv_cancelled_by_pause = true;
                drop(st);
                if let Some(h) = self.lp.upgrade() {
                    h.cancel(k);
                }
            }
        }
    }

    fn resume_reading(&self) {
        let mut d = self.delivery.borrow_mut();
        if !d.read_paused {
            return;
        }
        d.read_paused = false;
        drop(d);
        self.schedule();
    }

    fn is_reading(&self) -> bool {
        !self.delivery.borrow().read_paused && !self.st.borrow().closing
    }

    fn set_write_buffer_limits(&self, high: Option<usize>, low: Option<usize>) -> io::Result<()> {
        let mut st = self.st.borrow_mut();
        let size = st.buffered;
        st.flow.set_limits(high, low, DEFAULT_HIGH_WATER, size)?;
        drop(st);
        self.schedule();
        Ok(())
    }

    fn write_buffer_limits(&self) -> (usize, usize) {
        let st = self.st.borrow();
        (st.flow.low, st.flow.high)
    }

    fn write_buffer_size(&self) -> usize {
        self.st.borrow().buffered
    }

    fn close(&self) {
        let mut st = self.st.borrow_mut();
        if st.closing {
            return;
        }
        st.closing = true;
        let recv = st.recv;
        drop(st);
        // Receive nothing more: held data is dropped (counted), and the
        // receive in flight is asked to stop; its completion still arrives
        // and its bytes are counted as discarded.
        self.delivery.borrow_mut().close_reading();
        if let (Some(k), Some(h)) = (recv, self.lp.upgrade()) {
            h.cancel(k);
        }
        self.schedule();
    }

    fn abort(&self) {
        if self.delivery.borrow().is_lost() {
            return;
        }
        self.teardown();
        self.delivery.borrow_mut().lose(None);
        self.schedule();
    }

    fn is_closing(&self) -> bool {
        self.st.borrow().closing || self.delivery.borrow().is_lost()
    }

    fn set_protocol(&self, protocol: AnyProtocol) {
        let displaced = self.delivery.borrow_mut().set_protocol(protocol);
        drop(displaced);
        self.schedule();
    }

    fn peer_addr(&self) -> Option<Address> {
        self.peer.clone()
    }

    fn local_addr(&self) -> Option<Address> {
        self.local.clone()
    }

    fn tls_info(&self) -> Option<TlsInfo> {
        None
    }

    fn loop_handle(&self) -> Option<Handle> {
        self.lp.upgrade()
    }

    fn ledger(&self) -> Ledger {
        self.delivery.borrow().ledger()
    }

    fn raw(&self) -> Option<Transport> {
        None
    }

    fn is_released(&self) -> bool {
        self.st.borrow().socket_closed
    }

    fn on_release(&self, f: Box<dyn FnOnce()>) {
        if self.is_released() {
            f();
        } else {
            self.release_hooks.borrow_mut().push(f);
        }
    }
}
