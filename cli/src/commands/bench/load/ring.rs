//! The load client's io_uring: push, submit and reap with a stall guard.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use io_uring::{squeue, types, IoUring};

/// A `user_data` bit for operations that post no completion when they
/// succeed (`SKIP_SUCCESS`): they are not counted as in flight, and their
/// completions (failures) do not uncount anything.
pub const UNCOUNTED: u64 = 1 << 63;

/// A server that completes nothing for this long has stalled.
const STALL: Duration = Duration::from_secs(10);

/// One ring, with a count of the operations the kernel still owns.
pub struct Ring {
    ring: IoUring,
    in_flight: usize,
    last_progress: Instant,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// A ring for about `ops` operations in flight.
    pub fn new(ops: usize) -> Result<Ring, String> {
        let entries = ops.next_power_of_two().clamp(64, 4096) as u32;
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(entries * 2)
            .build(entries)
            .or_else(|_| IoUring::new(entries))
            .map_err(|e| format!("the load client's io_uring: {e}"))?;
        Ok(Ring {
            ring,
            in_flight: 0,
            last_progress: Instant::now(),
        })
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues `entry`, submitting first if the submission queue is full.
    ///
    /// # Safety
    /// The memory `entry` points to stays valid, and is not otherwise
    /// accessed, until its completion has been reaped by [`Ring::wait`].
    pub unsafe fn push(&mut self, entry: squeue::Entry) -> Result<(), String> {
        loop {
            // SAFETY: the caller keeps `entry`'s buffers valid until its
            // completion is reaped (this function's contract).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                if entry.get_user_data() & UNCOUNTED == 0 {
                    self.in_flight += 1;
                }
                return Ok(());
            }
            self.ring
                .submit()
                .map_err(|e| format!("io_uring submit: {e}"))?;
        }
    }

    /// Submits what is queued, waits for at least one completion but no
    /// later than `until` (and at most a second), and puts every completion
    /// reaped as `(user_data, result)` into `out`. Fails when nothing
    /// completed for 10 seconds.
    pub fn wait(
        &mut self,
        out: &mut Vec<(u64, i32)>,
        until: Option<Instant>,
    ) -> Result<(), String> {
        let mut timeout = Duration::from_secs(1);
        if let Some(t) = until {
            timeout = timeout.min(t.saturating_duration_since(Instant::now()));
        }
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
            Err(e) => return Err(format!("io_uring wait: {e}")),
        }
        out.clear();
        out.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        let counted = out.iter().filter(|(ud, _)| ud & UNCOUNTED == 0).count();
        self.in_flight -= counted.min(self.in_flight);
        if out.is_empty() {
            if self.last_progress.elapsed() > STALL {
                return Err(format!(
                    "no completion for {} s: the server stalled",
                    STALL.as_secs()
                ));
            }
        } else {
            self.last_progress = Instant::now();
        }
        Ok(())
    }

    /// After a failure: shuts `fds` down so every operation on them ends,
    /// and reaps until none is in flight (an uncounted operation is always
    /// linked before a counted one, so it is over too). Returns `false` if some are still
    /// in flight after two seconds (their buffers must then never be freed).
    pub fn drain_after_shutdown(&mut self, fds: impl Iterator<Item = RawFd>) -> bool {
        for fd in fds {
            // SAFETY: shutdown on a descriptor the caller owns; no memory involved.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut out = Vec::new();
        while self.in_flight > 0 && Instant::now() < deadline {
            if self.wait(&mut out, None).is_err() {
                break;
            }
        }
        self.in_flight == 0
    }
}
