//! Shared test support: run a scenario on every driver, a recording protocol
//! with an invariant checker (R1–R4, W2, L4), and small async helpers.
#![allow(dead_code)]

pub mod buffered;
pub mod recorder;

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use proactor::SimConfig;
use proactor::{DriverKind, EventLoop, Handle};

#[allow(unused_imports)]
pub use buffered::{BufHook, BufRecorder};
#[allow(unused_imports)]
pub use recorder::{Hooks, Rec, Recorder};

/// Seeds each contract test runs on `sim` (override: PROACTOR_CONTRACT_SEEDS;
/// PROACTOR_SIM_SEEDS sizes the random-workload sweep instead).
const DEFAULT_CONTRACT_SEEDS: u64 = 8;

/// Whether io_uring can be used here; prints why not once.
pub fn uring_available() -> bool {
    match EventLoop::builder().driver(DriverKind::Uring).build() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipping uring: io_uring refused on this machine ({e})");
            false
        }
    }
}

/// The sweep's sim seeds: PROACTOR_SIM_SEED replays one, else
/// PROACTOR_SIM_SEEDS (or `default`) seeds starting at 0.
pub fn sim_seeds(default: u64) -> Vec<u64> {
    seeds_from("PROACTOR_SIM_SEEDS", default)
}

/// Seeds for each contract test (PROACTOR_CONTRACT_SEEDS), or the replayed one.
pub fn contract_seeds() -> Vec<u64> {
    seeds_from("PROACTOR_CONTRACT_SEEDS", DEFAULT_CONTRACT_SEEDS)
}

fn seeds_from(var: &str, default: u64) -> Vec<u64> {
    if let Some(s) = std::env::var("PROACTOR_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![s];
    }
    let n = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (0..n).collect()
}

/// Makes a panic in any callback of the loop (an assertion in a test's
/// protocol, timer or task) re-raise out of `run_*`, failing the test, as
/// it would without the loop's exception handler (L5).
pub fn crash_fast(b: proactor::Builder) -> proactor::Builder {
    b.exception_handler(|_, context| context.resume_unwind())
}

/// Runs `scenario` on uring (if available), poll, and sim over several seeds.
/// Every loop is [`crash_fast`].
/// A failing sim seed is reported with the command that replays it.
/// PROACTOR_TEST_DRIVERS (e.g. `poll,sim`) narrows the set for debugging.
pub fn on_every_driver(test: &str, scenario: impl Fn(&EventLoop)) {
    on_every_driver_with(test, SimConfig::with_seed, |lp| scenario(&lp))
}

/// [`on_every_driver`] for scenarios whose callbacks need the loop itself.
pub fn on_every_driver_shared(test: &str, scenario: impl Fn(Rc<EventLoop>)) {
    on_every_driver_with(test, SimConfig::with_seed, scenario)
}

/// [`on_every_driver_shared`] with the sim settings of each seed chosen by
/// the test (for example a reset model or fault probabilities it needs).
pub fn on_every_driver_with(
    test: &str,
    sim_config: impl Fn(u64) -> SimConfig,
    scenario: impl Fn(Rc<EventLoop>),
) {
    let wanted = |k: DriverKind| {
        std::env::var("PROACTOR_TEST_DRIVERS")
            .map(|v| v.split(',').any(|s| s.trim() == k.name()))
            .unwrap_or(true)
    };
    let mut kinds = vec![DriverKind::Poll];
    if uring_available() {
        kinds.insert(0, DriverKind::Uring);
    }
    kinds.retain(|k| wanted(*k));
    for kind in kinds {
        let lp = crash_fast(EventLoop::builder().driver(kind))
            .build()
            .expect("build loop");
        eprintln!("{test}: driver {kind}");
        scenario(Rc::new(lp));
    }
    let seeds = if wanted(DriverKind::Sim) {
        contract_seeds()
    } else {
        Vec::new()
    };
    for seed in seeds {
        let lp = crash_fast(
            EventLoop::builder()
                .driver(DriverKind::Sim)
                .sim_config(sim_config(seed)),
        )
        .build()
        .expect("build sim loop");
        let lp = Rc::new(lp);
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(lp.clone())));
        if let Err(panic) = result {
            eprintln!(
                "{test} failed on sim seed {seed}; replay with:\n  PROACTOR_SIM_SEED={seed} cargo test --release {test}\nrecent sim trace:\n{}",
                lp.handle().driver_trace().unwrap_or_default()
            );
            std::panic::resume_unwind(panic);
        }
    }
}

/// Resolves once `cond` holds, checking every millisecond of loop time;
/// panics with `what` after `limit` of loop time (virtual on sim).
pub async fn wait_until(h: &Handle, limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = h.now() + limit;
    while !cond() {
        assert!(
            h.now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        sleep(h, Duration::from_millis(1)).await;
    }
}

/// Sleeps on the loop clock.
pub fn sleep(h: &Handle, d: Duration) -> Sleep {
    let done = Rc::new(Cell::new(false));
    let waker: Rc<Cell<Option<std::task::Waker>>> = Rc::default();
    {
        let done = done.clone();
        let waker = waker.clone();
        h.call_later(d, move || {
            done.set(true);
            if let Some(w) = waker.take() {
                w.wake();
            }
        });
    }
    Sleep { done, waker }
}

/// Future of [`sleep`].
pub struct Sleep {
    done: Rc<Cell<bool>>,
    waker: Rc<Cell<Option<std::task::Waker>>>,
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.done.get() {
            Poll::Ready(())
        } else {
            self.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        }
    }
}

/// A deterministic byte pattern: byte `i` of stream `stream`.
pub fn pattern(stream: u64, start: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let x = (start + i).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
            (x >> 56) as u8
        })
        .collect()
}

/// Serialises the tests of one binary that count descriptors: the count is
/// process-wide and tests run on parallel threads. Hold it for the test.
pub fn fd_count_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The default listen address for a driver.
pub fn localhost() -> proactor::Address {
    "127.0.0.1:0".parse().unwrap()
}

/// Polls a future once with a no-op waker (its wake-ups are not needed:
/// the caller polls again).
pub fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    Pin::new(f).poll(&mut cx)
}
