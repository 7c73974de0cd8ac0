//! Socket addresses understood by every driver: IP (v4/v6) and Unix paths.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// Where a stream socket listens or connects.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// A TCP endpoint.
    Inet(SocketAddr),
    /// A Unix stream socket path. An unnamed socket (a client) has an empty path.
    Unix(PathBuf),
}

impl Address {
    /// The IP address, if this is a TCP endpoint.
    pub fn as_inet(&self) -> Option<SocketAddr> {
        match self {
            Address::Inet(a) => Some(*a),
            Address::Unix(_) => None,
        }
    }

    /// Converts to the socket2 representation for syscalls.
    pub(crate) fn to_sockaddr(&self) -> std::io::Result<socket2::SockAddr> {
        match self {
            Address::Inet(a) => Ok(socket2::SockAddr::from(*a)),
            Address::Unix(p) => socket2::SockAddr::unix(p),
        }
    }

    /// Converts from a kernel-returned address.
    pub(crate) fn from_sockaddr(sa: &socket2::SockAddr) -> Address {
        if let Some(a) = sa.as_socket() {
            Address::Inet(a)
        } else {
            Address::Unix(sa.as_pathname().map(PathBuf::from).unwrap_or_default())
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(a: SocketAddr) -> Self {
        Address::Inet(a)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Inet(a) => write!(f, "{a}"),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl FromStr for Address {
    type Err = std::io::Error;

    /// Parses `HOST:PORT` (IPv4, `[IPv6]:PORT`, or `localhost:PORT`) or `unix:PATH`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Address::Inet(a));
        }
        use std::net::ToSocketAddrs;
        s.to_socket_addrs()?
            .next()
            .map(Address::Inet)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("cannot resolve address {s:?}"),
                )
            })
    }
}
