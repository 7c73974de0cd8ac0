//! The transport core that plain and TLS transports share: the loop they
//! run on, one scheduled run at a time, protocol delivery, the send queue
//! and its water marks, dropped-write warnings.
//!
//! [`TransportImpl`] is what a kind of transport must say for itself (how
//! it runs, closes, fails); its provided methods are the behaviour every
//! kind shares, written once over the [`TransportCore`] each kind holds.
#![forbid(unsafe_code)]

use std::cell::{Cell, Ref, RefCell, RefMut};
use std::io;
use std::rc::{Rc, Weak};

use bytes::Bytes;

use super::delivery::{Delivery, DeliveryHost, Ledger};
use super::flow::{WriteEdges, WriteFlow};
use super::send_queue::SendQueue;
use super::{TlsInfo, Transport};
use crate::address::Address;
use crate::event_loop::{Handle, Runnable, WeakHandle};
use crate::protocol::AnyProtocol;

/// The operations every transport offers; [`Transport`] dispatches to one.
pub(crate) trait TransportImpl {
    /// The state every transport has.
    fn core(&self) -> &TransportCore;
    /// Delivers what is deliverable and keeps the transport's pumps going.
    /// Runs from the loop, queued by [`TransportCore::schedule`].
    fn run(&self);
    /// Whether a `write()` now is queued (else it is dropped with a warning).
    fn accepts_writes(&self) -> bool;
    /// Ends the connection with `error`: the protocol failed (a panic, a
    /// buffered protocol without a buffer) or the I/O underneath did.
    fn fail(&self, error: io::Error);
    fn write_eof(&self) -> io::Result<()>;
    fn can_write_eof(&self) -> bool;
    fn close(&self);
    fn abort(&self);
    fn is_closing(&self) -> bool;
    fn peer_addr(&self) -> Option<Address>;
    fn local_addr(&self) -> Option<Address>;
    /// Whether the socket underneath is closed and every op on it completed.
    fn is_released(&self) -> bool;
    /// Runs `f` once the socket is released (at once if it already is).
    fn on_release(&self, f: Box<dyn FnOnce()>);

    /// A receive buffer the protocol is done with, for reuse.
    fn recycle(&self, _buf: Vec<u8>) {}

    fn tls_info(&self) -> Option<TlsInfo> {
        None
    }

    /// The plain stream under this transport (`None`: it is one).
    fn raw(&self) -> Option<Transport> {
        None
    }

    /// The socket's descriptor (see [`Transport::raw_fd`]); by default, the
    /// plain stream's.
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        self.raw().and_then(|t| t.raw_fd())
    }

    fn write(&self, data: &[u8]) {
        if !data.is_empty() {
            let accepted = self.accepts_writes();
            self.core().append(accepted, |queue| queue.push_copy(data));
        }
    }

    fn write_bytes(&self, data: Bytes) {
        if !data.is_empty() {
            let accepted = self.accepts_writes();
            self.core().append(accepted, |queue| queue.push(data));
        }
    }

    fn pause_reading(&self) {
        let mut delivery = self.core().delivery_mut();
        let was_reading = !delivery.read_paused;
        delivery.read_paused = true;
        drop(delivery);
        if was_reading && !self.is_closing() {
            self.count_read_pause();
        }
    }

    /// Reading was just paused: count it, with where the receive underneath
    /// stood, in the driver's stats (the bpo-33694 window counters).
    fn count_read_pause(&self);

    fn resume_reading(&self) {
        let core = self.core();
        let mut delivery = core.delivery_mut();
        if delivery.read_paused {
            delivery.read_paused = false;
            drop(delivery);
            core.schedule();
        }
    }

    fn is_reading(&self) -> bool {
        !self.core().delivery().read_paused && !self.is_closing()
    }

    fn set_write_water_marks(&self, high: Option<usize>, low: Option<usize>) -> io::Result<()> {
        self.core().set_write_water_marks(high, low)
    }

    /// `(low, high)`, asyncio's order.
    fn write_water_marks(&self) -> (usize, usize) {
        let writes = self.core().writes.borrow();
        (writes.flow.low_water, writes.flow.high_water)
    }

    fn write_buffer_size(&self) -> usize {
        self.core().writes.borrow().queue.len()
    }

    fn set_protocol(&self, protocol: AnyProtocol) {
        let displaced = self.core().delivery_mut().set_protocol(protocol);
        // Dropped once the delivery is no longer borrowed: its `Drop` may
        // call transport methods.
        drop(displaced);
        self.core().schedule();
    }

    fn loop_handle(&self) -> Option<Handle> {
        self.core().event_loop()
    }

    fn ledger(&self) -> Ledger {
        let sent = self.core().writes.borrow().queue.passed_on();
        Ledger {
            sent,
            ..self.core().delivery().ledger()
        }
    }
}

/// Every transport delivers to its protocol the same way (L4, L5, R1–R5).
impl<T: TransportImpl> DeliveryHost for T {
    fn delivery(&self) -> RefMut<'_, Delivery> {
        self.core().delivery_mut()
    }
    fn write_edges(&self) -> WriteEdges {
        self.core().writes.borrow().flow.edges()
    }
    fn handle(&self) -> Transport {
        self.core().transport()
    }
    fn close_after_eof(&self) {
        TransportImpl::close(self)
    }
    fn fail(&self, error: io::Error) {
        TransportImpl::fail(self, error)
    }
    fn recycle(&self, buf: Vec<u8>) {
        TransportImpl::recycle(self, buf)
    }
}

/// The state every transport has, whatever carries its bytes.
pub(crate) struct TransportCore {
    /// The transport that holds this core: for the handles it gives the
    /// protocol and the runs it schedules.
    this: Weak<dyn TransportImpl>,
    /// The same transport, as what the loop runs when it is scheduled.
    runner: Weak<dyn Runnable>,
    /// The loop the transport runs on (weak: a transport never keeps its
    /// loop alive).
    event_loop: WeakHandle,
    /// The protocol, what it still has to be told, and the data held for it.
    delivery: RefCell<Delivery>,
    /// A run of the transport is queued on the loop.
    /// Invariant: at most one is.
    scheduled: Cell<bool>,
    writes: RefCell<WriteSide>,
}

/// What was written and not yet passed on, and its flow control (W1, W2).
struct WriteSide {
    /// Bytes written and not yet passed on: to the kernel for a plain
    /// transport, to the TLS engine for a TLS one.
    queue: SendQueue,
    /// The water marks over `queue.len()`, and the edges it made.
    /// Invariant: told every change of `queue.len()`, so that no crossing
    /// of a mark goes unseen (W2).
    flow: WriteFlow,
    /// The high-water mark that `set_write_water_marks(None, None)` restores.
    default_high_water: usize,
    /// Writes dropped because the transport no longer took any.
    dropped: u64,
}

impl TransportCore {
    /// A core for the transport `this`, delivering to `delivery`'s
    /// protocol, with the default write water marks `(high, low)`.
    pub(crate) fn new<T: TransportImpl + 'static>(
        handle: &Handle,
        this: Weak<T>,
        delivery: Delivery,
        (high_water, low_water): (usize, usize),
    ) -> Self {
        TransportCore {
            runner: this.clone(),
            this,
            event_loop: handle.downgrade(),
            delivery: RefCell::new(delivery),
            scheduled: Cell::new(false),
            writes: RefCell::new(WriteSide {
                queue: SendQueue::default(),
                flow: WriteFlow::new(high_water, low_water),
                default_high_water: high_water,
                dropped: 0,
            }),
        }
    }

    /// The loop, unless it is gone.
    pub(crate) fn event_loop(&self) -> Option<Handle> {
        self.event_loop.upgrade()
    }

    /// A handle to the transport holding this core.
    pub(crate) fn transport(&self) -> Transport {
        Transport(self.this.upgrade().expect("transport used after drop"))
    }

    /// Queues a run of the transport on the loop, unless one is queued.
    pub(crate) fn schedule(&self) {
        if self.scheduled.replace(true) {
            return;
        }
        let Some(event_loop) = self.event_loop() else {
            return;
        };
        let runner = self.runner.upgrade().expect("transport used after drop");
        event_loop.call_soon_run(runner);
    }

    /// The delivery state, to read (briefly: never across a callback).
    pub(crate) fn delivery(&self) -> Ref<'_, Delivery> {
        self.delivery.borrow()
    }

    /// The delivery state, to change (briefly: never across a callback).
    pub(crate) fn delivery_mut(&self) -> RefMut<'_, Delivery> {
        self.delivery.borrow_mut()
    }

    /// Queues a write with `push` if `accepted`, else counts it as dropped
    /// (warning at the first and at every power of two).
    fn append(&self, accepted: bool, push: impl FnOnce(&mut SendQueue)) {
        if !accepted {
            let dropped = {
                let mut writes = self.writes.borrow_mut();
                writes.dropped += 1;
                writes.dropped
            };
            if dropped.is_power_of_two() {
                let peer = self.this.upgrade().and_then(|t| t.peer_addr());
                tracing::warn!(
                    ?peer,
                    "write on a closing transport dropped ({dropped} so far)"
                );
            }
            return;
        }
        self.with_send_queue(push);
        self.schedule();
    }

    /// Runs `f` on the send queue, then tells the water marks its new size:
    /// every change of the queue goes through here.
    pub(crate) fn with_send_queue<R>(&self, f: impl FnOnce(&mut SendQueue) -> R) -> R {
        let mut writes = self.writes.borrow_mut();
        let result = f(&mut writes.queue);
        let size = writes.queue.len();
        writes.flow.update(size);
        result
    }

    /// Drops everything not passed on yet; returns how many bytes that was.
    pub(crate) fn discard_unsent(&self) -> usize {
        self.with_send_queue(SendQueue::clear)
    }

    /// The write water marks, by asyncio's `set_write_buffer_limits` rules
    /// (see [`Transport::set_write_buffer_limits`]); re-checks pause at once.
    fn set_write_water_marks(&self, high: Option<usize>, low: Option<usize>) -> io::Result<()> {
        let mut writes = self.writes.borrow_mut();
        let (size, default_high) = (writes.queue.len(), writes.default_high_water);
        writes.flow.set_water_marks(high, low, default_high, size)?;
        drop(writes);
        self.schedule();
        Ok(())
    }
}

/// A scheduled run ([`TransportCore::schedule`]): delivers, then pumps.
impl<T: TransportImpl> Runnable for T {
    fn run_ready(self: Rc<Self>) {
        self.core().scheduled.set(false);
        self.run();
    }
}
