//! The `uring` driver: Linux io_uring through the `io-uring` crate.
//!
//! Every submitted [`Op`] lives in a [`Slots`] entry together with whatever
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

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::Shutdown as How;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, EnterFlags, IoUring, Probe};

use super::socket::{self, Sockets};
use super::{
    cancelled_error, Completion, Driver, DriverKind, DriverStats, Op, OpKey, RemoteWaker, Slots,
    SockOpt, SocketId,
};
use crate::address::Address;

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
/// How long `drop` waits for the kernel to answer in-flight ops before leaking them.
const DROP_DEADLINE: Duration = Duration::from_secs(1);

/// Kernel-visible side data of an op, kept at a stable heap address until its CQE.
enum Side {
    None,
    /// The peer address an accept writes.
    Accept(Box<AcceptAddr>),
    /// The address a connect reads.
    Connect(Box<socket2::SockAddr>),
    /// The iovec array and message header a `sendmsg` reads. `msg` points into
    /// `iov`, and `iov` points into the op's `Bytes`.
    Send {
        iov: Box<[libc::iovec]>,
        _msg: Box<libc::msghdr>,
    },
}

impl fmt::Debug for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Side::None => f.write_str("None"),
            Side::Accept(_) => f.write_str("Accept"),
            Side::Connect(a) => f.debug_tuple("Connect").field(a).finish(),
            Side::Send { iov, .. } => write!(f, "Send({} iovecs)", iov.len()),
        }
    }
}

/// Where an accept writes the peer's address: taken from the completion
/// itself, so a peer that reset right after the accept still has one
/// (`getpeername` would fail with `ENOTCONN`).
struct AcceptAddr {
    storage: socket2::SockAddrStorage,
    len: libc::socklen_t,
}

impl AcceptAddr {
    fn new() -> Box<AcceptAddr> {
        let storage = socket2::SockAddrStorage::zeroed();
        let len = storage.size_of();
        Box::new(AcceptAddr { storage, len })
    }

    /// The address the kernel wrote.
    fn take(self) -> Address {
        let len = self.len.min(self.storage.size_of());
        // SAFETY: the kernel filled `storage` with an address of the accepted
        // socket's family and set `len` to its length (clamped to the
        // storage); the rest of the storage is zeroed.
        let sa = unsafe { socket2::SockAddr::new(self.storage, len) };
        Address::from_sockaddr(&sa)
    }
}

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

/// The eventfd behind [`RemoteWaker`]; shared with other threads.
#[derive(Debug)]
struct EventFd(OwnedFd);

impl RemoteWaker for EventFd {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to an fd this struct owns.
        let n = unsafe {
            libc::write(
                self.0.as_raw_fd(),
                (&one as *const u64).cast::<libc::c_void>(),
                8,
            )
        };
        if n != 8 {
            tracing::warn!("uring: eventfd wake failed: {}", io::Error::last_os_error());
        }
    }
}

/// Test hook: what the next `io_uring_enter` does.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Enter the kernel as usual.
    Pass,
    /// Fail with this errno without entering the kernel.
    Fail(i32),
    /// Let the kernel post the completions it has (run task work, flush an
    /// overflow) without submitting or waiting, then fail with this errno.
    FlushThenFail(i32),
}

/// The `uring` driver.
pub struct UringDriver {
    ring: IoUring,
    slots: Slots<Slot>,
    /// The live key for each slot index (to cancel everything on drop).
    live: Vec<Option<OpKey>>,
    /// Ops completed without the kernel (unsupported shutdown, invalid args):
    /// key and raw result (negative errno), returned by the next `wait`.
    ready: VecDeque<(OpKey, i32)>,
    /// SQEs waiting for room in the SQ, in order; `wait` submits them.
    pending: VecDeque<squeue::Entry>,
    /// The kernel's count of dropped CQEs, as last seen.
    cq_dropped: u32,
    /// The ring runs task work only when entered (`IORING_SETUP_DEFER_TASKRUN`).
    defer_taskrun: bool,
    /// Scratch space for CQEs (user_data, result).
    cqes: Vec<(u64, i32)>,
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

/// How one `io_uring_enter` is made (see `UringDriver::sys_enter`).
#[derive(Clone, Copy, Debug)]
enum Enter {
    /// Submit the SQ; never wait.
    Submit,
    /// Submit the SQ and post the completions the kernel has (run its task
    /// work, flush an overflowed CQ); never wait.
    Poll,
    /// Post the completions the kernel has; submit nothing, never wait.
    Drain,
    /// Submit the SQ, then wait for one completion, or the timeout.
    Wait(Option<Duration>),
    /// Submit nothing; wait up to this long for one completion (EXT_ARG).
    WaitOnly(Duration),
}

/// The kernel could not take SQEs for now (a backed-up CQ, no memory).
fn is_busy(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN))
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EINVAL)
}

/// Builds the ring, trying the cheapest setup flags first, each with a CQ
/// of `cq_entries` (`IORING_SETUP_CQSIZE`, clamped by the kernel), then with
/// the kernel's default (twice the SQ) where that is refused: kernels before
/// 5.5 lack CQSIZE; before 5.12 ring memory counts against `RLIMIT_MEMLOCK`.
fn build_ring(entries: u32, cq_entries: u32) -> io::Result<(IoUring, &'static str)> {
    type Setup = fn(&mut io_uring::Builder) -> &mut io_uring::Builder;
    let attempts: [(&'static str, Setup); 4] = [
        ("single_issuer+defer_taskrun+coop_taskrun", |b| {
            b.setup_single_issuer()
                .setup_defer_taskrun()
                .setup_coop_taskrun()
        }),
        ("single_issuer+coop_taskrun", |b| {
            b.setup_single_issuer().setup_coop_taskrun()
        }),
        ("coop_taskrun", |b| b.setup_coop_taskrun()),
        ("plain", |b| b),
    ];
    let mut last = None;
    for (i, (name, setup)) in attempts.into_iter().enumerate() {
        #[cfg(test)]
        if i < tests::SKIP_SETUPS.get() {
            continue;
        }
        #[cfg(not(test))]
        let _ = i;
        for cq in [Some(cq_entries), None] {
            let mut builder = IoUring::builder();
            setup(&mut builder);
            if let Some(cq) = cq {
                builder.setup_cqsize(cq).setup_clamp();
            }
            match builder.build(entries) {
                Ok(ring) => return Ok((ring, name)),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
                Err(e) if e.raw_os_error() == Some(libc::ENOMEM) && cq.is_some() => last = Some(e),
                // EPERM, ENOSYS, ENOMEM...: the loop may fall back to `poll`.
                Err(e) => return Err(e),
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)))
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
            slots: Slots::default(),
            live: Vec::new(),
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
        tracing::debug!(setup, ext_arg, shutdown_supported, "uring driver ready");
        Ok(driver)
    }

    /// The error the test hook injects into this `io_uring_enter`, if any.
    #[cfg(test)]
    fn injected(&mut self) -> Option<io::Error> {
        let fault = self.fault.as_mut()?();
        match fault {
            Fault::Pass => None,
            Fault::Fail(errno) => Some(io::Error::from_raw_os_error(errno)),
            Fault::FlushThenFail(errno) => {
                // SAFETY: submits nothing and passes no argument: the kernel
                // only posts completions it already has.
                let _ = unsafe {
                    self.ring.submitter().enter::<libc::sigset_t>(
                        0,
                        0,
                        io_uring::EnterFlags::GETEVENTS.bits(),
                        None,
                    )
                };
                Some(io::Error::from_raw_os_error(errno))
            }
        }
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn injected(&mut self) -> Option<io::Error> {
        None
    }

    /// Driver-internal ops in the kernel, besides the waker read (tests).
    #[cfg(test)]
    fn internal_in_flight(&self) -> usize {
        self.closes_in_flight + self.fallback_timeouts
    }

    /// Queues an SQE: straight into the SQ when it has room (and nothing is
    /// queued before it), else into `pending`, which the next `wait` submits.
    /// Never enters the kernel, so it can neither block nor fail, nor reap
    /// completions outside `wait`.
    ///
    /// # Safety
    ///
    /// Every pointer in `entry` must stay valid until its CQE arrives.
    unsafe fn push(&mut self, entry: squeue::Entry) {
        if self.pending.is_empty() {
            // SAFETY: the caller guarantees the pointers in `entry` outlive the op.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
        }
        self.pending.push_back(entry);
    }

    /// The one place that calls `io_uring_enter` (and the test hook).
    fn sys_enter(&mut self, how: Enter) -> io::Result<usize> {
        if let Some(e) = self.injected() {
            return Err(e);
        }
        let getevents = EnterFlags::GETEVENTS.bits();
        match how {
            Enter::Submit => self.ring.submit(),
            Enter::Poll => {
                let queued = self.ring.submission().len() as u32;
                // SAFETY: `queued` SQEs are in the ring, each pointer in them
                // valid until its CQE (see `push`); no argument is passed.
                unsafe {
                    self.ring
                        .submitter()
                        .enter::<libc::sigset_t>(queued, 0, getevents, None)
                }
            }
            Enter::Drain => {
                // SAFETY: submits nothing and passes no argument.
                unsafe {
                    self.ring
                        .submitter()
                        .enter::<libc::sigset_t>(0, 0, getevents, None)
                }
            }
            Enter::Wait(timeout) if self.ext_arg => {
                let submitter = self.ring.submitter();
                match timeout {
                    None => submitter.submit_with_args(1, &types::SubmitArgs::new()),
                    Some(d) => {
                        let ts = types::Timespec::from(d);
                        submitter.submit_with_args(1, &types::SubmitArgs::new().timespec(&ts))
                    }
                }
            }
            // The fallback Timeout SQE (if any) is in the SQ: see `enter`.
            Enter::Wait(_) => self.ring.submit_and_wait(1),
            Enter::WaitOnly(d) => {
                let ts = types::Timespec::from(d);
                let args = types::SubmitArgs::new().timespec(&ts);
                let flags = (EnterFlags::GETEVENTS | EnterFlags::EXT_ARG).bits();
                // SAFETY: submits nothing; `args` is the getevents argument
                // EXT_ARG expects (only used where the kernel has EXT_ARG) and
                // outlives the call.
                unsafe { self.ring.submitter().enter(0, 1, flags, Some(&args)) }
            }
        }
    }

    /// Moves queued SQEs into the SQ, submitting whenever it fills. Returns
    /// `true` when the kernel refused more for now (EBUSY, EAGAIN): the rest
    /// stays queued for the next `wait`.
    fn flush_pending(&mut self) -> io::Result<bool> {
        loop {
            {
                let mut sq = self.ring.submission();
                while let Some(entry) = self.pending.front() {
                    // SAFETY: every pointer in a queued entry stays valid
                    // until its CQE (the contract of `push`).
                    if unsafe { sq.push(entry) }.is_err() {
                        break;
                    }
                    self.pending.pop_front();
                }
            }
            if self.pending.is_empty() {
                return Ok(false);
            }
            match self.sys_enter(Enter::Submit) {
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if is_busy(&e) => return Ok(true),
                Err(e) => return Err(e),
            }
        }
    }

    /// Puts the fallback `Timeout` (kernels without EXT_ARG) into the SQ
    /// itself, since the wait that follows must carry it. `false` if the SQ
    /// has no room even after a submit: the caller must not block then.
    fn arm_fallback_timeout(&mut self, d: Duration) -> bool {
        *self.fallback_ts = types::Timespec::from(d);
        // count(1), as liburing does: the timeout also completes as soon as
        // one other CQE is posted, so it ends with the wait instead of
        // staying in the kernel as a timer until it expires.
        let entry = opcode::Timeout::new(&*self.fallback_ts)
            .count(1)
            .build()
            .user_data(TIMEOUT_UD);
        for attempt in 0..2 {
            // SAFETY: the kernel copies the timespec when it prepares the SQE,
            // in the enter that follows; the box lives as long as the driver.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                self.fallback_timeouts += 1;
                return true;
            }
            if attempt == 0 && self.sys_enter(Enter::Submit).is_err() {
                break;
            }
        }
        false
    }

    /// Keeps a read on the eventfd in flight.
    fn arm_waker(&mut self) {
        if self.waker_armed || self.closing || self.waker_buf.is_null() {
            return;
        }
        let entry = opcode::Read::new(
            types::Fd(self.waker.0.as_raw_fd()),
            self.waker_buf.cast::<u8>(),
            8,
        )
        .build()
        .user_data(WAKER_UD);
        // SAFETY: `waker_buf` is freed only once the read's CQE arrived (or is
        // leaked in drop), and the eventfd is kept open by `self.waker`.
        unsafe { self.push(entry) };
        self.waker_armed = true;
    }

    /// Finishes an op without the kernel on the next `wait`.
    fn complete_later(&mut self, key: OpKey, res: i32) {
        self.ready.push_back((key, res));
    }

    /// Submits everything queued, then waits for a completion, a remote wake
    /// or `timeout`. Never blocks longer than `timeout`, and never blocks at
    /// all while the kernel refuses SQEs for lack of resources.
    fn enter(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let res = match self.flush_pending() {
            Err(e) => Err(e),
            // The kernel takes no more SQEs for now: wait briefly for
            // completions (reaping them is what frees it), without submitting.
            Ok(true) if self.ext_arg && timeout != Some(Duration::ZERO) => {
                let d = timeout.map_or(BUSY_WAIT, |t| t.min(BUSY_WAIT));
                self.sys_enter(Enter::WaitOnly(d))
            }
            Ok(true) => self.sys_enter(Enter::Drain),
            Ok(false) => match timeout {
                // Post what completed, without a timer.
                Some(d) if d.is_zero() => self.sys_enter(Enter::Poll),
                _ if self.ext_arg => self.sys_enter(Enter::Wait(timeout)),
                None => self.sys_enter(Enter::Wait(None)),
                Some(d) if self.arm_fallback_timeout(d) => self.sys_enter(Enter::Wait(Some(d))),
                Some(_) => self.sys_enter(Enter::Poll),
            },
        };
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) || is_busy(&e) =>
            {
                Ok(())
            }
            Err(e) => Err(self.enter_error(e)),
        }
    }

    /// Logs a failed `io_uring_enter`; the error goes to the caller of `wait`.
    fn enter_error(&self, e: io::Error) -> io::Error {
        if e.raw_os_error() == Some(libc::EBADR) {
            tracing::error!(
                "uring: the kernel dropped completions (CQ overflow); their ops will never complete"
            );
        } else {
            tracing::error!("uring: io_uring_enter failed: {e}");
        }
        e
    }

    /// Reaps every CQE; then, in the same turn, what an overflowed CQ still
    /// holds in the kernel, and (DEFER_TASKRUN) the completions the kernel
    /// posts only in batches as it is entered. Reports completions the
    /// kernel dropped (CQ overflow without `IORING_FEAT_NODROP`, or an
    /// overflow entry it could not allocate) as an error: the ops they
    /// belonged to will never complete.
    fn reap_all(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        let mut n = self.reap(out);
        let mut rounds = 0;
        let mut result = Ok(());
        loop {
            let overflow = self.ring.submission().cq_overflow();
            let batch = self.defer_taskrun && n >= KERNEL_TASK_WORK_BATCH;
            if !(overflow || batch) || rounds == MAX_DRAIN_ROUNDS {
                break;
            }
            rounds += 1;
            match self.sys_enter(Enter::Poll) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) || is_busy(&e) => {}
                Err(e) => {
                    result = Err(self.enter_error(e));
                    break;
                }
            }
            n = self.reap(out);
            if n == 0 {
                break; // nothing more to post (or the kernel could not now)
            }
        }
        let dropped = self.ring.completion().overflow();
        if dropped != self.cq_dropped {
            let lost = dropped.wrapping_sub(self.cq_dropped);
            self.cq_dropped = dropped;
            tracing::error!(lost, "uring: the kernel dropped completions (CQ overflow)");
            result = Err(io::Error::from_raw_os_error(libc::EBADR));
        }
        result
    }

    /// Moves every CQE in the ring into completions; returns how many CQEs.
    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        let n = cqes.len();
        for &(ud, res) in &cqes {
            if ud & INTERNAL_BIT != 0 {
                match ud {
                    WAKER_UD => {
                        self.waker_armed = false;
                        if res < 0 && res != -libc::ECANCELED && res != -libc::EINTR {
                            tracing::warn!(
                                "uring: waker read failed: {}",
                                io::Error::from_raw_os_error(-res)
                            );
                        }
                        self.arm_waker();
                    }
                    TIMEOUT_UD => self.fallback_timeouts -= 1,
                    CLOSE_UD => {
                        self.closes_in_flight -= 1;
                        if res < 0 {
                            tracing::warn!(
                                "uring: close failed: {}",
                                io::Error::from_raw_os_error(-res)
                            );
                        }
                    }
                    WAKER_CANCEL_UD => {}
                    other => tracing::warn!("uring: unknown internal CQE {other:#x}"),
                }
            } else if ud & CANCEL_BIT != 0 {
                let key = Slots::<Slot>::decode(ud & !CANCEL_BIT);
                if let Some(slot) = self.slots.get_mut(key) {
                    slot.cancel_result = Some(res);
                }
            } else {
                let key = Slots::<Slot>::decode(ud);
                match self.slots.remove(key) {
                    Some(slot) => out.push(self.finish(key, slot, res)),
                    None => tracing::warn!("uring: CQE for unknown op {ud:#x} ({res})"),
                }
            }
        }
        cqes.clear();
        self.cqes = cqes;
        n
    }

    /// Turns an op's one result (raw: negative errno) into its completion.
    fn finish(&mut self, key: OpKey, slot: Slot, res: i32) -> Completion {
        if let Some(l) = self.live.get_mut(key.index as usize) {
            *l = None;
        }
        let Slot {
            mut op,
            user,
            side,
            offered,
            cancel_requested,
            cancel_result,
        } = slot;
        // The kernel is done with the side data now.
        let peer = match side {
            Side::Accept(addr) => Some(addr.take()),
            _ => None,
        };
        let result = if cancel_requested && (res == -libc::ECANCELED || res == -libc::EINTR) {
            // Truly cancelled: nothing was transferred.
            Err(cancelled_error())
        } else {
            if cancel_requested {
                // The op finished anyway (cancel said ENOENT/EALREADY, or lost
                // the race): its real result goes to the owner (O2).
                tracing::trace!(?key, res, ?cancel_result, "uring: cancel race");
            }
            if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                let n = res as usize;
                match &mut op {
                    Op::Accept { listener, accepted } => {
                        let id = SocketId(res);
                        self.sockets.accepted(*listener, id);
                        let peer = peer.unwrap_or_else(|| Address::Unix(Default::default()));
                        *accepted = Some((id, peer));
                        Ok(0)
                    }
                    Op::Recv { buf, .. } => {
                        debug_assert!(n <= offered);
                        // SAFETY: the kernel wrote `n` initialized bytes into the
                        // spare capacity starting at `buf.len()`, and `n` is at
                        // most the spare capacity we offered.
                        unsafe { buf.set_len(buf.len() + n.min(offered)) };
                        Ok(n)
                    }
                    Op::Send { .. } => Ok(n),
                    Op::Connect { .. } | Op::Shutdown { .. } => Ok(0),
                }
            }
        };
        let completion = Completion {
            user,
            key,
            op,
            result,
        };
        self.stats.count_completion(&completion, cancel_requested);
        completion
    }

    /// Builds the SQE for the op in `key`'s slot, or completes it at once.
    fn start(&mut self, key: OpKey) {
        let ud = Slots::<Slot>::encode(key);
        let slot = self.slots.get_mut(key).expect("slot just inserted");
        if let Some(result) = slot.op.immediate_result() {
            let res = match result {
                Ok(n) => i32::try_from(n).unwrap_or(i32::MAX),
                Err(e) => -errno(&e),
            };
            return self.complete_later(key, res);
        }
        let entry = match &mut slot.op {
            Op::Accept { listener, .. } => {
                let mut addr = AcceptAddr::new();
                // The accepted socket is blocking (no SOCK_NONBLOCK), as the
                // uring driver wants its sockets.
                let e = opcode::Accept::new(
                    types::Fd(listener.0),
                    std::ptr::addr_of_mut!(addr.storage).cast::<libc::sockaddr>(),
                    std::ptr::addr_of_mut!(addr.len),
                )
                .flags(libc::SOCK_CLOEXEC)
                .build();
                slot.side = Side::Accept(addr);
                e
            }
            Op::Connect { socket, addr } => match addr.to_sockaddr() {
                Ok(sa) => {
                    let sa = Box::new(sa);
                    let e = opcode::Connect::new(
                        types::Fd(socket.0),
                        sa.as_ptr().cast::<libc::sockaddr>(),
                        sa.len(),
                    )
                    .build();
                    slot.side = Side::Connect(sa);
                    e
                }
                Err(e) => return self.complete_later(key, -errno(&e)),
            },
            Op::Recv { socket, buf } => {
                let spare = (buf.capacity() - buf.len()).min(u32::MAX as usize);
                slot.offered = spare;
                let ptr = buf.spare_capacity_mut().as_mut_ptr().cast::<u8>();
                opcode::Recv::new(types::Fd(socket.0), ptr, spare as u32).build()
            }
            Op::Send {
                socket,
                bufs,
                offset,
            } => {
                let mut segments = socket::send_slices(bufs, *offset);
                if let (Some(only), None, true) =
                    (segments.next(), segments.next(), self.send_supported)
                {
                    // One segment (the common case): a plain `send` needs no
                    // iovec array or msghdr, so nothing to allocate. It points
                    // into the op's `Bytes`, like the iovecs would.
                    let len = only.len().min(u32::MAX as usize) as u32;
                    opcode::Send::new(types::Fd(socket.0), only.as_ptr(), len)
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                } else {
                    let iov: Box<[libc::iovec]> = socket::send_slices(bufs, *offset)
                        .map(|b| libc::iovec {
                            iov_base: b.as_ptr() as *mut libc::c_void,
                            iov_len: b.len(),
                        })
                        .collect();
                    // SAFETY: msghdr is a plain C struct; all-zero is a valid
                    // value (null pointers, zero lengths).
                    let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
                    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
                    msg.msg_iovlen = iov.len() as _;
                    let e = opcode::SendMsg::new(types::Fd(socket.0), &*msg)
                        .flags(libc::MSG_NOSIGNAL as u32)
                        .build();
                    slot.side = Side::Send { iov, _msg: msg };
                    e
                }
            }
            Op::Shutdown { socket, how } => {
                let how = match how {
                    How::Read => libc::SHUT_RD,
                    How::Write => libc::SHUT_WR,
                    How::Both => libc::SHUT_RDWR,
                };
                if !self.shutdown_supported {
                    let fd = socket.0;
                    // SAFETY: plain syscall on an fd the caller owns.
                    let r = unsafe { libc::shutdown(fd, how) };
                    let res = if r == 0 {
                        0
                    } else {
                        -errno(&io::Error::last_os_error())
                    };
                    return self.complete_later(key, res);
                }
                opcode::Shutdown::new(types::Fd(socket.0), how).build()
            }
        };
        let entry = entry.user_data(ud);
        // SAFETY: every pointer in `entry` refers to heap memory owned by the
        // slot (the Vec's buffer, the Bytes, the boxed side data, including
        // the accept's address storage the kernel writes), which stays
        // put until the slot is removed when the op's CQE arrives, or is leaked
        // by `drop`.
        unsafe { self.push(entry) };
    }
}

impl Driver for UringDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Uring
    }

    fn now(&self) -> Instant {
        Instant::now()
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
        let i = key.index as usize;
        if self.live.len() <= i {
            self.live.resize(i + 1, None);
        }
        self.live[i] = Some(key);
        self.start(key);
        key
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
    /// [`Sockets::close`] clears the linger first, as on `poll`.
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
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        let leaked = self.quiesce(DROP_DEADLINE);
        if leaked > 0 {
            tracing::warn!("uring: leaked {leaked} ops the kernel did not complete");
        }
        // `ring` closes when the fields drop, after everything the kernel could
        // still touch was either completed or leaked.
    }
}

impl UringDriver {
    /// Shuts the driver down (O3): cancels every op still in the kernel and
    /// reaps until each one's CQE arrived or `limit` passed. Ops the kernel
    /// never answered are leaked, never freed. Returns how many were leaked
    /// (the waker read included). The driver submits nothing afterwards.
    fn quiesce(&mut self, limit: Duration) -> usize {
        self.closing = true;
        let mut garbage = Vec::new();
        while let Some((key, res)) = self.ready.pop_front() {
            if let Some(slot) = self.slots.remove(key) {
                garbage.push(self.finish(key, slot, res));
            }
        }
        let live: Vec<OpKey> = self.live.iter().flatten().copied().collect();
        for key in live {
            self.cancel(key);
        }
        if self.waker_armed {
            let entry = opcode::AsyncCancel::new(WAKER_UD)
                .build()
                .user_data(WAKER_CANCEL_UD);
            // SAFETY: ASYNC_CANCEL carries no pointers.
            unsafe { self.push(entry) };
        }
        let deadline = Instant::now() + limit;
        loop {
            Self::discard(&mut garbage);
            if self.slots.is_empty() && !self.waker_armed {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            let entered = self.enter(Some(wait));
            let reaped = self.reap_all(&mut garbage);
            if let Err(e) = entered.and(reaped) {
                tracing::warn!("uring: io_uring_enter failed during shutdown: {e}");
                break;
            }
        }
        Self::discard(&mut garbage);
        let mut leaked = self.slots.len();
        if leaked > 0 {
            // The kernel may still write these buffers: never free them.
            std::mem::forget(std::mem::take(&mut self.slots));
            self.live.clear();
        }
        if self.waker_armed {
            leaked += 1;
        } else if !self.waker_buf.is_null() {
            // SAFETY: `waker_buf` came from Box::into_raw in `new`, the
            // kernel's read of it has completed and no new read will be
            // armed (`closing`); it is freed exactly once (then nulled).
            drop(unsafe { Box::from_raw(self.waker_buf) });
            self.waker_buf = std::ptr::null_mut();
        }
        leaked
    }

    /// Drops completions nobody will see, closing sockets they accepted.
    fn discard(garbage: &mut Vec<Completion>) {
        for c in garbage.drain(..) {
            if let Op::Accept {
                accepted: Some((id, _)),
                ..
            } = c.op
            {
                socket::close(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::IntoRawFd;
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::driver::contract::{self, Harness};

    /// A driver, or `None` (with the reason printed) when io_uring is refused here.
    fn driver() -> Option<UringDriver> {
        match UringDriver::new(64) {
            Ok(d) => Some(d),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EPERM | libc::ENOSYS | libc::EACCES | libc::ENOMEM)
                ) || e.kind() == io::ErrorKind::Unsupported =>
            {
                eprintln!("SKIPPED: io_uring unavailable on this machine: {e}");
                None
            }
            Err(e) => panic!("UringDriver::new failed: {e}"),
        }
    }

    macro_rules! driver_or_skip {
        () => {
            match driver() {
                Some(d) => d,
                None => return,
            }
        };
    }

    /// Waits until the completion of `key` arrives; other completions are kept in `others`.
    fn wait_for(d: &mut UringDriver, key: OpKey, others: &mut Vec<Completion>) -> Completion {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = others.iter().position(|c| c.key == key) {
                return others.remove(i);
            }
            assert!(Instant::now() < deadline, "no completion for {key:?}");
            d.wait(Some(Duration::from_secs(1)), others).unwrap();
        }
    }

    fn run(d: &mut UringDriver, key: OpKey) -> Completion {
        let mut others = Vec::new();
        let c = wait_for(d, key, &mut others);
        assert!(others.is_empty(), "unexpected completions: {others:?}");
        c
    }

    fn assert_quiescent(d: &UringDriver) {
        let s = d.stats();
        assert_eq!(d.in_flight(), 0);
        assert_eq!(
            s.submitted, s.completed,
            "O1: one completion per submit: {s:?}"
        );
        assert_eq!(s.cancel_requests, s.cancel_races + s.cancelled, "{s:?}");
    }

    fn pair() -> (SocketId, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (SocketId(a.into_raw_fd()), b)
    }

    fn recv_op(socket: SocketId, cap: usize) -> Op {
        Op::Recv {
            socket,
            buf: Vec::with_capacity(cap),
        }
    }

    fn recv_bytes(c: Completion) -> io::Result<Vec<u8>> {
        let n = c.result?;
        match c.op {
            Op::Recv { buf, .. } => {
                assert_eq!(buf.len(), n);
                Ok(buf)
            }
            other => panic!("not a recv: {other:?}"),
        }
    }

    #[test]
    fn many_ops_beyond_ring_size() {
        // More ops than SQ entries: submit must flush the SQ and go on.
        let mut d = driver_or_skip!();
        let mut socks = Vec::new();
        let mut keys = Vec::new();
        for _ in 0..300 {
            let (a, b) = pair();
            keys.push(d.submit(recv_op(a, 16), a.0 as usize));
            socks.push((a, b));
        }
        for (_, b) in &mut socks {
            b.write_all(b"ping").unwrap();
        }
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.len() < keys.len() {
            assert!(Instant::now() < deadline);
            d.wait(Some(Duration::from_secs(1)), &mut out).unwrap();
        }
        for c in out {
            assert_eq!(recv_bytes(c).unwrap(), b"ping");
        }
        for (a, mut b) in socks {
            let mut buf = [0u8; 1];
            d.close(a);
            assert_eq!(b.read(&mut buf).unwrap(), 0);
        }
        assert_quiescent(&d);
    }

    #[test]
    fn shutdown_reaps_every_op_and_leaks_nothing() {
        let mut d = driver_or_skip!();
        let (a, mut b) = pair();
        let (c, _e) = pair();
        d.submit(recv_op(a, 1 << 16), 0);
        let mut out = Vec::new();
        d.wait(Some(Duration::ZERO), &mut out).unwrap();
        // Data arrives after the op is in the kernel but before the cancel:
        // shutdown must still wait for (and free) that completion.
        b.write_all(b"late").unwrap();
        d.submit(recv_op(c, 1 << 16), 1);
        assert_eq!(d.quiesce(Duration::from_secs(1)), 0);
        assert_eq!(d.in_flight(), 0);
        assert!(d.waker_buf.is_null());
        drop(d);
        socket::close(a);
        socket::close(c);
    }

    /// Kernels without EXT_ARG (< 5.11) wait with a Timeout op; kernels
    /// without IORING_OP_SHUTDOWN (< 5.11) shut down synchronously.
    #[test]
    fn fallbacks_for_older_kernels() {
        let mut d = driver_or_skip!();
        d.ext_arg = false;
        d.shutdown_supported = false;
        let mut out = Vec::new();
        let start = Instant::now();
        d.wait(Some(Duration::ZERO), &mut out).unwrap();
        d.wait(Some(Duration::from_millis(60)), &mut out).unwrap();
        let e = start.elapsed();
        assert!(
            e >= Duration::from_millis(55) && e < Duration::from_secs(2),
            "{e:?}"
        );
        assert!(out.is_empty());
        let waker = d.remote_waker();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            waker.wake();
        });
        d.wait(None, &mut out).unwrap();
        t.join().unwrap();
        assert_quiescent(&d);
        let mut h = Harness::new(Box::new(d), "fallbacks_for_older_kernels");
        contract::ops::echo_over_ipv4(&mut h);
    }

    /// A socket with `SO_LINGER` > 0 is closed by an `IORING_OP_CLOSE` that
    /// completes in the kernel (the contract's
    /// `close_with_a_linger_never_blocks_the_loop` checks the rest).
    #[test]
    fn a_lingering_close_runs_in_the_kernel() {
        let mut d = driver_or_skip!();
        let (a, _b) = pair();
        d.set_option(a, SockOpt::Linger(Some(Duration::from_secs(1))))
            .unwrap();
        d.close(a);
        assert_eq!(d.closes_in_flight, 1);
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while d.internal_in_flight() > 0 {
            assert!(Instant::now() < deadline, "the close never completed");
            d.wait(Some(Duration::from_millis(50)), &mut out).unwrap();
        }
        assert!(out.is_empty());
        assert_quiescent(&d);
    }

    /// Kernels without `IORING_OP_CLOSE` (< 5.6) clear the linger before
    /// close(2), as `poll` does: the contract case holds all the same.
    #[test]
    fn a_lingering_close_without_ioring_op_close_never_blocks() {
        let mut d = driver_or_skip!();
        d.close_supported = false;
        let mut h = Harness::new(Box::new(d), "a_lingering_close_without_ioring_op_close");
        contract::lifecycle::close_with_a_linger_never_blocks_the_loop(&mut h);
    }

    // ----- robustness (issue 7 item 6) -----

    thread_local! {
        /// `build_ring` skips this many of its setups (to test each one).
        pub(super) static SKIP_SETUPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// A driver on the `skip`-th setup `build_ring` would try (and the ones
    /// after it, if the kernel refuses that one).
    fn driver_on_setup(entries: u32, skip: usize) -> Option<UringDriver> {
        SKIP_SETUPS.set(skip);
        let d = driver_with(entries);
        SKIP_SETUPS.set(0);
        d
    }

    /// A driver with `entries` SQ entries, or `None` where io_uring is refused.
    fn driver_with(entries: u32) -> Option<UringDriver> {
        match UringDriver::new(entries) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("SKIPPED: io_uring unavailable on this machine: {e}");
                None
            }
        }
    }

    /// Plays `script` to the next `io_uring_enter`s, then lets them through.
    fn script(d: &mut UringDriver, script: Vec<Box<dyn FnMut() -> Fault>>) {
        let mut steps = script.into_iter();
        d.fault = Some(Box::new(move || match steps.next() {
            Some(mut step) => step(),
            None => Fault::Pass,
        }));
    }

    /// Waits until every key in `keys` completed; returns their completions.
    fn run_all(d: &mut UringDriver, keys: &[OpKey], limit: Duration) -> Vec<Completion> {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        while !keys
            .iter()
            .all(|k| out.iter().any(|c: &Completion| c.key == *k))
        {
            let missing: Vec<_> = keys
                .iter()
                .filter(|k| !out.iter().any(|c: &Completion| c.key == **k))
                .collect();
            assert!(
                Instant::now() < deadline,
                "O1: no completion after {limit:?} for {missing:?} (completions lost)"
            );
            let _ = d.wait(Some(Duration::from_millis(50)), &mut out);
        }
        assert_eq!(
            out.len(),
            keys.len(),
            "stray or duplicate completions: {out:?}"
        );
        out
    }

    /// Cancels every key and waits for the completions, then checks O1.
    fn cancel_all(d: &mut UringDriver, keys: &[OpKey]) {
        for &k in keys {
            d.cancel(k);
        }
        run_all(d, keys, Duration::from_secs(5));
        assert_quiescent(d);
    }

    /// 6e. An op index beyond what `user_data` can carry completes with an
    /// error (O1) instead of panicking.
    #[test]
    fn too_many_ops_in_flight_complete_with_an_error() {
        let mut d = driver_or_skip!();
        d.max_index = 2;
        let (a, _pa) = pair();
        let k1 = d.submit(recv_op(a, 16), 1);
        let k2 = d.submit(recv_op(a, 16), 2);
        let k3 = d.submit(recv_op(a, 16), 3);
        let c = run(&mut d, k3);
        assert_eq!(c.result.unwrap_err().raw_os_error(), Some(libc::ENOBUFS));
        cancel_all(&mut d, &[k1, k2]);
        d.close(a);
    }

    /// 6d. Kernels without EXT_ARG wait with a Timeout op: it must end with
    /// the wait, not linger as one kernel timer per wait.
    #[test]
    fn fallback_timeouts_do_not_pile_up() {
        let mut d = driver_or_skip!();
        d.ext_arg = false;
        let waker = d.remote_waker();
        let mut out = Vec::new();
        for _ in 0..100 {
            waker.wake();
            d.wait(Some(Duration::from_secs(30)), &mut out).unwrap();
        }
        d.wait(Some(Duration::ZERO), &mut out).unwrap();
        assert!(out.is_empty());
        assert!(
            d.fallback_timeouts <= 1,
            "{} kernel timers still pending after 100 woken waits",
            d.fallback_timeouts
        );
    }

    /// 6a. The SQ is full and `io_uring_enter` answers EBUSY; making room reaps
    /// the waker's CQE, re-arms the waker, meets EBUSY again while more
    /// completions arrive. Every op still completes exactly once.
    #[test]
    fn busy_enter_while_rearming_the_waker_loses_no_completion() {
        let Some(mut d) = driver_with(8) else { return };
        let sq = d.ring.params().sq_entries() as usize;
        let mut out = Vec::new();
        d.wait(Some(Duration::ZERO), &mut out).unwrap(); // the waker read is in the kernel
        let (a, pa) = pair();
        let (b, pb) = pair();
        let ka = d.submit(recv_op(a, 16), 1);
        let kb = d.submit(recv_op(b, 16), 2);
        d.wait(Some(Duration::ZERO), &mut out).unwrap(); // both are in the kernel
        assert!(out.is_empty());
        // Idle receives fill the SQ (not submitted yet).
        let mut keys = vec![ka, kb];
        let mut socks = vec![a, b];
        let mut peers = Vec::new();
        for i in 0..sq {
            let (s, p) = pair();
            keys.push(d.submit(recv_op(s, 16), 100 + i));
            socks.push(s);
            peers.push(p);
        }
        d.remote_waker().wake();
        let mut writers = Some((pa, pb));
        let mut kept = Vec::new();
        script(
            &mut d,
            vec![
                Box::new(|| Fault::FlushThenFail(libc::EBUSY)),
                Box::new(move || {
                    // Data for a and b arrives while the driver is making room.
                    let (mut pa, mut pb) = writers.take().unwrap();
                    pa.write_all(b"a").unwrap();
                    pb.write_all(b"b").unwrap();
                    kept.push((pa, pb));
                    Fault::FlushThenFail(libc::EBUSY)
                }),
                Box::new(|| Fault::Pass),
                // (Keeps the old code's submit_and_wait(1) from blocking for ever.)
                Box::new(|| Fault::Fail(libc::EINTR)),
            ],
        );
        let (x, _px) = pair();
        let kx = d.submit(recv_op(x, 16), 50);
        keys.push(kx);
        socks.push(x);
        let done = run_all(&mut d, &[ka, kb], Duration::from_secs(2));
        for c in done {
            assert_eq!(recv_bytes(c).unwrap().len(), 1);
        }
        keys.retain(|k| *k != ka && *k != kb);
        cancel_all(&mut d, &keys);
        for s in socks {
            d.close(s);
        }
    }

    /// 6b. `submit` while the SQ is full and the kernel answers EBUSY (or
    /// EAGAIN), with nothing about to complete: it never blocks the loop
    /// thread; neither does a `wait` without a timeout while the kernel keeps
    /// refusing; once it accepts again, everything is submitted.
    #[test]
    fn busy_enter_never_blocks_submit() {
        for errno in [libc::EBUSY, libc::EAGAIN] {
            let Some(mut d) = driver_with(8) else { return };
            let sq = d.ring.params().sq_entries() as usize;
            let mut out = Vec::new();
            d.wait(Some(Duration::ZERO), &mut out).unwrap();
            let mut keys = Vec::new();
            let mut socks = Vec::new();
            let mut peers = Vec::new();
            for i in 0..sq {
                let (s, p) = pair();
                keys.push(d.submit(recv_op(s, 16), i));
                socks.push(s);
                peers.push(p);
            }
            // Failsafe: if submit blocks waiting for a completion, one
            // arrives after 3 s and the elapsed time fails the test instead
            // of a hang.
            let mut failsafe = peers[0].try_clone().unwrap();
            let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
            let t = std::thread::spawn(move || {
                if done_rx.recv_timeout(Duration::from_secs(3)).is_err() {
                    let _ = failsafe.write_all(b"!");
                }
            });
            script(&mut d, vec![Box::new(move || Fault::Fail(errno))]);
            let (x, mut px) = pair();
            let start = Instant::now();
            let kx = d.submit(recv_op(x, 16), 99);
            let elapsed = start.elapsed();
            let _ = done_tx.send(());
            t.join().unwrap();
            socks.push(x);
            assert!(
                elapsed < Duration::from_secs(1),
                "submit blocked the loop for {elapsed:?} (the kernel said errno {errno})"
            );
            // The kernel refuses five more times: waits without a timeout
            // still return.
            script(
                &mut d,
                (0..5)
                    .map(|_| Box::new(move || Fault::Fail(errno)) as Box<dyn FnMut() -> Fault>)
                    .collect(),
            );
            let start = Instant::now();
            for _ in 0..3 {
                d.wait(None, &mut out).unwrap();
            }
            let elapsed = start.elapsed();
            assert!(
                elapsed < Duration::from_secs(1),
                "wait(None) blocked {elapsed:?} while the kernel refused SQEs"
            );
            // Then it accepts: the op queued meanwhile reaches the kernel.
            px.write_all(b"x").unwrap();
            let c = run_all(&mut d, &[kx], Duration::from_secs(5))
                .pop()
                .unwrap();
            assert_eq!(recv_bytes(c).unwrap(), b"x");
            cancel_all(&mut d, &keys);
            for s in socks {
                d.close(s);
            }
        }
    }

    /// 6c. A failing `io_uring_enter` (here EBADR: the kernel dropped a
    /// completion; then ENXIO) is an error returned from `wait`, never a
    /// panic, and the driver goes on.
    #[test]
    fn enter_failures_are_errors_not_panics() {
        for errno in [libc::EBADR, libc::ENXIO] {
            let Some(mut d) = driver_with(8) else { return };
            let sq = d.ring.params().sq_entries() as usize;
            let mut out = Vec::new();
            d.wait(Some(Duration::ZERO), &mut out).unwrap();
            let mut keys = Vec::new();
            let mut socks = Vec::new();
            let mut peers = Vec::new();
            for i in 0..=sq {
                let (s, p) = pair();
                if i == sq {
                    script(&mut d, vec![Box::new(move || Fault::Fail(errno))]);
                }
                keys.push(d.submit(recv_op(s, 16), i));
                socks.push(s);
                peers.push(p);
            }
            script(&mut d, vec![Box::new(move || Fault::Fail(errno))]);
            let err = d
                .wait(Some(Duration::ZERO), &mut out)
                .expect_err("the failure is reported by wait");
            assert_eq!(err.raw_os_error(), Some(errno), "{err}");
            // The driver goes on: data arrives, cancels complete.
            peers[0].write_all(b"z").unwrap();
            let c = run_all(&mut d, &keys[..1], Duration::from_secs(5))
                .pop()
                .unwrap();
            assert_eq!(recv_bytes(c).unwrap(), b"z");
            cancel_all(&mut d, &keys[1..]);
            for s in socks {
                d.close(s);
            }
        }
    }

    /// Raises the soft descriptor limit to at least `n` (up to the hard limit).
    fn want_fds(n: u64) -> bool {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
        unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            if lim.rlim_cur < n {
                lim.rlim_cur = n.min(lim.rlim_max);
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
        lim.rlim_cur >= n
    }

    /// 6c. More completions in one turn than the CQ holds: 5,000 connections
    /// made readable at once, on a ring of 256 SQ entries (its CQ holds
    /// 2,048; the loop's default ring of 1,024 holds 8,192), on every ring
    /// setup. One `wait` returns every one of them (an overflowed CQ is
    /// flushed, deferred task work run, in the same turn); none is lost (O1).
    #[test]
    fn more_completions_in_one_turn_than_the_cq_holds() {
        const N: usize = 5000;
        if !want_fds(2 * N as u64 + 256) {
            eprintln!("SKIPPED: needs {} descriptors", 2 * N + 256);
            return;
        }
        // Every ring setup the kernel accepts: with DEFER_TASKRUN the kernel
        // posts completions in small batches as it is entered; without it,
        // all 5,000 are posted at once, overflowing the CQ.
        let mut setups = Vec::new();
        for skip in 0..4 {
            let Some(d) = driver_on_setup(256, skip) else {
                return;
            };
            if !setups.contains(&d.setup) {
                setups.push(d.setup);
                readable_at_once(d, N);
            }
        }
    }

    fn readable_at_once(mut d: UringDriver, n: usize) {
        let setup = d.setup;
        let cq = d.ring.params().cq_entries() as usize;
        assert!(n > cq, "the test must overflow the CQ ({cq} entries)");
        let mut keys = Vec::with_capacity(n);
        let mut socks = Vec::with_capacity(n);
        let mut peers = Vec::with_capacity(n);
        for i in 0..n {
            let (s, p) = pair();
            keys.push(d.submit(recv_op(s, 16), i));
            socks.push(s);
            peers.push(p);
        }
        let mut out = Vec::new();
        for _ in 0..4 {
            d.wait(Some(Duration::ZERO), &mut out).unwrap();
        }
        assert!(out.is_empty());
        for p in &mut peers {
            p.write_all(b"r").unwrap();
        }
        d.wait(Some(Duration::from_secs(5)), &mut out).unwrap();
        let first = out.len();
        println!("{setup}: CQ {cq} entries, {n} completions ready, first wait returned {first}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.len() < n && Instant::now() < deadline {
            d.wait(Some(Duration::from_millis(100)), &mut out).unwrap();
        }
        let total = out.len();
        println!("after more waits: {total} of {n}");
        assert_eq!(total, n, "O1: completions lost");
        assert_eq!(
            first, n,
            "{setup}: one turn returned {first} of {n} (CQ holds {cq})"
        );
        for c in out {
            assert_eq!(recv_bytes(c).unwrap(), b"r");
        }
        assert_quiescent(&d);
        for s in socks {
            d.close(s);
        }
    }
}
