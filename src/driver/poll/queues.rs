//! Parked ops and edge-triggered readiness: each socket keeps a FIFO queue
//! of parked reads and one of writes; a readiness event (or a cancel) drains
//! them in order until an op hits `EAGAIN` again (see the invariant in the
//! module documentation of `poll`).

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::attempt::Attempt;
use super::{PollDriver, State, WAKER};
use crate::driver::{cancelled_error, Op, OpKey};
use crate::inline_deque::InlineDeque;

/// Which queue of its socket an op parks in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dir {
    Read,
    Write,
}

/// No entry in `queues_by_fd`.
const NO_QUEUES: u32 = u32::MAX;

#[derive(Debug)]
pub(super) struct Queues {
    fd: RawFd,
    registered: bool,
    /// A TCP socket (checked once, when its queues are created).
    tcp: bool,
    /// A read now would hit `EAGAIN`: the socket's last read-side syscall
    /// did (accept, recv), or was a short receive on TCP, and no event
    /// came for the socket since. [`PollDriver::attempt_queued`] then parks
    /// a new read at once, saving that syscall (one per round trip of a
    /// request/response protocol, as tokio saves it). The edge the parked
    /// op needs is still due: bytes that arrive after that syscall make
    /// the kernel report one. A short TCP receive leaves nothing behind
    /// except at an urgent mark, before a FIN, or before an error, and the
    /// arrival of each of those was (or is about to be) reported with
    /// EPOLLPRI, EPOLLRDHUP or EPOLLERR, which set `read_events_sticky`.
    /// Any event clears it (a writable one too, conservatively).
    read_drained: bool,
    /// An event said priority data, read side closed, hang-up or error:
    /// reads on the socket are always attempted from then on.
    read_events_sticky: bool,
    /// Parked ops, oldest first (inline: an idle socket's one parked
    /// receive takes no allocation).
    reads: InlineDeque<OpKey>,
    writes: InlineDeque<OpKey>,
}

impl Queues {
    fn queue(&mut self, dir: Dir) -> &mut InlineDeque<OpKey> {
        match dir {
            Dir::Read => &mut self.reads,
            Dir::Write => &mut self.writes,
        }
    }
}

/// The socket an op parks on, and in which queue (`None`: the op never parks).
fn park_target(op: &Op) -> Option<(RawFd, Dir)> {
    match op {
        Op::Accept { listener, .. } => Some((listener.0, Dir::Read)),
        Op::Recv { socket, .. } => Some((socket.0, Dir::Read)),
        Op::Connect { socket, .. } => Some((socket.0, Dir::Write)),
        Op::Send { socket, .. } => Some((socket.0, Dir::Write)),
        Op::Shutdown { .. } | Op::RecvMulti { .. } | Op::AcceptMulti { .. } => None,
    }
}

impl PollDriver {
    /// The key in `queues` of the socket `fd`, if it has queues.
    fn queues_key(&self, fd: RawFd) -> Option<usize> {
        let index = usize::try_from(fd).ok()?;
        match self.queues_by_fd.get(index) {
            Some(&key) if key != NO_QUEUES => Some(key as usize),
            _ => None,
        }
    }

    /// The queue `dir` of the socket `fd`, if it has queues.
    fn queue_mut(&mut self, fd: RawFd, dir: Dir) -> Option<&mut InlineDeque<OpKey>> {
        let key = self.queues_key(fd)?;
        Some(self.queues[key].queue(dir))
    }

    /// The key in `queues` of the socket `fd`, creating its (empty,
    /// unregistered) queues the first time.
    fn queues_key_or_insert(&mut self, fd: RawFd) -> usize {
        if let Some(key) = self.queues_key(fd) {
            return key;
        }
        // SO_DOMAIN, once per socket: short receives end a drain on TCP only
        // (a Unix stream also stops short at a change of sender
        // credentials or passed descriptors, with no edge to follow).
        let tcp = matches!(
            crate::driver::socket::borrow(crate::driver::SocketId(fd)).domain(),
            Ok(d) if d == socket2::Domain::IPV4 || d == socket2::Domain::IPV6
        );
        let key = self.queues.insert(Queues {
            fd,
            registered: false,
            tcp,
            read_drained: false,
            read_events_sticky: false,
            reads: InlineDeque::new(),
            writes: InlineDeque::new(),
        });
        // fds are small non-negative numbers (the kernel hands out the
        // lowest free one); one u32 per fd maps them to their queues.
        let index = usize::try_from(fd).expect("a socket fd is non-negative");
        if self.queues_by_fd.len() <= index {
            self.queues_by_fd.resize(index + 1, NO_QUEUES);
        }
        self.queues_by_fd[index] = u32::try_from(key).expect("fewer than 2^32 sockets");
        key
    }

    /// Whether a read on `fd` would hit `EAGAIN` (see
    /// [`Queues::read_drained`]).
    fn read_drained(&self, fd: RawFd) -> bool {
        self.queues_key(fd).is_some_and(|key| {
            let q = &self.queues[key];
            q.registered && q.read_drained && !q.read_events_sticky
        })
    }

    /// One attempt of `key`, parked on `fd`'s `dir` queue, recording in
    /// its queues whether a read-side attempt drained the socket.
    fn attempt_noted(&mut self, key: OpKey, fd: RawFd, dir: Dir) -> Attempt {
        let attempt = self.attempt(key);
        if dir == Dir::Read {
            if let Some(k) = self.queues_key(fd) {
                let q = &mut self.queues[k];
                q.read_drained = match attempt {
                    Attempt::WouldBlock => true,
                    Attempt::ShortRead(_) => q.tcp,
                    Attempt::Done(_) => false,
                };
            }
        }
        attempt
    }

    /// The socket `fd` is being closed: deregisters it and drops its queues.
    pub(super) fn forget_queues(&mut self, fd: RawFd) {
        if let Some(key) = self.queues_key(fd) {
            self.queues_by_fd[fd as usize] = NO_QUEUES;
            let mut queues = self.queues.remove(key);
            debug_assert!(
                queues.reads.is_empty() && queues.writes.is_empty(),
                "close({fd}) with ops parked on it"
            );
            if queues.registered {
                let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
            }
            // Defensive (the caller guarantees nothing is in flight): ops still
            // parked complete with EBADF rather than never (O1).
            for key in queues.reads.drain().chain(queues.writes.drain()) {
                self.finish(key, Err(io::Error::from_raw_os_error(libc::EBADF)));
            }
        }
    }

    /// Parks `key` at the back of `fd`'s `dir` queue, registering the socket
    /// with epoll the first time. Registering after the `EAGAIN` is safe:
    /// `EPOLL_CTL_ADD` reports readiness that is already there.
    fn park(&mut self, key: OpKey, fd: RawFd, dir: Dir) {
        if let Some(entry) = self.ops.get_mut(key) {
            entry.state = State::Parked;
        }
        let queues_key = self.queues_key_or_insert(fd);
        let sock = &mut self.queues[queues_key];
        if !sock.registered {
            let token = Token(queues_key);
            let registered = self.poll.registry().register(
                &mut SourceFd(&fd),
                token,
                // PRIORITY: urgent data must be seen (`read_events_sticky`).
                Interest::READABLE | Interest::WRITABLE | Interest::PRIORITY,
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
            let Some(key) = self.queue_mut(fd, dir).and_then(|q| q.front().copied()) else {
                return;
            };
            match self.attempt_noted(key, fd, dir) {
                Attempt::WouldBlock => return,
                Attempt::Done(result) => {
                    if let Some(q) = self.queue_mut(fd, dir) {
                        q.pop_front();
                    }
                    self.finish(key, result);
                }
                Attempt::ShortRead(n) => {
                    if let Some(q) = self.queue_mut(fd, dir) {
                        q.pop_front();
                    }
                    self.finish(key, Ok(n));
                }
            }
        }
    }

    /// Resolves cancel requests for parked ops: their socket's queue is retried
    /// first (the op may have become completable: a real result, O2); what is
    /// still parked then completes with `ECANCELED`.
    pub(super) fn resolve_cancels(&mut self) {
        for key in std::mem::take(&mut self.cancels) {
            let Some(entry) = self.ops.get(key) else {
                continue;
            };
            if !matches!(entry.state, State::Parked) {
                continue;
            }
            let Some((fd, dir)) = park_target(&entry.op) else {
                continue;
            };
            self.drain(fd, dir);
            if matches!(
                self.ops.get(key).map(|entry| &entry.state),
                Some(State::Parked)
            ) {
                if let Some(q) = self.queue_mut(fd, dir) {
                    q.remove(&key);
                }
                // Removing an op that never got past EAGAIN keeps the invariant:
                // the drain above just stopped on an EAGAIN of this direction.
                self.finish(key, Err(cancelled_error()));
            }
        }
    }

    /// Attempts every newly queued op once, in submission order.
    pub(super) fn attempt_queued(&mut self) {
        while let Some(key) = self.queued.pop_front() {
            let Some(entry) = self.ops.get(key) else {
                continue;
            };
            if !matches!(entry.state, State::Queued) {
                continue; // cancelled before its attempt
            }
            let target = park_target(&entry.op);
            if let Some((fd, dir)) = target {
                let behind = self.queue_mut(fd, dir).is_some_and(|q| !q.is_empty());
                if behind {
                    // Not attempted: it must not overtake the parked ops ahead
                    // of it. The head's EAGAIN keeps the edge armed.
                    self.park(key, fd, dir);
                    continue;
                }
                if dir == Dir::Read && self.read_drained(fd) {
                    // Not attempted: it would hit EAGAIN, and the edge it
                    // needs is due (see `Queues::read_drained`).
                    self.park(key, fd, dir);
                    continue;
                }
            }
            let attempt = match target {
                Some((fd, dir)) => self.attempt_noted(key, fd, dir),
                None => self.attempt(key),
            };
            match (attempt, target) {
                (Attempt::Done(result), _) => self.finish(key, result),
                (Attempt::ShortRead(n), _) => self.finish(key, Ok(n)),
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
    pub(super) fn poll_once(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => return Ok(true),
            Err(err) => return Err(err),
        }
        let mut woken = false;
        let mut ready = std::mem::take(&mut self.ready_sockets);
        for ev in self.events.iter() {
            if ev.token() == WAKER {
                woken = true;
            } else {
                ready.push(ev.token().0);
                if let Some(q) = self.queues.get_mut(ev.token().0) {
                    // Readiness came: a read may get bytes again.
                    q.read_drained = false;
                    if ev.is_priority() || ev.is_read_closed() || ev.is_error() {
                        q.read_events_sticky = true;
                    }
                }
            }
        }
        for key in ready.drain(..) {
            // Readable, writable, hangup or error: retry both directions, so
            // parked ops observe EOF/ECONNRESET/SO_ERROR through their syscall.
            // A spurious retry costs one EAGAIN. (A key is live: sockets are
            // only closed between waits, and closing deregisters them.)
            let Some(fd) = self.queues.get(key).map(|q| q.fd) else {
                continue;
            };
            self.drain(fd, Dir::Read);
            self.drain(fd, Dir::Write);
        }
        self.ready_sockets = ready;
        Ok(woken)
    }
}
