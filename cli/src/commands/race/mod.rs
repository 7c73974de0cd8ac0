//! `proactor race`: the functional test from bpo-33694 (Victor Stinner's
//! race.py). An echo server and a client run on one loop; the client sends a
//! seeded pattern while a loop timer pauses and resumes its reading, and every
//! echoed byte is checked. On `sim` it runs once per seed.

mod client;
mod report;
mod sim;
mod workload;

use clap::Parser;
use proactor::{DriverKind, EventLoop};

use crate::args::{Cli, Command, RaceArgs};
use crate::failure::{build_loop, Failure};
use crate::progress;
use crate::security::RaceSecurity;
use report::RaceReport;

/// The arguments of a bare `proactor` (no subcommand): a default race.
pub fn default_args() -> RaceArgs {
    match Cli::try_parse_from(["proactor", "race"]) {
        Ok(Cli {
            command: Some(Command::Race(args)),
        }) => args,
        // The literal arguments above always parse; `cli_is_consistent` and
        // `default_race_parses` test it.
        other => panic!("default race arguments do not parse: {other:?}"),
    }
}

pub fn run(args: &RaceArgs) -> Result<(), Failure> {
    let security = RaceSecurity::from_args(args)?;
    let requested = {
        let mut b = EventLoop::builder();
        if let Some(k) = args.driver {
            b = b.driver(k);
        }
        b.requested_driver()
            .map_err(|e| Failure::setup(format!("PROACTOR_DRIVER: {e}")))?
    };
    if requested == Some(DriverKind::Sim) {
        if args.connect.is_some() {
            return Err(Failure::setup(
                "--connect needs a real network: use --driver uring or poll",
            ));
        }
        let report = sim::sweep(args, &security)?;
        return finish(args, &report);
    }
    if args.seeds.is_some() {
        return Err(Failure::setup("--seeds only applies to --driver sim"));
    }
    let event_loop = build_loop(args.driver, None)?;
    let planned = args.packets * args.size as u64;
    let bar = progress::bar(planned * args.connections, "race");
    let outcome = workload::run(&event_loop, args, &security, bar.as_ref())?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let mut report = RaceReport::new(outcome.driver, args, security.label());
    report.add(&outcome, planned, None);
    finish(args, &report)
}

/// Prints the verdict; a failed verdict is the command's failure.
fn finish(args: &RaceArgs, report: &RaceReport) -> Result<(), Failure> {
    report.print_human();
    if args.json {
        println!("{}", report.json());
    }
    if report.passed() {
        Ok(())
    } else {
        Err(Failure::run(format!(
            "race failed: {} bytes lost, {} of {} bytes verified",
            report.bytes_lost(),
            report.bytes_verified,
            report.bytes_planned
        )))
    }
}

#[cfg(test)]
mod tests;
