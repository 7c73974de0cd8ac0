//! `wait`: run the network until something completes; else sleep on the
//! virtual clock to the timeout or the next kernel timer (a SYN
//! retransmission); now and then be interrupted (`EINTR`) or return an
//! empty zero-timeout poll, as kernels do; and when nothing can ever
//! progress, fail with the trace instead of blocking for ever.
//!
//! "Nothing can ever progress": no op can complete, no kernel timer runs,
//! the loop has no timer but "never" ones (a `Duration::MAX` timer is
//! clamped to [`FAR_FUTURE`], so its timeout is decades: not progress), and
//! no remote wake is pending. Only another thread can still end such a
//! wait (`call_soon_threadsafe`, a task waker); the simulator cannot know
//! whether one will, so it waits [`SimConfig::stall_timeout`] of real time
//! for it, then fails.
//!
//! [`SimConfig::stall_timeout`]: super::SimConfig::stall_timeout

use std::io;
use std::time::Duration;

use super::config::MAX_EMPTY_POLLS;
use super::SimDriver;
use crate::driver::{Completion, FAR_FUTURE};

/// A timeout at least this long comes from a "never" timer.
const NEVER: Duration = Duration::from_secs(FAR_FUTURE.as_secs() / 2);

/// Longest stretch of virtual time before a signal interrupts a wait that
/// has no limit.
const MAX_SIGNAL_DELAY: Duration = Duration::from_millis(10);

impl SimDriver {
    pub(super) fn wait_for(
        &mut self,
        timeout: Option<Duration>,
        out: &mut Vec<Completion>,
    ) -> io::Result<()> {
        self.stats.count_wait();
        self.activate();
        if timeout == Some(Duration::ZERO) && self.empty_poll() {
            return Ok(());
        }
        self.empty_polls_in_a_row = 0;
        let start = self.elapsed;
        // `None`: no limit (none given, or a "never" timer's).
        let limit = timeout.filter(|d| *d < NEVER);
        loop {
            while self.done.is_empty() && self.any_progressable() {
                self.step();
            }
            if !self.done.is_empty() {
                self.drain(out);
                return Ok(());
            }
            if self.waker.take() {
                self.log(format_args!("remote wake (pending)"));
                return Ok(());
            }
            let left = limit.map(|d| d.saturating_sub(self.elapsed - start));
            if left == Some(Duration::ZERO) {
                return Ok(());
            }
            let kernel = self
                .next_kernel_timer()
                .map(|at| at.saturating_sub(self.elapsed));
            let block = match (left, kernel) {
                (Some(l), Some(k)) => Some(l.min(k)),
                (l, k) => l.or(k),
            };
            if self.interrupted(block) {
                return Ok(());
            }
            match (left, kernel) {
                (_, Some(k)) if left.is_none_or(|l| k <= l) => {
                    self.elapsed += k;
                    let now = self.elapsed;
                    self.log(format_args!(
                        "idle: clock +{k:?} to a kernel timer -> {now:?}"
                    ));
                }
                (Some(l), _) => {
                    let jitter = if self.config.races {
                        let max =
                            u64::try_from(self.config.timer_jitter.as_nanos()).unwrap_or(u64::MAX);
                        Duration::from_nanos(self.rngs.clock.between(0, max))
                    } else {
                        Duration::ZERO
                    };
                    self.elapsed += l + jitter;
                    let now = self.elapsed;
                    self.log(format_args!(
                        "idle: clock +{l:?} +{jitter:?} jitter -> {now:?}"
                    ));
                    return Ok(());
                }
                (None, _) => return self.stalled(timeout),
            }
        }
    }

    /// The earliest kernel timer of a live op (a SYN retransmission), in
    /// virtual time.
    fn next_kernel_timer(&self) -> Option<Duration> {
        self.active
            .iter()
            .filter_map(|&k| self.ops.get(k).and_then(|p| p.syn))
            .map(|syn| syn.next)
            .min()
    }

    /// A zero-timeout wait that returns nothing although ops could
    /// complete: their completions are not posted yet.
    fn empty_poll(&mut self) -> bool {
        let p = self.config.race(self.config.empty_poll_prob);
        if p <= 0.0
            || !self.done.is_empty()
            || self.empty_polls_in_a_row >= MAX_EMPTY_POLLS
            || !self.any_progressable()
            || !self.rngs.kernel.chance(p)
        {
            return false;
        }
        self.empty_polls_in_a_row += 1;
        self.sim_stats.empty_polls += 1;
        self.log(format_args!(
            "poll: nothing posted yet (empty zero-timeout wait)"
        ));
        true
    }

    /// A signal interrupts a wait that would block for `block` (`None`: no
    /// limit): it returns early, nothing reaped, the clock short of `block`.
    fn interrupted(&mut self, block: Option<Duration>) -> bool {
        let p = self.config.race(self.config.eintr_prob);
        if self.interrupts_in_a_row >= MAX_EMPTY_POLLS || !self.rngs.kernel.chance(p) {
            self.interrupts_in_a_row = 0;
            return false;
        }
        self.interrupts_in_a_row += 1;
        let within = block.unwrap_or(MAX_SIGNAL_DELAY);
        let max = u64::try_from(within.as_nanos()).unwrap_or(u64::MAX);
        let after = Duration::from_nanos(self.rngs.kernel.between(0, max.saturating_sub(1)));
        self.elapsed += after;
        self.sim_stats.interrupted_waits += 1;
        self.log(format_args!(
            "wait interrupted by a signal (EINTR) after {after:?}"
        ));
        true
    }

    /// Nothing can ever progress (see the module docs): wait a while for a
    /// remote wake, then fail with the trace.
    fn stalled(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let limit = self.config.stall_timeout;
        let why = match timeout {
            None => "no timer",
            Some(_) => "only timers that never fire",
        };
        let ops = self.ops.len();
        self.log(format_args!(
            "idle: nothing can progress ({ops} ops in flight, none can complete; {why}); \
             waiting up to {limit:?} of real time for a remote wake"
        ));
        if self.waker.block_for(limit) {
            self.log(format_args!("remote wake"));
            return Ok(());
        }
        self.log(format_args!("stalled: no remote wake came"));
        Err(io::Error::other(format!(
            "sim driver stalled: nothing can progress ({} ops in flight, none can complete; \
             {why}) and no remote wake came within {limit:?}; replay with PROACTOR_SIM_SEED={}\n{}",
            self.ops.len(),
            self.config.seed,
            self.trace.render(self.config.seed)
        )))
    }
}
