//! `create_server` and `create_connection` for TCP (IPv4, IPv6) and Unix paths.

mod connect;
mod server;

pub use connect::ConnectOptions;
pub use server::{Server, ServerOptions};
