//! proactor: a completion-based event loop with asyncio-style transports and
//! protocols, STARTTLS, and flow control that never loses a byte.
//!
//! See `DESIGN.md`'s contract (O1…L4); every guarantee is tested on the
//! `uring`, `poll` and `sim` drivers.
#![warn(missing_docs)]

#[cfg(all(
    not(debug_assertions),
    any(
        feature = "broken-pause-cancels",
        feature = "broken-early-delivery",
        feature = "broken-scheduled-handshake"
    )
))]
compile_error!(
    "the broken-* features exist only to prove the tests can fail; never build them in release"
);

pub mod address;
// The backends are private. Some of their accessors (the simulator's trace
// hash, socket counts, a completion's key) serve only the driver's own unit
// tests; dead code is still reported by the test build, which uses them.
#[cfg_attr(not(test), allow(dead_code))]
mod driver;

pub use address::Address;
pub use driver::sim::SimConfig;
pub use driver::{DriverKind, DriverStats};
pub mod event_loop;
pub use event_loop::{
    default_exception_handler, Builder, CallbackPanicked, EventLoop, ExceptionContext,
    ExceptionSource, Handle, JoinError, JoinHandle, RemoteHandle, RunError, TimerHandle,
};
pub mod protocol;
pub mod transport;
pub use protocol::{AnyProtocol, BaseProtocol, BufferedProtocol, Protocol};
pub use transport::Ledger;
pub use transport::{TlsInfo, Transport};
pub mod net;
pub use net::{ConnectOptions, Server, ServerOptions};
pub mod tls;
pub use tls::{TlsError, TlsOptions};
