//! The protocols the commands run: the flow-controlled echo, and the
//! STARTTLS line exchange that upgrades a connection to TLS. They depend on
//! the library only, never on a command.

pub mod echo;
pub mod starttls;

pub use echo::{EchoCounters, EchoProtocol};
pub use starttls::{StarttlsClient, StarttlsEcho};
