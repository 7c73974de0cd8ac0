//! The `poll` driver: readiness (epoll via mio) emulating io_uring's completion
//! semantics with non-blocking syscalls.
//!
//! # How an op travels
//!
//! 1. [`Driver::submit`] stores the op in a generation-tagged slot and queues
//!    its key; nothing touches the kernel yet.
//! 2. [`Driver::wait`] first resolves pending cancels, then attempts every newly
//!    queued op once with its non-blocking syscall. An op either completes, or
//!    hits `EAGAIN`/`EINPROGRESS` and is *parked* on its socket: reads (accept,
//!    recv) and writes (connect, send) in two FIFO queues per socket.
//! 3. It then calls `epoll_wait` (zero timeout if a completion is already
//!    ready). For every socket reported ready (readable, writable, hangup or
//!    error alike) both queues are retried in submission order until one op
//!    hits `EAGAIN` again.
//! 4. Every completion produced is appended to `out`.
//!
//! # Memory
//!
//! The driver provides receive buffers ([`Driver::provides_recv_buffers`]):
//! a receive submitted with an empty `Vec` parks without any memory, and its
//! attempt reads into one driver-wide buffer of `RECV_SIZE` (64 KiB). What it
//! got is copied into a buffer of its own size; a read of more than half the
//! size keeps the driver-wide buffer instead (a new one replaces it), which
//! saves the copy where it costs most and still holds at most twice what was
//! read. So an idle connection holds no receive buffer, and held data only
//! what it needs. Parked ops sit in a slab of per-socket queues (its key is
//! the epoll token, found from the fd through a table indexed by fd); the
//! events of an `epoll_wait` and the iovecs of a send use no allocation of
//! their own.
//!
//! # Edge triggering
//!
//! Sockets are registered once, lazily (when the first op parks), edge-triggered,
//! for `READABLE | WRITABLE`. That is only safe because of this invariant:
//!
//! > **If a socket's read (write) queue is non-empty, the most recent syscall
//! > of that direction on the socket returned `EAGAIN`** (or `EINPROGRESS` for
//! > a connect), so the kernel will report a fresh edge when the socket becomes
//! > ready again.
//!
//! One refinement on the read side: a TCP receive that got fewer bytes than
//! it had room for found the receive queue empty when it returned, so it
//! counts as that `EAGAIN`; the next receive on the socket is then parked
//! without its doomed syscall until an event comes (as tokio does: one
//! `recv` per request instead of two). The exceptions, where a short
//! receive leaves bytes behind (an urgent mark, a FIN or an error queued
//! after data), were each reported with EPOLLPRI, EPOLLRDHUP or EPOLLERR;
//! a socket that ever reported one of them is always attempted (see
//! `Queues::read_drained`).
//!
//! An op that completes without `EAGAIN` may leave the socket readable without
//! any further edge; that is fine, because no op is parked then. An op is only
//! parked after its own attempt hit `EAGAIN`, or behind a parked op of the same
//! direction (it is not attempted then, so it cannot overtake it: order is
//! kept). Whenever the head of a queue completes or is cancelled, the drain
//! loop goes on to the next op at once, so the invariant holds again when the
//! loop stops.
//!
//! # Cancellation (O2), matching io_uring
//!
//! - An op not yet attempted completes with `ECANCELED`.
//! - A parked op: the next `wait` first retries its socket's queue (as the
//!   kernel would have completed the op had the socket become ready while the
//!   cancel was in flight). If the op completes, its completion carries the real
//!   result, bytes included (`cancel_races`); if it is still parked it completes
//!   with `ECANCELED` (`cancelled`).
//! - An op whose completion was produced but not yet returned: the completion
//!   is returned unchanged (`cancel_races`).
//! - A stale key is ignored.
//!
//! # Where things are
//!
//! `attempt` makes the one non-blocking syscall of an op; `queues` parks
//! ops, drains them on readiness and resolves cancels; `tests` holds what
//! only this driver promises (the contract is in `driver::contract`).

mod attempt;
mod queues;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use slab::Slab;

use super::socket::{self, Sockets};
use super::{
    cancelled_error, Completion, Driver, DriverKind, DriverStats, Op, OpKey, RecvProgress,
    RemoteWaker, Slots, SockOpt, SocketId,
};
use crate::address::Address;
use queues::Queues;

/// Token of the remote waker; sockets use their key in the queue slab.
const WAKER: Token = Token(usize::MAX);

/// Size of the driver-wide receive buffer: the most one receive reads.
pub(crate) const RECV_SIZE: usize = 64 * 1024;

/// How many readiness events one `epoll_wait` may return.
const EVENTS_CAPACITY: usize = 1024;

/// The `poll` driver. See the module documentation.
#[derive(Debug)]
pub struct PollDriver {
    poll: Poll,
    events: Events,
    waker: Arc<PollWaker>,
    ops: Slots<Entry>,
    /// Submitted, not attempted yet (submission order).
    queued: VecDeque<OpKey>,
    /// Cancel requests for parked ops, resolved at the start of the next `wait`.
    cancels: Vec<OpKey>,
    /// Completions produced, not returned yet (production order).
    ready: VecDeque<OpKey>,
    /// Ops parked on each socket (registered with epoll once, lazily); the
    /// key is the socket's epoll token.
    queues: Slab<Queues>,
    /// The key in `queues` of each fd (`NO_QUEUES` for none), indexed by fd.
    queues_by_fd: Vec<u32>,
    /// Keys of the sockets the last `epoll_wait` reported (kept for reuse).
    ready_sockets: Vec<usize>,
    /// The driver-wide receive buffer (empty: only its capacity is used).
    recv_buf: Vec<u8>,
    sockets: Sockets,
    stats: DriverStats,
}

#[derive(Debug)]
struct Entry {
    user: usize,
    op: Op,
    state: State,
    /// A cancel was requested (only the first request counts).
    cancel_requested: bool,
    /// A connect returned `EINPROGRESS`: it is in progress until a retry says otherwise.
    connecting: bool,
}

#[derive(Debug)]
enum State {
    Queued,
    Parked,
    Done(io::Result<usize>),
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl PollDriver {
    /// Creates the driver: an epoll instance and an eventfd waker.
    ///
    /// # Errors
    ///
    /// Fails if the kernel refuses the epoll instance or the eventfd.
    pub fn new() -> io::Result<PollDriver> {
        let poll = Poll::new()?;
        let waker = Arc::new(PollWaker(Waker::new(poll.registry(), WAKER)?));
        Ok(PollDriver {
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            waker,
            ops: Slots::default(),
            queued: VecDeque::new(),
            cancels: Vec::new(),
            ready: VecDeque::new(),
            queues: Slab::new(),
            queues_by_fd: Vec::new(),
            ready_sockets: Vec::new(),
            recv_buf: Vec::with_capacity(RECV_SIZE),
            sockets: Sockets::new(true),
            stats: DriverStats::default(),
        })
    }

    /// Records the result of an op and queues its completion for return.
    fn finish(&mut self, key: OpKey, result: io::Result<usize>) {
        let Some(entry) = self.ops.get_mut(key) else {
            return;
        };
        entry.state = State::Done(result);
        self.ready.push_back(key);
    }
}

impl Driver for PollDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Poll
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn submit(&mut self, op: Op, user: usize) -> OpKey {
        self.stats.count_submit();
        let provided = matches!(&op, Op::Recv { buf, .. } if buf.capacity() == 0);
        let immediate = if provided {
            None
        } else {
            op.immediate_result()
        };
        let key = self.ops.insert(Entry {
            user,
            op,
            state: State::Queued,
            cancel_requested: false,
            connecting: false,
        });
        match immediate {
            Some(result) => self.finish(key, result),
            None => self.queued.push_back(key),
        }
        key
    }

    fn provides_recv_buffers(&self) -> bool {
        true
    }

    fn cancel(&mut self, key: OpKey) {
        let Some(entry) = self.ops.get_mut(key) else {
            return; // stale: its completion was already returned
        };
        if entry.cancel_requested {
            return; // already resolved or pending: one outcome per op
        }
        entry.cancel_requested = true;
        self.stats.count_cancel_request();
        match entry.state {
            // Never reached the kernel: truly cancelled.
            State::Queued => self.finish(key, Err(cancelled_error())),
            // Decided at the next wait (see `resolve_cancels`).
            State::Parked => self.cancels.push(key),
            // Already happened: the completion keeps its real result.
            State::Done(_) => {}
        }
    }

    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        self.stats.count_wait();
        self.resolve_cancels();
        self.attempt_queued();

        // `None` deadline: wait forever. A deadline too far to represent is forever too.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut first = true;
        loop {
            let timeout = if !self.ready.is_empty() {
                Some(Duration::ZERO)
            } else if first {
                timeout
            } else {
                deadline.map(|d| d.saturating_duration_since(Instant::now()))
            };
            first = false;
            if self.poll_once(timeout)? {
                break; // a remote wake or a signal
            }
            // Readiness that completed nothing (say, a writable edge on a
            // socket with only reads parked) does not end the wait: go on
            // until a completion, a wake, or the deadline.
            let expired = matches!(timeout, Some(t) if t.is_zero())
                || deadline.is_some_and(|d| Instant::now() >= d);
            if !self.ready.is_empty() || expired {
                break;
            }
        }

        out.reserve(self.ready.len());
        while let Some(key) = self.ready.pop_front() {
            let Some(entry) = self.ops.remove(key) else {
                continue;
            };
            let result = match entry.state {
                State::Done(r) => r,
                // Unreachable: only `finish` queues keys, after setting Done.
                State::Queued | State::Parked => Err(invalid("op returned before completing")),
            };
            let completion = Completion {
                more: false,
                user: entry.user,
                key,
                op: entry.op,
                result,
            };
            self.stats
                .count_completion(&completion, entry.cancel_requested);
            out.push(completion);
        }
        Ok(())
    }

    fn remote_waker(&self) -> Arc<dyn RemoteWaker> {
        self.waker.clone()
    }

    fn in_flight(&self) -> usize {
        self.ops.len()
    }

    fn stats(&self) -> DriverStats {
        self.stats
    }

    fn count_multishot_held(&mut self) {
        self.stats.count_multishot_held();
    }

    fn count_read_pause(&mut self, recv: Option<OpKey>) {
        let progress = match recv.and_then(|k| self.ops.get(k)) {
            None => RecvProgress::Idle,
            // Produced and not yet returned by `wait`.
            Some(Entry {
                state: State::Done(_),
                ..
            }) => RecvProgress::Ready,
            Some(_) => RecvProgress::InFlight,
        };
        self.stats.count_read_pause(progress);
    }

    fn listen(&mut self, addr: &Address, backlog: u32) -> io::Result<SocketId> {
        self.sockets.listen(addr, backlog)
    }

    fn open_stream(&mut self, addr: &Address) -> io::Result<SocketId> {
        self.sockets.open_stream(addr)
    }

    fn close(&mut self, socket: SocketId) {
        self.forget_queues(socket.0);
        // A socket with SO_LINGER > 0 would block this thread in close(2),
        // even non-blocking. `Sockets::close` clears the linger first: the
        // peer sees the same (the data, then FIN), and a helper thread to
        // wait in close(2) instead would add a thread and a queue for no
        // difference the peer or the caller could see. (`uring` has the
        // kernel wait instead: IORING_OP_CLOSE on io-wq.)
        self.sockets.close(socket);
    }

    fn local_addr(&self, socket: SocketId) -> io::Result<Address> {
        socket::local_addr(socket)
    }

    fn peer_addr(&self, socket: SocketId) -> io::Result<Address> {
        socket::peer_addr(socket)
    }

    fn set_option(&mut self, socket: SocketId, opt: SockOpt) -> io::Result<()> {
        self.sockets.set_option(socket, opt)
    }

    fn adopt(&mut self, fd: OwnedFd) -> io::Result<SocketId> {
        self.sockets.adopt(fd)
    }

    fn release(&mut self, socket: SocketId) -> io::Result<OwnedFd> {
        // Deregistered from epoll: its next owner may register it again.
        self.forget_queues(socket.0);
        Ok(self.sockets.release(socket))
    }
}

/// Interrupts [`PollDriver::wait`] from any thread (an eventfd registered with
/// the driver's epoll).
#[derive(Debug)]
struct PollWaker(Waker);

impl RemoteWaker for PollWaker {
    fn wake(&self) {
        // Only fails if the eventfd is gone, i.e. the driver was dropped.
        let _ = self.0.wake();
    }
}
