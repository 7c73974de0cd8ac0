//! `race --driver sim`: the workload once per seed, on the simulator.
//!
//! Seeds `0..N` by default (`--seeds N` or `PROACTOR_SIM_SEEDS`), from
//! `PROACTOR_SIM_SEED_BASE` when set. Each seed gets a fresh loop, so a failing seed replays on its own with
//! `PROACTOR_SIM_SEED=S proactor race --driver sim`, which gives the same
//! report every time except for the timing fields.

use proactor::DriverKind;

use super::report::{RaceReport, SimSummary};
use super::workload;
use crate::args::RaceArgs;
use crate::failure::{build_loop, Failure};
use crate::progress;
use crate::security::RaceSecurity;

/// Seeds when neither `--seeds` nor PROACTOR_SIM_SEEDS says.
const DEFAULT_SEEDS: u64 = 1;

/// Reads a numeric environment variable; a value that does not parse is an
/// error rather than silently ignored.
fn env_u64(name: &str) -> Result<Option<u64>, Failure> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| Failure::setup(format!("{name}={v:?} is not a number"))),
        _ => Ok(None),
    }
}

pub fn sweep(args: &RaceArgs, security: &RaceSecurity) -> Result<RaceReport, Failure> {
    let replay = env_u64("PROACTOR_SIM_SEED")?;
    let seeds: Vec<u64> = match replay {
        Some(s) => {
            if args.seeds.is_some_and(|n| n != 1) {
                eprintln!("proactor: PROACTOR_SIM_SEED={s} is set: replaying that seed only");
            }
            vec![s]
        }
        None => {
            let n = match args.seeds {
                Some(n) => n,
                None => env_u64("PROACTOR_SIM_SEEDS")?.unwrap_or(DEFAULT_SEEDS),
            };
            if n == 0 {
                return Err(Failure::setup("--seeds must be at least 1"));
            }
            let base = env_u64("PROACTOR_SIM_SEED_BASE")?.unwrap_or(0);
            let end = base.checked_add(n).ok_or_else(|| {
                Failure::setup(format!(
                    "PROACTOR_SIM_SEED_BASE={base} + {n} seeds overflow"
                ))
            })?;
            (base..end).collect()
        }
    };
    let planned = args.packets * args.size as u64;
    let mut report = RaceReport::new(DriverKind::Sim, args, security.label());
    let mut summary = SimSummary {
        seeds: 0,
        first_seed: seeds.first().copied().unwrap_or(0),
        replayed_seed: replay,
        ..SimSummary::default()
    };
    let bar = progress::bar(seeds.len() as u64, "seeds");
    for &seed in &seeds {
        let event_loop = build_loop(Some(DriverKind::Sim), Some(seed))?;
        let outcome = workload::run(&event_loop, args, security, None)?;
        let failed = outcome.errors().next().is_some()
            || outcome.clients.iter().any(|c| c.verified != planned);
        summary.seeds += 1;
        summary.cancel_races += outcome.stats.cancel_races;
        summary.short_reads += outcome.stats.short_reads;
        summary.short_writes += outcome.stats.short_writes;
        report.add(&outcome, planned, Some(&format!("seed {seed}")));
        if failed {
            summary.failed_seeds.push(seed);
            eprintln!(
                "proactor: seed {seed} failed; replay it with: PROACTOR_SIM_SEED={seed} {}",
                replay_command(args)
            );
            if let Some(trace) = event_loop.handle().driver_trace() {
                eprintln!("--- sim trace of seed {seed} (most recent last) ---\n{trace}");
            }
        }
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    // The race exists to pause reading while a receive is in flight (the
    // bpo-33694 window). Over ten seeds or more that toggled reading, a sim
    // run that never did so no longer tests what it claims.
    let w = report.window;
    if seeds.len() >= WINDOW_SEEDS && report.pause_cycles > 0 && w.pauses_recv_in_flight == 0 {
        report.fail(format!(
            "{} pause/resume cycles over {} seeds, and not one pause met a receive in flight: \
             the race no longer exercises the bpo-33694 window",
            report.pause_cycles,
            seeds.len()
        ));
    }
    report.sim = Some(summary);
    Ok(report)
}

/// Seeds from which a sim race must have met the window (if it paused).
const WINDOW_SEEDS: usize = 10;

/// The command line that replays one seed of this sweep.
fn replay_command(args: &RaceArgs) -> String {
    format!(
        "cargo run --release -- race --driver sim --packets {} --size {} --pause-every {}us --connections {} --pattern-seed {}{}",
        args.packets,
        args.size,
        args.pause_every.as_micros(),
        args.connections,
        args.pattern_seed,
        if args.starttls {
            " --starttls"
        } else if args.tls {
            " --tls"
        } else {
            ""
        }
    )
}
