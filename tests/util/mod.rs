//! Shared test support: run a scenario on every driver, a recording protocol
//! with an invariant checker (R1–R4, W2, L4), and small async helpers.
#![allow(dead_code)]

pub mod buffered;
mod echo;
#[path = "../matrix/mod.rs"]
pub mod matrix;
pub mod pauses;
pub mod recorder;
pub mod window;

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use proactor::{EventLoop, Handle, SimConfig};

#[allow(unused_imports)]
pub use buffered::{BufHook, BufRecorder};
#[allow(unused_imports)]
pub use echo::Echo;
#[allow(unused_imports)]
pub use recorder::{Hooks, Rec, Recorder};

#[allow(unused_imports)]
pub use matrix::{crash_fast, uring_available, Plan, Seeds};

/// The sweep's sim seeds: `PROACTOR_SIM_SEED` replays one, else
/// `PROACTOR_SIM_SEEDS` (or `default`) seeds starting at 0.
pub fn sim_seeds(default: u64) -> Vec<u64> {
    Seeds::Sweep(default).list()
}

/// Runs `scenario` on the driver matrix (see `tests/matrix`): uring where
/// io_uring works, poll, and sim over the contract seeds.
pub fn on_every_driver(test: &str, scenario: impl Fn(&EventLoop)) {
    matrix::run(Plan::new(test), |lp| scenario(&lp))
}

/// [`on_every_driver`] for scenarios whose callbacks need the loop itself.
pub fn on_every_driver_shared(test: &str, scenario: impl Fn(Rc<EventLoop>)) {
    matrix::run(Plan::new(test), scenario)
}

/// [`on_every_driver_shared`] with the sim settings of each seed chosen by
/// the test (for example a reset model or fault probabilities it needs).
pub fn on_every_driver_with(
    test: &str,
    sim_config: impl Fn(u64) -> SimConfig,
    scenario: impl Fn(Rc<EventLoop>),
) {
    let plan = Plan {
        sim_config: &sim_config,
        ..Plan::new(test)
    };
    matrix::run(plan, scenario)
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
    let (sleep, wake) = Sleep::new();
    h.call_later(d, wake);
    sleep
}

/// Resolves on the loop's next turn, once what the current turn queued
/// (operations to submit, events to deliver) has gone out: an ordering
/// point, not a delay.
pub fn next_turn(h: &Handle) -> Sleep {
    let (sleep, wake) = Sleep::new();
    h.call_soon(wake);
    sleep
}

/// Future of [`sleep`].
pub struct Sleep {
    done: Rc<Cell<bool>>,
    waker: Rc<Cell<Option<std::task::Waker>>>,
}

impl Sleep {
    /// The future and the callback that resolves it.
    fn new() -> (Sleep, impl FnOnce() + 'static) {
        let done = Rc::new(Cell::new(false));
        let waker: Rc<Cell<Option<std::task::Waker>>> = Rc::default();
        let (d, w) = (done.clone(), waker.clone());
        let wake = move || {
            d.set(true);
            if let Some(w) = w.take() {
                w.wake();
            }
        };
        (Sleep { done, waker }, wake)
    }
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
