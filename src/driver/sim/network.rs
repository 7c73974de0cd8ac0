//! The simulated network: listeners and connected stream sockets with
//! bounded in-memory buffers, TCP-like shutdown, EOF and reset semantics.
//!
//! This module holds state only; every random choice (how many bytes, which
//! fault) is made by the driver and passed in, so the network itself is a
//! plain deterministic state machine. Sockets live in a `BTreeMap`, so every
//! iteration order is fixed.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr};
use std::path::PathBuf;

use bytes::Bytes;

use super::super::{SockOpt, SocketId};
use crate::address::Address;

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

/// The whole simulated network.
#[derive(Debug)]
pub(super) struct Network {
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
            sockets: BTreeMap::new(),
            next_fd: 3,
            next_listen_port: FIRST_LISTEN_PORT,
            next_client_port: FIRST_CLIENT_PORT,
            default_sndbuf: sndbuf.clamp(1, MAX_BUFFER),
            default_rcvbuf: rcvbuf.clamp(1, MAX_BUFFER),
        }
    }

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
        }
    }

    /// Fault: the connection of `fd` is reset (both ends see `ECONNRESET`).
    /// Returns whether there was a live connection to reset.
    pub(super) fn reset(&mut self, fd: i32) -> bool {
        let Ok(s) = self.connected_stream(fd) else {
            return false;
        };
        let Some(peer) = s.peer else {
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

    // ----- connect / accept -----

    fn find_listener(&self, target: &Address) -> Option<i32> {
        self.listeners().find_map(|(fd, l)| {
            let hit = match (&l.addr, target) {
                (Address::Unix(p), Address::Unix(q)) => p == q,
                (Address::Inet(la), Address::Inet(ta)) => {
                    la.is_ipv4() == ta.is_ipv4()
                        && la.port() == ta.port()
                        && (la.ip() == ta.ip()
                            || la.ip().is_unspecified()
                            || ta.ip().is_unspecified())
                }
                _ => false,
            };
            hit.then_some(fd)
        })
    }

    /// Connects `fd` to `target`: creates the server end and queues it on the
    /// listener's backlog. `refuse` injects a refusal.
    pub(super) fn connect(
        &mut self,
        fd: i32,
        target: &Address,
        refuse: bool,
    ) -> io::Result<Connected> {
        let s = self.stream(fd).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOTCONN) {
                os_err(libc::EINVAL)
            } else {
                e
            }
        })?;
        if s.connected {
            return Err(os_err(libc::EISCONN));
        }
        if s.family != family_of(target) {
            return Err(os_err(libc::EAFNOSUPPORT));
        }
        let family = s.family;
        let Some(lfd) = self.find_listener(target) else {
            // Nobody listens. A Unix path nobody listens on has no socket
            // file either (the drivers unlink it as they close the listener).
            return Err(os_err(match target {
                Address::Unix(_) => libc::ENOENT,
                Address::Inet(_) => libc::ECONNREFUSED,
            }));
        };
        let Some(Sock::Listener(l)) = self.sockets.get(&lfd) else {
            unreachable!("find_listener returns listeners");
        };
        if refuse || l.queue.len() >= l.backlog {
            return Err(os_err(libc::ECONNREFUSED));
        }
        let (client_addr, server_addr) = match (target, &l.addr) {
            (Address::Inet(t), Address::Inet(la)) => {
                let ip = if t.ip().is_unspecified() {
                    match t.ip() {
                        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                    }
                } else {
                    t.ip()
                };
                let port = self.next_client_port;
                self.next_client_port = match port.checked_add(1) {
                    Some(p) => p,
                    None => FIRST_CLIENT_PORT,
                };
                (
                    Address::Inet(SocketAddr::new(ip, port)),
                    Address::Inet(SocketAddr::new(ip, la.port())),
                )
            }
            (_, la) => (Address::Unix(PathBuf::new()), la.clone()),
        };
        let server = self.alloc_fd();
        let mut srv = StreamSock::new(family, self.default_sndbuf, self.default_rcvbuf);
        srv.local = Some(server_addr.clone());
        srv.peer_addr = Some(client_addr.clone());
        srv.peer = Some(fd);
        srv.connected = true;
        self.sockets.insert(server, Sock::Stream(srv));
        if let Some(Sock::Listener(l)) = self.sockets.get_mut(&lfd) {
            l.queue.push_back(server);
        }
        let c = self.stream_mut(fd).expect("client exists");
        c.local = Some(client_addr);
        c.peer_addr = Some(server_addr);
        c.peer = Some(server);
        c.connected = true;
        Ok(Connected {
            server,
            listener: lfd,
        })
    }

    /// Whether an accept on `fd` can complete now (with a connection or an error).
    pub(super) fn accept_ready(&self, fd: i32) -> bool {
        match self.sockets.get(&fd) {
            Some(Sock::Listener(l)) => !l.queue.is_empty(),
            _ => true,
        }
    }

    /// Accepts the oldest queued connection; `None` if none is queued.
    pub(super) fn accept(&mut self, fd: i32) -> Option<io::Result<(SocketId, Address)>> {
        let server = match self.sockets.get_mut(&fd) {
            Some(Sock::Listener(l)) => l.queue.pop_front()?,
            Some(Sock::Stream(_)) => return Some(Err(os_err(libc::EINVAL))),
            None => return Some(Err(os_err(libc::EBADF))),
        };
        let peer = self
            .stream(server)
            .ok()
            .and_then(|s| s.peer_addr.clone())
            .unwrap_or_else(|| Address::Unix(PathBuf::new()));
        Some(Ok((SocketId(server), peer)))
    }

    /// Whether the oldest connection queued on listener `fd` was reset by its
    /// client before being accepted.
    pub(super) fn queued_head_was_reset(&self, fd: i32) -> bool {
        let Some(Sock::Listener(l)) = self.sockets.get(&fd) else {
            return false;
        };
        l.queue.front().is_some_and(|&server| {
            matches!(
                self.sockets.get(&server),
                Some(Sock::Stream(s)) if s.peer.is_none() && s.error == Some(libc::ECONNRESET)
            )
        })
    }

    /// Fault: the oldest queued connection is aborted before it is accepted
    /// (the client sees a reset). Returns whether there was one.
    pub(super) fn abort_queued(&mut self, fd: i32) -> bool {
        let server = match self.sockets.get_mut(&fd) {
            Some(Sock::Listener(l)) => match l.queue.pop_front() {
                Some(s) => s,
                None => return false,
            },
            _ => return false,
        };
        if let Some(Sock::Stream(s)) = self.sockets.remove(&server) {
            if let Some(client) = s.peer {
                self.reset_one(client);
            }
        }
        true
    }

    // ----- data -----

    /// Whether a recv on `fd` can complete now (bytes, EOF or an error).
    pub(super) fn recv_ready(&self, fd: i32) -> bool {
        match self.connected_stream(fd) {
            Err(_) => true,
            Ok(s) => s.error.is_some() || !s.incoming.is_empty() || s.rd_eof || s.rd_shut,
        }
    }

    /// Receives into the spare capacity of `buf`; `choose(avail)` picks how
    /// many of the `avail` bytes to take (1..=avail). `None`: would block.
    pub(super) fn recv(
        &mut self,
        fd: i32,
        buf: &mut Vec<u8>,
        choose: impl FnOnce(usize) -> usize,
    ) -> Option<io::Result<usize>> {
        if let Err(e) = self.connected_stream(fd) {
            return Some(Err(e));
        }
        let s = self.stream_mut(fd).expect("checked");
        // Like Linux, bytes that arrived before a reset are still readable;
        // the reset is reported after them.
        if !s.incoming.is_empty() {
            let spare = buf.capacity() - buf.len();
            let avail = spare.min(s.incoming.len());
            let n = choose(avail).clamp(1, avail);
            buf.extend(s.incoming.drain(..n));
            return Some(Ok(n));
        }
        if let Some(code) = s.error.take() {
            return Some(Err(os_err(code)));
        }
        if s.rd_eof || s.rd_shut {
            return Some(Ok(0));
        }
        None
    }

    /// Room left in the direction `fd` → peer, or the error a send would get.
    fn send_room(&self, fd: i32) -> Result<usize, io::Error> {
        let s = self.connected_stream(fd)?;
        if let Some(code) = s.error {
            return Err(os_err(code));
        }
        if s.wr_shut {
            return Err(os_err(libc::EPIPE));
        }
        let Some(peer) = s.peer else {
            return Err(os_err(libc::EPIPE));
        };
        let p = self.stream(peer).map_err(|_| os_err(libc::EPIPE))?;
        Ok((s.sndbuf + p.rcvbuf).saturating_sub(p.incoming.len()))
    }

    /// Whether a send of `len` bytes on `fd` can complete now.
    pub(super) fn send_ready(&self, fd: i32, len: usize) -> bool {
        match self.send_room(fd) {
            Err(_) => true,
            Ok(room) => len == 0 || room > 0,
        }
    }

    /// Sends from `bufs` (skipping `offset` bytes); `choose(max)` picks how
    /// many (1..=max). `None`: would block.
    pub(super) fn send(
        &mut self,
        fd: i32,
        bufs: &[Bytes],
        offset: usize,
        choose: impl FnOnce(usize) -> usize,
    ) -> Option<io::Result<usize>> {
        let room = match self.send_room(fd) {
            Ok(room) => room,
            Err(e) => {
                if let Ok(s) = self.stream_mut(fd) {
                    s.error = None;
                }
                return Some(Err(e));
            }
        };
        let len = bufs
            .iter()
            .map(|b| b.len())
            .sum::<usize>()
            .saturating_sub(offset);
        if len == 0 {
            return Some(Ok(0));
        }
        if room == 0 {
            return None;
        }
        let max = len.min(room);
        let n = choose(max).clamp(1, max);
        let peer = self.stream(fd).ok()?.peer?;
        let p = self.stream_mut(peer).ok()?;
        let mut skip = offset;
        let mut left = n;
        for b in bufs {
            if left == 0 {
                break;
            }
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            let part = &b[skip..];
            skip = 0;
            let take = part.len().min(left);
            p.incoming.extend(&part[..take]);
            left -= take;
        }
        Some(Ok(n))
    }

    /// `shutdown(2)`.
    pub(super) fn shutdown(&mut self, fd: i32, how: Shutdown) -> io::Result<()> {
        let s = self.connected_stream(fd)?;
        let peer = s.peer;
        let s = self.stream_mut(fd)?;
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            s.rd_shut = true;
        }
        if matches!(how, Shutdown::Write | Shutdown::Both) {
            s.wr_shut = true;
            if let Some(peer) = peer {
                if let Ok(p) = self.stream_mut(peer) {
                    p.rd_eof = true;
                }
            }
        }
        Ok(())
    }
}
