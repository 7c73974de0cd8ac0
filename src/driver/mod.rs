//! Drivers: submit operations, request their cancellation, reap completions.
//!
//! Every backend implements [`Driver`]. The layers above see only this
//! interface, so `uring`, `poll` and `sim` give the same completion semantics:
//!
//! - **O1** every [`Driver::submit`] yields exactly one final [`Completion`]
//!   (`more == false`), which hands back the [`Op`] with its buffers; only a
//!   multishot op ([`Op::RecvMulti`], [`Op::AcceptMulti`]) yields
//!   completions before it (`more == true`), each carrying one arrival's
//!   bytes or one accepted socket;
//! - **O2** [`Driver::cancel`] is a request: if the operation completed anyway,
//!   its completion carries the real result (bytes included). Only an operation
//!   that truly did not happen completes with `ECANCELED`;
//! - **O3** the driver owns each op (and its buffers) from `submit` until its
//!   completion is returned from [`Driver::wait`]; nothing the layers above do
//!   can free memory the kernel may still write.
//!
//! All `unsafe` code that touches the kernel lives under this module.
//!
//! Where things are: the backends `uring`, `poll` and `sim`, each a
//! directory with its own tests; `socket`, what the two kernel backends
//! share (creating, closing, options, addresses, the table of Unix
//! listener paths and lingering sockets); `stats`, where [`DriverStats`]
//! are counted for all three; `slots`, the generation-tagged op table; and
//! `contract`, the tests of this contract, written once and run on every
//! backend.

#[cfg(test)]
mod contract;
pub mod poll;
pub mod sim;
mod slots;
pub(crate) mod socket;
mod stats;
pub mod uring;

#[cfg(test)]
pub(crate) mod tests_accept;

use std::fmt;
use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::address::Address;

pub use sim::SimStats;
pub(crate) use slots::Slots;
pub use stats::DriverStats;
pub(crate) use stats::RecvProgress;

/// Which backend a loop runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DriverKind {
    /// Linux io_uring (the default when the kernel allows it).
    Uring,
    /// Readiness (epoll via mio) emulating completions with non-blocking syscalls.
    Poll,
    /// Deterministic in-memory simulation with a virtual clock, driven by a seed.
    Sim,
}

impl DriverKind {
    /// Lower-case name, as accepted by `PROACTOR_DRIVER` and `--driver`.
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Uring => "uring",
            DriverKind::Poll => "poll",
            DriverKind::Sim => "sim",
        }
    }
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DriverKind {
    type Err = io::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "uring" | "io_uring" | "io-uring" => Ok(DriverKind::Uring),
            "poll" | "epoll" => Ok(DriverKind::Poll),
            "sim" => Ok(DriverKind::Sim),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown driver {other:?} (expected uring, poll or sim)"),
            )),
        }
    }
}

/// The furthest a loop timer is ever scheduled: longer delays mean "never"
/// and are clamped here (100 years), so no deadline arithmetic can overflow
/// `Instant`. A `wait` timeout near it comes from such a timer: the `sim`
/// driver treats it as no timeout at all.
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A socket owned by a driver. For kernel drivers it is the file descriptor;
/// for `sim` it is an index into the simulated network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(pub(crate) i32);

/// Generation-tagged key of a submitted operation: a stale key (its op already
/// completed, its slot maybe reused) never reaches another operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpKey {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// An operation, owning everything the kernel may touch while it is in flight.
#[derive(Debug)]
pub enum Op {
    /// Accept one connection. On success `accepted` holds the new socket and the peer.
    Accept {
        /// The listening socket.
        listener: SocketId,
        /// Filled in by the driver on success.
        accepted: Option<(SocketId, Address)>,
    },
    /// Multishot accept (io_uring's `IORING_ACCEPT_MULTISHOT`), offered
    /// only where [`Driver::supports_multishot_accept`] says so (elsewhere
    /// it completes with `EOPNOTSUPP`). It stays armed and completes once
    /// per accepted connection with `more == true`, `accepted` holding the
    /// new socket and its peer. Its final completion (`more == false`) ends
    /// it: `Ok(0)` with a socket (the kernel accepted one more, then
    /// stopped: arm again), `ECANCELED` a cancel, or the error that stopped
    /// it (classified as a single-shot accept's: arm again at once, or
    /// after a back-off).
    AcceptMulti {
        /// The listening socket.
        listener: SocketId,
        /// Empty when submitted; one accepted socket and its peer in a
        /// completion.
        accepted: Option<(SocketId, Address)>,
    },
    /// Connect `socket` (from [`Driver::open_stream`]) to `addr`.
    Connect {
        /// The unconnected socket.
        socket: SocketId,
        /// Where to connect.
        addr: Address,
    },
    /// Receive into the spare capacity of `buf` (its length is kept; on success
    /// the driver extends the length by the number of bytes received, and the
    /// result is that number; 0 means EOF). The capacity must be > length:
    /// a buffer without spare capacity completes with `EINVAL`.
    ///
    /// Exception: on a driver whose [`Driver::provides_recv_buffers`] is
    /// true, a buffer with no capacity at all (`Vec::new()`) asks the driver
    /// for the memory: nothing is held while the receive waits, and the
    /// completion hands back a buffer holding what was received (its
    /// capacity close to its length, so held data holds no more memory
    /// than it needs).
    Recv {
        /// The connected socket.
        socket: SocketId,
        /// Owned by the driver until the completion hands it back (O3).
        buf: Vec<u8>,
    },
    /// Multishot receive (io_uring's `RecvMulti` over a provided buffer
    /// ring), offered only where [`Driver::supports_multishot_recv`] says
    /// so (elsewhere it completes with `EOPNOTSUPP`). It stays armed and completes once per arrival of bytes, with
    /// `more == true`: the completion's own `RecvMulti` holds exactly those
    /// bytes in `buf` (the driver's buffers go back to it at once, so an
    /// idle connection holds none), and the result is their number. Its
    /// final completion (`more == false`) ends it: `Ok(0)` is EOF, `Ok(n)`
    /// bytes after which the kernel stopped (arm again to read on),
    /// `ENOBUFS` a buffer ring that ran dry (nothing was lost: arm again),
    /// `ECANCELED` a cancel, anything else the socket's error.
    RecvMulti {
        /// The connected socket.
        socket: SocketId,
        /// Empty when submitted; the bytes of one arrival in a completion.
        buf: Vec<u8>,
    },
    /// Send from `bufs`, in order, as one (vectored) syscall; `offset` bytes of
    /// `bufs[0]` were already sent and are skipped. The result is how many bytes
    /// went out (possibly fewer than offered). An `offset` beyond `bufs[0]`
    /// (or any offset without buffers) completes with `EINVAL`; a send with
    /// nothing to send completes with 0 without looking at the socket.
    Send {
        /// The connected socket.
        socket: SocketId,
        /// Slices to send, in order; kept alive until the completion (O3).
        bufs: Vec<Bytes>,
        /// Bytes of `bufs[0]` to skip.
        offset: usize,
    },
    /// `shutdown(2)` the socket.
    Shutdown {
        /// The connected socket.
        socket: SocketId,
        /// Which direction to shut.
        how: Shutdown,
    },
}

impl Op {
    /// Bytes this op offers to send, after `offset` (0 for non-send ops).
    pub fn send_len(&self) -> usize {
        match self {
            Op::Send { bufs, offset, .. } => bufs
                .iter()
                .map(|b| b.len())
                .sum::<usize>()
                .saturating_sub(*offset),
            _ => 0,
        }
    }

    /// The result of an op that is decided without any I/O, the same way on
    /// every backend (see the docs of [`Op::Recv`] and [`Op::Send`]); such
    /// an op completes at the next `wait` without reaching the kernel.
    /// `None`: the op must be performed.
    pub(crate) fn immediate_result(&self) -> Option<io::Result<usize>> {
        match self {
            Op::Recv { buf, .. } if buf.capacity() == buf.len() => {
                Some(Err(io::Error::from_raw_os_error(libc::EINVAL)))
            }
            Op::Send { bufs, offset, .. } => {
                if *offset > bufs.first().map_or(0, |b| b.len()) {
                    Some(Err(io::Error::from_raw_os_error(libc::EINVAL)))
                } else if self.send_len() == 0 {
                    Some(Ok(0))
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// Short name for traces and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Accept { .. } => "accept",
            Op::AcceptMulti { .. } => "accept_multi",
            Op::Connect { .. } => "connect",
            Op::Recv { .. } => "recv",
            Op::RecvMulti { .. } => "recv_multi",
            Op::Send { .. } => "send",
            Op::Shutdown { .. } => "shutdown",
        }
    }
}

/// The one result of one submitted operation.
#[derive(Debug)]
pub struct Completion {
    /// The `user` value given to [`Driver::submit`].
    pub user: usize,
    /// The key [`Driver::submit`] returned.
    #[cfg_attr(not(test), allow(dead_code))]
    pub key: OpKey,
    /// The operation, handed back with its buffers (and outputs, for accept/recv).
    pub op: Op,
    /// The op stays armed: more completions follow (only
    /// [`Op::RecvMulti`] and [`Op::AcceptMulti`]; the final completion has
    /// `false`).
    pub more: bool,
    /// Bytes transferred, or 0 for ops that move none; `ECANCELED` only when a
    /// cancel truly prevented the operation.
    ///
    /// An op that moved bytes and was then stopped (cancelled mid-transfer:
    /// IOCP's `ERROR_OPERATION_ABORTED` with N bytes transferred) or failed
    /// (io_uring reports a partly done send as its `done_io` byte count)
    /// completes with the partial success `Ok(n)`, never with an error that
    /// would hide the bytes; an error left on the socket (a reset) fails
    /// the next op. The same on every backend: the kernel drivers report
    /// what `send(2)` / the CQE said, `sim` models both cases.
    pub result: io::Result<usize>,
}

/// Socket options the layers above may set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockOpt {
    /// `TCP_NODELAY` (ignored for Unix sockets).
    NoDelay(bool),
    /// `SO_SNDBUF`.
    SendBuffer(usize),
    /// `SO_RCVBUF`.
    RecvBuffer(usize),
    /// `SO_LINGER`: `Some(ZERO)` makes close send a reset (RST) to the peer.
    Linger(Option<std::time::Duration>),
}

/// Wakes a loop blocked in [`Driver::wait`] from any thread.
pub trait RemoteWaker: Send + Sync + fmt::Debug {
    /// Makes the current or next `wait` return promptly.
    fn wake(&self);
}

/// The backend interface. Single-threaded: a driver belongs to one loop.
pub trait Driver: fmt::Debug {
    /// Which backend this is.
    fn kind(&self) -> DriverKind;

    /// The loop's clock (virtual for `sim`). Monotonic.
    fn now(&self) -> Instant;

    /// Queues `op`; it reaches the kernel at the next [`Driver::wait`] (one
    /// batch per loop turn). `user` comes back in the completion.
    fn submit(&mut self, op: Op, user: usize) -> OpKey;

    /// Whether a [`Op::Recv`] may come with an empty `Vec::new()` for the
    /// driver to fill with a buffer of its own (see [`Op::Recv`]), so that a
    /// connection waiting for data holds no receive buffer. `false` unless a
    /// backend says otherwise.
    fn provides_recv_buffers(&self) -> bool {
        false
    }

    /// A receive buffer whose bytes were delivered, offered back: a driver
    /// that copies arrivals out of buffers of its own (uring's multishot
    /// receives) keeps it to copy the next ones into. Returns it if not
    /// kept.
    fn recycle_recv_buf(&mut self, buf: Vec<u8>) -> Option<Vec<u8>> {
        Some(buf)
    }

    /// Requests cancellation of a submitted op. Never completes it here: its
    /// one completion still arrives from `wait`, with the real result if the
    /// op finished first (O2). A stale key is ignored.
    fn cancel(&mut self, key: OpKey);

    /// Whether [`Op::RecvMulti`] is available. Asked once per receive
    /// path; where it is not (a kernel without provided buffer rings, the
    /// `poll` driver), transports use single-shot [`Op::Recv`].
    fn supports_multishot_recv(&self) -> bool {
        false
    }

    /// Test-only (`broken-pause-drops-ready`): whether the completion of
    /// `key` is produced and waits to be returned by `wait` — the window in
    /// which IOCP's `CancelIoEx` fails with `ERROR_NOT_FOUND` (bpo-33694).
    /// Only `sim` tells; the kernel backends answer `false`.
    #[cfg(feature = "broken-pause-drops-ready")]
    fn completion_ready(&self, _key: OpKey) -> bool {
        false
    }

    /// Submits everything queued, then waits until at least one completion is
    /// available, a remote wake arrives, or `timeout` passes (`None`: no limit,
    /// `Some(ZERO)`: do not block). Appends completions to `out`.
    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()>;

    /// A thread-safe handle that interrupts `wait`.
    fn remote_waker(&self) -> Arc<dyn RemoteWaker>;

    /// Operations submitted whose completion has not been returned yet.
    fn in_flight(&self) -> usize;

    /// Counters since the driver was created.
    fn stats(&self) -> DriverStats;

    /// Whether [`Op::AcceptMulti`] is available. Asked each time a server
    /// arms its accept; where it is not, servers accept single-shot.
    fn supports_multishot_accept(&self) -> bool {
        false
    }

    /// A transport paused its reading while `recv` (its receive, if one is
    /// in flight) was submitted: counted in [`DriverStats`] with where that
    /// receive stood ([`DriverStats::pauses_recv_in_flight`],
    /// [`DriverStats::pauses_recv_ready`]). Changes nothing else: a pause
    /// never touches the receive (R2).
    fn count_read_pause(&mut self, recv: Option<OpKey>);

    /// A transport's reading is paused and an arrival of its armed
    /// multishot receive came anyway: it is held for the resume (R2).
    /// Counted in [`DriverStats::multishot_held`]; changes nothing else.
    fn count_multishot_held(&mut self);

    /// A readable trace of recent scheduling decisions (`sim` only).
    fn trace(&self) -> Option<String> {
        None
    }

    /// What the simulator injected (`sim` only).
    fn sim_stats(&self) -> Option<sim::SimStats> {
        None
    }

    /// Creates a listening stream socket bound to `addr` (port 0 picks one).
    fn listen(&mut self, addr: &Address, backlog: u32) -> io::Result<SocketId>;

    /// Creates an unconnected stream socket suitable for connecting to `addr`.
    fn open_stream(&mut self, addr: &Address) -> io::Result<SocketId>;

    /// Closes a socket. The caller guarantees no op on it is in flight.
    fn close(&mut self, socket: SocketId);

    /// The socket's own address.
    fn local_addr(&self, socket: SocketId) -> io::Result<Address>;

    /// The connected peer's address.
    fn peer_addr(&self, socket: SocketId) -> io::Result<Address>;

    /// Sets a socket option.
    fn set_option(&mut self, socket: SocketId, opt: SockOpt) -> io::Result<()>;

    /// Takes ownership of a stream socket made elsewhere (unconnected,
    /// connected or listening) and puts it in the mode this driver needs
    /// (blocking or not). `Unsupported` on a driver without kernel sockets.
    fn adopt(&mut self, fd: OwnedFd) -> io::Result<SocketId> {
        drop(fd);
        Err(unsupported("this driver has no kernel sockets to adopt"))
    }

    /// Gives a socket back without closing it (nor unlinking a Unix
    /// listener's path). The caller guarantees no op on it is in flight.
    fn release(&mut self, socket: SocketId) -> io::Result<OwnedFd> {
        let _ = socket;
        Err(unsupported("this driver has no kernel sockets to release"))
    }
}

fn unsupported(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, msg)
}

/// The error a truly cancelled operation completes with.
pub fn cancelled_error() -> io::Error {
    io::Error::from_raw_os_error(libc::ECANCELED)
}

/// Whether `err` is the completion of a truly cancelled operation.
pub fn is_cancelled(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ECANCELED)
}
