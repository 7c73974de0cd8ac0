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
//! - faults, when enabled: resets, half-closes, accept errors, refused connects.
//!
//! The same seed and the same sequence of calls give the same trace, byte
//! for byte: nothing iterates a hash map and no decision reads real time
//! (real time is read once, for the clock's base `Instant`, and a blocked
//! `wait(None)` waits for a real remote wake).

mod network;
mod sched;
mod trace;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{
    cancelled_error, Address, Completion, Driver, DriverKind, DriverStats, Op, OpKey, RemoteWaker,
    Slots, SockOpt, SocketId,
};
use network::{errno_name, os_err, Network};
use sched::Rngs;
use trace::Trace;

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
    /// Per data op (and per blocked recv per step): the connection is reset.
    /// Default 0.002.
    pub reset_prob: f64,
    /// Per recv: the peer half-closes (EOF here, EPIPE for its sends). Default 0.002.
    pub half_close_prob: f64,
    /// Per accept with a queued connection: fail with `EMFILE` (connection
    /// kept) or `ECONNABORTED` (connection dropped, client reset). Default 0.05.
    pub accept_error_prob: f64,
    /// Per connect: refused even though a listener exists. Default 0.05.
    pub connect_refuse_prob: f64,
    /// When the connection an accept would return was reset by its client
    /// while it waited in the backlog: probability that the accept fails with
    /// `ECONNABORTED` and drops it, as BSD kernels report such a connection
    /// (Linux returns the dead socket, whose first recv fails with
    /// `ECONNRESET`: that is what happens otherwise). Independent of
    /// [`SimConfig::faults`]: it only models how the kernel reports a reset
    /// the application caused. Default 0 (Linux).
    pub reset_accept_abort_prob: f64,
    /// Number of recent trace lines kept for [`Driver::trace`]. Default 200.
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
            step_time: Duration::from_micros(5),
            timer_jitter: Duration::from_millis(1),
            send_buffer: 128 << 10,
            recv_buffer: 128 << 10,
            faults: false,
            reset_prob: 0.002,
            half_close_prob: 0.002,
            accept_error_prob: 0.05,
            connect_refuse_prob: 0.05,
            reset_accept_abort_prob: 0.0,
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

    fn fault(&self, p: f64) -> f64 {
        if self.faults {
            p
        } else {
            0.0
        }
    }
}

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
}

/// Remote waker: a flag under a mutex plus a condvar (real threads).
#[derive(Debug, Default)]
struct SimWaker {
    pending: Mutex<bool>,
    cv: Condvar,
}

impl RemoteWaker for SimWaker {
    fn wake(&self) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        *p = true;
        self.cv.notify_all();
    }
}

impl SimWaker {
    fn take(&self) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *p, false)
    }

    fn block(&self) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        while !*p {
            p = self.cv.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        *p = false;
    }
}

/// The `sim` driver.
pub struct SimDriver {
    config: SimConfig,
    rngs: Rngs,
    net: Network,
    ops: Slots<Pending>,
    /// Live (queued or active) ops in submission order.
    active: Vec<OpKey>,
    /// Done ops in completion order, not yet returned.
    done: Vec<OpKey>,
    step: u64,
    base: Instant,
    elapsed: Duration,
    stats: DriverStats,
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
        Op::Accept { listener, .. } => listener.0,
        Op::Connect { socket, .. }
        | Op::Recv { socket, .. }
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
        SimDriver {
            rngs: Rngs::new(config.seed),
            net: Network::new(config.send_buffer, config.recv_buffer),
            ops: Slots::default(),
            active: Vec::new(),
            done: Vec::new(),
            step: 0,
            base: Instant::now(),
            elapsed: Duration::ZERO,
            stats: DriverStats::default(),
            trace,
            waker: Arc::new(SimWaker::default()),
            config,
        }
    }

    /// The configuration this driver runs with.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// The seed (print it when a test fails: it replays the run exactly).
    pub fn seed(&self) -> u64 {
        self.config.seed
    }

    /// A hash of the whole trace so far (every line, not only the retained
    /// ones): two runs with the same seed and calls have the same hash.
    pub fn full_trace_hash(&self) -> u64 {
        self.trace.hash()
    }

    /// Number of trace lines written so far.
    pub fn trace_len(&self) -> u64 {
        self.trace.total()
    }

    /// Scheduler steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Virtual time elapsed since the driver was created.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Sockets still open (listeners, streams, unaccepted connections): a
    /// leak check at shutdown.
    pub fn open_sockets(&self) -> usize {
        self.net.open_sockets()
    }

    fn log(&mut self, what: fmt::Arguments<'_>) {
        let line = format!("step {}: {what}", self.step);
        self.trace.push(line);
    }

    /// Whether the (live) op under `key` can complete now, ignoring latency.
    fn progressable(&self, key: OpKey) -> bool {
        let Some(p) = self.ops.get(key) else {
            return false;
        };
        if matches!(p.state, State::Done(_)) {
            return false;
        }
        matches!(p.cancel, Cancel::Late(_)) || self.op_ready(key)
    }

    fn op_ready(&self, key: OpKey) -> bool {
        let Some(p) = self.ops.get(key) else {
            return false;
        };
        match &p.op {
            Op::Accept { listener, .. } => self.net.accept_ready(listener.0),
            Op::Connect { .. } | Op::Shutdown { .. } => true,
            Op::Recv { socket, .. } => self.net.recv_ready(socket.0),
            Op::Send { socket, .. } => self.net.send_ready(socket.0, p.op.send_len()),
        }
    }

    /// Performs the op under `key` against the network. `None`: it would block.
    fn execute(&mut self, key: OpKey) -> Option<io::Result<usize>> {
        let races = self.config.races;
        let short_p = if races {
            self.config.short_io_prob
        } else {
            0.0
        };
        let reset_p = self.config.fault(self.config.reset_prob);
        let half_p = self.config.fault(self.config.half_close_prob);
        let accept_p = self.config.fault(self.config.accept_error_prob);
        let refuse_p = self.config.fault(self.config.connect_refuse_prob);
        let reset_abort_p = self.config.reset_accept_abort_prob;
        let step = self.step;
        let p = self.ops.get_mut(key)?;
        let net = &mut self.net;
        let rngs = &mut self.rngs;
        let trace = &mut self.trace;
        match &mut p.op {
            Op::Accept { listener, accepted } => {
                let l = listener.0;
                if !net.accept_ready(l) {
                    return None;
                }
                if rngs.fault.chance(accept_p) {
                    if rngs.fault.chance(0.5) && net.abort_queued(l) {
                        trace.push(format!(
                            "step {step}: fault accept listener={l} ECONNABORTED"
                        ));
                        return Some(Err(os_err(libc::ECONNABORTED)));
                    }
                    trace.push(format!("step {step}: fault accept listener={l} EMFILE"));
                    return Some(Err(os_err(libc::EMFILE)));
                }
                if net.queued_head_was_reset(l)
                    && rngs.fault.chance(reset_abort_p)
                    && net.abort_queued(l)
                {
                    trace.push(format!(
                        "step {step}: accept listener={l} ECONNABORTED (client reset first)"
                    ));
                    return Some(Err(os_err(libc::ECONNABORTED)));
                }
                match net.accept(l)? {
                    Ok((sock, addr)) => {
                        trace.push(format!(
                            "step {step}: accepted listener={l} sock={} peer={addr}",
                            sock.0
                        ));
                        *accepted = Some((sock, addr));
                        Some(Ok(0))
                    }
                    Err(e) => Some(Err(e)),
                }
            }
            Op::Connect { socket, addr } => {
                let refuse = rngs.fault.chance(refuse_p);
                match net.connect(socket.0, addr, refuse) {
                    Ok(c) => {
                        trace.push(format!(
                            "step {step}: connected sock={} to {addr} server={} listener={}",
                            socket.0, c.server, c.listener
                        ));
                        Some(Ok(0))
                    }
                    Err(e) => {
                        if refuse {
                            trace.push(format!(
                                "step {step}: fault connect sock={} refused",
                                socket.0
                            ));
                        }
                        Some(Err(e))
                    }
                }
            }
            Op::Recv { socket, buf } => {
                let fd = socket.0;
                if net.is_live(fd) {
                    if rngs.fault.chance(reset_p) && net.reset(fd) {
                        trace.push(format!("step {step}: fault reset sock={fd} (recv)"));
                    } else if rngs.fault.chance(half_p) && net.half_close(fd) {
                        trace.push(format!("step {step}: fault half-close peer of sock={fd}"));
                    }
                }
                let io = &mut rngs.io;
                net.recv(fd, buf, |avail| {
                    if io.chance(short_p) {
                        io.split(avail)
                    } else {
                        avail
                    }
                })
            }
            Op::Send {
                socket,
                bufs,
                offset,
            } => {
                let fd = socket.0;
                if net.is_live(fd) && rngs.fault.chance(reset_p) && net.reset(fd) {
                    trace.push(format!("step {step}: fault reset sock={fd} (send)"));
                }
                let io = &mut rngs.io;
                net.send(fd, bufs, *offset, |max| {
                    if io.chance(short_p) {
                        io.split(max)
                    } else {
                        max
                    }
                })
            }
            Op::Shutdown { socket, how } => Some(net.shutdown(socket.0, *how).map(|()| 0)),
        }
    }

    /// Marks `key` done with `result` and moves it to the done queue.
    fn finish(&mut self, key: OpKey, result: io::Result<usize>, note: &str) {
        let step = self.step;
        let Some(p) = self.ops.get_mut(key) else {
            return;
        };
        let short = match (&p.op, &result) {
            (Op::Recv { buf, .. }, Ok(n)) if *n > 0 && buf.len() < buf.capacity() => " (short)",
            (Op::Send { .. }, Ok(n)) if *n < p.op.send_len() => " (short)",
            _ => "",
        };
        let line = format!(
            "step {step}: complete {} sock={} {} user={} {}{short}{note}",
            p.op.name(),
            op_socket(&p.op),
            key_str(key),
            p.user,
            result_str(&result),
        );
        p.state = State::Done(result);
        self.trace.push(line);
        self.active.retain(|k| *k != key);
        self.done.push(key);
    }

    /// Executes `key` and, if it did not block, finishes it. Returns whether
    /// it completed.
    fn complete_now(&mut self, key: OpKey) -> bool {
        let Some(result) = self.execute(key) else {
            return false;
        };
        let mut note = "";
        if let Some(p) = self.ops.get_mut(key) {
            if let Cancel::Late(_) = p.cancel {
                p.cancel = Cancel::Settled;
                note = " [cancel lost the race]";
            }
        }
        self.finish(key, result, note);
        true
    }

    /// Truly cancels `key`.
    fn cancel_now(&mut self, key: OpKey, note: &str) {
        if let Some(p) = self.ops.get_mut(key) {
            p.cancel = Cancel::Settled;
        }
        self.finish(key, Err(cancelled_error()), note);
    }

    fn any_progressable(&self) -> bool {
        self.active.iter().any(|&k| self.progressable(k))
    }

    /// Moves queued ops into the "kernel", giving each a latency.
    fn activate(&mut self) {
        let races = self.config.races;
        for i in 0..self.active.len() {
            let key = self.active[i];
            let Some(p) = self.ops.get_mut(key) else {
                continue;
            };
            if !matches!(p.state, State::Queued) {
                continue;
            }
            let latency = if !races {
                0
            } else if matches!(p.op, Op::Connect { .. }) {
                self.rngs
                    .sched
                    .between(1, u64::from(self.config.connect_latency_steps.max(1)))
            } else {
                self.rngs
                    .sched
                    .between(0, u64::from(self.config.max_latency_steps))
            };
            p.state = State::Active;
            p.ready_at = self.step + 1 + latency;
        }
    }

    /// Faults that strike connections whose receive is blocked.
    fn idle_faults(&mut self) {
        let reset_p = self.config.fault(self.config.reset_prob);
        let half_p = self.config.fault(self.config.half_close_prob);
        if reset_p <= 0.0 && half_p <= 0.0 {
            return;
        }
        for i in 0..self.active.len() {
            let key = self.active[i];
            let Some(p) = self.ops.get(key) else { continue };
            let Op::Recv { socket, .. } = p.op else {
                continue;
            };
            let fd = socket.0;
            if !self.net.is_live(fd) || self.net.recv_ready(fd) {
                continue;
            }
            if self.rngs.fault.chance(reset_p) && self.net.reset(fd) {
                self.log(format_args!("fault reset sock={fd} (idle recv)"));
            } else if self.rngs.fault.chance(half_p) && self.net.half_close(fd) {
                self.log(format_args!(
                    "fault half-close peer of sock={fd} (idle recv)"
                ));
            }
        }
    }

    /// One scheduler step: completes some of the ready ops, in seeded order.
    fn step(&mut self) {
        self.step += 1;
        self.elapsed += self.config.step_time;
        let races = self.config.races;
        self.idle_faults();

        let step = self.step;
        let mut cands: Vec<OpKey> = self
            .active
            .iter()
            .copied()
            .filter(|&k| {
                self.ops
                    .get(k)
                    .is_some_and(|p| matches!(p.state, State::Active) && p.ready_at <= step)
                    && self.op_ready(k)
            })
            .collect();
        if races {
            self.rngs.sched.shuffle(&mut cands);
        }
        let mut completed = 0usize;
        let mut deferred = Vec::new();
        for &key in &cands {
            if !self.op_ready(key) {
                continue;
            }
            if races {
                let max = self.config.max_defer_steps;
                let p = self.ops.get(key).expect("candidate is live");
                if p.deferred < max && self.rngs.sched.chance(self.config.defer_prob) {
                    let p = self.ops.get_mut(key).expect("candidate is live");
                    p.deferred += 1;
                    let line = format!("defer {} {}", p.op.name(), key_str(key));
                    self.log(format_args!("{line}"));
                    deferred.push(key);
                    continue;
                }
            }
            if self.complete_now(key) {
                completed += 1;
            }
        }
        // Never stall: if everything ready was deferred, one completes anyway.
        if completed == 0 && !deferred.is_empty() {
            let pick = self.rngs.sched.index(deferred.len());
            let mut order: Vec<OpKey> = deferred[pick..].to_vec();
            order.extend_from_slice(&deferred[..pick]);
            for key in order {
                if self.op_ready(key) && self.complete_now(key) {
                    break;
                }
            }
        }

        // Late cancels whose time has come.
        let due: Vec<OpKey> = self
            .active
            .iter()
            .copied()
            .filter(|&k| {
                self.ops
                    .get(k)
                    .is_some_and(|p| matches!(p.cancel, Cancel::Late(at) if at <= step))
            })
            .collect();
        for key in due {
            self.cancel_now(key, " [late cancel]");
        }
    }

    fn drain(&mut self, out: &mut Vec<Completion>) {
        let mut ready = std::mem::take(&mut self.done);
        if self.config.races && ready.len() > 1 && self.rngs.sched.chance(self.config.holdback_prob)
        {
            let keep = self.rngs.sched.between(1, ready.len() as u64 - 1) as usize;
            self.done = ready.split_off(keep);
            let held = self.done.len();
            self.log(format_args!("reap {keep}, hold back {held} completions"));
        }
        for key in ready {
            let Some(p) = self.ops.remove(key) else {
                continue;
            };
            let State::Done(result) = p.state else {
                unreachable!("done queue holds done ops");
            };
            let completion = Completion {
                user: p.user,
                key,
                op: p.op,
                result,
            };
            self.stats
                .count_completion(&completion, p.cancel != Cancel::None);
            out.push(completion);
        }
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
            Op::Accept { .. } => String::new(),
        };
        let line = format!("submit {} sock={}{detail}", op.name(), op_socket(&op));
        let immediate = op.immediate_result();
        let key = self.ops.insert(Pending {
            op,
            user,
            state: State::Queued,
            ready_at: 0,
            deferred: 0,
            cancel: Cancel::None,
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
        let Some(p) = self.ops.get(key) else {
            self.log(format_args!("cancel {ks}: stale key, ignored"));
            return;
        };
        if p.cancel != Cancel::None {
            self.log(format_args!("cancel {ks}: already requested, ignored"));
            return;
        }
        self.stats.count_cancel_request();
        if let State::Done(_) = p.state {
            // Produced but not yet returned: the completion stands (O2).
            self.ops.get_mut(key).expect("live").cancel = Cancel::Settled;
            self.log(format_args!("cancel {ks}: already complete, result stands"));
            return;
        }
        let races = self.config.races;
        if self.op_ready(key) {
            if races && self.rngs.cancel.chance(self.config.cancel_race_prob) {
                self.log(format_args!("cancel {ks}: op completes first (race)"));
                let p = self.ops.get_mut(key).expect("live");
                p.cancel = Cancel::Settled;
                if self.complete_now(key) {
                    return;
                }
                // Could not run after all (cannot happen: it was ready).
                self.cancel_now(key, " [cancelled]");
            } else {
                self.log(format_args!("cancel {ks}: cancel wins"));
                self.cancel_now(key, " [cancelled]");
            }
            return;
        }
        if races && self.rngs.cancel.chance(self.config.late_cancel_prob) {
            let delay = self
                .rngs
                .cancel
                .between(1, u64::from(self.config.late_cancel_steps.max(1)));
            let at = self.step + delay;
            self.ops.get_mut(key).expect("live").cancel = Cancel::Late(at);
            self.log(format_args!("cancel {ks}: in progress, lands at step {at}"));
        } else {
            self.log(format_args!("cancel {ks}: not started, cancelled"));
            self.cancel_now(key, " [cancelled]");
        }
    }

    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        self.stats.count_wait();
        self.activate();
        while self.done.is_empty() && self.any_progressable() {
            self.step();
        }
        if !self.done.is_empty() {
            self.drain(out);
            return Ok(());
        }
        // Nothing can progress without the outside world.
        if self.waker.take() {
            self.log(format_args!("remote wake (pending)"));
            return Ok(());
        }
        match timeout {
            Some(d) => {
                let jitter = if d.is_zero() || !self.config.races {
                    Duration::ZERO
                } else {
                    let max =
                        u64::try_from(self.config.timer_jitter.as_nanos()).unwrap_or(u64::MAX);
                    Duration::from_nanos(self.rngs.clock.between(0, max))
                };
                self.elapsed += d + jitter;
                if !d.is_zero() {
                    let now = self.elapsed;
                    self.log(format_args!(
                        "idle: clock +{d:?} +{jitter:?} jitter -> {now:?}"
                    ));
                }
            }
            None => {
                self.log(format_args!("idle: blocking until remote wake"));
                self.waker.block();
                self.log(format_args!("remote wake"));
            }
        }
        Ok(())
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

    fn trace(&self) -> Option<String> {
        Some(self.trace.render(self.config.seed))
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
