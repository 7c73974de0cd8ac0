//! `create_server` and `create_connection` for TCP (IPv4, IPv6) and Unix paths.

mod adopt;
mod connect;
mod options;
mod server;

pub use adopt::ConnectFd;
pub use options::{ServerOptions, SocketOptions};
pub use server::{Server, WaitClosed};
