//! Synchronous socket management shared by the kernel drivers (`uring`, `poll`).

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};

use socket2::{Domain, Socket, Type};

use super::{SockOpt, SocketId};
use crate::address::Address;

fn domain_of(addr: &Address) -> Domain {
    match addr {
        Address::Inet(a) if a.is_ipv4() => Domain::IPV4,
        Address::Inet(_) => Domain::IPV6,
        Address::Unix(_) => Domain::UNIX,
    }
}

fn new_socket(addr: &Address, nonblocking: bool) -> io::Result<Socket> {
    // socket2 sets SOCK_CLOEXEC on Linux.
    let s = Socket::new(domain_of(addr), Type::STREAM, None)?;
    s.set_nonblocking(nonblocking)?;
    Ok(s)
}

/// Borrows a socket id as a socket2 socket without taking ownership.
fn with_socket<R>(id: SocketId, f: impl FnOnce(&Socket) -> io::Result<R>) -> io::Result<R> {
    // SAFETY: the driver owns this fd until `close` is called, and we wrap it
    // in ManuallyDrop so this temporary never closes it.
    let s = std::mem::ManuallyDrop::new(unsafe { Socket::from_raw_fd(id.0) });
    f(&s)
}

/// Creates a listening socket bound to `addr`.
pub(crate) fn listen(addr: &Address, backlog: u32, nonblocking: bool) -> io::Result<SocketId> {
    let s = new_socket(addr, nonblocking)?;
    if let Address::Inet(a) = addr {
        s.set_reuse_address(true)?;
        if a.is_ipv6() {
            s.set_only_v6(true)?;
        }
    }
    s.bind(&addr.to_sockaddr()?)?;
    s.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(SocketId(s.into_raw_fd()))
}

/// Creates an unconnected stream socket of `addr`'s family.
pub(crate) fn open_stream(addr: &Address, nonblocking: bool) -> io::Result<SocketId> {
    let s = new_socket(addr, nonblocking)?;
    Ok(SocketId(s.into_raw_fd()))
}

/// Prepares a freshly accepted socket (non-blocking mode as the driver wants).
pub(crate) fn adopt_accepted(fd: RawFd, nonblocking: bool) -> io::Result<SocketId> {
    let id = SocketId(fd);
    with_socket(id, |s| s.set_nonblocking(nonblocking))?;
    Ok(id)
}

/// Closes the fd.
pub(crate) fn close(id: SocketId) {
    // SAFETY: the driver owned this fd and its caller guarantees no op on it
    // is in flight; dropping the Socket closes it exactly once.
    drop(unsafe { Socket::from_raw_fd(id.0) });
}

pub(crate) fn local_addr(id: SocketId) -> io::Result<Address> {
    with_socket(id, |s| Ok(Address::from_sockaddr(&s.local_addr()?)))
}

pub(crate) fn peer_addr(id: SocketId) -> io::Result<Address> {
    with_socket(id, |s| Ok(Address::from_sockaddr(&s.peer_addr()?)))
}

pub(crate) fn set_option(id: SocketId, opt: SockOpt) -> io::Result<()> {
    with_socket(id, |s| match opt {
        SockOpt::NoDelay(on) => match s.domain()? {
            Domain::UNIX => Ok(()),
            _ => s.set_tcp_nodelay(on),
        },
        SockOpt::SendBuffer(n) => s.set_send_buffer_size(n),
        SockOpt::RecvBuffer(n) => s.set_recv_buffer_size(n),
        SockOpt::Linger(l) => s.set_linger(l),
    })
}

/// What an accept error says, for the accept loop (L3). Every driver reports
/// the kernel's codes unchanged (and a peer that reset before its accept is a
/// successful accept on Linux, for `uring` and `poll` alike), so this one
/// classification serves them all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AcceptError {
    /// This one incoming connection failed (aborted or reset before it was
    /// accepted, refused by a firewall, a network error pending on it, as
    /// Linux's accept(2) reports them), or the call was interrupted. The
    /// listener is fine: accept the next connection at once.
    Connection,
    /// Out of descriptors or memory: accept again after a pause (back-off),
    /// since retrying at once would only fail again.
    Resources,
    /// Anything else (`EBADF`, `EINVAL`, `ENOTSOCK`...): the listener itself
    /// may be broken. Back off, so the server never spins on it.
    Listener,
}

/// Classifies an accept error; see [`AcceptError`].
pub(crate) fn classify_accept_error(err: &io::Error) -> AcceptError {
    match err.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => AcceptError::Resources,
        Some(
            libc::ECONNABORTED
            | libc::ECONNRESET
            | libc::EPROTO
            | libc::EPERM
            | libc::EINTR
            | libc::EAGAIN
            | libc::ETIMEDOUT
            // Linux passes errors pending on the new connection to accept():
            // accept(2) says to treat these like EAGAIN.
            | libc::ENETDOWN
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH,
        ) => AcceptError::Connection,
        _ => AcceptError::Listener,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_of_one_connection_retry_and_exhaustion_backs_off() {
        let class = |e| classify_accept_error(&io::Error::from_raw_os_error(e));
        for e in [
            libc::ECONNABORTED,
            libc::EPROTO,
            libc::EPERM,
            libc::ENETUNREACH,
        ] {
            assert_eq!(class(e), AcceptError::Connection, "errno {e}");
        }
        for e in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert_eq!(class(e), AcceptError::Resources, "errno {e}");
        }
        for e in [libc::EBADF, libc::EINVAL, libc::ENOTSOCK] {
            assert_eq!(class(e), AcceptError::Listener, "errno {e}");
        }
        assert_eq!(
            classify_accept_error(&io::Error::other("no errno")),
            AcceptError::Listener
        );
    }
}
