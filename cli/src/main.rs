//! `proactor`: the data-loss torture run (`race`), an echo server (`echo`)
//! and a side-by-side echo benchmark (`bench`).
//!
//! Exit status: 0 when everything was verified, 1 when a run lost or
//! corrupted bytes or failed, 2 for bad arguments or set-up errors, 3 when the
//! requested driver is unavailable on this machine (so CI can skip it).

mod bench;
mod cli;
mod echo;
mod pattern;
mod progress;
mod race;
mod report;
mod starttls;
mod tls;

use std::fmt;
use std::process::ExitCode;

use clap::Parser;
use proactor::{DriverKind, EventLoop};

use cli::{Cli, Command};

/// Why a command failed; decides the exit status.
#[derive(Debug)]
pub struct Failure {
    kind: FailureKind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    /// The run itself failed: bytes lost, mismatch, connection error.
    Run,
    /// Bad input or environment: unreadable file, address in use.
    Setup,
    /// The driver asked for cannot start here.
    DriverUnavailable,
}

impl Failure {
    pub fn run(message: impl Into<String>) -> Self {
        Failure {
            kind: FailureKind::Run,
            message: message.into(),
        }
    }

    pub fn setup(message: impl Into<String>) -> Self {
        Failure {
            kind: FailureKind::Setup,
            message: message.into(),
        }
    }

    fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self.kind {
            FailureKind::Run => 1,
            FailureKind::Setup => 2,
            FailureKind::DriverUnavailable => 3,
        })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Builds a loop on `driver` (or the library default, with its fallback).
/// `sim_seed` selects the seed of a `sim` loop.
pub fn build_loop(driver: Option<DriverKind>, sim_seed: Option<u64>) -> Result<EventLoop, Failure> {
    let mut b = EventLoop::builder();
    if let Some(k) = driver {
        b = b.driver(k);
    }
    if let Some(seed) = sim_seed {
        b = b.sim_seed(seed);
    }
    let requested = b
        .requested_driver()
        .map_err(|e| Failure::setup(format!("PROACTOR_DRIVER: {e}")))?;
    b.build().map_err(|e| Failure {
        kind: FailureKind::DriverUnavailable,
        message: match requested {
            Some(k) => format!("the {k} driver is unavailable here: {e}"),
            None => format!("no driver is available here: {e}"),
        },
    })
}

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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("proactor: {f}");
            f.exit_code()
        }
    }
}
