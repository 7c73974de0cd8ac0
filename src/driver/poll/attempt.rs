//! One non-blocking attempt of an op: the syscall io_uring would make,
//! answering either a result or "would block" (the op then parks).

use std::io::{self, IoSlice};
use std::os::fd::RawFd;

use socket2::SockAddr;

use super::{invalid, PollDriver, RECV_SIZE};
use crate::address::Address;
use crate::driver::socket;
use crate::driver::{Op, OpKey, SocketId};

/// Result of one non-blocking attempt.
pub(super) enum Attempt {
    Done(io::Result<usize>),
    /// A receive got fewer bytes than it had room for: the socket's
    /// receive queue was empty when it returned (see
    /// `Queues::read_drained`).
    ShortRead(usize),
    WouldBlock,
}

fn is_would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// The attempt of a receive that got `n` bytes with room for `room`.
fn received(n: usize, room: usize) -> Attempt {
    if n > 0 && n < room {
        Attempt::ShortRead(n)
    } else {
        Attempt::Done(Ok(n))
    }
}

/// Runs `f` again while it fails with `EINTR`.
fn retry_eintr<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// `accept4(SOCK_CLOEXEC | SOCK_NONBLOCK)`, returning the new fd and the peer.
fn accept4(listener: RawFd) -> io::Result<(RawFd, SockAddr)> {
    // SAFETY: `try_init` hands us a zeroed sockaddr storage and its length,
    // valid for the duration of the closure; accept4 writes at most `*len`
    // bytes into it and updates `*len`, which is exactly try_init's contract.
    unsafe {
        SockAddr::try_init(|storage, len| {
            let fd = libc::accept4(
                listener,
                storage.cast::<libc::sockaddr>(),
                len,
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            );
            if fd < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(fd)
            }
        })
    }
}

impl PollDriver {
    /// One non-blocking attempt of the op under `key`.
    pub(super) fn attempt(&mut self, key: OpKey) -> Attempt {
        let Some(entry) = self.ops.get_mut(key) else {
            return Attempt::Done(Err(invalid("stale op key")));
        };
        match &mut entry.op {
            Op::Accept { listener, accepted } => match retry_eintr(|| accept4(listener.0)) {
                Ok((fd, peer)) => {
                    self.sockets.accepted(*listener, SocketId(fd));
                    *accepted = Some((SocketId(fd), Address::from_sockaddr(&peer)));
                    Attempt::Done(Ok(0))
                }
                Err(err) if is_would_block(&err) => Attempt::WouldBlock,
                Err(err) => Attempt::Done(Err(err)),
            },
            Op::Connect { socket, addr } => {
                let s = socket::borrow(*socket);
                let sa = match addr.to_sockaddr() {
                    Ok(sa) => sa,
                    Err(err) => return Attempt::Done(Err(err)),
                };
                // A connection in progress is finished as io_uring finishes
                // it: by calling connect(2) again, which says EALREADY while
                // it is still going (a retry may be spurious: a cancel, the
                // other direction's readiness), 0 once it is established
                // (moving the socket to the connected state, so a later
                // connect says EISCONN, as on `uring`), or its error.
                match (s.connect(&sa), entry.connecting) {
                    (Ok(()), _) => Attempt::Done(Ok(0)),
                    (Err(err), true) if err.raw_os_error() == Some(libc::EALREADY) => {
                        Attempt::WouldBlock
                    }
                    (Err(err), true) if err.raw_os_error() == Some(libc::EISCONN) => {
                        Attempt::Done(Ok(0))
                    }
                    // EINTR: the connection goes on asynchronously, like EINPROGRESS.
                    (Err(err), _)
                        if matches!(err.raw_os_error(), Some(libc::EINPROGRESS | libc::EINTR)) =>
                    {
                        entry.connecting = true;
                        Attempt::WouldBlock
                    }
                    // EAGAIN from a Unix connect (listener backlog full) means
                    // no connection was started: reported as the error.
                    (Err(err), _) => Attempt::Done(Err(err)),
                }
            }
            // Readiness has no buffer ring to receive into, and accepts
            // one connection per readiness anyway.
            Op::RecvMulti { .. } | Op::AcceptMulti { .. } => {
                Attempt::Done(Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)))
            }
            Op::Recv { socket, buf } if buf.capacity() == 0 => {
                // A provided buffer: read into the driver-wide one.
                let scratch = &mut self.recv_buf;
                debug_assert!(scratch.is_empty() && scratch.capacity() >= RECV_SIZE);
                let spare = scratch.spare_capacity_mut();
                let room = spare.len();
                let s = socket::borrow(*socket);
                match retry_eintr(|| s.recv(spare)) {
                    Ok(n) => {
                        debug_assert!(n <= room);
                        // SAFETY: recv(2) initialised the first `n` bytes of
                        // the spare capacity of the empty `scratch`, and
                        // n <= room, its capacity.
                        unsafe { scratch.set_len(n) };
                        if n > RECV_SIZE / 2 {
                            // Hand over the buffer itself rather than copy.
                            *buf = std::mem::replace(scratch, Vec::with_capacity(RECV_SIZE));
                        } else {
                            buf.reserve_exact(n);
                            buf.extend_from_slice(scratch);
                            scratch.clear();
                        }
                        received(n, room)
                    }
                    Err(err) if is_would_block(&err) => Attempt::WouldBlock,
                    Err(err) => Attempt::Done(Err(err)),
                }
            }
            Op::Recv { socket, buf } => {
                let len = buf.len();
                let spare = buf.spare_capacity_mut();
                let room = spare.len();
                let s = socket::borrow(*socket);
                match retry_eintr(|| s.recv(spare)) {
                    Ok(n) => {
                        debug_assert!(n <= room);
                        // SAFETY: recv(2) initialised the first `n` bytes of the
                        // spare capacity (n <= room, the capacity left after
                        // `len`), so `len + n` bytes are initialised and within
                        // the capacity.
                        unsafe { buf.set_len(len + n) };
                        received(n, room)
                    }
                    Err(err) if is_would_block(&err) => Attempt::WouldBlock,
                    Err(err) => Attempt::Done(Err(err)),
                }
            }
            Op::Send {
                socket,
                bufs,
                offset,
            } => {
                // On the stack: no allocation per send.
                let mut iov = [IoSlice::new(&[]); socket::MAX_IOVECS];
                let mut count = 0;
                for (slot, slice) in iov.iter_mut().zip(socket::send_slices(bufs, *offset)) {
                    *slot = IoSlice::new(slice);
                    count += 1;
                }
                let iov = &iov[..count];
                let s = socket::borrow(*socket);
                // MSG_NOSIGNAL: a peer that went away gives EPIPE, never SIGPIPE.
                match retry_eintr(|| s.send_vectored_with_flags(iov, libc::MSG_NOSIGNAL)) {
                    Ok(n) => Attempt::Done(Ok(n)),
                    Err(err) if is_would_block(&err) => Attempt::WouldBlock,
                    Err(err) => Attempt::Done(Err(err)),
                }
            }
            Op::Shutdown { socket, how } => {
                Attempt::Done(socket::borrow(*socket).shutdown(*how).map(|()| 0))
            }
        }
    }
}
