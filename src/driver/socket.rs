//! Socket management shared by the kernel drivers (`uring`, `poll`):
//! creating and closing sockets, their addresses and options, the slices a
//! send hands to the kernel, and [`Sockets`], what a driver must remember
//! about the sockets it owns.

use std::collections::{HashMap, HashSet};
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use bytes::Bytes;
use socket2::{Domain, Socket, Type};

use super::{SockOpt, SocketId};
use crate::address::Address;

/// At most this many slices go into one send (well under `IOV_MAX`); the
/// rest waits for the next send (a short write).
pub(crate) const MAX_IOVECS: usize = 64;

/// What a kernel driver remembers about the sockets it owns, beyond their
/// descriptors: which ones are Unix listeners bound to a path (the driver's
/// close of the listener unlinks it), and which ones linger (`SO_LINGER`
/// above zero: a plain close(2) of those would block the loop thread).
#[derive(Debug)]
pub(crate) struct Sockets {
    /// Whether new sockets are non-blocking (`poll`) or blocking (`uring`).
    nonblocking: bool,
    /// Unix listeners and the path each is bound to.
    unix_paths: HashMap<RawFd, PathBuf>,
    /// Sockets with `SO_LINGER` above zero, set here or inherited from
    /// their listener.
    lingering: HashSet<RawFd>,
}

impl Sockets {
    pub(crate) fn new(nonblocking: bool) -> Sockets {
        Sockets {
            nonblocking,
            unix_paths: HashMap::new(),
            lingering: HashSet::new(),
        }
    }

    /// Creates a listening socket bound to `addr`.
    pub(crate) fn listen(&mut self, addr: &Address, backlog: u32) -> io::Result<SocketId> {
        let s = new_socket(addr, self.nonblocking)?;
        if let Address::Inet(a) = addr {
            s.set_reuse_address(true)?;
            if a.is_ipv6() {
                s.set_only_v6(true)?;
            }
        }
        s.bind(&addr.to_sockaddr()?)?;
        s.listen(backlog.min(i32::MAX as u32) as i32)?;
        let fd = s.into_raw_fd();
        match addr {
            // An abstract name (leading NUL) has no file to unlink.
            Address::Unix(path) if !path.as_os_str().as_bytes().starts_with(b"\0") => {
                self.unix_paths.insert(fd, path.clone());
            }
            _ => {}
        }
        Ok(SocketId(fd))
    }

    /// Creates an unconnected stream socket of `addr`'s family.
    pub(crate) fn open_stream(&mut self, addr: &Address) -> io::Result<SocketId> {
        Ok(SocketId(new_socket(addr, self.nonblocking)?.into_raw_fd()))
    }

    /// Takes ownership of a stream socket made elsewhere, in this driver's
    /// blocking mode; one with a linger above zero is remembered as such.
    pub(crate) fn adopt(&mut self, fd: OwnedFd) -> io::Result<SocketId> {
        let s = Socket::from(fd);
        if s.r#type()? != Type::STREAM {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "only stream sockets can be adopted",
            ));
        }
        s.set_nonblocking(self.nonblocking)?;
        let lingers = s.linger()?.is_some_and(|d| d.as_secs() > 0);
        let socket = SocketId(s.into_raw_fd());
        if lingers {
            self.lingering.insert(socket.0);
        }
        Ok(socket)
    }

    /// Gives `socket` back without closing it or unlinking its path.
    pub(crate) fn release(&mut self, socket: SocketId) -> OwnedFd {
        self.lingering.remove(&socket.0);
        self.unix_paths.remove(&socket.0);
        // SAFETY: the driver owned this descriptor since it created or
        // adopted it, and forgets it here: ownership moves to the caller.
        unsafe { OwnedFd::from_raw_fd(socket.0) }
    }

    /// Records a socket accepted on `listener`: it inherits its `SO_LINGER`.
    pub(crate) fn accepted(&mut self, listener: SocketId, socket: SocketId) {
        if self.lingering.contains(&listener.0) {
            self.lingering.insert(socket.0);
        }
    }

    pub(crate) fn set_option(&mut self, socket: SocketId, opt: SockOpt) -> io::Result<()> {
        set_option(socket, opt)?;
        if let SockOpt::Linger(l) = opt {
            // SO_LINGER counts whole seconds: less than one is a reset.
            if l.is_some_and(|d| d.as_secs() > 0) {
                self.lingering.insert(socket.0);
            } else {
                self.lingering.remove(&socket.0);
            }
        }
        Ok(())
    }

    /// Whether a close(2) of `socket` could block (`SO_LINGER` above zero).
    pub(crate) fn lingers(&self, socket: SocketId) -> bool {
        self.lingering.contains(&socket.0)
    }

    /// Closes `socket` at once. One with a linger above zero has it cleared
    /// first, so close(2) cannot block: on Linux the wait for the peer's
    /// acknowledgement is all that `SO_LINGER` > 0 adds to a close (the
    /// unsent data and the FIN go out the same way without it, and nobody
    /// sees close's result). A Unix listener's path is unlinked.
    pub(crate) fn close(&mut self, socket: SocketId) {
        if self.lingering.contains(&socket.0) {
            if let Err(e) = set_option(socket, SockOpt::Linger(None)) {
                tracing::warn!("could not clear SO_LINGER before close: {e}");
            }
        }
        self.forget(socket);
        close(socket);
    }

    /// Forgets `socket`, which the caller closes some other way (`uring`:
    /// `IORING_OP_CLOSE`); a Unix listener's path is unlinked.
    pub(crate) fn forget(&mut self, socket: SocketId) {
        self.lingering.remove(&socket.0);
        if let Some(path) = self.unix_paths.remove(&socket.0) {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::debug!("could not unlink {}: {e}", path.display());
            }
        }
    }
}

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

/// Borrows a driver-owned descriptor as a socket2 socket that never closes it.
pub(crate) fn borrow(socket: SocketId) -> ManuallyDrop<Socket> {
    // SAFETY: the driver owns the descriptor from its creation until `close`,
    // and ops and calls only name sockets that are not closed (the callers'
    // contract). ManuallyDrop guarantees this temporary never closes it.
    ManuallyDrop::new(unsafe { Socket::from_raw_fd(socket.0) })
}

/// Closes the descriptor (no bookkeeping: see [`Sockets::close`]).
pub(crate) fn close(socket: SocketId) {
    // SAFETY: the driver owned this descriptor and its caller guarantees no
    // op on it is in flight; dropping the Socket closes it exactly once.
    drop(unsafe { Socket::from_raw_fd(socket.0) });
}

pub(crate) fn local_addr(socket: SocketId) -> io::Result<Address> {
    Ok(Address::from_sockaddr(&borrow(socket).local_addr()?))
}

pub(crate) fn peer_addr(socket: SocketId) -> io::Result<Address> {
    Ok(Address::from_sockaddr(&borrow(socket).peer_addr()?))
}

/// `SO_PEERNAME` (asm-generic/socket.h; the same on x86-64 and arm64).
const SO_PEERNAME: libc::c_int = 28;

/// The peer of a socket just accepted, for an accept that could not write
/// it (io_uring's multishot accept). `getpeername` refuses (`ENOTCONN`) once
/// the peer has reset, which accept(2) would still have reported with its
/// address (L3); `SO_PEERNAME` asks the kernel the way accept(2) does and
/// answers for such a socket too.
pub(crate) fn accepted_peer(socket: SocketId) -> io::Result<Address> {
    match peer_addr(socket) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => peer_name_option(socket),
        other => other,
    }
}

/// `getsockopt(SO_PEERNAME)`. The kernel refuses (`EINVAL`) a buffer longer
/// than the address, so each Internet address size is tried, longest first.
fn peer_name_option(socket: SocketId) -> io::Result<Address> {
    let sizes = [
        std::mem::size_of::<libc::sockaddr_in6>(),
        std::mem::size_of::<libc::sockaddr_in>(),
    ];
    let mut last = io::Error::from_raw_os_error(libc::ENOTCONN);
    for size in sizes {
        let mut storage = socket2::SockAddrStorage::zeroed();
        let mut len = size as libc::socklen_t;
        // SAFETY: `storage` is a writable sockaddr_storage, larger than
        // `len` bytes; the kernel writes at most `len` bytes there and the
        // address's true length into `len`.
        let r = unsafe {
            libc::getsockopt(
                socket.0,
                libc::SOL_SOCKET,
                SO_PEERNAME,
                std::ptr::addr_of_mut!(storage).cast::<libc::c_void>(),
                &mut len,
            )
        };
        if r == 0 {
            // SAFETY: the kernel filled the first `len` bytes (at most
            // `size`) with the peer's address; the rest is zeroed.
            let sa = unsafe { socket2::SockAddr::new(storage, len.min(size as libc::socklen_t)) };
            return Ok(Address::from_sockaddr(&sa));
        }
        last = io::Error::last_os_error();
        if last.raw_os_error() != Some(libc::EINVAL) {
            break;
        }
    }
    Err(last)
}

fn set_option(socket: SocketId, opt: SockOpt) -> io::Result<()> {
    let s = borrow(socket);
    match opt {
        SockOpt::NoDelay(on) => match s.domain()? {
            Domain::UNIX => Ok(()),
            _ => s.set_tcp_nodelay(on),
        },
        SockOpt::SendBuffer(n) => s.set_send_buffer_size(n),
        SockOpt::RecvBuffer(n) => s.set_recv_buffer_size(n),
        SockOpt::Linger(l) => s.set_linger(l),
    }
}

/// The slices a send of `bufs` hands to the kernel: `offset` bytes of the
/// first buffer skipped, empty ones left out, at most [`MAX_IOVECS`].
pub(crate) fn send_slices(bufs: &[Bytes], offset: usize) -> impl Iterator<Item = &[u8]> {
    bufs.iter()
        .enumerate()
        .map(move |(i, b)| {
            if i == 0 {
                &b[offset.min(b.len())..]
            } else {
                &b[..]
            }
        })
        .filter(|b| !b.is_empty())
        .take(MAX_IOVECS)
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
