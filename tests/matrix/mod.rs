//! The one driver matrix every test runs on: uring, poll, and sim over
//! several seeds. Included by `tests/util` and `tests/tls_support`.
//!
//! - `PROACTOR_TEST_DRIVERS=poll,sim` narrows the drivers while debugging.
//! - `PROACTOR_CONTRACT_SEEDS=N` sets how many sim seeds a contract test runs
//!   (default 8, always from seed 0); a sweep names its own default, resized
//!   by `PROACTOR_SIM_SEEDS` and started at `PROACTOR_SIM_SEED_BASE` (default
//!   0: the fixed regression range; CI adds a run from a random base);
//!   `PROACTOR_SIM_SEED=S` replays one seed.
//! - uring is skipped, with the reason printed, only where the kernel
//!   refuses io_uring; with `PROACTOR_REQUIRE_URING=1` (CI sets it once
//!   `proactor race --driver uring` passed) that skip is a failure.
//! - A driver that fails to build for any other reason fails the test.
//! - No scenario may hang the suite: each run of a scenario (one driver, one
//!   sim seed) has `PROACTOR_TEST_TIMEOUT` seconds of wall time (default
//!   120); past that a watchdog prints which test, driver and seed hung and
//!   ends the test process with status 124.
//! - Every loop is crash-fast: a panic in a test's callback, timer or task
//!   re-raises out of `run_*` and fails the test, as it would without the
//!   loop's exception handler (L5).
#![allow(dead_code)]

use std::io::Write as _;
use std::rc::Rc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use proactor::{Builder, DriverKind, EventLoop, SimConfig};

/// Sim seeds of a contract test, unless `PROACTOR_CONTRACT_SEEDS` says.
pub const DEFAULT_CONTRACT_SEEDS: u64 = 8;

/// Which sim seeds a test runs.
#[derive(Clone, Copy, Debug)]
pub enum Seeds {
    /// A contract test: `PROACTOR_CONTRACT_SEEDS` (default 8).
    Contract,
    /// A sweep of `n` seeds by default: `PROACTOR_SIM_SEEDS` resizes it.
    Sweep(u64),
}

impl Seeds {
    /// The seeds: `PROACTOR_SIM_SEED` replays one; else a contract test runs
    /// `0..n` and a sweep `base..base + n`, `base` being
    /// `PROACTOR_SIM_SEED_BASE` (default 0).
    pub fn list(self) -> Vec<u64> {
        if let Some(s) = env_u64("PROACTOR_SIM_SEED") {
            return vec![s];
        }
        let (base, n) = match self {
            Seeds::Contract => (
                0,
                env_u64("PROACTOR_CONTRACT_SEEDS").unwrap_or(DEFAULT_CONTRACT_SEEDS),
            ),
            Seeds::Sweep(n) => (sweep_base(), env_u64("PROACTOR_SIM_SEEDS").unwrap_or(n)),
        };
        let end = base
            .checked_add(n)
            .unwrap_or_else(|| panic!("sim seeds {base} + {n} overflow u64"));
        (base..end).collect()
    }
}

/// The first seed of every sweep: `PROACTOR_SIM_SEED_BASE`, default 0.
pub fn sweep_base() -> u64 {
    env_u64("PROACTOR_SIM_SEED_BASE").unwrap_or(0)
}

/// A numeric setting; one that is set but does not parse fails the test
/// rather than silently running the defaults.
fn env_u64(var: &str) -> Option<u64> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Some(
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{var}={v:?} is not a number")),
        ),
        _ => None,
    }
}

/// Wall time one run of a scenario may take: `PROACTOR_TEST_TIMEOUT`
/// seconds, default 120.
pub fn scenario_limit() -> Duration {
    Duration::from_secs(env_u64("PROACTOR_TEST_TIMEOUT").unwrap_or(120))
}

/// Ends the test process when a run of a scenario outlives
/// [`scenario_limit`], after saying which one: a hung loop (blocked in the
/// kernel, waiting on a peer that never answers) must fail CI, not hold it.
/// One thread per test; [`Watchdog::arm`] names the run being watched and
/// restarts the clock.
pub struct Watchdog {
    shared: Arc<(Mutex<Watch>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Watch {
    what: String,
    deadline: Instant,
    done: bool,
}

impl Watchdog {
    pub fn start(what: &str) -> Watchdog {
        let limit = scenario_limit();
        let shared = Arc::new((
            Mutex::new(Watch {
                what: what.to_string(),
                deadline: Instant::now() + limit,
                done: false,
            }),
            Condvar::new(),
        ));
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("test watchdog".into())
            .spawn(move || {
                let (lock, cv) = &*s;
                let mut w = lock.lock().unwrap_or_else(|e| e.into_inner());
                while !w.done {
                    let now = Instant::now();
                    if now >= w.deadline {
                        // Straight to stderr: the test harness captures
                        // `eprintln!` of test threads and would drop it.
                        let _ = writeln!(
                            std::io::stderr(),
                            "TIMEOUT: {} ran for more than {limit:?} (PROACTOR_TEST_TIMEOUT); \
                             ending the test process so CI does not hang",
                            w.what
                        );
                        std::process::exit(124);
                    }
                    let wait = w.deadline - now;
                    w = cv
                        .wait_timeout(w, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            })
            .expect("spawn the test watchdog");
        Watchdog {
            shared,
            thread: Some(thread),
        }
    }

    /// Watches a new run, with a fresh time limit.
    pub fn arm(&self, what: String) {
        let mut w = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
        w.what = what;
        w.deadline = Instant::now() + scenario_limit();
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner()).done = true;
        self.shared.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How a test runs on the matrix.
pub struct Plan<'a> {
    pub test: &'a str,
    pub seeds: Seeds,
    /// The sim settings of each seed.
    pub sim_config: &'a dyn Fn(u64) -> SimConfig,
    /// Why this test cannot run on sim (it needs real sockets or processes).
    pub sim_skip: Option<&'a str>,
}

impl<'a> Plan<'a> {
    pub fn new(test: &'a str) -> Self {
        Plan {
            test,
            seeds: Seeds::Contract,
            sim_config: &SimConfig::with_seed,
            sim_skip: None,
        }
    }
}

/// Makes a panic in any callback of the loop re-raise out of `run_*`.
pub fn crash_fast(b: Builder) -> Builder {
    b.exception_handler(|_, context| context.resume_unwind())
}

/// Whether io_uring can be used here; the reason it cannot, printed once.
/// Fails instead when `PROACTOR_REQUIRE_URING=1`.
pub fn uring_available() -> bool {
    static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    let result = AVAILABLE.get_or_init(|| {
        EventLoop::builder()
            .driver(DriverKind::Uring)
            .build()
            .map(drop)
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => true,
        Err(e) => {
            assert!(
                std::env::var("PROACTOR_REQUIRE_URING").as_deref() != Ok("1"),
                "io_uring is refused ({e}) but PROACTOR_REQUIRE_URING=1: uring tests may not be skipped here"
            );
            static SAID: OnceLock<()> = OnceLock::new();
            SAID.get_or_init(|| {
                // Past the harness's capture, so the skip shows in the output.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED uring: io_uring refused on this machine ({e})"
                );
            });
            false
        }
    }
}

/// Whether [`run`] runs `kind` here: asked for by `PROACTOR_TEST_DRIVERS`
/// (default: all), uring only where io_uring works, sim unless the test
/// names a reason to skip it.
pub fn driver_expected(kind: DriverKind, sim_skip: Option<&str>) -> bool {
    wanted(kind)
        && match kind {
            DriverKind::Uring => uring_available(),
            DriverKind::Sim => sim_skip.is_none(),
            _ => true,
        }
}

pub fn wanted(kind: DriverKind) -> bool {
    std::env::var("PROACTOR_TEST_DRIVERS")
        .map(|v| v.split(',').any(|s| s.trim() == kind.name()))
        .unwrap_or(true)
}

/// Runs `scenario` on uring (where io_uring works), poll, and sim over the
/// plan's seeds. A failing sim seed prints the command that replays it and
/// the end of its trace.
pub fn run(plan: Plan<'_>, scenario: impl Fn(Rc<EventLoop>)) {
    let test = plan.test;
    let watchdog = Watchdog::start(test);
    for kind in [DriverKind::Uring, DriverKind::Poll] {
        if !driver_expected(kind, None) {
            continue;
        }
        watchdog.arm(format!("{test} on driver {kind}"));
        let lp = crash_fast(EventLoop::builder().driver(kind))
            .build()
            .unwrap_or_else(|e| panic!("{test}: the {kind} driver failed to build: {e}"));
        eprintln!("{test}: driver {kind}");
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(Rc::new(lp))));
        if let Err(panic) = result {
            eprintln!("{test} failed on driver {kind}");
            std::panic::resume_unwind(panic);
        }
    }
    if !wanted(DriverKind::Sim) {
        return;
    }
    if let Some(why) = plan.sim_skip {
        eprintln!("{test}: not on sim: {why}");
        return;
    }
    for seed in plan.seeds.list() {
        watchdog.arm(format!(
            "{test} on sim seed {seed} (replay: PROACTOR_SIM_SEED={seed} PROACTOR_TEST_DRIVERS=sim cargo test --release {test})"
        ));
        let lp = crash_fast(
            EventLoop::builder()
                .driver(DriverKind::Sim)
                .sim_config((plan.sim_config)(seed)),
        )
        .build()
        .unwrap_or_else(|e| panic!("{test}: the sim driver failed to build: {e}"));
        let lp = Rc::new(lp);
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(lp.clone())));
        if let Err(panic) = result {
            eprintln!(
                "{test} failed on sim seed {seed}; replay with:\n  PROACTOR_SIM_SEED={seed} PROACTOR_TEST_DRIVERS=sim cargo test --release {test}\nrecent sim trace:\n{}",
                lp.handle().driver_trace().unwrap_or_default()
            );
            std::panic::resume_unwind(panic);
        }
    }
}
