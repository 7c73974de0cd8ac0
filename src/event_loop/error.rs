//! [`RunError`]: why running or closing the loop failed.

use std::fmt;
use std::io;

/// Why running or closing the loop failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum RunError {
    /// `stop()` was called before the future completed (L1).
    Stopped,
    /// The loop is closed.
    Closed,
    /// The loop is already running: `run_*` and `close` may not be called
    /// from a callback or task of the loop itself (L4).
    Running,
    /// The driver failed to wait.
    Io(io::Error),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Stopped => f.write_str("event loop stopped before the future completed"),
            RunError::Closed => f.write_str("event loop is closed"),
            RunError::Running => f.write_str("event loop is already running"),
            RunError::Io(e) => write!(f, "event loop driver failed: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

impl From<RunError> for io::Error {
    fn from(e: RunError) -> io::Error {
        match e {
            RunError::Io(e) => e,
            other => io::Error::other(other),
        }
    }
}
