//! The one driver matrix every test runs on: uring, poll, and sim over
//! several seeds. Included by `tests/util` and `tests/tls_support`.
//!
//! - `PROACTOR_TEST_DRIVERS=poll,sim` narrows the drivers while debugging.
//! - `PROACTOR_CONTRACT_SEEDS=N` sets how many sim seeds a contract test runs
//!   (default 8); a sweep names its own default, resized by
//!   `PROACTOR_SIM_SEEDS`; `PROACTOR_SIM_SEED=S` replays one seed.
//! - uring is skipped, with the reason printed, only where the kernel
//!   refuses io_uring; with `PROACTOR_REQUIRE_URING=1` (CI sets it once
//!   `proactor race --driver uring` passed) that skip is a failure.
//! - A driver that fails to build for any other reason fails the test.
//! - Every loop is crash-fast: a panic in a test's callback, timer or task
//!   re-raises out of `run_*` and fails the test, as it would without the
//!   loop's exception handler (L5).
#![allow(dead_code)]

use std::rc::Rc;
use std::sync::OnceLock;

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
    /// The seeds: `PROACTOR_SIM_SEED` replays one, else `0..n`.
    pub fn list(self) -> Vec<u64> {
        if let Some(s) = env_u64("PROACTOR_SIM_SEED") {
            return vec![s];
        }
        let n = match self {
            Seeds::Contract => env_u64("PROACTOR_CONTRACT_SEEDS").unwrap_or(DEFAULT_CONTRACT_SEEDS),
            Seeds::Sweep(n) => env_u64("PROACTOR_SIM_SEEDS").unwrap_or(n),
        };
        (0..n).collect()
    }
}

fn env_u64(var: &str) -> Option<u64> {
    std::env::var(var).ok().and_then(|s| s.trim().parse().ok())
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
            SAID.get_or_init(|| eprintln!("SKIPPED uring: io_uring refused on this machine ({e})"));
            false
        }
    }
}

fn wanted(kind: DriverKind) -> bool {
    std::env::var("PROACTOR_TEST_DRIVERS")
        .map(|v| v.split(',').any(|s| s.trim() == kind.name()))
        .unwrap_or(true)
}

/// Runs `scenario` on uring (where io_uring works), poll, and sim over the
/// plan's seeds. A failing sim seed prints the command that replays it and
/// the end of its trace.
pub fn run(plan: Plan<'_>, scenario: impl Fn(Rc<EventLoop>)) {
    let test = plan.test;
    for kind in [DriverKind::Uring, DriverKind::Poll] {
        if !wanted(kind) || (kind == DriverKind::Uring && !uring_available()) {
            continue;
        }
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
