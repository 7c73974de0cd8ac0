//! The `uring` driver: Linux io_uring through the `io-uring` crate.
//!
//! Every submitted [`Op`] lives in a [`Slots`] entry together with whatever
//! the kernel reads or writes while it is in flight (the receive buffer, the
//! iovec array and `msghdr` of a send, the `sockaddr` of a connect), all in
//! stable heap memory. The entry is removed only when the op's own CQE
//! arrives, which is the one and only completion returned for it (O1).
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
//! bit 30 marks the driver's own ops (waker read, fallback timeout).

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::Shutdown as How;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring, Probe};

use super::socket;
use super::{
    cancelled_error, Completion, Driver, DriverKind, DriverStats, Op, OpKey, RemoteWaker,
    SockOpt, SocketId, Slots,
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
/// Op indices must stay below this so the marker bits never collide with a key.
const MAX_INDEX: u32 = 1 << 30;
/// Most iovecs one send hands to the kernel (well under `IOV_MAX`).
const MAX_IOV: usize = 64;
/// How long `drop` waits for the kernel to answer in-flight ops before leaking them.
const DROP_DEADLINE: Duration = Duration::from_secs(1);

/// Kernel-visible side data of an op, kept at a stable heap address until its CQE.
enum Side {
    None,
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
            Side::Connect(a) => f.debug_tuple("Connect").field(a).finish(),
            Side::Send { iov, .. } => write!(f, "Send({} iovecs)", iov.len()),
        }
    }
}

/// An op in flight, owning its buffers and side data.
#[derive(Debug)]
struct Slot {
    op: Op,
    user: usize,
    side: Side,
    /// Spare capacity offered to a receive (for `short_reads`).
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
            tracing::warn!(
                "uring: eventfd wake failed: {}",
                io::Error::last_os_error()
            );
        }
    }
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
    /// Completions reaped outside `wait` (while making room in the SQ).
    backlog: Vec<Completion>,
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
    setup: &'static str,
    closing: bool,
    stats: DriverStats,
}

impl fmt::Debug for UringDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UringDriver")
            .field("setup", &self.setup)
            .field("ext_arg", &self.ext_arg)
            .field("shutdown_supported", &self.shutdown_supported)
            .field("in_flight", &self.slots.len())
            .field("ready", &self.ready.len())
            .field("waker_armed", &self.waker_armed)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EINVAL)
}

/// Builds the ring, trying the cheapest setup flags first.
fn build_ring(entries: u32) -> io::Result<(IoUring, &'static str)> {
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
    for (name, setup) in attempts {
        let mut builder = IoUring::builder();
        match setup(&mut builder).build(entries) {
            Ok(ring) => return Ok((ring, name)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            // EPERM, ENOSYS, ENOMEM...: the loop may fall back to `poll`.
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)))
}

impl UringDriver {
    /// Creates a ring with `entries` submission entries (rounded up to a power
    /// of two by the kernel). An error from `io_uring_setup` (EPERM, ENOSYS
    /// under seccomp) is returned unchanged so the loop can fall back to `poll`.
    pub fn new(entries: u32) -> io::Result<UringDriver> {
        let (ring, setup) = build_ring(entries.max(8))?;
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
            backlog: Vec::new(),
            cqes: Vec::new(),
            waker,
            waker_buf: Box::into_raw(Box::new(0u64)),
            waker_armed: false,
            fallback_ts: Box::new(types::Timespec::new()),
            ext_arg,
            shutdown_supported,
            setup,
            closing: false,
            stats: DriverStats::default(),
        };
        driver.arm_waker();
        tracing::debug!(setup, ext_arg, shutdown_supported, "uring driver ready");
        Ok(driver)
    }

    /// Pushes an SQE; when the SQ is full, submits to the kernel and retries.
    ///
    /// # Safety
    ///
    /// Every pointer in `entry` must stay valid until its CQE arrives.
    unsafe fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: the caller guarantees the pointers in `entry` outlive the op.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return;
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => {
                    // The CQ is backed up: reap into the backlog, then (if
                    // still stuck) let the kernel make progress.
                    let mut backlog = std::mem::take(&mut self.backlog);
                    let before = backlog.len();
                    self.reap(&mut backlog);
                    let reaped = backlog.len() > before;
                    self.backlog = backlog;
                    if !reaped {
                        let _ = self.ring.submit_and_wait(1);
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => panic!("io_uring_enter failed while the SQ is full: {e}"),
            }
        }
    }

    /// Keeps a read on the eventfd in flight.
    fn arm_waker(&mut self) {
        if self.waker_armed || self.closing {
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
        unsafe { self.push(&entry) };
        self.waker_armed = true;
    }

    /// Finishes an op without the kernel on the next `wait`.
    fn complete_later(&mut self, key: OpKey, res: i32) {
        self.ready.push_back((key, res));
    }

    /// One `io_uring_enter`: submit everything queued and wait for a CQE.
    fn enter(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.stats.waits += 1;
        let res = if self.ext_arg {
            let submitter = self.ring.submitter();
            match timeout {
                None => submitter.submit_with_args(1, &types::SubmitArgs::new()),
                Some(d) => {
                    let ts = types::Timespec::from(d);
                    submitter.submit_with_args(1, &types::SubmitArgs::new().timespec(&ts))
                }
            }
        } else {
            if let Some(d) = timeout {
                *self.fallback_ts = types::Timespec::from(d);
                let entry = opcode::Timeout::new(&*self.fallback_ts)
                    .build()
                    .user_data(TIMEOUT_UD);
                // SAFETY: the kernel copies the timespec when it prepares the
                // SQE during this very submit; the box outlives it anyway.
                unsafe { self.push(&entry) };
            }
            self.ring.submit_and_wait(1)
        };
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Moves every available CQE into completions.
    fn reap(&mut self, out: &mut Vec<Completion>) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
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
                    TIMEOUT_UD | WAKER_CANCEL_UD => {}
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
        drop(side);
        self.stats.completed += 1;
        let result = if cancel_requested && (res == -libc::ECANCELED || res == -libc::EINTR) {
            // Truly cancelled: nothing was transferred.
            self.stats.cancelled += 1;
            Err(cancelled_error())
        } else {
            if cancel_requested {
                // The op finished anyway (cancel said ENOENT/EALREADY, or lost
                // the race): its real result goes to the owner (O2).
                self.stats.cancel_races += 1;
                tracing::trace!(?key, res, ?cancel_result, "uring: cancel race");
            }
            if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                let n = res as usize;
                match &mut op {
                    Op::Accept { accepted, .. } => match Self::adopt(res) {
                        Ok(a) => {
                            *accepted = Some(a);
                            Ok(0)
                        }
                        Err(e) => Err(e),
                    },
                    Op::Recv { buf, .. } => {
                        debug_assert!(n <= offered);
                        // SAFETY: the kernel wrote `n` initialized bytes into the
                        // spare capacity starting at `buf.len()`, and `n` is at
                        // most the spare capacity we offered.
                        unsafe { buf.set_len(buf.len() + n.min(offered)) };
                        if n < offered {
                            self.stats.short_reads += 1;
                        }
                        Ok(n)
                    }
                    Op::Send { .. } => {
                        if n < op.send_len() {
                            self.stats.short_writes += 1;
                        }
                        Ok(n)
                    }
                    Op::Connect { .. } | Op::Shutdown { .. } => Ok(0),
                }
            }
        };
        Completion {
            user,
            key,
            op,
            result,
        }
    }

    /// Takes ownership of an accepted fd and finds its peer.
    fn adopt(fd: RawFd) -> io::Result<(SocketId, Address)> {
        let id = match socket::adopt_accepted(fd, false) {
            Ok(id) => id,
            Err(e) => {
                socket::close(SocketId(fd));
                return Err(e);
            }
        };
        match socket::peer_addr(id) {
            Ok(addr) => Ok((id, addr)),
            Err(e) => {
                // The peer is already gone (ENOTCONN): report a transient
                // accept error rather than a socket without a peer.
                tracing::debug!("uring: accepted socket lost its peer: {e}");
                socket::close(id);
                Err(io::Error::from_raw_os_error(libc::ECONNABORTED))
            }
        }
    }

    /// Builds the SQE for the op in `key`'s slot, or completes it at once.
    fn start(&mut self, key: OpKey) {
        let ud = Slots::<Slot>::encode(key);
        let slot = self.slots.get_mut(key).expect("slot just inserted");
        let entry = match &mut slot.op {
            Op::Accept { listener, .. } => {
                opcode::Accept::new(types::Fd(listener.0), std::ptr::null_mut(), std::ptr::null_mut())
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
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
                if spare == 0 {
                    return self.complete_later(key, -libc::EINVAL);
                }
                slot.offered = spare;
                let ptr = buf.spare_capacity_mut().as_mut_ptr().cast::<u8>();
                opcode::Recv::new(types::Fd(socket.0), ptr, spare as u32).build()
            }
            Op::Send {
                socket,
                bufs,
                offset,
            } => {
                if bufs.first().map_or(*offset > 0, |b| *offset > b.len()) {
                    return self.complete_later(key, -libc::EINVAL);
                }
                let iov: Box<[libc::iovec]> = bufs
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let skip = if i == 0 { *offset } else { 0 };
                        libc::iovec {
                            iov_base: b[skip..].as_ptr() as *mut libc::c_void,
                            iov_len: b.len() - skip,
                        }
                    })
                    .filter(|v| v.iov_len > 0)
                    .take(MAX_IOV)
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
                    let res = if r == 0 { 0 } else { -errno(&io::Error::last_os_error()) };
                    return self.complete_later(key, res);
                }
                opcode::Shutdown::new(types::Fd(socket.0), how).build()
            }
        };
        let entry = entry.user_data(ud);
        // SAFETY: every pointer in `entry` refers to heap memory owned by the
        // slot (the Vec's buffer, the Bytes, the boxed side data), which stays
        // put until the slot is removed when the op's CQE arrives, or is leaked
        // by `drop`.
        unsafe { self.push(&entry) };
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
        assert!(key.index < MAX_INDEX, "too many io_uring ops in flight");
        let i = key.index as usize;
        if self.live.len() <= i {
            self.live.resize(i + 1, None);
        }
        self.live[i] = Some(key);
        self.stats.submitted += 1;
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
        self.stats.cancel_requests += 1;
        if self.ready.iter().any(|&(k, _)| k == key) {
            return; // finished without the kernel; its result stands
        }
        let entry = opcode::AsyncCancel::new(Slots::<Slot>::encode(key))
            .build()
            .user_data(Slots::<Slot>::encode(key) | CANCEL_BIT);
        // SAFETY: ASYNC_CANCEL carries no pointers.
        unsafe { self.push(&entry) };
    }

    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        let before = out.len();
        out.append(&mut self.backlog);
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
        let r = self.enter(timeout);
        self.reap(out);
        r
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
        socket::listen(addr, backlog, false)
    }

    fn open_stream(&mut self, addr: &Address) -> io::Result<SocketId> {
        socket::open_stream(addr, false)
    }

    fn close(&mut self, socket: SocketId) {
        socket::close(socket)
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

impl Drop for UringDriver {
    fn drop(&mut self) {
        self.closing = true;
        let mut garbage = std::mem::take(&mut self.backlog);
        while let Some((key, res)) = self.ready.pop_front() {
            if let Some(slot) = self.slots.remove(key) {
                garbage.push(self.finish(key, slot, res));
            }
        }
        // Cancel everything still in the kernel.
        let live: Vec<OpKey> = self.live.iter().flatten().copied().collect();
        for key in live {
            self.cancel(key);
        }
        if self.waker_armed {
            let entry = opcode::AsyncCancel::new(WAKER_UD)
                .build()
                .user_data(WAKER_CANCEL_UD);
            // SAFETY: ASYNC_CANCEL carries no pointers.
            unsafe { self.push(&entry) };
        }
        let deadline = Instant::now() + DROP_DEADLINE;
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
            if let Err(e) = self.enter(Some(wait)) {
                tracing::warn!("uring: io_uring_enter failed during drop: {e}");
                break;
            }
            self.reap(&mut garbage);
        }
        Self::discard(&mut garbage);
        if !self.slots.is_empty() {
            // The kernel never answered: it may still write these buffers.
            tracing::warn!(
                "uring: leaking {} ops the kernel did not complete",
                self.slots.len()
            );
            std::mem::forget(std::mem::take(&mut self.slots));
        }
        if self.waker_armed {
            tracing::warn!("uring: leaking the waker buffer");
        } else {
            // SAFETY: `waker_buf` came from Box::into_raw in `new` and the
            // kernel's read of it has completed; it is freed exactly once.
            drop(unsafe { Box::from_raw(self.waker_buf) });
        }
        // `ring` closes when the fields drop.
    }
}

impl UringDriver {
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
