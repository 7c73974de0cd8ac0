//! [`SimConfig`]: the knobs of the simulated network and scheduler.

use std::time::Duration;

/// Most zero-timeout waits in a row that return nothing although ops could
/// complete ([`SimConfig::empty_poll_prob`]), and most waits in a row
/// interrupted by a signal ([`SimConfig::eintr_prob`]): a kernel posts
/// completions eventually, and a timeout is reached.
pub const MAX_EMPTY_POLLS: u32 = 3;

/// Environment variable read by [`SimConfig::seed_from_env`].
pub const SEED_ENV: &str = "PROACTOR_SIM_SEED";

/// Knobs of the simulated network and scheduler.
///
/// `SimConfig::default()` (and [`SimConfig::with_seed`]) means realistic races
/// on, faults off. Probabilities are per decision, in `0.0..=1.0`.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of every scheduling decision.
    pub seed: u64,
    /// Master switch for nondeterminism-like behaviour (random completion
    /// order, deferrals, latencies, short I/O, cancel races, timer jitter).
    /// `false` gives a calm FIFO network: ready ops complete in submission
    /// order, transfers are as large as possible, cancels of live ops truly
    /// cancel. Default `true`.
    pub races: bool,
    /// Probability that a read or write is cut short at a random point
    /// (when more than one byte could move). Default 0.5.
    pub short_io_prob: f64,
    /// Probability that a ready op is deferred to a later step. Default 0.3.
    pub defer_prob: f64,
    /// An op is deferred at most this many steps once ready. Default 4.
    pub max_defer_steps: u32,
    /// Latency of a newly submitted op: it may not complete before a random
    /// number of steps in `0..=max_latency_steps`. Default 2.
    pub max_latency_steps: u32,
    /// Connects complete after `1..=connect_latency_steps` steps. Default 3.
    pub connect_latency_steps: u32,
    /// When a cancelled op could complete right now: probability that it
    /// completes with its real result instead of being cancelled. Default 0.5.
    pub cancel_race_prob: f64,
    /// When a cancelled op could not complete yet: probability that the
    /// cancel lands late, `1..=late_cancel_steps` steps later, so the op may
    /// still complete normally meanwhile. Default 0.3.
    pub late_cancel_prob: f64,
    /// Upper bound, in steps, of a late cancel. Default 4.
    pub late_cancel_steps: u32,
    /// Probability that `wait` returns only part of the completions produced
    /// in a step, holding the rest (produced but not yet reaped) for the next
    /// `wait`: a cancel then finds its op already complete. Default 0.2.
    pub holdback_prob: f64,
    /// Probability that one `wait` reaps its completions in another order
    /// than they were produced in: any interleaving of sockets, while the
    /// completions of one socket and one kind of op keep their order (an
    /// io_uring CQ or an IOCP port posts each socket's receives, sends and
    /// accepts in the order they complete, and nothing more). Holding back
    /// completions ([`SimConfig::holdback_prob`]) likewise holds any subset
    /// closed under that order, not only the newest. Default 0.3.
    pub reap_shuffle_prob: f64,
    /// Probability that a wait that would block is interrupted by a signal
    /// (`EINTR` from `io_uring_enter` or `epoll_wait`, which both kernel
    /// drivers turn into an early return): it returns early with nothing,
    /// its clock short of the timeout. At most `MAX_EMPTY_POLLS` (3) in a
    /// row, so a timeout is always reached. Default 0.02.
    pub eintr_prob: f64,
    /// Probability that a zero-timeout `wait` returns nothing although ops
    /// could complete: their completions are not posted yet (task work that
    /// io_uring runs only on a later enter, a packet still in softirq
    /// processing). At most `MAX_EMPTY_POLLS` (3) in a row. Default 0.1.
    pub empty_poll_prob: f64,
    /// When a cancel wins over a send that could move bytes: probability
    /// that it lands mid-transfer and the send completes "aborted after N
    /// bytes", as IOCP reports a cancelled `WSASend` (`ERROR_OPERATION_ABORTED`
    /// with N bytes transferred) and io_uring a send stopped after a partial
    /// transfer. Reported as the partial success `Ok(N)`, N short of the
    /// offer (see the driver's `Completion`). Default 0.5.
    pub partial_cancel_prob: f64,
    /// Initial retransmission timeout of a TCP connect whose SYN goes
    /// unanswered (the listener's accept queue is full, or the SYN is
    /// dropped); it doubles at each retry. Linux: 1 s. Default 1 s.
    pub syn_rto: Duration,
    /// SYN retransmissions before the connect fails with `ETIMEDOUT`.
    /// Linux's `tcp_syn_retries` default 6 gives up after 127 s. Default 6.
    pub syn_retries: u32,
    /// Real time a `wait` with nothing that can ever progress (no op can
    /// complete, no kernel timer runs, no timer but "never" ones) waits for a
    /// remote wake from another thread before it fails with the trace
    /// instead of blocking for ever. Default 5 s.
    pub stall_timeout: Duration,
    /// Virtual time one scheduler step takes. Default 5 µs.
    pub step_time: Duration,
    /// Maximum extra virtual time added when the clock jumps over an idle
    /// timeout (timers are late by `0..=timer_jitter`, never early). Default 1 ms.
    pub timer_jitter: Duration,
    /// Initial `SO_SNDBUF` of every stream socket. Default 128 KiB.
    pub send_buffer: usize,
    /// Initial `SO_RCVBUF` of every stream socket. Default 128 KiB. A
    /// direction holds at most sender's send buffer + receiver's receive buffer.
    pub recv_buffer: usize,
    /// Enables fault injection with the probabilities below. Default `false`.
    pub faults: bool,
    /// Per data op (and per blocked recv per step): a TCP connection is
    /// reset (no network resets a Unix socket). Default 0.002.
    pub reset_prob: f64,
    /// Per recv: the peer half-closes (EOF here, EPIPE for its sends). Default 0.002.
    pub half_close_prob: f64,
    /// Per TCP send (faults on): part of the data is accepted, a prefix of
    /// that part reaches the peer, and the connection is then reset: the
    /// send reports what it accepted, the rest is lost, the peer reads what
    /// reached it and then `ECONNRESET`, the sender's next op fails with
    /// `ECONNRESET`. Default 0.002.
    pub send_reset_prob: f64,
    /// Per accept with a queued connection: fail with `EMFILE`, `ENOBUFS`
    /// or `ENOMEM` (connection kept: resource exhaustion) or, on TCP,
    /// `ECONNABORTED` (connection dropped, client reset). Default 0.05.
    pub accept_error_prob: f64,
    /// Per connect: refused even though a listener exists. Default 0.05.
    pub connect_refuse_prob: f64,
    /// Per TCP connect: every SYN is dropped, so it fails with `ETIMEDOUT`
    /// after [`SimConfig::syn_retries`] retransmissions. Default 0.02.
    pub connect_timeout_prob: f64,
    /// When the connection an accept would return was reset by its client
    /// while it waited in the backlog: probability that the accept fails with
    /// `ECONNABORTED` and drops it, as BSD kernels report such a connection
    /// (Linux returns the dead socket, whose first recv fails with
    /// `ECONNRESET`: that is what happens otherwise). Independent of
    /// [`SimConfig::faults`]: it only models how the kernel reports a reset
    /// the application caused. Default 0 (Linux).
    pub reset_accept_abort_prob: f64,
    /// Probability, decided once per driver from the seed, that it offers
    /// multishot receives (`Op::RecvMulti`)
    /// over a provided buffer ring, so a sweep covers both receive paths.
    /// Default 0.5.
    pub multishot_recv_prob: f64,
    /// Buffers in the simulated provided buffer ring, shared by every
    /// multishot receive. Each arrival takes one until its completion is
    /// reaped; an arrival that finds none ends its multishot with
    /// `ENOBUFS`, as the kernel does. Default 4 (small, so completions held
    /// back by a reap run it dry).
    pub provided_buffers: usize,
    /// Size of each provided buffer: the most one arrival carries. Default 16 KiB.
    pub provided_buffer_size: usize,
    /// Per arrival of a multishot receive: probability that the kernel
    /// ends the multishot after it (no `IORING_CQE_F_MORE`), as it may at
    /// any time (a full CQ, for one). Default 0.05 (when races are on).
    pub multishot_end_prob: f64,
    /// Number of recent trace lines kept for
    /// [`Handle::driver_trace`](crate::Handle::driver_trace). Default 200.
    pub trace_lines: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 0,
            races: true,
            short_io_prob: 0.5,
            defer_prob: 0.3,
            max_defer_steps: 4,
            max_latency_steps: 2,
            connect_latency_steps: 3,
            cancel_race_prob: 0.5,
            late_cancel_prob: 0.3,
            late_cancel_steps: 4,
            holdback_prob: 0.2,
            reap_shuffle_prob: 0.3,
            eintr_prob: 0.02,
            empty_poll_prob: 0.1,
            partial_cancel_prob: 0.5,
            syn_rto: Duration::from_secs(1),
            syn_retries: 6,
            stall_timeout: Duration::from_secs(5),
            step_time: Duration::from_micros(5),
            timer_jitter: Duration::from_millis(1),
            send_buffer: 128 << 10,
            recv_buffer: 128 << 10,
            faults: false,
            reset_prob: 0.002,
            half_close_prob: 0.002,
            send_reset_prob: 0.002,
            accept_error_prob: 0.05,
            connect_refuse_prob: 0.05,
            connect_timeout_prob: 0.02,
            reset_accept_abort_prob: 0.0,
            multishot_recv_prob: 0.5,
            provided_buffers: 4,
            provided_buffer_size: 16 << 10,
            multishot_end_prob: 0.05,
            trace_lines: 200,
        }
    }
}

impl SimConfig {
    /// Defaults (races on, faults off) with `seed`.
    pub fn with_seed(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            ..SimConfig::default()
        }
    }

    /// Races and faults on, with `seed`.
    pub fn with_faults(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            faults: true,
            ..SimConfig::default()
        }
    }

    /// Races off: FIFO order, full transfers, no jitter (faults off).
    pub fn calm(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            races: false,
            ..SimConfig::default()
        }
    }

    /// The seed in `PROACTOR_SIM_SEED` (decimal or `0x` hex), else `default`:
    /// a failing seed printed by a test replays with it.
    pub fn seed_from_env(default: u64) -> u64 {
        std::env::var(SEED_ENV)
            .ok()
            .and_then(|v| {
                let v = v.trim();
                match v.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16).ok(),
                    None => v.parse().ok(),
                }
            })
            .unwrap_or(default)
    }

    /// `p` when races are on, else 0.
    pub(super) fn race(&self, p: f64) -> f64 {
        if self.races {
            p
        } else {
            0.0
        }
    }

    pub(super) fn fault(&self, p: f64) -> f64 {
        if self.faults {
            p
        } else {
            0.0
        }
    }
}
