#![doc = include_str!("../README.md")]
//!
//! # The API
//!
//! - **The loop**: [`EventLoop`] (built with [`EventLoop::builder`], a
//!   [`Builder`]) runs on one thread; [`Handle`] is the clonable reference
//!   that callbacks, tasks and protocols use (`call_soon`, `call_later`,
//!   `spawn`, `stop`); [`RemoteHandle`] schedules work from other threads.
//!   [`DriverKind`] chooses the backend, [`SimConfig`] configures the
//!   simulator, [`DriverStats`] counts what the driver did.
//! - **Connections**: [`Handle::create_server`] and
//!   [`Handle::create_connection`] (with [`ServerOptions`] and
//!   [`SocketOptions`] in their `_with` forms) run a [`Protocol`] or
//!   [`BufferedProtocol`] on each [`Transport`]; a [`Server`] tracks its
//!   listener and connections.
//! - **TLS**: [`Handle::create_tls_server`], [`Handle::create_tls_connection`]
//!   and [`Handle::start_tls`] with [`TlsOptions`]; the [`tls`] module builds
//!   rustls configurations.
//! - **Panics** in application code go to the loop's exception handler
//!   ([`Handle::set_exception_handler`], [`ExceptionContext`]); the
//!   connection they belong to ends with [`CallbackPanicked`].
//!
//! The drivers themselves (io_uring, epoll, the simulator) are private: the
//! loop and the transports are their only callers.
#![warn(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

#[cfg(all(
    not(debug_assertions),
    any(
        feature = "broken-pause-cancels",
        feature = "broken-early-delivery",
        feature = "broken-scheduled-handshake",
        feature = "broken-pause-drops-ready",
        feature = "broken-double-recv",
        feature = "broken-tls-pause-leaks",
        feature = "broken-error-as-eof",
        feature = "broken-switch-tail-to-old",
        feature = "broken-multishot-drops-after-pause"
    )
))]
compile_error!(
    "the broken-* features exist only to prove the tests can fail; never build them in release"
);

mod address;
// The backends are private (only `DriverKind`, `DriverStats` and
// `SimConfig` are re-exported below).
mod driver;
mod event_loop;
mod inline_deque;
mod net;
mod protocol;
pub mod tls;
mod transport;

pub use address::Address;
pub use driver::sim::{SimConfig, SimStats};
pub use driver::uring::MULTISHOT_ACCEPT_ENV as URING_MULTISHOT_ACCEPT_ENV;
pub use driver::uring::MULTISHOT_ENV as URING_MULTISHOT_ENV;
pub use driver::{DriverKind, DriverStats};
pub use event_loop::{
    default_exception_handler, Builder, CallbackPanicked, EventLoop, ExceptionContext,
    ExceptionSource, Handle, JoinError, JoinHandle, RemoteHandle, RunError, TableSizes,
    TimerHandle, WaitHook,
};
pub use net::{ConnectFd, Server, ServerOptions, SocketOptions, WaitClosed};
pub use protocol::{AnyProtocol, BaseProtocol, BufferedProtocol, Protocol};
pub use tls::{TlsError, TlsOptions};
pub use transport::{Ledger, TlsInfo, Transport, DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER};
