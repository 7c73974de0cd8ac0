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

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{SockAddr, Socket};

use super::socket;
use super::{
    cancelled_error, is_cancelled, Completion, Driver, DriverKind, DriverStats, Op, OpKey,
    RemoteWaker, Slots, SockOpt, SocketId,
};
use crate::address::Address;

/// Token of the remote waker; sockets use their fd as token.
const WAKER: Token = Token(usize::MAX);

/// At most this many iovecs per `sendmsg` (well under `IOV_MAX`).
const MAX_IOVECS: usize = 64;

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
    sockets: HashMap<RawFd, SockState>,
    stats: DriverStats,
}

#[derive(Debug)]
struct Entry {
    user: usize,
    op: Op,
    state: State,
    /// A cancel was requested (and counted once as `cancelled` or `cancel_races`).
    cancel_requested: bool,
    /// A connect returned `EINPROGRESS`: retries check `SO_ERROR`, never connect again.
    connecting: bool,
}

#[derive(Debug)]
enum State {
    Queued,
    Parked,
    Done(io::Result<usize>),
}

/// Which queue of its socket an op parks in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Read,
    Write,
}

#[derive(Debug, Default)]
struct SockState {
    registered: bool,
    reads: VecDeque<OpKey>,
    writes: VecDeque<OpKey>,
}

impl SockState {
    fn queue(&mut self, dir: Dir) -> &mut VecDeque<OpKey> {
        match dir {
            Dir::Read => &mut self.reads,
            Dir::Write => &mut self.writes,
        }
    }
}

/// Result of one non-blocking attempt.
enum Attempt {
    Done(io::Result<usize>),
    WouldBlock,
}

/// The socket an op parks on, and in which queue (`None`: the op never parks).
fn park_target(op: &Op) -> Option<(RawFd, Dir)> {
    match op {
        Op::Accept { listener, .. } => Some((listener.0, Dir::Read)),
        Op::Recv { socket, .. } => Some((socket.0, Dir::Read)),
        Op::Connect { socket, .. } => Some((socket.0, Dir::Write)),
        Op::Send { socket, .. } => Some((socket.0, Dir::Write)),
        Op::Shutdown { .. } => None,
    }
}

/// Borrows a driver-owned fd as a socket2 socket that never closes it.
fn borrow(fd: RawFd) -> ManuallyDrop<Socket> {
    // SAFETY: the driver owns `fd` from creation until `close`, and ops only
    // run on sockets that are not closed (the caller's contract). ManuallyDrop
    // guarantees this temporary never closes the fd.
    ManuallyDrop::new(unsafe { Socket::from_raw_fd(fd) })
}

fn is_would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Runs `f` again while it fails with `EINTR`.
fn retry_eintr<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// `accept4(SOCK_CLOEXEC | SOCK_NONBLOCK)`, returning the new fd and the peer.
fn accept4(listener: RawFd) -> io::Result<(RawFd, SockAddr)> {
    // SAFETY: `try_init` hands us a zeroed sockaddr storage and its length,
    // valid for the duration of the closure; accept4 writes at most `*len`
    // bytes into it and updates `*len`, which is exactly try_init's contract.
    unsafe {
        SockAddr::try_init(|storage, len| {
            let fd = libc::accept4(
                listener,
                storage.cast::<libc::sockaddr>(),
                len,
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            );
            if fd < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(fd)
            }
        })
    }
}

impl PollDriver {
    /// Creates the driver: an epoll instance and an eventfd waker.
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
            sockets: HashMap::new(),
            stats: DriverStats::default(),
        })
    }

    /// Records the result of an op and queues its completion for return.
    fn finish(&mut self, key: OpKey, result: io::Result<usize>) {
        let Some(e) = self.ops.get_mut(key) else {
            return;
        };
        if e.cancel_requested {
            if matches!(&result, Err(err) if is_cancelled(err)) {
                self.stats.cancelled += 1;
            } else {
                self.stats.cancel_races += 1;
            }
        }
        e.state = State::Done(result);
        self.ready.push_back(key);
    }

    /// One non-blocking attempt of the op under `key`.
    fn attempt(&mut self, key: OpKey) -> Attempt {
        let Some(e) = self.ops.get_mut(key) else {
            return Attempt::Done(Err(invalid("stale op key")));
        };
        let stats = &mut self.stats;
        match &mut e.op {
            Op::Accept { listener, accepted } => match retry_eintr(|| accept4(listener.0)) {
                Ok((fd, peer)) => match socket::adopt_accepted(fd, true) {
                    Ok(id) => {
                        *accepted = Some((id, Address::from_sockaddr(&peer)));
                        Attempt::Done(Ok(0))
                    }
                    Err(err) => {
                        socket::close(SocketId(fd));
                        Attempt::Done(Err(err))
                    }
                },
                Err(err) if is_would_block(&err) => Attempt::WouldBlock,
                Err(err) => Attempt::Done(Err(err)),
            },
            Op::Connect { socket, addr } => {
                let s = borrow(socket.0);
                if e.connecting {
                    // Connection in progress: its outcome is in SO_ERROR. A
                    // retry may be spurious (a cancel, the other direction's
                    // readiness), so "no error" only counts once connected.
                    return match s.take_error() {
                        Ok(Some(err)) | Err(err) => Attempt::Done(Err(err)),
                        Ok(None) => match s.peer_addr() {
                            Ok(_) => Attempt::Done(Ok(0)),
                            Err(err) if err.raw_os_error() == Some(libc::ENOTCONN) => {
                                Attempt::WouldBlock
                            }
                            Err(err) => Attempt::Done(Err(err)),
                        },
                    };
                }
                let sa = match addr.to_sockaddr() {
                    Ok(sa) => sa,
                    Err(err) => return Attempt::Done(Err(err)),
                };
                match s.connect(&sa) {
                    Ok(()) => Attempt::Done(Ok(0)),
                    // EINTR: the connection goes on asynchronously, like EINPROGRESS.
                    Err(err)
                        if matches!(
                            err.raw_os_error(),
                            Some(libc::EINPROGRESS) | Some(libc::EINTR)
                        ) =>
                    {
                        e.connecting = true;
                        Attempt::WouldBlock
                    }
                    // EAGAIN from a Unix connect (listener backlog full) means
                    // no connection was started: reported as the error.
                    Err(err) => Attempt::Done(Err(err)),
                }
            }
            Op::Recv { socket, buf } => {
                let len = buf.len();
                let spare = buf.spare_capacity_mut();
                let room = spare.len();
                if room == 0 {
                    return Attempt::Done(Err(invalid("recv buffer has no spare capacity")));
                }
                let s = borrow(socket.0);
                match retry_eintr(|| s.recv(spare)) {
                    Ok(n) => {
                        debug_assert!(n <= room);
                        // SAFETY: recv(2) initialised the first `n` bytes of the
                        // spare capacity (n <= room, the capacity left after
                        // `len`), so `len + n` bytes are initialised and within
                        // the capacity.
                        unsafe { buf.set_len(len + n) };
                        if n < room {
                            stats.short_reads += 1;
                        }
                        Attempt::Done(Ok(n))
                    }
                    Err(err) if is_would_block(&err) => Attempt::WouldBlock,
                    Err(err) => Attempt::Done(Err(err)),
                }
            }
            Op::Send {
                socket,
                bufs,
                offset,
            } => {
                let Some(first) = bufs.first() else {
                    return Attempt::Done(Ok(0));
                };
                let Some(head) = first.get(*offset..) else {
                    return Attempt::Done(Err(invalid("send offset beyond the first buffer")));
                };
                let mut iov = Vec::with_capacity(bufs.len().min(MAX_IOVECS));
                iov.push(IoSlice::new(head));
                iov.extend(
                    bufs[1..]
                        .iter()
                        .take(MAX_IOVECS - 1)
                        .map(|b| IoSlice::new(b)),
                );
                let offered: usize = iov.iter().map(|s| s.len()).sum();
                let s = borrow(socket.0);
                // MSG_NOSIGNAL: a peer that went away gives EPIPE, never SIGPIPE.
                match retry_eintr(|| s.send_vectored_with_flags(&iov, libc::MSG_NOSIGNAL)) {
                    Ok(n) => {
                        if n < offered {
                            stats.short_writes += 1;
                        }
                        Attempt::Done(Ok(n))
                    }
                    Err(err) if is_would_block(&err) => Attempt::WouldBlock,
                    Err(err) => Attempt::Done(Err(err)),
                }
            }
            Op::Shutdown { socket, how } => {
                Attempt::Done(borrow(socket.0).shutdown(*how).map(|()| 0))
            }
        }
    }

    /// Parks `key` at the back of `fd`'s `dir` queue, registering the socket
    /// with epoll the first time. Registering after the `EAGAIN` is safe:
    /// `EPOLL_CTL_ADD` reports readiness that is already there.
    fn park(&mut self, key: OpKey, fd: RawFd, dir: Dir) {
        if let Some(e) = self.ops.get_mut(key) {
            e.state = State::Parked;
        }
        let sock = self.sockets.entry(fd).or_default();
        if !sock.registered {
            let token = Token(usize::try_from(fd).unwrap_or(usize::MAX - 1));
            let registered = self.poll.registry().register(
                &mut SourceFd(&fd),
                token,
                Interest::READABLE | Interest::WRITABLE,
            );
            if let Err(err) = registered {
                // Without registration the op would never wake: fail it.
                self.finish(key, Err(err));
                return;
            }
            sock.registered = true;
        }
        sock.queue(dir).push_back(key);
    }

    /// Retries `fd`'s `dir` queue in order until an op hits `EAGAIN` again
    /// (restoring the edge-triggering invariant) or the queue is empty.
    fn drain(&mut self, fd: RawFd, dir: Dir) {
        loop {
            let Some(key) = self
                .sockets
                .get_mut(&fd)
                .and_then(|s| s.queue(dir).front().copied())
            else {
                return;
            };
            match self.attempt(key) {
                Attempt::WouldBlock => return,
                Attempt::Done(result) => {
                    if let Some(s) = self.sockets.get_mut(&fd) {
                        s.queue(dir).pop_front();
                    }
                    self.finish(key, result);
                }
            }
        }
    }

    /// Resolves cancel requests for parked ops: their socket's queue is retried
    /// first (the op may have become completable: a real result, O2); what is
    /// still parked then completes with `ECANCELED`.
    fn resolve_cancels(&mut self) {
        for key in std::mem::take(&mut self.cancels) {
            let Some(e) = self.ops.get(key) else {
                continue;
            };
            if !matches!(e.state, State::Parked) {
                continue;
            }
            let Some((fd, dir)) = park_target(&e.op) else {
                continue;
            };
            self.drain(fd, dir);
            if matches!(self.ops.get(key).map(|e| &e.state), Some(State::Parked)) {
                if let Some(q) = self.sockets.get_mut(&fd).map(|s| s.queue(dir)) {
                    q.retain(|k| *k != key);
                }
                // Removing an op that never got past EAGAIN keeps the invariant:
                // the drain above just stopped on an EAGAIN of this direction.
                self.finish(key, Err(cancelled_error()));
            }
        }
    }

    /// Attempts every newly queued op once, in submission order.
    fn attempt_queued(&mut self) {
        while let Some(key) = self.queued.pop_front() {
            let Some(e) = self.ops.get(key) else {
                continue;
            };
            if !matches!(e.state, State::Queued) {
                continue; // cancelled before its attempt
            }
            let target = park_target(&e.op);
            if let Some((fd, dir)) = target {
                let behind = self
                    .sockets
                    .get_mut(&fd)
                    .is_some_and(|s| !s.queue(dir).is_empty());
                if behind {
                    // Not attempted: it must not overtake the parked ops ahead
                    // of it. The head's EAGAIN keeps the edge armed.
                    self.park(key, fd, dir);
                    continue;
                }
            }
            match (self.attempt(key), target) {
                (Attempt::Done(result), _) => self.finish(key, result),
                (Attempt::WouldBlock, Some((fd, dir))) => self.park(key, fd, dir),
                (Attempt::WouldBlock, None) => {
                    self.finish(key, Err(io::Error::from_raw_os_error(libc::EAGAIN)))
                }
            }
        }
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
        self.stats.submitted += 1;
        let key = self.ops.insert(Entry {
            user,
            op,
            state: State::Queued,
            cancel_requested: false,
            connecting: false,
        });
        self.queued.push_back(key);
        key
    }

    fn cancel(&mut self, key: OpKey) {
        let Some(e) = self.ops.get_mut(key) else {
            return; // stale: its completion was already returned
        };
        self.stats.cancel_requests += 1;
        if e.cancel_requested {
            return; // already resolved or pending: one outcome per op
        }
        e.cancel_requested = true;
        match e.state {
            // Never reached the kernel: truly cancelled.
            State::Queued => self.finish(key, Err(cancelled_error())),
            // Decided at the next wait (see `resolve_cancels`).
            State::Parked => self.cancels.push(key),
            // Already happened: the completion keeps its real result.
            State::Done(_) => self.stats.cancel_races += 1,
        }
    }

    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        self.resolve_cancels();
        self.attempt_queued();

        let timeout = if self.ready.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        self.stats.waits += 1;
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            // A signal: return like a wake-up (possibly with nothing).
            Err(err) if err.kind() == io::ErrorKind::Interrupted => self.events.clear(),
            // Completions already produced stay queued for the next wait.
            Err(err) => return Err(err),
        }

        let ready_fds: Vec<RawFd> = self
            .events
            .iter()
            .filter(|ev| ev.token() != WAKER)
            .filter_map(|ev| RawFd::try_from(ev.token().0).ok())
            .collect();
        for fd in ready_fds {
            // Readable, writable, hangup or error: retry both directions, so
            // parked ops observe EOF/ECONNRESET/SO_ERROR through their syscall.
            // A spurious retry costs one EAGAIN.
            self.drain(fd, Dir::Read);
            self.drain(fd, Dir::Write);
        }

        out.reserve(self.ready.len());
        while let Some(key) = self.ready.pop_front() {
            let Some(e) = self.ops.remove(key) else {
                continue;
            };
            let result = match e.state {
                State::Done(r) => r,
                // Unreachable: only `finish` queues keys, after setting Done.
                State::Queued | State::Parked => Err(invalid("op returned before completing")),
            };
            self.stats.completed += 1;
            out.push(Completion {
                user: e.user,
                key,
                op: e.op,
                result,
            });
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

    fn listen(&mut self, addr: &Address, backlog: u32) -> io::Result<SocketId> {
        socket::listen(addr, backlog, true)
    }

    fn open_stream(&mut self, addr: &Address) -> io::Result<SocketId> {
        socket::open_stream(addr, true)
    }

    fn close(&mut self, socket: SocketId) {
        if let Some(state) = self.sockets.remove(&socket.0) {
            debug_assert!(
                state.reads.is_empty() && state.writes.is_empty(),
                "close({socket:?}) with ops parked on it"
            );
            if state.registered {
                let _ = self.poll.registry().deregister(&mut SourceFd(&socket.0));
            }
            // Defensive (the caller guarantees nothing is in flight): ops still
            // parked complete with EBADF rather than never (O1).
            for key in state.reads.into_iter().chain(state.writes) {
                self.finish(key, Err(io::Error::from_raw_os_error(libc::EBADF)));
            }
        }
        socket::close(socket);
    }

    fn local_addr(&self, socket: SocketId) -> io::Result<Address> {
        socket::local_addr(socket)
    }

    fn peer_addr(&self, socket: SocketId) -> io::Result<Address> {
        socket::peer_addr(socket)
    }

    fn set_option(&mut self, socket: SocketId, opt: SockOpt) -> io::Result<()> {
        socket::set_option(socket, opt)
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
