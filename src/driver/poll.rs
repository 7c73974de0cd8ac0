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
    use super::*;
    use crate::driver::is_cancelled;
    use bytes::Bytes;
    use std::io::Write;
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::path::PathBuf;

    const DEADLINE: Duration = Duration::from_secs(20);

    /// A driver plus completions reaped but not claimed yet.
    struct H {
        d: PollDriver,
        pending: Vec<Completion>,
    }

    impl H {
        fn new() -> H {
            H {
                d: PollDriver::new().unwrap(),
                pending: Vec::new(),
            }
        }

        /// Waits for the one completion of the op submitted with `user`.
        fn complete(&mut self, user: usize) -> Completion {
            let start = Instant::now();
            loop {
                if let Some(i) = self.pending.iter().position(|c| c.user == user) {
                    return self.pending.remove(i);
                }
                assert!(
                    start.elapsed() < DEADLINE,
                    "timed out waiting for op {user}"
                );
                self.d
                    .wait(Some(Duration::from_millis(100)), &mut self.pending)
                    .unwrap();
            }
        }

        /// O1 at quiescence.
        fn assert_quiescent(&self) {
            assert!(self.pending.is_empty(), "unclaimed: {:?}", self.pending);
            assert_eq!(self.d.in_flight(), 0);
            let s = self.d.stats();
            assert_eq!(s.submitted, s.completed, "{s:?}");
        }

        /// listener + connected (client, server) through the driver.
        fn pair(&mut self, addr: &Address) -> (SocketId, SocketId, SocketId) {
            let listener = self.d.listen(addr, 128).unwrap();
            let (client, server) = self.connect_to(listener);
            (listener, client, server)
        }

        fn connect_to(&mut self, listener: SocketId) -> (SocketId, SocketId) {
            let addr = self.d.local_addr(listener).unwrap();
            let client = self.d.open_stream(&addr).unwrap();
            self.d.submit(
                Op::Connect {
                    socket: client,
                    addr: addr.clone(),
                },
                1_000_001,
            );
            self.d.submit(
                Op::Accept {
                    listener,
                    accepted: None,
                },
                1_000_002,
            );
            let c = self.complete(1_000_001);
            assert_eq!(c.result.unwrap(), 0);
            let a = self.complete(1_000_002);
            assert_eq!(a.result.unwrap(), 0);
            let Op::Accept {
                accepted: Some((server, peer)),
                ..
            } = a.op
            else {
                panic!("accept without socket");
            };
            if let Address::Inet(p) = peer {
                assert_eq!(
                    Address::Inet(p),
                    self.d.local_addr(client).unwrap(),
                    "accepted peer address"
                );
            }
            (client, server)
        }

        fn send_all(&mut self, socket: SocketId, data: &[u8]) {
            let mut sent = 0;
            while sent < data.len() {
                let bufs = vec![Bytes::copy_from_slice(&data[sent..])];
                self.d.submit(
                    Op::Send {
                        socket,
                        bufs,
                        offset: 0,
                    },
                    2_000_000,
                );
                sent += self.complete(2_000_000).result.unwrap();
            }
        }

        fn recv(&mut self, socket: SocketId, cap: usize) -> io::Result<Vec<u8>> {
            self.d.submit(
                Op::Recv {
                    socket,
                    buf: Vec::with_capacity(cap),
                },
                3_000_000,
            );
            let c = self.complete(3_000_000);
            let Op::Recv { buf, .. } = c.op else {
                panic!("not a recv")
            };
            let n = c.result?;
            assert_eq!(buf.len(), n);
            Ok(buf)
        }

        fn recv_exact(&mut self, socket: SocketId, len: usize) -> Vec<u8> {
            let mut got = Vec::new();
            while got.len() < len {
                let chunk = self.recv(socket, len - got.len()).unwrap();
                assert!(!chunk.is_empty(), "unexpected EOF");
                got.extend_from_slice(&chunk);
            }
            got
        }
    }

    fn pattern(len: usize, seed: usize) -> Vec<u8> {
        (0..len)
            .map(|i| ((i * 31 + seed * 7) % 251) as u8)
            .collect()
    }

    fn echo(h: &mut H, client: SocketId, server: SocketId) {
        for (round, len) in [1usize, 100, 4096, 16384, 7].into_iter().enumerate() {
            let msg = pattern(len, round);
            h.send_all(client, &msg);
            let got = h.recv_exact(server, len);
            assert_eq!(got, msg);
            h.send_all(server, &got);
            assert_eq!(h.recv_exact(client, len), msg);
        }
        // Half-close: the server reads EOF, then still answers.
        h.d.submit(
            Op::Shutdown {
                socket: client,
                how: Shutdown::Write,
            },
            5,
        );
        assert_eq!(h.complete(5).result.unwrap(), 0);
        assert!(h.recv(server, 16).unwrap().is_empty(), "EOF expected");
        h.send_all(server, b"bye");
        assert_eq!(h.recv_exact(client, 3), b"bye");
    }

    #[test]
    fn tcp_echo_through_driver() {
        let mut h = H::new();
        assert_eq!(h.d.kind(), DriverKind::Poll);
        let (listener, client, server) = h.pair(&"127.0.0.1:0".parse().unwrap());
        echo(&mut h, client, server);
        for s in [client, server, listener] {
            h.d.close(s);
        }
        h.assert_quiescent();
        assert!(h.d.stats().waits > 0);
    }

    #[test]
    fn ipv6_echo_if_available() {
        let mut h = H::new();
        let Ok(listener) = h.d.listen(&"[::1]:0".parse().unwrap(), 16) else {
            eprintln!("IPv6 loopback unavailable: skipped");
            return;
        };
        let (client, server) = h.connect_to(listener);
        echo(&mut h, client, server);
        for s in [client, server, listener] {
            h.d.close(s);
        }
        h.assert_quiescent();
    }

    #[test]
    fn unix_socket_echo() {
        let path: PathBuf = std::env::temp_dir().join(format!(
            "proactor-poll-{}-{:?}.sock",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_file(&path);
        let mut h = H::new();
        let (listener, client, server) = h.pair(&Address::Unix(path.clone()));
        assert_eq!(
            h.d.local_addr(listener).unwrap(),
            Address::Unix(path.clone())
        );
        h.d.set_option(client, SockOpt::NoDelay(true)).unwrap();
        echo(&mut h, client, server);
        for s in [client, server, listener] {
            h.d.close(s);
        }
        let _ = std::fs::remove_file(&path);
        h.assert_quiescent();
    }

    /// A std peer connected to a driver listener (so the test can write
    /// without running the driver).
    fn std_peer(h: &mut H) -> (SocketId, SocketId, TcpStream) {
        let listener = h.d.listen(&"127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = h.d.local_addr(listener).unwrap().as_inet().unwrap();
        let peer = TcpStream::connect(addr).unwrap();
        h.d.submit(
            Op::Accept {
                listener,
                accepted: None,
            },
            9,
        );
        let Op::Accept {
            accepted: Some((server, _)),
            ..
        } = h.complete(9).op
        else {
            panic!("accept failed")
        };
        (listener, server, peer)
    }

    fn recv_result(c: Completion) -> io::Result<Vec<u8>> {
        let Op::Recv { buf, .. } = c.op else {
            panic!("not a recv")
        };
        let n = c.result?;
        assert_eq!(buf.len(), n);
        Ok(buf)
    }

    /// bpo-33694 on purpose: the recv parked, the data arrives, then the recv
    /// is cancelled. Whatever the outcome, not one byte may be lost.
    #[test]
    fn cancel_race_loses_nothing() {
        let mut h = H::new();
        let (listener, server, mut peer) = std_peer(&mut h);
        let mut sent = Vec::new();
        let mut received = Vec::new();
        let iterations = 2000;
        for i in 0..iterations {
            let key = h.d.submit(
                Op::Recv {
                    socket: server,
                    buf: Vec::with_capacity(1 + i % 300),
                },
                i,
            );
            // The recv is attempted: parks, or takes leftover bytes at once.
            h.d.wait(Some(Duration::ZERO), &mut h.pending).unwrap();
            // Every fourth round sends nothing: a true cancel.
            if i % 4 != 3 {
                let chunk = pattern(1 + i % 97, i);
                peer.write_all(&chunk).unwrap();
                sent.extend_from_slice(&chunk);
            }
            h.d.cancel(key);
            match recv_result(h.complete(i)) {
                Ok(bytes) => received.extend_from_slice(&bytes),
                Err(e) => assert!(is_cancelled(&e), "unexpected {e}"),
            }
        }
        peer.shutdown(Shutdown::Write).unwrap();
        loop {
            let chunk = h.recv(server, 4096).unwrap();
            if chunk.is_empty() {
                break;
            }
            received.extend_from_slice(&chunk);
        }
        assert_eq!(received.len(), sent.len());
        assert!(received == sent, "bytes lost or reordered");
        let s = h.d.stats();
        eprintln!("{s:?}");
        assert!(s.cancel_races > 0, "the race never happened: {s:?}");
        assert!(s.cancelled > 0, "no true cancel: {s:?}");
        assert!(s.cancel_races + s.cancelled <= s.cancel_requests);
        h.d.close(server);
        h.d.close(listener);
        h.assert_quiescent();
    }

    #[test]
    fn cancel_parked_or_unattempted_recv_is_ecanceled() {
        let mut h = H::new();
        let (listener, server, mut peer) = std_peer(&mut h);

        // Parked, no data: truly cancelled.
        let key = h.d.submit(
            Op::Recv {
                socket: server,
                buf: Vec::with_capacity(64),
            },
            1,
        );
        h.d.wait(Some(Duration::ZERO), &mut h.pending).unwrap();
        assert!(h.pending.is_empty(), "recv completed without data");
        h.d.cancel(key);
        h.d.cancel(key); // a second request changes nothing
        let err = recv_result(h.complete(1)).unwrap_err();
        assert!(is_cancelled(&err), "{err}");
        h.d.cancel(key); // stale: ignored

        // Not attempted yet: cancelled even though data is there; the data stays.
        peer.write_all(b"hello").unwrap();
        let key = h.d.submit(
            Op::Recv {
                socket: server,
                buf: Vec::with_capacity(64),
            },
            2,
        );
        h.d.cancel(key);
        assert!(is_cancelled(&recv_result(h.complete(2)).unwrap_err()));
        assert_eq!(h.recv_exact(server, 5), b"hello");

        let s = h.d.stats();
        assert_eq!(s.cancelled, 2, "{s:?}");
        assert_eq!(s.cancel_races, 0, "{s:?}");
        assert_eq!(s.cancel_requests, 2, "{s:?}");
        h.d.close(server);
        h.d.close(listener);
        h.assert_quiescent();
    }

    #[test]
    fn tiny_send_buffer_short_writes_in_order() {
        let mut h = H::new();
        let (listener, client, server) = h.pair(&"127.0.0.1:0".parse().unwrap());
        h.d.set_option(client, SockOpt::SendBuffer(4096)).unwrap();
        let chunks: Vec<Bytes> = (0..300)
            .map(|i| Bytes::from(pattern(1000 + i * 13, i)))
            .collect();
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let mut remaining: VecDeque<Bytes> = chunks.into();
        let mut offset = 0;
        let mut received = Vec::new();
        let (mut sending, mut receiving) = (false, false);
        let start = Instant::now();
        while received.len() < expected.len() {
            assert!(start.elapsed() < DEADLINE, "stuck");
            if !sending && !remaining.is_empty() {
                h.d.submit(
                    Op::Send {
                        socket: client,
                        bufs: remaining.iter().cloned().collect(),
                        offset,
                    },
                    1,
                );
                sending = true;
            }
            if !receiving {
                h.d.submit(
                    Op::Recv {
                        socket: server,
                        buf: Vec::with_capacity(3000),
                    },
                    2,
                );
                receiving = true;
            }
            h.d.wait(Some(Duration::from_millis(100)), &mut h.pending)
                .unwrap();
            for c in std::mem::take(&mut h.pending) {
                match c.user {
                    1 => {
                        sending = false;
                        let mut n = c.result.unwrap();
                        assert!(n > 0);
                        while n > 0 {
                            let avail = remaining[0].len() - offset;
                            if n >= avail {
                                n -= avail;
                                remaining.pop_front();
                                offset = 0;
                            } else {
                                offset += n;
                                n = 0;
                            }
                        }
                    }
                    2 => {
                        receiving = false;
                        received.extend_from_slice(&recv_result(c).unwrap());
                    }
                    _ => unreachable!(),
                }
            }
        }
        eprintln!("{:?} {:?}", start.elapsed(), h.d.stats());
        assert!(received == expected, "bytes lost or reordered");
        let s = h.d.stats();
        assert!(s.short_writes > 0, "{s:?}");
        assert!(s.short_reads > 0, "{s:?}");
        assert!(!sending && !receiving);
        h.d.submit(
            Op::Recv {
                socket: server,
                buf: Vec::with_capacity(16),
            },
            2,
        );
        h.d.wait(Some(Duration::ZERO), &mut h.pending).unwrap();
        h.d.close(client);
        // The parked recv sees EOF.
        assert!(recv_result(h.complete(2)).unwrap().is_empty());
        h.d.close(server);
        h.d.close(listener);
        h.assert_quiescent();
    }

    /// Several ops parked on the same sockets, some cancelled: every submit
    /// yields exactly one completion, reads complete in submission order, and
    /// hangup wakes the parked ones with EOF.
    #[test]
    fn exactly_one_completion_per_submit() {
        let mut h = H::new();
        let listener = h.d.listen(&"127.0.0.1:0".parse().unwrap(), 64).unwrap();
        let pairs: Vec<_> = (0..20).map(|_| h.connect_to(listener)).collect();
        let mut keys = Vec::new();
        for (p, &(_, server)) in pairs.iter().enumerate() {
            for r in 0..5 {
                let user = p * 10 + r;
                let key = h.d.submit(
                    Op::Recv {
                        socket: server,
                        buf: Vec::with_capacity(4),
                    },
                    user,
                );
                keys.push((user, key));
            }
        }
        h.d.wait(Some(Duration::ZERO), &mut h.pending).unwrap();
        assert!(h.pending.is_empty());
        // Cancel the third recv of each pair (parked behind the first two).
        for &(user, key) in &keys {
            if user % 10 == 2 {
                h.d.cancel(key);
            }
        }
        for (p, &(client, _)) in pairs.iter().enumerate() {
            h.d.submit(
                Op::Send {
                    socket: client,
                    bufs: vec![Bytes::from_static(b"abcd"), Bytes::from_static(b"efgh")],
                    offset: 0,
                },
                1000 + p,
            );
        }
        for p in 0..pairs.len() {
            assert_eq!(h.complete(1000 + p).result.unwrap(), 8);
            assert_eq!(recv_result(h.complete(p * 10)).unwrap(), b"abcd");
            assert_eq!(recv_result(h.complete(p * 10 + 1)).unwrap(), b"efgh");
        }
        for (p, &(client, _)) in pairs.iter().enumerate() {
            h.d.close(client);
            let third = recv_result(h.complete(p * 10 + 2));
            assert!(is_cancelled(&third.unwrap_err()));
            for r in 3..5 {
                assert!(recv_result(h.complete(p * 10 + r)).unwrap().is_empty());
            }
        }
        for &(_, server) in &pairs {
            h.d.close(server);
        }
        h.d.close(listener);
        h.assert_quiescent();
        let s = h.d.stats();
        assert_eq!(s.cancelled, 20, "{s:?}");
        assert_eq!(s.submitted, 20 * 2 + 20 * 5 + 20);
    }

    #[test]
    fn remote_wake_interrupts_wait_forever() {
        let mut h = H::new();
        let waker = h.d.remote_waker();
        // A wake before the wait makes it return at once.
        waker.wake();
        h.d.wait(None, &mut h.pending).unwrap();
        let remote = h.d.remote_waker();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            remote.wake();
        });
        let start = Instant::now();
        h.d.wait(None, &mut h.pending).unwrap();
        let took = start.elapsed();
        t.join().unwrap();
        assert!(
            took >= Duration::from_millis(150),
            "returned early: {took:?}"
        );
        assert!(took < Duration::from_secs(5), "wake ignored: {took:?}");
        h.assert_quiescent();
    }

    #[test]
    fn wait_honours_timeout_and_zero() {
        let mut h = H::new();
        let (listener, server, peer) = std_peer(&mut h);
        h.d.submit(
            Op::Recv {
                socket: server,
                buf: Vec::with_capacity(8),
            },
            1,
        );
        let start = Instant::now();
        h.d.wait(Some(Duration::ZERO), &mut h.pending).unwrap();
        assert!(start.elapsed() < Duration::from_secs(1));
        let start = Instant::now();
        h.d.wait(Some(Duration::from_millis(150)), &mut h.pending)
            .unwrap();
        let took = start.elapsed();
        assert!(h.pending.is_empty());
        assert!(took >= Duration::from_millis(150), "early: {took:?}");
        assert!(took < Duration::from_secs(5), "late: {took:?}");
        h.d.close(listener);
        drop(peer); // EOF wakes the parked recv
        assert!(recv_result(h.complete(1)).unwrap().is_empty());
        h.d.close(server);
        h.assert_quiescent();
    }

    #[test]
    fn connect_refused() {
        let mut h = H::new();
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let addr = Address::Inet(addr);
        let s = h.d.open_stream(&addr).unwrap();
        h.d.submit(Op::Connect { socket: s, addr }, 1);
        let err = h.complete(1).result.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED), "{err}");
        h.d.close(s);
        h.assert_quiescent();
    }

    #[test]
    fn peer_reset_gives_econnreset_and_no_sigpipe() {
        let mut h = H::new();
        let (listener, server, peer) = std_peer(&mut h);
        h.d.submit(
            Op::Recv {
                socket: server,
                buf: Vec::with_capacity(64),
            },
            1,
        );
        h.d.wait(Some(Duration::ZERO), &mut h.pending).unwrap();
        assert!(h.pending.is_empty());
        socket2::SockRef::from(&peer)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(peer); // RST
        let err = recv_result(h.complete(1)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNRESET), "{err}");
        // Writing to the dead connection fails without killing the process.
        h.d.submit(
            Op::Send {
                socket: server,
                bufs: vec![Bytes::from_static(b"x")],
                offset: 0,
            },
            2,
        );
        let err = h.complete(2).result.unwrap_err();
        assert!(
            matches!(
                err.raw_os_error(),
                Some(libc::EPIPE) | Some(libc::ECONNRESET)
            ),
            "{err}"
        );
        h.d.close(server);
        h.d.close(listener);
        h.assert_quiescent();
    }

    #[test]
    fn bad_arguments_complete_with_errors() {
        let mut h = H::new();
        let (listener, client, server) = h.pair(&"127.0.0.1:0".parse().unwrap());
        h.d.submit(
            Op::Recv {
                socket: server,
                buf: Vec::new(),
            },
            1,
        );
        h.d.submit(
            Op::Send {
                socket: client,
                bufs: vec![Bytes::from_static(b"ab")],
                offset: 3,
            },
            2,
        );
        h.d.submit(
            Op::Send {
                socket: client,
                bufs: Vec::new(),
                offset: 0,
            },
            3,
        );
        assert_eq!(
            h.complete(1).result.unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            h.complete(2).result.unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(h.complete(3).result.unwrap(), 0);
        for s in [client, server, listener] {
            h.d.close(s);
        }
        h.assert_quiescent();
    }

    fn fd_count() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    /// Runs `fd_leak_child` alone in a child process, where counting
    /// `/proc/self/fd` is not disturbed by tests on other threads.
    #[test]
    fn no_fd_leak_after_1000_sockets() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "driver::poll::tests::fd_leak_child",
                "--include-ignored",
                "--test-threads=1",
                "--nocapture",
            ])
            .env("PROACTOR_POLL_FD_CHILD", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child failed:\n{stdout}\n{stderr}"
        );
    }

    #[test]
    #[ignore = "run in a child process by no_fd_leak_after_1000_sockets"]
    fn fd_leak_child() {
        if std::env::var_os("PROACTOR_POLL_FD_CHILD").is_none() {
            return;
        }
        let before = fd_count();
        let mut h = H::new();
        let listener = h.d.listen(&"127.0.0.1:0".parse().unwrap(), 128).unwrap();
        let mut sockets = 0;
        for _round in 0..10 {
            let mut open = Vec::new();
            for i in 0..40 {
                let (client, server) = h.connect_to(listener);
                // Register some with epoll by parking a recv, then cancel it.
                if i % 2 == 0 {
                    let key = h.d.submit(
                        Op::Recv {
                            socket: server,
                            buf: Vec::with_capacity(8),
                        },
                        77,
                    );
                    h.d.wait(Some(Duration::ZERO), &mut h.pending).unwrap();
                    h.d.cancel(key);
                    assert!(is_cancelled(&recv_result(h.complete(77)).unwrap_err()));
                }
                open.push(client);
                open.push(server);
                open.push(h.d.open_stream(&"127.0.0.1:1".parse().unwrap()).unwrap());
            }
            sockets += open.len();
            for s in open {
                h.d.close(s);
            }
        }
        assert!(sockets >= 1000);
        h.d.close(listener);
        h.assert_quiescent();
        drop(h);
        assert_eq!(fd_count(), before, "fds leaked");
    }
}
