//! Why a command failed, which decides the exit status, and the loop every
//! command builds the same way.

use std::fmt;
use std::process::ExitCode;

use proactor::{DriverKind, EventLoop};

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

    /// Something this machine does not offer (io_uring refused): exit 3.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Failure {
            kind: FailureKind::DriverUnavailable,
            message: message.into(),
        }
    }

    pub fn exit_code(&self) -> ExitCode {
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
