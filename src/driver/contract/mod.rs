//! The driver contract, written once against `Box<dyn Driver>` and run on
//! every backend: `uring` (skipped, with the reason printed, where the kernel
//! refuses io_uring), `poll`, and `sim` over several seeds.
//!
//! Each case is a function of a [`Harness`]; [`contract!`] makes one test of
//! it per backend, named `driver::contract::<backend>::<case>`. A case that
//! cannot run on some backend says why when it skips. Where the backends
//! used to answer differently, the case states the one answer they all give
//! now.
//!
//! Environment: `PROACTOR_TEST_DRIVERS=poll,sim` narrows the backends,
//! `PROACTOR_CONTRACT_SEEDS` sets how many sim seeds each case runs (8),
//! `PROACTOR_SIM_SEED` replays one.

pub(crate) mod cancel;
mod harness;
pub(crate) mod lifecycle;
mod multishot;
pub(crate) mod ops;

pub(crate) use cancel::echo_with_cancels;
pub(crate) use harness::{pattern, recv_bytes, Harness, Peer};

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use super::poll::PollDriver;
use super::sim::{SimConfig, SimDriver};
use super::uring::UringDriver;
use super::{Driver, DriverKind};

/// Sim seeds per case unless `PROACTOR_CONTRACT_SEEDS` says otherwise.
const DEFAULT_SEEDS: u64 = 8;

/// Whether `PROACTOR_TEST_DRIVERS` (if set) includes `kind`.
fn wanted(kind: DriverKind) -> bool {
    std::env::var("PROACTOR_TEST_DRIVERS")
        .map(|v| v.split(',').any(|s| s.trim() == kind.name()))
        .unwrap_or(true)
}

/// The seeds each case runs on `sim`: the one in `PROACTOR_SIM_SEED`, else
/// `PROACTOR_CONTRACT_SEEDS` of them from 0.
fn sim_seeds() -> Vec<u64> {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse().ok());
    if let Some(seed) = var("PROACTOR_SIM_SEED") {
        return vec![seed];
    }
    (0..var("PROACTOR_CONTRACT_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect()
}

/// A `uring` driver with `entries` SQ entries, or `None` with the reason
/// printed where the kernel refuses io_uring (seccomp, `io_uring_disabled`,
/// a kernel too old).
pub(crate) fn uring_or_skip(test: &str, entries: u32) -> Option<UringDriver> {
    match UringDriver::new(entries) {
        Ok(d) => Some(d),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EPERM | libc::ENOSYS | libc::EACCES | libc::ENOMEM)
            ) || e.kind() == std::io::ErrorKind::Unsupported =>
        {
            eprintln!("{test}: SKIPPED on uring: io_uring refused on this machine: {e}");
            None
        }
        Err(e) => panic!("{test}: UringDriver::new failed: {e}"),
    }
}

/// A new driver of `kind` (where `uring_or_skip` already gave one).
pub(crate) fn new_driver(kind: DriverKind) -> Box<dyn Driver> {
    match kind {
        DriverKind::Uring => Box::new(UringDriver::new(64).expect("io_uring")),
        DriverKind::Poll => Box::new(PollDriver::new().expect("epoll")),
        DriverKind::Sim => Box::new(SimDriver::new(SimConfig::with_seed(0))),
    }
}

/// Runs `case` on `backend` (on sim, once per seed).
pub(crate) fn run(backend: DriverKind, test: &'static str, case: fn(&mut Harness)) {
    if !wanted(backend) {
        eprintln!("{test}: skipped ({backend} is not in PROACTOR_TEST_DRIVERS)");
        return;
    }
    match backend {
        DriverKind::Uring => {
            if let Some(d) = uring_or_skip(test, 64) {
                case(&mut Harness::new(Box::new(d), test));
            }
        }
        DriverKind::Poll => {
            let d = PollDriver::new().expect("epoll");
            case(&mut Harness::new(Box::new(d), test));
        }
        DriverKind::Sim => {
            for seed in sim_seeds() {
                let d = SimDriver::new(SimConfig::with_seed(seed));
                let mut h = Harness::new(Box::new(d), test);
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| case(&mut h))) {
                    eprintln!(
                        "{test} failed on sim seed {seed}; replay with:\n  \
                         PROACTOR_SIM_SEED={seed} cargo test --release --lib {test}\n\
                         recent sim trace:\n{}",
                        h.trace()
                    );
                    resume_unwind(panic);
                }
            }
        }
    }
}

/// One module per backend, with one test per case.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        contract!(@backend uring, Uring, $($case),*);
        contract!(@backend poll, Poll, $($case),*);
        contract!(@backend sim, Sim, $($case),*);
    };
    (@backend $module:ident, $kind:ident, $($case:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $case() {
                    super::run(
                        crate::driver::DriverKind::$kind,
                        concat!("driver::contract::", stringify!($module), "::", stringify!($case)),
                        super::$case,
                    );
                }
            )*
        }
    };
}

use cancel::*;
use lifecycle::*;
use multishot::*;
use ops::*;

contract!(
    // ops.rs: O1, results, addresses
    echo_over_ipv4,
    echo_over_ipv6,
    echo_over_unix_and_close_unlinks_the_path,
    one_completion_per_op,
    invalid_arguments_complete_with_the_same_errors,
    connect_to_a_closed_listener_is_refused,
    short_writes_and_reads_lose_nothing,
    peer_close_gives_eof_after_the_data,
    peer_reset_gives_econnreset_and_no_sigpipe,
    // cancel.rs: O2
    cancel_of_a_blocked_op_is_ecanceled,
    cancel_of_a_connect_in_progress_is_ecanceled,
    cancel_racing_completion_returns_the_bytes,
    cancel_racing_a_concurrent_writer_loses_nothing,
    echo_with_random_cancels_loses_nothing,
    // lifecycle.rs: waits, wakes, close, drop (O3)
    wait_honours_its_timeout,
    remote_wake_interrupts_a_wait,
    close_with_a_linger_never_blocks_the_loop,
    drop_with_ops_in_flight_releases_their_buffers,
    no_descriptor_left_after_a_thousand_sockets,
    read_pauses_count_where_the_receive_stood,
    // multishot.rs: multishot receives (O1, O2, R1 across re-arms)
    multishot_receives_every_arrival_in_order_then_eof,
    multishot_cancel_keeps_the_arrivals_that_beat_it,
);
