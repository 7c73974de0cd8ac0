//! The `uring` driver: Linux io_uring through the `io-uring` crate.
//!
//! Every submitted [`Op`] lives in a `Slots` entry together with whatever
//! the kernel reads or writes while it is in flight (the receive buffer, the
//! iovec array and `msghdr` of a send, the `sockaddr` of a connect, the peer
//! address an accept writes), all in stable heap memory. The entry is removed
//! only when the op's own CQE arrives, which is the one and only completion
//! returned for it (O1). An op the kernel cannot take (invalid arguments, an
//! index beyond the `user_data` layout) completes through the same path with
//! an error.
//!
//! Only [`Driver::wait`] enters the kernel (`UringDriver::sys_enter`, where
//! the tests' fault hook sits). `submit` and `cancel` put their SQE in the SQ,
//! or, when it is full, in a queue that `wait` submits first, so they never
//! block, fail or reap. `wait` never blocks longer than its timeout (only up
//! to 1 ms while the kernel refuses SQEs with EBUSY/EAGAIN); a failing
//! `io_uring_enter` is an error returned from `wait`, never a panic. After
//! reaping, it flushes an overflowed CQ and drains DEFER_TASKRUN's batched
//! completions in the same turn; completions the kernel reports dropped
//! (`EBADR`, or its overflow counter) are returned as an `EBADR` error. The
//! CQ holds [`CQ_PER_SQ`] entries per SQ entry.
//!
//! Cancellation pushes an `IORING_OP_ASYNC_CANCEL`; its CQE is internal and is
//! never mistaken for the op's result. The op's CQE is the truth: bytes that
//! arrived before the cancel took effect are returned (O2, the bpo-33694 race).
//!
//! On drop, every op still in flight is cancelled and reaped (bounded to about
//! one second); anything the kernel never answered is leaked rather than freed
//! (O3).
//!
//! `user_data` layout: an op's CQE carries `Slots::encode(key)`. Op indices
//! are kept below `1 << 30`, so bits 30 and 31 of the low word are free:
//! bit 31 marks the CQE of a cancel request (the rest is the target's key),
//! bit 30 marks the driver's own ops (waker read, fallback timeout, the
//! `IORING_OP_CLOSE` of a socket with `SO_LINGER` > 0, whose close(2) would
//! block the loop thread).
//!
//! Multishot receives ([`Op::RecvMulti`]) take their buffers from one
//! provided buffer ring (`bufring`), registered at start when the kernel
//! has multishot receive (6.0, detected by its `SEND_ZC` opcode of the same
//! release) and accepts the ring; otherwise
//! [`Driver::supports_multishot_recv`] says no and transports receive
//! single-shot. Each arrival's CQE (flagged `MORE`) becomes a completion of
//! its own; its bytes are copied out and the buffer goes back to the ring
//! in the same reap. The slot stays until the CQE without `MORE`.
//!
//! Multishot accepts ([`Op::AcceptMulti`], offered only when asked for:
//! see `UringDriver::set_multishot_accept`) post one CQE per accepted
//! socket; the CQE has no address, so the peer is asked of the socket.
//! Arrivals of both kinds count toward one turn's share (`reap_all`).
//!
//! Where things are: `ring` builds the ring and enters the kernel, `bufring`
//! the provided buffer ring, `prep`
//! turns ops into SQEs, `complete` turns CQEs into completions, `waker` is
//! the remote waker, `shutdown` is the drop; `tests` holds what only this
//! driver promises (the contract is in `driver::contract`).

mod bufring;
mod complete;
mod prep;
mod ring;
mod shutdown;
#[cfg(test)]
mod tests;
mod waker;

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring, Probe};

use super::socket::{self, Sockets};
use super::{
    Completion, Driver, DriverKind, DriverStats, Op, OpKey, RecvProgress, RemoteWaker, Slots,
    SockOpt, SocketId,
};
use crate::address::Address;
use bufring::BufRing;
use prep::Side;
use ring::build_ring;
#[cfg(test)]
use ring::Fault;
use waker::EventFd;

/// Bit of the low word marking the CQE of an `ASYNC_CANCEL` (the rest is the target's key).
const CANCEL_BIT: u64 = 1 << 31;
/// Bit of the low word marking the driver's internal ops.
const INTERNAL_BIT: u64 = 1 << 30;
/// The eventfd read that implements the remote waker.
const WAKER_UD: u64 = INTERNAL_BIT | 1;
/// A `Timeout` op used when the kernel lacks `IORING_FEAT_EXT_ARG`.
const TIMEOUT_UD: u64 = INTERNAL_BIT | 2;
/// The CQE of a cancel aimed at the waker read (only on drop).
const WAKER_CANCEL_UD: u64 = INTERNAL_BIT | 3;
/// An `IORING_OP_CLOSE` of a socket with `SO_LINGER` > 0 (see `Driver::close`).
const CLOSE_UD: u64 = INTERNAL_BIT | 4;
/// Op indices must stay below this so the marker bits never collide with a
/// key; an op beyond it completes with `ENOBUFS` without reaching the kernel.
const MAX_INDEX: u32 = 1 << 30;
/// Completion entries per submission entry. The SQ only bounds what is
/// submitted in one go; the ops in flight (a receive per connection, sends,
/// accepts) are many more, and each will post a CQE. The kernel's default is
/// 2; a CQ of 8 per SQ entry (8,192 CQEs, 128 KiB, for the loop's 1,024)
/// keeps the common case off the overflow path.
pub const CQ_PER_SQ: u32 = 8;
/// Longest wait for completions while the kernel refuses SQEs (EBUSY, EAGAIN).
const BUSY_WAIT: Duration = Duration::from_millis(1);
/// With DEFER_TASKRUN, one `io_uring_enter` posts about 20 completions (the
/// kernel's IO_LOCAL_TW_DEFAULT_MAX); a reap at least this large means more
/// may be waiting, so `wait` enters again in the same turn.
const KERNEL_TASK_WORK_BATCH: usize = 16;
/// Bound on those extra entries per `wait`.
const MAX_DRAIN_ROUNDS: usize = 4096;
/// The shape of a provided buffer ring: `buffers` (a power of two) of
/// `size` bytes, consumed incrementally or a whole buffer per arrival.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RingShape {
    pub(crate) buffers: u16,
    pub(crate) size: usize,
    pub(crate) incremental: bool,
}

/// The ring where the kernel consumes buffers incrementally (6.12): 1 MiB
/// in 64 KiB buffers, so that a bulk receive takes up to 64 KiB at once
/// and small arrivals pack one buffer after the other. The kernel cycles
/// through the whole ring, so it is all touched memory: 1 MiB stays in
/// cache, where 128 x 64 KiB whole buffers measured half the bulk
/// throughput.
const INCREMENTAL_RING: RingShape = RingShape {
    buffers: 16,
    size: 64 * 1024,
    incremental: true,
};
/// The ring elsewhere: 1 MiB in 16 KiB buffers, each arrival taking one
/// whole (64 of them: enough for the arrivals of one turn of a busy loop;
/// more only wait for the next arm, and `ENOBUFS` loses nothing).
const WHOLE_BUFFER_RING: RingShape = RingShape {
    buffers: 64,
    size: 16 * 1024,
    incremental: false,
};
/// Multishot arrivals one `wait` reaps at least before it stops entering
/// the kernel for more (a ring's worth if the ring has more buffers).
const TURN_ARRIVALS: usize = 64;
/// Most bytes one arrival carries when consecutive CQEs of a multishot
/// receive are merged: what delivery hands a protocol at once
/// (`RECV_BUF_SIZE`, the poll driver's read size).
const MERGE_MAX: usize = crate::event_loop::RECV_BUF_SIZE;
/// Delivered buffers smaller than this are not kept for arrivals.
const SPARE_MIN_CAPACITY: usize = 16 * 1024;
/// Set to `0` to make the driver receive single-shot although the kernel
/// offers multishot (for measuring one against the other).
pub const MULTISHOT_ENV: &str = "PROACTOR_URING_MULTISHOT";
/// Set to `0` to keep the kernel from consuming provided buffers
/// incrementally although it can (for measuring one against the other).
pub const INCREMENTAL_ENV: &str = "PROACTOR_URING_INCREMENTAL";
/// Set to `1` to make servers accept with one multishot accept each where
/// the kernel offers it (off by default: see
/// `Builder::uring_multishot_accept`, which overrides this).
pub const MULTISHOT_ACCEPT_ENV: &str = "PROACTOR_URING_MULTISHOT_ACCEPT";
/// How long `drop` waits for the kernel to answer in-flight ops before leaking them.
const DROP_DEADLINE: Duration = Duration::from_secs(1);

/// An op in flight, owning its buffers and side data.
#[derive(Debug)]
struct Slot {
    op: Op,
    user: usize,
    side: Side,
    /// Spare capacity offered to a receive: the most the kernel may write.
    offered: usize,
    /// Whether `cancel` was called for this op.
    cancel_requested: bool,
    /// What the `ASYNC_CANCEL` answered, if its CQE came first.
    cancel_result: Option<i32>,
}

/// The `uring` driver.
pub struct UringDriver {
    ring: IoUring,
    /// The provided buffer ring of multishot receives (`None`: the kernel
    /// has none, they are off). Declared after `ring`, so it is unmapped
    /// only after the ring is closed.
    buf_ring: Option<BufRing>,
    /// The kernel has multishot accept (detected with 6.0's `SEND_ZC`).
    multishot_accept_supported: bool,
    /// Multishot accept is offered to servers: supported and asked for
    /// ([`MULTISHOT_ACCEPT_ENV`], `UringDriver::set_multishot_accept`).
    multishot_accept: bool,
    /// Multishot arrivals one `wait` reaps before it stops entering the
    /// kernel for more: [`TURN_ARRIVALS`], or a ring's worth of buffers.
    turn_arrivals: usize,
    /// Multishot arrivals (bytes received, connections accepted) reaped by
    /// the current `wait`.
    arrivals: usize,
    /// Delivered receive buffers given back ([`Driver::recycle_recv_buf`]),
    /// for the next arrivals to be copied into: no allocation per arrival.
    spare_bufs: Vec<Vec<u8>>,
    slots: Slots<Slot>,
    /// Ops completed without the kernel (unsupported shutdown, invalid args):
    /// key and raw result (negative errno), returned by the next `wait`.
    ready: VecDeque<(OpKey, i32)>,
    /// SQEs waiting for room in the SQ, in order; `wait` submits them.
    pending: VecDeque<squeue::Entry>,
    /// The kernel's count of dropped CQEs, as last seen.
    cq_dropped: u32,
    /// The ring runs task work only when entered (`IORING_SETUP_DEFER_TASKRUN`).
    defer_taskrun: bool,
    /// Scratch space for CQEs (user_data, result, flags).
    cqes: Vec<(u64, i32, u32)>,
    waker: Arc<EventFd>,
    /// The 8-byte buffer of the waker read, owned by the driver (raw so the
    /// kernel's writes never alias a live `Box`).
    waker_buf: *mut u64,
    waker_armed: bool,
    /// Timespec of the fallback `Timeout` op (kernels without EXT_ARG).
    fallback_ts: Box<types::Timespec>,
    ext_arg: bool,
    shutdown_supported: bool,
    /// `IORING_OP_SEND` is available (single-segment sends skip the msghdr).
    send_supported: bool,
    /// `IORING_OP_CLOSE` is available (5.6+).
    close_supported: bool,
    /// The sockets this driver owns (Unix listener paths, lingering sockets).
    sockets: Sockets,
    /// `IORING_OP_CLOSE`s in the kernel.
    closes_in_flight: usize,
    setup: &'static str,
    closing: bool,
    stats: DriverStats,
    /// Highest op index + 1 (`MAX_INDEX`; lowered by tests).
    max_index: u32,
    /// Test hook consulted before every `io_uring_enter`.
    #[cfg(test)]
    fault: Option<Box<dyn FnMut() -> Fault>>,
    /// Fallback `Timeout` ops in the kernel (kernels without EXT_ARG).
    fallback_timeouts: usize,
}

impl fmt::Debug for UringDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UringDriver")
            .field("setup", &self.setup)
            .field("multishot", &self.buf_ring.is_some())
            .field(
                "incremental",
                &self.buf_ring.as_ref().is_some_and(BufRing::incremental),
            )
            .field("multishot_accept", &self.multishot_accept)
            .field("ext_arg", &self.ext_arg)
            .field("shutdown_supported", &self.shutdown_supported)
            .field("in_flight", &self.slots.len())
            .field("ready", &self.ready.len())
            .field("pending", &self.pending.len())
            .field("waker_armed", &self.waker_armed)
            .field("fallback_timeouts", &self.fallback_timeouts)
            .field("closes_in_flight", &self.closes_in_flight)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl UringDriver {
    /// Creates a ring with `entries` submission entries (rounded up to a power
    /// of two by the kernel) and [`CQ_PER_SQ`] times as many completion
    /// entries. An error from `io_uring_setup` (EPERM, ENOSYS under seccomp)
    /// is returned unchanged so the loop can fall back to `poll`.
    pub fn new(entries: u32) -> io::Result<UringDriver> {
        let entries = entries.max(8);
        Self::with_queues(entries, entries.saturating_mul(CQ_PER_SQ))
    }

    /// [`UringDriver::new`] with the CQ size chosen: it should hold the
    /// completions of the ops usually in flight at once. More than that is
    /// still safe (the kernel keeps an overflow list that `wait` flushes in
    /// the same turn) but slower.
    pub fn with_queues(entries: u32, cq_entries: u32) -> io::Result<UringDriver> {
        let shapes: &[RingShape] = if env_not_zero(INCREMENTAL_ENV) {
            &[INCREMENTAL_RING, WHOLE_BUFFER_RING]
        } else {
            &[WHOLE_BUFFER_RING]
        };
        Self::with_buffer_rings(entries, cq_entries, shapes)
    }

    /// [`UringDriver::with_queues`] with a provided buffer ring of `shape`.
    #[cfg(test)]
    pub(crate) fn with_buffer_ring(
        entries: u32,
        cq_entries: u32,
        shape: RingShape,
    ) -> io::Result<UringDriver> {
        Self::with_buffer_rings(entries, cq_entries, &[shape])
    }

    /// [`UringDriver::with_queues`] with the first provided buffer ring of
    /// `shapes` that the kernel accepts (none: receives are single-shot).
    fn with_buffer_rings(
        entries: u32,
        cq_entries: u32,
        shapes: &[RingShape],
    ) -> io::Result<UringDriver> {
        let (ring, setup) = build_ring(entries.max(8), cq_entries.max(2 * entries))?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe).map_err(|e| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring probe failed (kernel too old?): {e}"),
            )
        })?;
        let required = [
            ("accept", opcode::Accept::CODE),
            ("connect", opcode::Connect::CODE),
            ("recv", opcode::Recv::CODE),
            ("sendmsg", opcode::SendMsg::CODE),
            ("async_cancel", opcode::AsyncCancel::CODE),
            ("read", opcode::Read::CODE),
            ("timeout", opcode::Timeout::CODE),
        ];
        for (name, code) in required {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring lacks {name}"),
                ));
            }
        }
        let shutdown_supported = probe.is_supported(opcode::Shutdown::CODE);
        let send_supported = probe.is_supported(opcode::Send::CODE);
        let close_supported = probe.is_supported(opcode::Close::CODE);
        let ext_arg = ring.params().is_feature_ext_arg();
        // Multishot accept came in 5.19, multishot receive in 6.0: both are
        // there when the kernel has SEND_ZC (6.0), which the probe can see.
        let kernel_6_0 = probe.is_supported(opcode::SendZc::CODE);
        let multishot_accept =
            kernel_6_0 && std::env::var(MULTISHOT_ACCEPT_ENV).is_ok_and(|v| v.trim() == "1");
        let mut buf_ring = None;
        if kernel_6_0 && env_not_zero(MULTISHOT_ENV) {
            for shape in shapes {
                let RingShape {
                    buffers,
                    size,
                    incremental,
                } = *shape;
                match BufRing::register(&ring.submitter(), buffers, size, incremental) {
                    Ok(r) => {
                        buf_ring = Some((r, buffers));
                        break;
                    }
                    Err(e) => tracing::debug!(?shape, "uring: provided buffer ring refused: {e}"),
                }
            }
            if buf_ring.is_none() {
                tracing::warn!("uring: no provided buffer ring: single-shot receives");
            }
        }
        let (buf_ring, turn_arrivals) = match buf_ring {
            Some((r, buffers)) => (Some(r), TURN_ARRIVALS.max(usize::from(buffers))),
            None => (None, 0),
        };

        // Blocking eventfd: io_uring arms poll on it; a non-blocking one
        // would complete the read with EAGAIN.
        // SAFETY: plain syscall with constant flags.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is a fresh fd that nothing else owns.
        let waker = Arc::new(EventFd(unsafe { OwnedFd::from_raw_fd(efd) }));

        let mut driver = UringDriver {
            ring,
            turn_arrivals,
            arrivals: 0,
            spare_bufs: Vec::new(),
            buf_ring,
            multishot_accept_supported: kernel_6_0,
            multishot_accept,
            slots: Slots::default(),
            ready: VecDeque::new(),
            pending: VecDeque::new(),
            cq_dropped: 0,
            defer_taskrun: setup.contains("defer_taskrun"),
            cqes: Vec::new(),
            waker,
            waker_buf: Box::into_raw(Box::new(0u64)),
            waker_armed: false,
            fallback_ts: Box::new(types::Timespec::new()),
            ext_arg,
            shutdown_supported,
            send_supported,
            close_supported,
            sockets: Sockets::new(false),
            closes_in_flight: 0,
            setup,
            closing: false,
            stats: DriverStats::default(),
            max_index: MAX_INDEX,
            #[cfg(test)]
            fault: None,
            fallback_timeouts: 0,
        };
        driver.arm_waker();
        let multishot = driver.buf_ring.is_some();
        let incremental = driver.buf_ring.as_ref().is_some_and(BufRing::incremental);
        tracing::debug!(
            setup,
            ext_arg,
            shutdown_supported,
            multishot,
            incremental,
            "uring driver ready"
        );
        Ok(driver)
    }

    /// Offers multishot accepts to servers ([`Driver::supports_multishot_accept`])
    /// or not; the kernel must have them (5.19+) for `on` to take effect.
    pub fn set_multishot_accept(&mut self, on: bool) {
        self.multishot_accept = on && self.multishot_accept_supported;
    }

    /// Driver-internal ops in the kernel, besides the waker read (tests).
    #[cfg(test)]
    fn internal_in_flight(&self) -> usize {
        self.closes_in_flight + self.fallback_timeouts
    }

    /// Finishes an op without the kernel on the next `wait`.
    fn complete_later(&mut self, key: OpKey, res: i32) {
        self.ready.push_back((key, res));
    }
}

impl Driver for UringDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Uring
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn recycle_recv_buf(&mut self, buf: Vec<u8>) -> Option<Vec<u8>> {
        let wanted = self.buf_ring.is_some()
            && self.spare_bufs.len() < self.turn_arrivals
            && buf.capacity() >= SPARE_MIN_CAPACITY;
        if !wanted {
            return Some(buf);
        }
        self.spare_bufs.push(buf);
        None
    }

    fn submit(&mut self, op: Op, user: usize) -> OpKey {
        let key = self.slots.insert(Slot {
            op,
            user,
            side: Side::None,
            offered: 0,
            cancel_requested: false,
            cancel_result: None,
        });
        self.stats.count_submit();
        if key.index >= self.max_index {
            // Its key would collide with the marker bits of `user_data`:
            // complete it with an error, without the kernel (O1).
            tracing::warn!("uring: too many ops in flight ({})", self.slots.len());
            self.complete_later(key, -libc::ENOBUFS);
            return key;
        }
        self.start(key);
        key
    }

    fn supports_multishot_recv(&self) -> bool {
        self.buf_ring.is_some()
    }

    fn supports_multishot_accept(&self) -> bool {
        self.multishot_accept
    }

    fn cancel(&mut self, key: OpKey) {
        let Some(slot) = self.slots.get_mut(key) else {
            return; // stale: already completed
        };
        if slot.cancel_requested {
            return;
        }
        slot.cancel_requested = true;
        self.stats.count_cancel_request();
        if self.ready.iter().any(|&(k, _)| k == key) {
            return; // finished without the kernel; its result stands
        }
        let entry = opcode::AsyncCancel::new(Slots::<Slot>::encode(key))
            .build()
            .user_data(Slots::<Slot>::encode(key) | CANCEL_BIT);
        // SAFETY: ASYNC_CANCEL carries no pointers.
        unsafe { self.push(entry) };
    }

    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        self.stats.count_wait();
        let before = out.len();
        while let Some((key, res)) = self.ready.pop_front() {
            if let Some(slot) = self.slots.remove(key) {
                out.push(self.finish(key, slot, res));
            }
        }
        let timeout = if out.len() > before {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        let entered = self.enter(timeout);
        let reaped = self.reap_all(out);
        entered.and(reaped)
    }

    fn remote_waker(&self) -> Arc<dyn RemoteWaker> {
        self.waker.clone()
    }

    fn in_flight(&self) -> usize {
        self.slots.len()
    }

    fn stats(&self) -> DriverStats {
        self.stats
    }

    fn count_multishot_held(&mut self) {
        self.stats.count_multishot_held();
    }

    fn count_read_pause(&mut self, recv: Option<OpKey>) {
        let progress = match recv {
            Some(k) if self.slots.get(k).is_some() => {
                // A CQE still in the kernel's ring is not visible here
                // without consuming it: only completions this driver holds
                // count as ready.
                if self.ready.iter().any(|&(r, _)| r == k) {
                    RecvProgress::Ready
                } else {
                    RecvProgress::InFlight
                }
            }
            _ => RecvProgress::Idle,
        };
        self.stats.count_read_pause(progress);
    }

    fn listen(&mut self, addr: &Address, backlog: u32) -> io::Result<SocketId> {
        self.sockets.listen(addr, backlog)
    }

    fn open_stream(&mut self, addr: &Address) -> io::Result<SocketId> {
        self.sockets.open_stream(addr)
    }

    /// Closes at once, except a socket with `SO_LINGER` > 0: its close(2)
    /// would block the loop thread until the unsent data is acknowledged (or
    /// the linger time passes). That one goes to the kernel as an
    /// `IORING_OP_CLOSE` run by an io-wq worker (`IOSQE_ASYNC`), which does
    /// the waiting; the peer sees the same as after a blocking close (the
    /// data, then FIN). On kernels without `IORING_OP_CLOSE` (< 5.6)
    /// `Sockets::close` clears the linger first, as on `poll`.
    fn close(&mut self, socket: SocketId) {
        if self.close_supported && self.sockets.lingers(socket) {
            self.sockets.forget(socket);
            let entry = opcode::Close::new(types::Fd(socket.0))
                .build()
                .flags(squeue::Flags::ASYNC)
                .user_data(CLOSE_UD);
            // SAFETY: IORING_OP_CLOSE carries no pointers; the fd stays
            // open (and unused: its owner let it go) until the op runs.
            unsafe { self.push(entry) };
            self.closes_in_flight += 1;
            return;
        }
        self.sockets.close(socket)
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
        Ok(self.sockets.release(socket))
    }
}

/// Whether the environment leaves the feature `var` turns off (with `0`) on.
fn env_not_zero(var: &str) -> bool {
    std::env::var(var).map_or(true, |v| v.trim() != "0")
}
