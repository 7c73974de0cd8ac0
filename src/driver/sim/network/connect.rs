//! Connecting and accepting: a connect creates the server end at once and
//! queues it on the listener's backlog, where an accept finds it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use super::{family_of, os_err, Connected, Family, Network, Sock, StreamSock, FIRST_CLIENT_PORT};
use crate::address::Address;
use crate::driver::SocketId;

impl Network {
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
    pub(in crate::driver::sim) fn connect(
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
        if l.queue.len() >= l.backlog && family == Family::Unix {
            // Linux `unix_stream_connect` on a non-blocking socket (as both
            // kernel drivers connect): the backlog is full, try again.
            return Err(os_err(libc::EAGAIN));
        }
        // A full TCP backlog drops the SYN: the driver keeps such a connect
        // in progress (see `syn_answered`) and only gets here once it has room.
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
        let mut server_end = StreamSock::new(family, self.default_sndbuf, self.default_rcvbuf);
        server_end.local = Some(server_addr.clone());
        server_end.peer_addr = Some(client_addr.clone());
        server_end.peer = Some(fd);
        server_end.connected = true;
        self.sockets.insert(server, Sock::Stream(server_end));
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

    /// Whether a TCP connect from `fd` to `target` has its SYN answered now:
    /// false while the target listener's accept queue is full (Linux drops
    /// the SYN and the client retransmits). Unix connects, connects that
    /// fail at once, and TCP connects to a listener with room: true.
    pub(in crate::driver::sim) fn syn_answered(&self, fd: i32, target: &Address) -> bool {
        if self
            .stream(fd)
            .map_or(true, |s| s.connected || s.family == Family::Unix)
        {
            return true;
        }
        match self
            .find_listener(target)
            .and_then(|l| self.sockets.get(&l))
        {
            Some(Sock::Listener(l)) => l.queue.len() < l.backlog,
            _ => true,
        }
    }

    /// Whether `target` is a TCP address (SYNs, retransmission, timeouts).
    pub(in crate::driver::sim) fn is_tcp_target(target: &Address) -> bool {
        matches!(target, Address::Inet(_))
    }

    /// Whether listener `fd` is a Unix one.
    pub(in crate::driver::sim) fn is_unix_listener(&self, fd: i32) -> bool {
        matches!(self.sockets.get(&fd), Some(Sock::Listener(l)) if matches!(l.addr, Address::Unix(_)))
    }

    /// Whether an accept on `fd` can complete now (with a connection or an error).
    pub(in crate::driver::sim) fn accept_ready(&self, fd: i32) -> bool {
        match self.sockets.get(&fd) {
            Some(Sock::Listener(l)) => !l.queue.is_empty(),
            _ => true,
        }
    }

    /// Accepts the oldest queued connection; `None` if none is queued.
    pub(in crate::driver::sim) fn accept(
        &mut self,
        fd: i32,
    ) -> Option<io::Result<(SocketId, Address)>> {
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
    pub(in crate::driver::sim) fn queued_head_was_reset(&self, fd: i32) -> bool {
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
    pub(in crate::driver::sim) fn abort_queued(&mut self, fd: i32) -> bool {
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
}
