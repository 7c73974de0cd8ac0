//! The `sim` driver: a deterministic, in-memory backend with a virtual clock.
//!
//! It is a real backend, not a mock: stream sockets with bounded buffers,
//! listeners with backlogs, TCP-like EOF/shutdown/reset semantics, and the
//! same completion contract (O1–O3) as `uring` and `poll`. Every decision the
//! kernel would make nondeterministically is made by a seeded scheduler
//! instead, and written to a trace:
//!
//! - which ready operations complete at each step, in what order, and which
//!   are deferred to a later step (bounded by [`SimConfig::max_defer_steps`]);
//! - short reads and writes (any split, down to one byte);
//! - the cancel-versus-complete race (O2): a cancelled operation that could
//!   complete is either completed with its real result (the io_uring
//!   `-EALREADY` / IOCP `ERROR_NOT_FOUND` case) or truly cancelled, and a
//!   blocked one may have its cancel land late, after it completed anyway;
//! - timer jitter when the virtual clock jumps;
//! - what a kernel's completion ring allows (`reap`): each `wait` may hold
//!   back any completions and reap the rest interleaved across sockets in
//!   any order, keeping only each socket's order per kind of op;
//! - waits interrupted by a signal (`EINTR`: early, with nothing) and
//!   zero-timeout waits that return nothing although ops could complete;
//! - a cancel that lands mid-send completing "aborted after N bytes"
//!   (Windows IOCP), as the partial success `Ok(N)`;
//! - TCP connects whose SYN goes unanswered (the accept queue is full, or a
//!   fault drops it) retransmitting after 1, 3, 7... s, as Linux does, and
//!   failing with `ETIMEDOUT` after 127 s; the clock follows these kernel
//!   timers when the loop has nothing else to do;
//! - Unix sockets by Linux `af_unix` rules, not TCP's: a direction holds
//!   the sender's `SO_SNDBUF` only, a full backlog refuses with `EAGAIN`, a
//!   send to a closed peer fails at once with `EPIPE` (TCP accepts one and
//!   loses it), no network resets them;
//! - faults, when enabled: resets, a send cut short by a reset, half-closes,
//!   accept errors (`EMFILE`, `ENOBUFS`, `ENOMEM`, `ECONNABORTED`), refused
//!   and timed-out connects.
//!
//! [`SimStats`] counts each of these. When nothing can ever progress (no op
//! can complete, no timer but "never" ones), `wait` fails with the trace
//! instead of blocking for ever (`wait`).
//!
//! - multishot receives over a provided buffer ring (io_uring's
//!   `RecvMulti`), offered or not as the seed decides
//!   ([`SimConfig::multishot_recv_prob`]): an armed one stays live and
//!   produces one completion per arrival (flagged `more`), each taking a
//!   buffer of the ring until it is reaped; an arrival that finds the ring
//!   empty ends it with `ENOBUFS`, the kernel may end it after any arrival
//!   ([`SimConfig::multishot_end_prob`]), and a cancel lets arrivals
//!   through until it lands. `reap` keeps a multishot's completions in
//!   order, as it keeps each socket's receives.
//!
//! The same seed and the same sequence of calls give the same trace, byte
//! for byte: nothing iterates a hash map and no decision reads real time
//! (real time is read once, for the clock's base `Instant`, and a blocked
//! `wait(None)` waits for a real remote wake).
//!
//! Where things are: `config` holds the knobs, `step` the scheduler,
//! `exec` performs ops against the simulated `network`, `reap` picks what
//! one wait returns, `wait` the waiting (clock, interruptions, stalls),
//! `sched` splits the seed into streams, `trace` records the decisions,
//! `stats` counts what was injected, `waker` is the remote waker; `tests`
//! holds what only this driver promises and `tests_kernel` one test per
//! modelled kernel behaviour (the contract is in `driver::contract`).

mod config;
mod exec;
mod network;
mod reap;
mod sched;
mod stats;
mod step;
mod trace;
mod wait;
mod waker;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_kernel;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    Address, Completion, Driver, DriverKind, DriverStats, Op, OpKey, RecvProgress, RemoteWaker,
    Slots, SockOpt, SocketId,
};
use network::{errno_name, Network};
use sched::Rngs;
use trace::Trace;
use waker::SimWaker;

pub use config::SimConfig;
#[cfg(test)]
use config::SEED_ENV;
pub use stats::SimStats;

/// Where an op stands.
#[derive(Debug)]
enum State {
    /// Submitted, not yet seen by a `wait` (not in the "kernel" yet).
    Queued,
    /// In the kernel: may complete at any step from `ready_at`.
    Active,
    /// Completed; its completion waits to be returned by `wait`.
    Done(io::Result<usize>),
}

/// Where a cancel request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cancel {
    None,
    /// The cancel lands at this step unless the op completes first.
    Late(u64),
    /// The cancel was decided (raced or cancelled).
    Settled,
}

#[derive(Debug)]
struct Pending {
    op: Op,
    user: usize,
    state: State,
    ready_at: u64,
    deferred: u32,
    cancel: Cancel,
    /// A TCP connect whose SYN went unanswered: its retransmission timer.
    syn: Option<Syn>,
}

/// A completion produced and not yet returned by `wait`.
#[derive(Debug)]
struct Done {
    key: OpKey,
    /// An arrival of the armed multishot `key` (a completion flagged
    /// `more`; it holds one ring buffer until reaped). `None`: the op's
    /// final completion, its result in its `State::Done`.
    arrival: Option<Vec<u8>>,
}

/// The SYN retransmission state of a TCP connect (Linux: the first retry
/// after `syn_rto`, doubling, `ETIMEDOUT` after `syn_retries` of them).
#[derive(Debug, Clone, Copy)]
struct Syn {
    /// Virtual time of the next retransmission (or of giving up).
    next: Duration,
    /// Retransmissions so far.
    sent: u32,
    /// Every SYN is dropped (fault): the connect can only time out.
    dropped: bool,
}

/// The `sim` driver.
pub struct SimDriver {
    config: SimConfig,
    rngs: Rngs,
    net: Network,
    ops: Slots<Pending>,
    /// Live (queued or active) ops in submission order.
    active: Vec<OpKey>,
    /// Completions produced, in order, not yet returned.
    done: Vec<Done>,
    /// The driver offers multishot receives (decided from the seed).
    multishot: bool,
    /// Buffers of the provided buffer ring not taken by an arrival.
    buffers_free: usize,
    step: u64,
    base: Instant,
    elapsed: Duration,
    stats: DriverStats,
    sim_stats: SimStats,
    /// Zero-timeout waits in a row that returned nothing on purpose.
    empty_polls_in_a_row: u32,
    /// Waits in a row interrupted by a signal: a signal cannot come so
    /// often that a timeout is never reached.
    interrupts_in_a_row: u32,
    trace: Trace,
    waker: Arc<SimWaker>,
}

impl fmt::Debug for SimDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimDriver")
            .field("seed", &self.config.seed)
            .field("step", &self.step)
            .field("elapsed", &self.elapsed)
            .field("in_flight", &self.ops.len())
            .field("stats", &self.stats)
            .field("trace", &self.trace)
            .finish()
    }
}

fn key_str(key: OpKey) -> String {
    format!("k{}.{}", key.index, key.generation)
}

fn op_socket(op: &Op) -> i32 {
    match op {
        Op::Accept { listener, .. } | Op::AcceptMulti { listener, .. } => listener.0,
        Op::Connect { socket, .. }
        | Op::Recv { socket, .. }
        | Op::RecvMulti { socket, .. }
        | Op::Send { socket, .. }
        | Op::Shutdown { socket, .. } => socket.0,
    }
}

fn result_str(r: &io::Result<usize>) -> String {
    match r {
        Ok(n) => format!("n={n}"),
        Err(e) => errno_name(e),
    }
}

impl SimDriver {
    /// A simulator driven by `config`.
    pub fn new(config: SimConfig) -> SimDriver {
        let mut trace = Trace::new(config.trace_lines);
        trace.push(format!(
            "sim start seed={} races={} faults={}",
            config.seed, config.races, config.faults
        ));
        let mut rngs = Rngs::new(config.seed);
        let multishot = rngs.multishot.chance(config.multishot_recv_prob);
        if multishot {
            trace.push(format!(
                "multishot receives: {} provided buffers of {} bytes",
                config.provided_buffers, config.provided_buffer_size
            ));
        }
        SimDriver {
            rngs,
            multishot,
            buffers_free: config.provided_buffers,
            net: Network::new(config.send_buffer, config.recv_buffer),
            ops: Slots::default(),
            active: Vec::new(),
            done: Vec::new(),
            step: 0,
            base: Instant::now(),
            elapsed: Duration::ZERO,
            stats: DriverStats::default(),
            sim_stats: SimStats::default(),
            empty_polls_in_a_row: 0,
            interrupts_in_a_row: 0,
            trace,
            waker: Arc::new(SimWaker::default()),
            config,
        }
    }

    #[cfg(test)]
    /// A hash of the whole trace so far (every line, not only the retained
    /// ones): two runs with the same seed and calls have the same hash.
    pub fn full_trace_hash(&self) -> u64 {
        self.trace.hash()
    }

    #[cfg(test)]
    /// Number of trace lines written so far.
    pub fn trace_len(&self) -> u64 {
        self.trace.total()
    }

    #[cfg(test)]
    /// Sockets still open (listeners, streams, unaccepted connections): a
    /// leak check at shutdown.
    pub fn open_sockets(&self) -> usize {
        self.net.open_sockets()
    }

    /// Every behaviour the simulator injected so far.
    pub fn injected(&self) -> SimStats {
        let net = self.net.counts;
        SimStats {
            sends_to_closed_peer: net.sends_to_closed_peer,
            unix_epipes: net.unix_epipes,
            unix_sndbuf_stalls: net.unix_sndbuf_stalls,
            ..self.sim_stats
        }
    }

    fn log(&mut self, what: fmt::Arguments<'_>) {
        let line = format!("step {}: {what}", self.step);
        self.trace.push(line);
    }
}

impl Driver for SimDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Sim
    }

    fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    fn submit(&mut self, op: Op, user: usize) -> OpKey {
        self.stats.count_submit();
        let detail = match &op {
            Op::Recv { buf, .. } => format!(" cap={}", buf.capacity() - buf.len()),
            Op::Send { .. } => format!(" len={}", op.send_len()),
            Op::Connect { addr, .. } => format!(" to={addr}"),
            Op::Shutdown { how, .. } => format!(" how={how:?}"),
            Op::Accept { .. } | Op::AcceptMulti { .. } | Op::RecvMulti { .. } => String::new(),
        };
        let line = format!("submit {} sock={}{detail}", op.name(), op_socket(&op));
        let immediate = match op {
            Op::RecvMulti { .. } if !self.multishot => {
                Some(Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)))
            }
            // Not modelled: servers on `sim` accept single-shot.
            Op::AcceptMulti { .. } => Some(Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))),
            _ => op.immediate_result(),
        };
        let key = self.ops.insert(Pending {
            op,
            user,
            state: State::Queued,
            ready_at: 0,
            deferred: 0,
            cancel: Cancel::None,
            syn: None,
        });
        self.active.push(key);
        self.log(format_args!("{line} {} user={user}", key_str(key)));
        if let Some(result) = immediate {
            self.finish(key, result, " [no I/O]");
        }
        key
    }

    fn cancel(&mut self, key: OpKey) {
        let ks = key_str(key);
        let Some(pending) = self.ops.get(key) else {
            self.log(format_args!("cancel {ks}: stale key, ignored"));
            return;
        };
        if pending.cancel != Cancel::None {
            self.log(format_args!("cancel {ks}: already requested, ignored"));
            return;
        }
        self.stats.count_cancel_request();
        if let State::Done(_) = pending.state {
            // Produced but not yet returned: the completion stands (O2).
            self.ops.get_mut(key).expect("live").cancel = Cancel::Settled;
            self.log(format_args!("cancel {ks}: already complete, result stands"));
            return;
        }
        let races = self.config.races;
        if self.is_multishot(key) {
            // An armed multishot: arrivals go on until the cancel lands.
            if races && self.rngs.cancel.chance(self.config.cancel_race_prob) {
                let at = self.land_cancel_later(key);
                self.log(format_args!(
                    "cancel {ks}: multishot armed, lands at step {at}"
                ));
            } else {
                self.log(format_args!("cancel {ks}: multishot cancelled"));
                self.cancel_now(key, " [cancelled]");
            }
            return;
        }
        if self.op_ready(key) {
            if races && self.rngs.cancel.chance(self.config.cancel_race_prob) {
                self.log(format_args!("cancel {ks}: op completes first (race)"));
                let pending = self.ops.get_mut(key).expect("live");
                pending.cancel = Cancel::Settled;
                if self.complete_now(key) {
                    return;
                }
                // Could not run after all (cannot happen: it was ready).
                self.cancel_now(key, " [cancelled]");
            } else {
                self.log(format_args!("cancel {ks}: cancel wins"));
                self.cancel_lands(key, " [cancelled]");
            }
            return;
        }
        if races && self.rngs.cancel.chance(self.config.late_cancel_prob) {
            let at = self.land_cancel_later(key);
            self.log(format_args!("cancel {ks}: in progress, lands at step {at}"));
        } else {
            self.log(format_args!("cancel {ks}: not started, cancelled"));
            self.cancel_now(key, " [cancelled]");
        }
    }

    fn supports_multishot_recv(&self) -> bool {
        self.multishot
    }

    #[cfg(feature = "broken-pause-drops-ready")]
    fn completion_ready(&self, key: OpKey) -> bool {
        self.ops
            .get(key)
            .is_some_and(|pending| matches!(pending.state, State::Done(_)))
    }

    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        self.wait_for(timeout, out)
    }

    fn remote_waker(&self) -> Arc<dyn RemoteWaker> {
        self.waker.clone()
    }

    fn in_flight(&self) -> usize {
        self.ops.len()
    }

    fn stats(&self) -> DriverStats {
        self.stats
    }

    fn count_multishot_held(&mut self) {
        self.stats.count_multishot_held();
    }

    fn count_read_pause(&mut self, recv: Option<OpKey>) {
        let (progress, what) = match recv.and_then(|k| self.ops.get(k).map(|p| (k, p))) {
            None => (RecvProgress::Idle, String::from("no recv in flight")),
            Some((k, pending)) => {
                let ready = match pending.state {
                    State::Done(_) => Some("completed, not reaped"),
                    // The bytes are there: a kernel would have completed it
                    // on their arrival; the next step will.
                    State::Active if self.op_ready(k) => Some("bytes there, completing"),
                    State::Queued | State::Active => None,
                };
                match ready {
                    Some(why) => (RecvProgress::Ready, format!("recv {} {why}", key_str(k))),
                    None => (
                        RecvProgress::InFlight,
                        format!("recv {} in flight", key_str(k)),
                    ),
                }
            }
        };
        self.stats.count_read_pause(progress);
        self.log(format_args!("pause reading: {what}"));
    }

    fn trace(&self) -> Option<String> {
        Some(self.trace.render(self.config.seed))
    }

    fn sim_stats(&self) -> Option<SimStats> {
        Some(self.injected())
    }

    fn listen(&mut self, addr: &Address, backlog: u32) -> io::Result<SocketId> {
        let r = self.net.listen(addr, backlog);
        match &r {
            Ok(fd) => {
                let local = self
                    .net
                    .local_addr(*fd)
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                self.log(format_args!(
                    "listen sock={fd} at {local} backlog={backlog}"
                ));
            }
            Err(e) => {
                let e = errno_name(e);
                self.log(format_args!("listen {addr}: {e}"));
            }
        }
        r.map(SocketId)
    }

    fn open_stream(&mut self, addr: &Address) -> io::Result<SocketId> {
        let fd = self.net.open_stream(addr);
        self.log(format_args!("open sock={fd} for {addr}"));
        Ok(SocketId(fd))
    }

    fn close(&mut self, socket: SocketId) {
        let existed = self.net.close(socket.0);
        let note = if existed { "" } else { " (not open)" };
        self.log(format_args!("close sock={}{note}", socket.0));
    }

    fn local_addr(&self, socket: SocketId) -> io::Result<Address> {
        self.net.local_addr(socket.0)
    }

    fn peer_addr(&self, socket: SocketId) -> io::Result<Address> {
        self.net.peer_addr(socket.0)
    }

    fn set_option(&mut self, socket: SocketId, opt: SockOpt) -> io::Result<()> {
        let r = self.net.set_option(socket.0, opt);
        self.log(format_args!("setopt sock={} {opt:?}", socket.0));
        r
    }
}
