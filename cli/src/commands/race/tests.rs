//! `race` inside `cargo test`: a reduced workload with 1 ms toggles on the
//! driver matrix of the library's tests (uring where io_uring works, poll,
//! and sim over a sweep of seeds), plain, over TLS and over STARTTLS.
//!
//! Every run must verify every byte, and the client checks on its own that
//! nothing reaches it while its reading is paused (R3). So that "paused"
//! means something, each driver must also show that pauses held echoed
//! bytes: receives that completed while reading was paused, whose bytes
//! waited for `resume_reading` (the bpo-33694 window).

use std::cell::RefCell;
use std::collections::BTreeMap;

use clap::Parser;
use proactor::{DriverKind, SimConfig};

use super::workload;
use crate::args::{Cli, Command, RaceArgs};
use crate::security::RaceSecurity;

#[path = "../../../../tests/matrix/mod.rs"]
mod matrix;

/// Sim seeds of each race test (`PROACTOR_SIM_SEEDS` resizes the sweep,
/// `PROACTOR_SIM_SEED_BASE` moves it).
const SIM_SEEDS: u64 = 8;

/// Virtual time of one sim scheduler step (default 5 µs): slow enough that
/// the reduced workload spans several 1 ms toggles on sim too.
const SIM_STEP: std::time::Duration = std::time::Duration::from_micros(25);

fn race_args(extra: &[&str]) -> RaceArgs {
    let mut argv = vec![
        "proactor",
        "race",
        // 2 × 4 MiB each way: a few milliseconds on a real driver, which
        // 1 ms toggles cut into several pause/resume cycles.
        "--packets",
        "256",
        "--size",
        "16K",
        "--connections",
        "2",
        "--pause-every",
        "1ms",
        "--timeout",
        "60",
    ];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Some(Command::Race(args)),
        }) => args,
        other => panic!("race arguments do not parse: {other:?}"),
    }
}

/// What one driver's runs added up to.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    runs: u64,
    pause_cycles: u64,
    held_at_resume: u64,
}

/// Runs the reduced race on every driver and checks each run and each
/// driver's totals.
fn race_on_every_driver(test: &str, extra: &[&str]) {
    let args = race_args(extra);
    let security = RaceSecurity::from_args(&args).expect("race security");
    let planned = args.packets * args.size as u64;
    let totals: RefCell<BTreeMap<&'static str, Totals>> = RefCell::default();
    let sim_config = |seed| SimConfig {
        step_time: SIM_STEP,
        ..SimConfig::with_seed(seed)
    };
    let plan = matrix::Plan {
        seeds: matrix::Seeds::Sweep(SIM_SEEDS),
        sim_config: &sim_config,
        ..matrix::Plan::new(test)
    };
    matrix::run(plan, |lp| {
        let outcome = workload::run(&lp, &args, &security, None).expect("race set-up");
        let driver = outcome.driver;
        let errors: Vec<String> = outcome.errors().collect();
        assert!(errors.is_empty(), "{test} on {driver}: {errors:?}");
        assert_eq!(outcome.clients.len() as u64, args.connections);
        for (i, c) in outcome.clients.iter().enumerate() {
            assert_eq!(
                c.received_while_paused, 0,
                "client {i} on {driver}: R3, nothing arrives while paused"
            );
            assert_eq!(
                (c.sent, c.received, c.verified),
                (planned, planned, planned),
                "client {i} on {driver}: every byte sent, echoed once and verified"
            );
            assert!(c.mismatch.is_none(), "client {i} on {driver}");
            assert_eq!(c.send_hash, c.recv_hash, "client {i} on {driver}");
        }
        assert_eq!(
            outcome.server_echoed,
            Some(planned * args.connections),
            "{test} on {driver}: the server echoed exactly what was sent"
        );
        let mut totals = totals.borrow_mut();
        let t = totals.entry(driver.name()).or_default();
        t.runs += 1;
        for c in &outcome.clients {
            t.pause_cycles += c.pause_cycles;
            t.held_at_resume += c.held_at_resume;
        }
    });
    let totals = totals.into_inner();
    eprintln!("{test}: {totals:?}");
    for (driver, t) in &totals {
        // Every run of every client must be cut by pauses, and pauses must
        // have held bytes: otherwise "nothing arrived while paused" would
        // hold because nothing was in flight.
        assert!(
            t.pause_cycles >= 2 * t.runs * args.connections,
            "{test} on {driver}: at least 2 pause/resume cycles per client and run: {t:?}"
        );
        assert!(
            t.held_at_resume >= t.runs,
            "{test} on {driver}: pauses held echoed bytes at least once per run: {t:?}"
        );
    }
    for kind in [DriverKind::Uring, DriverKind::Poll, DriverKind::Sim] {
        let expected = matrix::driver_expected(kind, None);
        assert_eq!(
            totals.contains_key(kind.name()),
            expected,
            "{test}: driver {kind} ran: {totals:?}"
        );
    }
}

#[test]
fn race_plain_on_every_driver() {
    race_on_every_driver("race_plain_on_every_driver", &[]);
}

#[test]
fn race_tls_on_every_driver() {
    race_on_every_driver("race_tls_on_every_driver", &["--tls"]);
}

#[test]
fn race_starttls_on_every_driver() {
    race_on_every_driver("race_starttls_on_every_driver", &["--starttls"]);
}

#[test]
fn default_race_parses() {
    let a = super::default_args();
    assert_eq!((a.packets, a.size), (2000, 16384));
    assert_eq!(a.pause_every, std::time::Duration::from_millis(100));
}
