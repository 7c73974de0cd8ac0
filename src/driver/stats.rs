//! [`DriverStats`]: what every backend counts, defined and counted here, so
//! that each counter means the same on `uring`, `poll` and `sim`.
//!
//! A backend only reports five events: an op submitted, the first cancel
//! request of an op still in flight, a call to [`Driver::wait`], each
//! completion as `wait` returns it, and a pause of reading with where the
//! paused transport's receive stood ([`RecvProgress`]). Everything else (was
//! it a race, a short transfer?) is read here from the completion itself.
//!
//! [`Driver::wait`]: super::Driver::wait

use super::{is_cancelled, Completion, Op};

/// Counters every driver keeps; the simulator's sweep and the benchmarks
/// report them. Each means the same on every backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Operations submitted.
    pub submitted: u64,
    /// Final completions returned by `wait` (equals `submitted` once nothing
    /// is in flight: O1).
    pub completed: u64,
    /// Completions of an armed multishot receive that keeps going (`more`),
    /// not counted in `completed`.
    pub multishot_completions: u64,
    /// Of those, completions that arrived while their transport's reading
    /// was paused and were held for the resume (R2 with multishot).
    pub multishot_held: u64,
    /// Multishot receives that ended because the buffer ring ran dry
    /// (`ENOBUFS`) and were armed again.
    pub multishot_enobufs: u64,
    /// Operations whose cancellation was requested while they were in flight.
    /// A second request for the same op, or one with a stale key, is ignored
    /// and not counted. Once those ops completed,
    /// `cancel_requests == cancel_races + cancelled`.
    pub cancel_requests: u64,
    /// Of those, completions that carried the op's own result anyway (bytes,
    /// EOF, or an error other than `ECANCELED`): the bpo-33694 race.
    pub cancel_races: u64,
    /// Of those, completions with `ECANCELED`: the op truly did not happen.
    pub cancelled: u64,
    /// Receives that returned at least one byte but fewer than their buffer
    /// had room for. EOF (0 bytes) is not a short read.
    pub short_reads: u64,
    /// Sends that succeeded with fewer bytes than the op offered (all its
    /// buffers, after the offset already sent).
    pub short_writes: u64,
    /// Of the cancelled ops, those that completed having moved some but not
    /// all of their bytes: a cancel that landed mid-transfer (IOCP's
    /// "aborted after N bytes", io_uring's partial `done_io`), reported as
    /// the partial success `Ok(n)`.
    pub cancel_partial: u64,
    /// Calls to `wait`.
    pub waits: u64,
    /// `pause_reading()` calls that stopped a transport's reading (pausing
    /// a paused or closing transport is not counted).
    pub read_pauses: u64,
    /// Of those, pauses made while the transport's receive was in flight:
    /// R2 says the receive is kept and what it brings is held.
    pub pauses_recv_in_flight: u64,
    /// Of those, pauses made while that receive had already completed but
    /// its completion was not yet reaped: the exact bpo-33694 window, where
    /// a cancel would race with bytes already received. Only a driver that
    /// can see such a completion counts it: `sim` (a completion produced and
    /// held back, or a receive whose bytes are there and completes at the
    /// next step, as the kernel would complete it on arrival); `poll` and
    /// `uring` only for completions they hold themselves, not CQEs still in
    /// the kernel's ring.
    pub pauses_recv_ready: u64,
}

/// Where the receive of a transport stood when its reading was paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvProgress {
    /// No receive in flight.
    Idle,
    /// Submitted, not completed.
    InFlight,
    /// Completed (or completing: its bytes are there), completion not reaped.
    Ready,
}

impl DriverStats {
    /// An op was submitted.
    pub(crate) fn count_submit(&mut self) {
        self.submitted += 1;
    }

    /// The first cancel request of an op still in flight (the backend ignores
    /// repeated and stale requests before counting).
    pub(crate) fn count_cancel_request(&mut self) {
        self.cancel_requests += 1;
    }

    /// A paused transport held an arrival of its armed multishot receive.
    pub(crate) fn count_multishot_held(&mut self) {
        self.multishot_held += 1;
    }

    /// `wait` was called.
    pub(crate) fn count_wait(&mut self) {
        self.waits += 1;
    }

    /// A transport paused its reading with its receive at `recv`.
    pub(crate) fn count_read_pause(&mut self, recv: RecvProgress) {
        self.read_pauses += 1;
        match recv {
            RecvProgress::Idle => {}
            RecvProgress::InFlight => self.pauses_recv_in_flight += 1,
            RecvProgress::Ready => {
                self.pauses_recv_in_flight += 1;
                self.pauses_recv_ready += 1;
            }
        }
    }

    /// `completion` is being returned by `wait`; `cancel_requested` says
    /// whether its op was counted by [`DriverStats::count_cancel_request`].
    pub(crate) fn count_completion(&mut self, completion: &Completion, cancel_requested: bool) {
        if completion.more {
            self.multishot_completions += 1;
            return;
        }
        self.completed += 1;
        if matches!(&completion.result, Err(e) if e.raw_os_error() == Some(libc::ENOBUFS))
            && matches!(completion.op, Op::RecvMulti { .. })
        {
            self.multishot_enobufs += 1;
        }
        if cancel_requested {
            match &completion.result {
                Err(err) if is_cancelled(err) => self.cancelled += 1,
                _ => self.cancel_races += 1,
            }
        }
        let &Ok(n) = &completion.result else {
            return;
        };
        let short = match &completion.op {
            // The driver never reallocates the buffer: what is left spare now
            // was left spare by the receive.
            Op::Recv { buf, .. } if n > 0 && buf.len() < buf.capacity() => {
                self.short_reads += 1;
                true
            }
            Op::Send { .. } if n < completion.op.send_len() => {
                self.short_writes += 1;
                n > 0
            }
            _ => false,
        };
        if short && cancel_requested {
            self.cancel_partial += 1;
        }
    }
}
