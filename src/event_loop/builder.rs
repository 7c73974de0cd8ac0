//! Choosing and configuring the driver of a new loop.

use std::fmt;
use std::io;
use std::rc::Rc;

use super::exceptions::{ExceptionContext, ExceptionHandler};
use super::{EventLoop, Handle};
use crate::driver::poll::PollDriver;
use crate::driver::sim::{SimConfig, SimDriver};
use crate::driver::uring::UringDriver;
use crate::driver::{Driver, DriverKind};

/// Entries in the io_uring submission queue.
const DEFAULT_URING_ENTRIES: u32 = 1024;

/// Builds an [`EventLoop`].
///
/// The driver is, in order of precedence: [`Builder::driver`], the
/// `PROACTOR_DRIVER` environment variable (`uring`, `poll`, `sim`), or
/// `uring` with a logged fallback to `poll` when the kernel refuses io_uring.
/// An explicit choice never falls back: it fails with the kernel's error.
///
/// # Examples
///
/// A loop on the simulator, whose seed decides every scheduling choice
/// (completion order, short reads and writes, cancel races), so a run
/// replays exactly:
///
/// ```
/// use proactor::{DriverKind, EventLoop};
///
/// let event_loop = EventLoop::builder().driver(DriverKind::Sim).sim_seed(17).build()?;
/// assert_eq!(event_loop.handle().driver_kind(), DriverKind::Sim);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Default, Clone)]
pub struct Builder {
    driver: Option<DriverKind>,
    sim: Option<SimConfig>,
    uring_entries: Option<u32>,
    uring_multishot_accept: Option<bool>,
    exception_handler: Option<ExceptionHandler>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("driver", &self.driver)
            .field("sim", &self.sim)
            .field("uring_entries", &self.uring_entries)
            .field("uring_multishot_accept", &self.uring_multishot_accept)
            .field("exception_handler", &self.exception_handler.is_some())
            .finish()
    }
}

impl Builder {
    /// Selects the driver explicitly.
    pub fn driver(mut self, kind: DriverKind) -> Self {
        self.driver = Some(kind);
        self
    }

    /// Configures the `sim` driver (and selects it unless a driver was chosen).
    pub fn sim_config(mut self, config: SimConfig) -> Self {
        self.sim = Some(config);
        self
    }

    /// Shorthand for a default [`SimConfig`] with this seed.
    pub fn sim_seed(self, seed: u64) -> Self {
        self.sim_config(SimConfig {
            seed,
            ..SimConfig::default()
        })
    }

    /// The loop's exception handler (see [`Handle::set_exception_handler`]).
    pub fn exception_handler(
        mut self,
        handler: impl Fn(&Handle, ExceptionContext) + 'static,
    ) -> Self {
        self.exception_handler = Some(Rc::new(handler));
        self
    }

    /// Sets the io_uring submission queue size.
    pub fn uring_entries(mut self, entries: u32) -> Self {
        self.uring_entries = Some(entries);
        self
    }

    /// Whether servers on `uring` accept with one multishot accept each
    /// (`IORING_ACCEPT_MULTISHOT`, where the kernel has it) instead of one
    /// accept per connection. Off by default, and by default taken from
    /// `PROACTOR_URING_MULTISHOT_ACCEPT=1`: it accepted about 9% more
    /// connections per second on a connect/close churn, but under a storm
    /// of connections one `io_uring_enter` accepts the whole listen backlog
    /// (hundreds to over a thousand connections measured); the server
    /// starts them 32 per loop turn, and a well-behaved client still waited
    /// two to three times longer than with one accept per turn (README,
    /// Performance). Other drivers ignore it.
    pub fn uring_multishot_accept(mut self, on: bool) -> Self {
        self.uring_multishot_accept = Some(on);
        self
    }

    /// The driver this builder would pick, before any fallback: `None`
    /// means the default (`uring`, falling back to `poll`).
    ///
    /// # Errors
    /// `PROACTOR_DRIVER` names no driver (`InvalidInput`).
    pub fn requested_driver(&self) -> io::Result<Option<DriverKind>> {
        if let Some(k) = self.driver {
            return Ok(Some(k));
        }
        if self.sim.is_some() {
            return Ok(Some(DriverKind::Sim));
        }
        match std::env::var("PROACTOR_DRIVER") {
            Ok(v) if !v.trim().is_empty() => v.parse().map(Some),
            _ => Ok(None),
        }
    }

    /// Creates the loop.
    ///
    /// # Errors
    /// `PROACTOR_DRIVER` names no driver (`InvalidInput`), or the driver
    /// cannot start: the kernel refuses an explicitly chosen `uring`
    /// (`EPERM`, `ENOSYS`, for example under seccomp), or the epoll
    /// instance of `poll` cannot be created.
    pub fn build(self) -> io::Result<EventLoop> {
        let requested = self.requested_driver()?;
        let entries = self.uring_entries.unwrap_or(DEFAULT_URING_ENTRIES);
        let multishot_accept = self.uring_multishot_accept;
        let uring = || {
            let mut d = UringDriver::new(entries)?;
            if let Some(on) = multishot_accept {
                d.set_multishot_accept(on);
            }
            Ok::<_, io::Error>(d)
        };
        let driver: Box<dyn Driver> = match requested {
            Some(DriverKind::Uring) => Box::new(uring()?),
            Some(DriverKind::Poll) => Box::new(PollDriver::new()?),
            Some(DriverKind::Sim) => Box::new(SimDriver::new(self.sim_settings())),
            None => match uring() {
                Ok(d) => Box::new(d),
                Err(e) => {
                    tracing::warn!("io_uring unavailable ({e}); falling back to the poll driver");
                    Box::new(PollDriver::new()?)
                }
            },
        };
        let event_loop = EventLoop::from_driver(driver);
        *event_loop.handle.inner.exception_handler.borrow_mut() = self.exception_handler;
        Ok(event_loop)
    }

    /// The sim settings: the given config, with `PROACTOR_SIM_SEED` overriding the seed.
    fn sim_settings(&self) -> SimConfig {
        let mut config = self.sim.clone().unwrap_or_default();
        if let Some(seed) = std::env::var("PROACTOR_SIM_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            config.seed = seed;
        }
        config
    }
}
