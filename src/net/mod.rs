//! `create_server` and `create_connection` for TCP (IPv4, IPv6) and Unix paths.

mod connect;
mod options;
mod server;

pub use options::{ServerOptions, SocketOptions};
pub use server::{Server, WaitClosed};
