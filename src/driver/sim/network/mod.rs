//! The simulated network: listeners and connected stream sockets with
//! bounded in-memory buffers, TCP-like shutdown, EOF and reset semantics.
//!
//! This module holds state only; every random choice (how many bytes, which
//! fault) is made by the driver and passed in, so the network itself is a
//! plain deterministic state machine. Sockets live in a `BTreeMap`, so every
//! iteration order is fixed.
//!
//! Sockets, listening, closing and faults are here; `connect` connects and
//! accepts, `data` moves bytes.

mod connect;
mod data;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use crate::address::Address;
use crate::driver::SockOpt;

/// First port handed out for `listen` on port 0.
const FIRST_LISTEN_PORT: u16 = 40000;
/// First port handed out to connecting (client) sockets.
const FIRST_CLIENT_PORT: u16 = 50000;
/// Largest buffer size a socket option may ask for.
const MAX_BUFFER: usize = 64 << 20;
/// Largest accepted backlog.
const MAX_BACKLOG: usize = 4096;

/// An OS error with the given errno.
pub(super) fn os_err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// Short errno name for traces.
pub(super) fn errno_name(err: &io::Error) -> String {
    let name = match err.raw_os_error() {
        Some(libc::EBADF) => "EBADF",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::ENOTCONN) => "ENOTCONN",
        Some(libc::EISCONN) => "EISCONN",
        Some(libc::EALREADY) => "EALREADY",
        Some(libc::ECONNREFUSED) => "ECONNREFUSED",
        Some(libc::ECONNRESET) => "ECONNRESET",
        Some(libc::ECONNABORTED) => "ECONNABORTED",
        Some(libc::EPIPE) => "EPIPE",
        Some(libc::EMFILE) => "EMFILE",
        Some(libc::ECANCELED) => "ECANCELED",
        Some(libc::EADDRINUSE) => "EADDRINUSE",
        Some(libc::EAFNOSUPPORT) => "EAFNOSUPPORT",
        Some(libc::ENOTSOCK) => "ENOTSOCK",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::ETIMEDOUT) => "ETIMEDOUT",
        Some(libc::EAGAIN) => "EAGAIN",
        Some(libc::ENOBUFS) => "ENOBUFS",
        Some(libc::ENOMEM) => "ENOMEM",
        Some(libc::EINTR) => "EINTR",
        _ => return err.to_string(),
    };
    name.to_string()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
    Unix,
}

fn family_of(addr: &Address) -> Family {
    match addr {
        Address::Inet(SocketAddr::V4(_)) => Family::V4,
        Address::Inet(SocketAddr::V6(_)) => Family::V6,
        Address::Unix(_) => Family::Unix,
    }
}

fn unspecified(family: Family) -> Address {
    match family {
        Family::V4 => Address::Inet(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)),
        Family::V6 => Address::Inet(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)),
        Family::Unix => Address::Unix(PathBuf::new()),
    }
}

/// A listening socket.
#[derive(Debug)]
struct Listener {
    addr: Address,
    backlog: usize,
    /// Server ends of connections not yet accepted, oldest first.
    queue: VecDeque<i32>,
}

/// One end of a stream connection (or a socket not yet connected).
struct StreamSock {
    family: Family,
    local: Option<Address>,
    peer_addr: Option<Address>,
    /// The other end, while it exists and the connection is not reset.
    peer: Option<i32>,
    connected: bool,
    /// Bytes sent by the peer and not yet received here.
    incoming: VecDeque<u8>,
    sndbuf: usize,
    rcvbuf: usize,
    /// The peer will send nothing more (FIN received, or peer closed).
    rd_eof: bool,
    /// We shut down reading.
    rd_shut: bool,
    /// We shut down writing.
    wr_shut: bool,
    /// Pending error reported by the next recv or send (like `SO_ERROR`).
    error: Option<i32>,
    nodelay: bool,
    /// `SO_LINGER` with a zero timeout: close resets the connection.
    linger_zero: bool,
    /// TCP: the peer closed cleanly (its FIN is here) and its socket is
    /// gone, but nothing we sent has met its reset yet: the next send is
    /// accepted and lost, and the reset it draws fails the one after.
    peer_closed: bool,
}

impl fmt::Debug for StreamSock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSock")
            .field("local", &self.local)
            .field("peer_addr", &self.peer_addr)
            .field("peer", &self.peer)
            .field("connected", &self.connected)
            .field("incoming", &self.incoming.len())
            .field("rd_eof", &self.rd_eof)
            .field("rd_shut", &self.rd_shut)
            .field("wr_shut", &self.wr_shut)
            .field("error", &self.error)
            .finish()
    }
}

impl StreamSock {
    fn new(family: Family, sndbuf: usize, rcvbuf: usize) -> StreamSock {
        StreamSock {
            family,
            local: None,
            peer_addr: None,
            peer: None,
            connected: false,
            incoming: VecDeque::new(),
            sndbuf,
            rcvbuf,
            rd_eof: false,
            rd_shut: false,
            wr_shut: false,
            error: None,
            nodelay: false,
            linger_zero: false,
            peer_closed: false,
        }
    }
}

#[derive(Debug)]
enum Sock {
    Listener(Listener),
    Stream(StreamSock),
}

/// Outcome of a successful simulated connect, for the trace.
#[derive(Debug)]
pub(super) struct Connected {
    pub(super) server: i32,
    pub(super) listener: i32,
}

/// What the network did that the driver reports in its
/// [`SimStats`](super::SimStats).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct NetCounts {
    /// TCP sends accepted after the peer had closed, their bytes lost.
    pub(super) sends_to_closed_peer: u64,
    /// Unix sends to a closed peer, failed at once with `EPIPE`.
    pub(super) unix_epipes: u64,
    /// Unix sends that found the direction full at the sender's `SO_SNDBUF`
    /// although the TCP rule (send + receive buffer) would have had room.
    pub(super) unix_sndbuf_stalls: u64,
}

/// The whole simulated network.
#[derive(Debug)]
pub(super) struct Network {
    pub(super) counts: NetCounts,
    sockets: BTreeMap<i32, Sock>,
    next_fd: i32,
    next_listen_port: u16,
    next_client_port: u16,
    default_sndbuf: usize,
    default_rcvbuf: usize,
}

impl Network {
    pub(super) fn new(sndbuf: usize, rcvbuf: usize) -> Network {
        Network {
            counts: NetCounts::default(),
            sockets: BTreeMap::new(),
            next_fd: 3,
            next_listen_port: FIRST_LISTEN_PORT,
            next_client_port: FIRST_CLIENT_PORT,
            default_sndbuf: sndbuf.clamp(1, MAX_BUFFER),
            default_rcvbuf: rcvbuf.clamp(1, MAX_BUFFER),
        }
    }

    #[cfg(test)]
    /// Number of open sockets (listeners, streams, and unaccepted server ends).
    pub(super) fn open_sockets(&self) -> usize {
        self.sockets.len()
    }

    fn alloc_fd(&mut self) -> i32 {
        let fd = self.next_fd;
        self.next_fd = self
            .next_fd
            .checked_add(1)
            .expect("simulated fds exhausted");
        fd
    }

    fn stream(&self, fd: i32) -> io::Result<&StreamSock> {
        match self.sockets.get(&fd) {
            Some(Sock::Stream(s)) => Ok(s),
            Some(Sock::Listener(_)) => Err(os_err(libc::ENOTCONN)),
            None => Err(os_err(libc::EBADF)),
        }
    }

    fn stream_mut(&mut self, fd: i32) -> io::Result<&mut StreamSock> {
        match self.sockets.get_mut(&fd) {
            Some(Sock::Stream(s)) => Ok(s),
            Some(Sock::Listener(_)) => Err(os_err(libc::ENOTCONN)),
            None => Err(os_err(libc::EBADF)),
        }
    }

    fn connected_stream(&self, fd: i32) -> io::Result<&StreamSock> {
        let s = self.stream(fd)?;
        if s.connected {
            Ok(s)
        } else {
            Err(os_err(libc::ENOTCONN))
        }
    }

    // ----- sockets -----

    fn conflicts(a: &Address, b: &Address) -> bool {
        match (a, b) {
            (Address::Unix(p), Address::Unix(q)) => p == q,
            (Address::Inet(x), Address::Inet(y)) => {
                x.is_ipv4() == y.is_ipv4()
                    && x.port() == y.port()
                    && (x.ip() == y.ip() || x.ip().is_unspecified() || y.ip().is_unspecified())
            }
            _ => false,
        }
    }

    fn listeners(&self) -> impl Iterator<Item = (i32, &Listener)> {
        self.sockets.iter().filter_map(|(&fd, s)| match s {
            Sock::Listener(l) => Some((fd, l)),
            Sock::Stream(_) => None,
        })
    }

    fn addr_in_use(&self, addr: &Address) -> bool {
        self.listeners()
            .any(|(_, l)| Self::conflicts(&l.addr, addr))
    }

    /// Registers a listener at `addr` (Inet port 0: the next free port from 40000).
    pub(super) fn listen(&mut self, addr: &Address, backlog: u32) -> io::Result<i32> {
        let addr = match addr {
            Address::Inet(a) if a.port() == 0 => {
                let mut found = None;
                for _ in 0..=u16::MAX {
                    let port = self.next_listen_port;
                    self.next_listen_port = match port.checked_add(1) {
                        Some(p) => p,
                        None => FIRST_LISTEN_PORT,
                    };
                    let cand = Address::Inet(SocketAddr::new(a.ip(), port));
                    if !self.addr_in_use(&cand) {
                        found = Some(cand);
                        break;
                    }
                }
                found.ok_or_else(|| os_err(libc::EADDRINUSE))?
            }
            Address::Unix(p) if p.as_os_str().is_empty() => return Err(os_err(libc::EINVAL)),
            other => {
                if self.addr_in_use(other) {
                    return Err(os_err(libc::EADDRINUSE));
                }
                other.clone()
            }
        };
        let fd = self.alloc_fd();
        let backlog = (backlog as usize).clamp(1, MAX_BACKLOG);
        self.sockets.insert(
            fd,
            Sock::Listener(Listener {
                addr,
                backlog,
                queue: VecDeque::new(),
            }),
        );
        Ok(fd)
    }

    /// Creates an unconnected stream socket of `addr`'s family.
    pub(super) fn open_stream(&mut self, addr: &Address) -> i32 {
        let fd = self.alloc_fd();
        let s = StreamSock::new(family_of(addr), self.default_sndbuf, self.default_rcvbuf);
        self.sockets.insert(fd, Sock::Stream(s));
        fd
    }

    pub(super) fn local_addr(&self, fd: i32) -> io::Result<Address> {
        match self.sockets.get(&fd) {
            Some(Sock::Listener(l)) => Ok(l.addr.clone()),
            Some(Sock::Stream(s)) => Ok(s.local.clone().unwrap_or_else(|| unspecified(s.family))),
            None => Err(os_err(libc::EBADF)),
        }
    }

    pub(super) fn peer_addr(&self, fd: i32) -> io::Result<Address> {
        let s = self.connected_stream(fd)?;
        s.peer_addr.clone().ok_or_else(|| os_err(libc::ENOTCONN))
    }

    pub(super) fn set_option(&mut self, fd: i32, opt: SockOpt) -> io::Result<()> {
        match self.sockets.get_mut(&fd) {
            None => Err(os_err(libc::EBADF)),
            Some(Sock::Listener(_)) => Ok(()),
            Some(Sock::Stream(s)) => {
                match opt {
                    SockOpt::NoDelay(on) => s.nodelay = on,
                    SockOpt::SendBuffer(n) => s.sndbuf = n.clamp(1, MAX_BUFFER),
                    SockOpt::RecvBuffer(n) => s.rcvbuf = n.clamp(1, MAX_BUFFER),
                    SockOpt::Linger(l) => s.linger_zero = l == Some(std::time::Duration::ZERO),
                }
                Ok(())
            }
        }
    }

    /// Closes `fd`. The peer sees EOF after the bytes already buffered for it;
    /// its later sends fail with `EPIPE`. Closing a listener resets the
    /// connections still waiting in its backlog. Returns whether `fd` existed.
    pub(super) fn close(&mut self, fd: i32) -> bool {
        match self.sockets.remove(&fd) {
            None => false,
            Some(Sock::Listener(l)) => {
                for server in l.queue {
                    if let Some(Sock::Stream(s)) = self.sockets.remove(&server) {
                        if let Some(client) = s.peer {
                            self.reset_one(client);
                        }
                    }
                }
                true
            }
            Some(Sock::Stream(s)) => {
                // Like Linux: a zero linger, or unread data, makes close a reset.
                if let (Some(peer), true) = (s.peer, s.linger_zero || !s.incoming.is_empty()) {
                    if let Some(Sock::Stream(p)) = self.sockets.get_mut(&peer) {
                        p.error = Some(libc::ECONNRESET);
                        p.rd_eof = true;
                        p.peer = None;
                    }
                } else if let Some(peer) = s.peer {
                    if let Some(Sock::Stream(p)) = self.sockets.get_mut(&peer) {
                        p.rd_eof = true;
                        p.peer = None;
                        p.peer_closed = p.family != Family::Unix;
                    }
                }
                true
            }
        }
    }

    /// Resets one end: buffered data is discarded, the next recv or send fails
    /// with `ECONNRESET`, later ones see EOF / `EPIPE`.
    fn reset_one(&mut self, fd: i32) {
        if let Some(Sock::Stream(s)) = self.sockets.get_mut(&fd) {
            s.incoming.clear();
            s.error = Some(libc::ECONNRESET);
            s.rd_eof = true;
            s.peer = None;
            s.peer_closed = false;
        }
    }

    /// Fault: the connection of `fd` is reset (both ends see `ECONNRESET`).
    /// Returns whether there was a live connection to reset: a TCP one, since
    /// no network resets a Unix socket.
    pub(super) fn reset(&mut self, fd: i32) -> bool {
        if !self.is_live_tcp(fd) {
            return false;
        }
        let Some(peer) = self.stream(fd).ok().and_then(|s| s.peer) else {
            return false;
        };
        self.reset_one(fd);
        self.reset_one(peer);
        true
    }

    /// Fault: the peer of `fd` half-closes (shuts down its writing side), so
    /// `fd` reads EOF after what is buffered and the peer's sends fail with
    /// `EPIPE`. Returns whether it applied.
    pub(super) fn half_close(&mut self, fd: i32) -> bool {
        let Ok(s) = self.connected_stream(fd) else {
            return false;
        };
        let Some(peer) = s.peer else {
            return false;
        };
        if s.rd_eof {
            return false;
        }
        if let Ok(p) = self.stream_mut(peer) {
            p.wr_shut = true;
        }
        if let Ok(s) = self.stream_mut(fd) {
            s.rd_eof = true;
        }
        true
    }

    /// Whether `fd` is a connected stream with a live peer (fault targets).
    pub(super) fn is_live(&self, fd: i32) -> bool {
        self.connected_stream(fd)
            .map(|s| s.peer.is_some())
            .unwrap_or(false)
    }

    /// Whether `fd` is a live TCP connection (what network faults can hit).
    pub(super) fn is_live_tcp(&self, fd: i32) -> bool {
        self.connected_stream(fd)
            .map(|s| s.peer.is_some() && s.family != Family::Unix)
            .unwrap_or(false)
    }

    /// Whether `fd` is a connected stream.
    pub(super) fn is_connected(&self, fd: i32) -> bool {
        self.connected_stream(fd).is_ok()
    }

    /// Whether `fd` is a Unix socket (of any state).
    pub(super) fn is_unix(&self, fd: i32) -> bool {
        self.stream(fd).is_ok_and(|s| s.family == Family::Unix)
    }
}
