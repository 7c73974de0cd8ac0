//! Building the ring, and entering the kernel: `UringDriver::sys_enter` is
//! the one place that calls `io_uring_enter` (and where the tests' fault
//! hook sits). `push` never enters the kernel; `enter` submits what is
//! queued and waits, never longer than its timeout, and never blocks at all
//! while the kernel refuses SQEs.

use std::io;
use std::time::Duration;

use io_uring::{opcode, squeue, types, EnterFlags, IoUring};

use super::{UringDriver, BUSY_WAIT, TIMEOUT_UD};

/// How one `io_uring_enter` is made (see `UringDriver::sys_enter`).
#[derive(Clone, Copy, Debug)]
pub(super) enum Enter {
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
pub(super) fn is_busy(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN))
}

/// The errno of `e` (`EINVAL` when it carries none).
pub(super) fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EINVAL)
}

/// Builds the ring, trying the cheapest setup flags first, each with a CQ
/// of `cq_entries` (`IORING_SETUP_CQSIZE`, clamped by the kernel), then with
/// the kernel's default (twice the SQ) where that is refused: kernels before
/// 5.5 lack CQSIZE; before 5.12 ring memory counts against `RLIMIT_MEMLOCK`.
pub(super) fn build_ring(entries: u32, cq_entries: u32) -> io::Result<(IoUring, &'static str)> {
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
        if i < super::tests::faults::SKIP_SETUPS.get() {
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

/// Test hook: what the next `io_uring_enter` does.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub(super) enum Fault {
    /// Enter the kernel as usual.
    Pass,
    /// Fail with this errno without entering the kernel.
    Fail(i32),
    /// Let the kernel post the completions it has (run task work, flush an
    /// overflow) without submitting or waiting, then fail with this errno.
    FlushThenFail(i32),
}

impl UringDriver {
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

    /// Queues an SQE: straight into the SQ when it has room (and nothing is
    /// queued before it), else into `pending`, which the next `wait` submits.
    /// Never enters the kernel, so it can neither block nor fail, nor reap
    /// completions outside `wait`.
    ///
    /// # Safety
    ///
    /// Every pointer in `entry` must stay valid until its CQE arrives.
    pub(super) unsafe fn push(&mut self, entry: squeue::Entry) {
        if self.pending.is_empty() {
            // SAFETY: the caller guarantees the pointers in `entry` outlive the op.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
        }
        self.pending.push_back(entry);
    }

    /// The one place that calls `io_uring_enter` (and the test hook).
    pub(super) fn sys_enter(&mut self, how: Enter) -> io::Result<usize> {
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

    /// Submits everything queued, then waits for a completion, a remote wake
    /// or `timeout`. Never blocks longer than `timeout`, and never blocks at
    /// all while the kernel refuses SQEs for lack of resources.
    pub(super) fn enter(&mut self, timeout: Option<Duration>) -> io::Result<()> {
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
    pub(super) fn enter_error(&self, e: io::Error) -> io::Error {
        if e.raw_os_error() == Some(libc::EBADR) {
            tracing::error!(
                "uring: the kernel dropped completions (CQ overflow); their ops will never complete"
            );
        } else {
            tracing::error!("uring: io_uring_enter failed: {e}");
        }
        e
    }
}
