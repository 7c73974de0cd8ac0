//! `proactor`: the data-loss torture run (`race`), an echo server (`echo`)
//! and a side-by-side echo benchmark (`bench`).
//!
//! Exit status: 0 when everything was verified, 1 when a run lost or
//! corrupted bytes or failed, 2 for bad arguments or set-up errors, 3 when the
//! requested driver is unavailable on this machine (so CI can skip it).
//!
//! Modules only point down: `commands` (race, echo, bench) use `security`
//! (plain, TLS or STARTTLS, chosen once), which uses `protocols` (echo,
//! STARTTLS); `args`, `failure`, `pattern` and `progress` are leaves.

mod args;
mod commands;
mod failure;
mod pattern;
mod progress;
mod protocols;
mod security;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};
use commands::{bench, echo, race};

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    // Warnings (such as the io_uring fallback) go to stderr so that stdout
    // stays the report, with JSON on its last line.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        None => race::run(&race::default_args()),
        Some(Command::Race(args)) => race::run(&args),
        Some(Command::Echo(args)) => echo::run(&args),
        Some(Command::Bench(args)) => bench::run(&args),
        Some(Command::BenchServer(args)) => bench::serve(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("proactor: {f}");
            f.exit_code()
        }
    }
}
