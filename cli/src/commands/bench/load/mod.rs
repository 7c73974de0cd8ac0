//! The load side, on the client's CPU and independent of every server: an
//! io_uring echo client and bulk client for plain servers, a tokio-rustls
//! client for TLS servers, the raw loopback pair, and idle connections.

pub mod bulk;
pub mod echo;
pub mod idle;
pub mod loopback;
mod ring;
pub mod tls;
