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
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::SockAddr;

use super::socket::{self, Sockets};
use super::{
    cancelled_error, Completion, Driver, DriverKind, DriverStats, Op, OpKey, RemoteWaker, Slots,
    SockOpt, SocketId,
};
use crate::address::Address;

/// Token of the remote waker; sockets use their fd as token.
const WAKER: Token = Token(usize::MAX);

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
    /// Ops parked on each socket (registered with epoll once, lazily).
    queues: HashMap<RawFd, Queues>,
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

/// Which queue of its socket an op parks in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Read,
    Write,
}

#[derive(Debug, Default)]
struct Queues {
    registered: bool,
    reads: VecDeque<OpKey>,
    writes: VecDeque<OpKey>,
}

impl Queues {
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
            queues: HashMap::new(),
            sockets: Sockets::new(true),
            stats: DriverStats::default(),
        })
    }

    /// Records the result of an op and queues its completion for return.
    fn finish(&mut self, key: OpKey, result: io::Result<usize>) {
        let Some(e) = self.ops.get_mut(key) else {
            return;
        };
        e.state = State::Done(result);
        self.ready.push_back(key);
    }

    /// One non-blocking attempt of the op under `key`.
    fn attempt(&mut self, key: OpKey) -> Attempt {
        let Some(e) = self.ops.get_mut(key) else {
            return Attempt::Done(Err(invalid("stale op key")));
        };
        match &mut e.op {
            Op::Accept { listener, accepted } => match retry_eintr(|| accept4(listener.0)) {
                Ok((fd, peer)) => {
                    self.sockets.accepted(*listener, SocketId(fd));
                    *accepted = Some((SocketId(fd), Address::from_sockaddr(&peer)));
                    Attempt::Done(Ok(0))
                }
                Err(err) if is_would_block(&err) => Attempt::WouldBlock,
                Err(err) => Attempt::Done(Err(err)),
            },
            Op::Connect { socket, addr } => {
                let s = socket::borrow(*socket);
                let sa = match addr.to_sockaddr() {
                    Ok(sa) => sa,
                    Err(err) => return Attempt::Done(Err(err)),
                };
                // A connection in progress is finished as io_uring finishes
                // it: by calling connect(2) again, which says EALREADY while
                // it is still going (a retry may be spurious: a cancel, the
                // other direction's readiness), 0 once it is established
                // (moving the socket to the connected state, so a later
                // connect says EISCONN, as on `uring`), or its error.
                match (s.connect(&sa), e.connecting) {
                    (Ok(()), _) => Attempt::Done(Ok(0)),
                    (Err(err), true) if err.raw_os_error() == Some(libc::EALREADY) => {
                        Attempt::WouldBlock
                    }
                    (Err(err), true) if err.raw_os_error() == Some(libc::EISCONN) => {
                        Attempt::Done(Ok(0))
                    }
                    // EINTR: the connection goes on asynchronously, like EINPROGRESS.
                    (Err(err), _)
                        if matches!(err.raw_os_error(), Some(libc::EINPROGRESS | libc::EINTR)) =>
                    {
                        e.connecting = true;
                        Attempt::WouldBlock
                    }
                    // EAGAIN from a Unix connect (listener backlog full) means
                    // no connection was started: reported as the error.
                    (Err(err), _) => Attempt::Done(Err(err)),
                }
            }
            Op::Recv { socket, buf } => {
                let len = buf.len();
                let spare = buf.spare_capacity_mut();
                let room = spare.len();
                let s = socket::borrow(*socket);
                match retry_eintr(|| s.recv(spare)) {
                    Ok(n) => {
                        debug_assert!(n <= room);
                        // SAFETY: recv(2) initialised the first `n` bytes of the
                        // spare capacity (n <= room, the capacity left after
                        // `len`), so `len + n` bytes are initialised and within
                        // the capacity.
                        unsafe { buf.set_len(len + n) };
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
                let iov: Vec<IoSlice<'_>> = socket::send_slices(bufs, *offset)
                    .map(IoSlice::new)
                    .collect();
                let s = socket::borrow(*socket);
                // MSG_NOSIGNAL: a peer that went away gives EPIPE, never SIGPIPE.
                match retry_eintr(|| s.send_vectored_with_flags(&iov, libc::MSG_NOSIGNAL)) {
                    Ok(n) => Attempt::Done(Ok(n)),
                    Err(err) if is_would_block(&err) => Attempt::WouldBlock,
                    Err(err) => Attempt::Done(Err(err)),
                }
            }
            Op::Shutdown { socket, how } => {
                Attempt::Done(socket::borrow(*socket).shutdown(*how).map(|()| 0))
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
        let sock = self.queues.entry(fd).or_default();
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
                .queues
                .get_mut(&fd)
                .and_then(|s| s.queue(dir).front().copied())
            else {
                return;
            };
            match self.attempt(key) {
                Attempt::WouldBlock => return,
                Attempt::Done(result) => {
                    if let Some(s) = self.queues.get_mut(&fd) {
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
                if let Some(q) = self.queues.get_mut(&fd).map(|s| s.queue(dir)) {
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
                    .queues
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

impl PollDriver {
    /// One `epoll_wait`, then retries the parked ops of every socket reported
    /// ready. Returns whether the wait was interrupted (remote wake or signal).
    /// On error, completions already produced stay queued for the next wait.
    fn poll_once(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => return Ok(true),
            Err(err) => return Err(err),
        }
        let mut woken = false;
        let mut ready_fds = Vec::with_capacity(self.events.iter().count());
        for ev in self.events.iter() {
            if ev.token() == WAKER {
                woken = true;
            } else if let Ok(fd) = RawFd::try_from(ev.token().0) {
                ready_fds.push(fd);
            }
        }
        for fd in ready_fds {
            // Readable, writable, hangup or error: retry both directions, so
            // parked ops observe EOF/ECONNRESET/SO_ERROR through their syscall.
            // A spurious retry costs one EAGAIN.
            self.drain(fd, Dir::Read);
            self.drain(fd, Dir::Write);
        }
        Ok(woken)
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
        let immediate = op.immediate_result();
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

    fn cancel(&mut self, key: OpKey) {
        let Some(e) = self.ops.get_mut(key) else {
            return; // stale: its completion was already returned
        };
        if e.cancel_requested {
            return; // already resolved or pending: one outcome per op
        }
        e.cancel_requested = true;
        self.stats.count_cancel_request();
        match e.state {
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
            let Some(e) = self.ops.remove(key) else {
                continue;
            };
            let result = match e.state {
                State::Done(r) => r,
                // Unreachable: only `finish` queues keys, after setting Done.
                State::Queued | State::Parked => Err(invalid("op returned before completing")),
            };
            let completion = Completion {
                user: e.user,
                key,
                op: e.op,
                result,
            };
            self.stats.count_completion(&completion, e.cancel_requested);
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

    fn listen(&mut self, addr: &Address, backlog: u32) -> io::Result<SocketId> {
        self.sockets.listen(addr, backlog)
    }

    fn open_stream(&mut self, addr: &Address) -> io::Result<SocketId> {
        self.sockets.open_stream(addr)
    }

    fn close(&mut self, socket: SocketId) {
        if let Some(state) = self.queues.remove(&socket.0) {
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

#[cfg(test)]
mod tests {
    //! What only `poll` promises; the contract is in `driver::contract`.

    use std::time::Duration;

    use bytes::Bytes;

    use super::PollDriver;
    use crate::driver::contract::{recv_bytes, Harness};
    use crate::driver::{is_cancelled, Op};

    fn harness(test: &'static str) -> Harness {
        Harness::new(Box::new(PollDriver::new().unwrap()), test)
    }

    fn recv(socket: crate::driver::SocketId, room: usize) -> Op {
        Op::Recv {
            socket,
            buf: Vec::with_capacity(room),
        }
    }

    /// An op cancelled before its first attempt never reaches the kernel:
    /// `ECANCELED` even though data is there, and the data stays.
    #[test]
    fn cancel_before_the_attempt_is_ecanceled_and_leaves_the_data() {
        let mut h = harness("cancel_before_the_attempt");
        let listener = h.listen(&"127.0.0.1:0".parse().unwrap());
        let (ours, peer) = h.accept_peer(listener);
        h.peer_write(&peer, b"hello");
        let key = h.driver.submit(recv(ours, 64), 0);
        h.driver.cancel(key);
        assert!(is_cancelled(&recv_bytes(h.complete(key)).unwrap_err()));
        assert_eq!(h.recv_exact(ours, 5), b"hello");
        let s = h.driver.stats();
        assert_eq!((s.cancel_requests, s.cancelled), (1, 1), "{s:?}");
        h.peer_close(peer);
        h.close_all(&[ours, listener]);
        h.assert_quiescent();
    }

    /// Ops parked on one socket run in submission order (one queue per
    /// direction), also when one in the middle is cancelled.
    #[test]
    fn parked_ops_complete_in_submission_order() {
        let mut h = harness("parked_ops_complete_in_submission_order");
        let listener = h.listen(&"127.0.0.1:0".parse().unwrap());
        let (client, server) = h.connect_to(listener);
        let keys: Vec<_> = (0..5)
            .map(|_| h.driver.submit(recv(server, 4), 0))
            .collect();
        h.turn(Duration::ZERO);
        h.driver.cancel(keys[2]);
        h.send_bufs(
            client,
            vec![Bytes::from_static(b"abcd"), Bytes::from_static(b"efgh")],
            0,
        );
        h.driver.close(client);
        let mut done = h.complete_all(&keys);
        let order: Vec<_> = done
            .iter()
            .map(|c| c.key)
            .filter(|k| *k != keys[2])
            .collect();
        let uncancelled: Vec<_> = keys.iter().copied().filter(|k| *k != keys[2]).collect();
        assert_eq!(order, uncancelled, "completions out of submission order");
        done.sort_by_key(|c| keys.iter().position(|k| *k == c.key));
        let results: Vec<_> = done
            .into_iter()
            .map(|c| recv_bytes(c).map_err(|e| is_cancelled(&e)))
            .collect();
        assert_eq!(
            results,
            [
                Ok(b"abcd".to_vec()),
                Ok(b"efgh".to_vec()),
                Err(true),
                Ok(Vec::new()),
                Ok(Vec::new()),
            ]
        );
        h.close_all(&[server, listener]);
        h.assert_quiescent();
    }
}
