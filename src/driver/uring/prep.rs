//! Preparing ops: the SQE of each op, and the kernel-visible side data it
//! points to (kept at a stable heap address in the op's slot until its CQE).

use std::fmt;
use std::io;
use std::net::Shutdown as How;

use io_uring::{opcode, types};

use super::bufring;
use super::ring::errno;
use super::{Slot, UringDriver};
use crate::address::Address;
use crate::driver::socket;
use crate::driver::{Op, OpKey, Slots};

/// Kernel-visible side data of an op, kept at a stable heap address until its CQE.
pub(super) enum Side {
    None,
    /// The peer address an accept writes.
    Accept(Box<AcceptAddr>),
    /// The address a connect reads.
    Connect(Box<socket2::SockAddr>),
    /// The iovec array and message header a `sendmsg` reads. `msg` points into
    /// `iov`, and `iov` points into the op's `Bytes`.
    Send {
        iov: Box<[libc::iovec]>,
        _msg: Box<libc::msghdr>,
    },
}

impl fmt::Debug for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Side::None => f.write_str("None"),
            Side::Accept(_) => f.write_str("Accept"),
            Side::Connect(a) => f.debug_tuple("Connect").field(a).finish(),
            Side::Send { iov, .. } => write!(f, "Send({} iovecs)", iov.len()),
        }
    }
}

/// Where an accept writes the peer's address: taken from the completion
/// itself, so a peer that reset right after the accept still has one
/// (`getpeername` would fail with `ENOTCONN`).
pub(super) struct AcceptAddr {
    storage: socket2::SockAddrStorage,
    len: libc::socklen_t,
}

impl AcceptAddr {
    fn new() -> Box<AcceptAddr> {
        let storage = socket2::SockAddrStorage::zeroed();
        let len = storage.size_of();
        Box::new(AcceptAddr { storage, len })
    }

    /// The address the kernel wrote.
    pub(super) fn take(self) -> Address {
        let len = self.len.min(self.storage.size_of());
        // SAFETY: the kernel filled `storage` with an address of the accepted
        // socket's family and set `len` to its length (clamped to the
        // storage); the rest of the storage is zeroed.
        let sa = unsafe { socket2::SockAddr::new(self.storage, len) };
        Address::from_sockaddr(&sa)
    }
}

impl UringDriver {
    /// Builds the SQE for the op in `key`'s slot, or completes it at once.
    pub(super) fn start(&mut self, key: OpKey) {
        let ud = Slots::<Slot>::encode(key);
        let slot = self.slots.get_mut(key).expect("slot just inserted");
        if let Some(result) = slot.op.immediate_result() {
            let res = match result {
                Ok(n) => i32::try_from(n).unwrap_or(i32::MAX),
                Err(e) => -errno(&e),
            };
            return self.complete_later(key, res);
        }
        let entry = match &mut slot.op {
            Op::Accept { listener, .. } => {
                let mut addr = AcceptAddr::new();
                // The accepted socket is blocking (no SOCK_NONBLOCK), as the
                // uring driver wants its sockets.
                let e = opcode::Accept::new(
                    types::Fd(listener.0),
                    std::ptr::addr_of_mut!(addr.storage).cast::<libc::sockaddr>(),
                    std::ptr::addr_of_mut!(addr.len),
                )
                .flags(libc::SOCK_CLOEXEC)
                .build();
                slot.side = Side::Accept(addr);
                e
            }
            Op::AcceptMulti { listener, .. } => {
                if !self.multishot_accept {
                    return self.complete_later(key, -libc::EOPNOTSUPP);
                }
                // No address: the kernel would write every connection's
                // into the same place; `complete` asks the socket instead.
                opcode::AcceptMulti::new(types::Fd(listener.0))
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
            }
            Op::Connect { socket, addr } => match addr.to_sockaddr() {
                Ok(sa) => {
                    let sa = Box::new(sa);
                    let e = opcode::Connect::new(
                        types::Fd(socket.0),
                        sa.as_ptr().cast::<libc::sockaddr>(),
                        sa.len(),
                    )
                    .build();
                    slot.side = Side::Connect(sa);
                    e
                }
                Err(e) => return self.complete_later(key, -errno(&e)),
            },
            Op::Recv { socket, buf } => {
                let spare = (buf.capacity() - buf.len()).min(u32::MAX as usize);
                slot.offered = spare;
                let ptr = buf.spare_capacity_mut().as_mut_ptr().cast::<u8>();
                opcode::Recv::new(types::Fd(socket.0), ptr, spare as u32).build()
            }
            Op::RecvMulti { socket, .. } => {
                if self.buf_ring.is_none() {
                    return self.complete_later(key, -libc::EOPNOTSUPP);
                }
                // Buffers come from the ring: the SQE points to no memory.
                opcode::RecvMulti::new(types::Fd(socket.0), bufring::GROUP).build()
            }
            Op::Send {
                socket,
                bufs,
                offset,
            } => {
                let mut segments = socket::send_slices(bufs, *offset);
                if let (Some(only), None, true) =
                    (segments.next(), segments.next(), self.send_supported)
                {
                    // One segment (the common case): a plain `send` needs no
                    // iovec array or msghdr, so nothing to allocate. It points
                    // into the op's `Bytes`, like the iovecs would.
                    let len = only.len().min(u32::MAX as usize) as u32;
                    opcode::Send::new(types::Fd(socket.0), only.as_ptr(), len)
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                } else {
                    let iov: Box<[libc::iovec]> = socket::send_slices(bufs, *offset)
                        .map(|b| libc::iovec {
                            iov_base: b.as_ptr() as *mut libc::c_void,
                            iov_len: b.len(),
                        })
                        .collect();
                    // SAFETY: msghdr is a plain C struct; all-zero is a valid
                    // value (null pointers, zero lengths).
                    let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
                    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
                    msg.msg_iovlen = iov.len() as _;
                    let e = opcode::SendMsg::new(types::Fd(socket.0), &*msg)
                        .flags(libc::MSG_NOSIGNAL as u32)
                        .build();
                    slot.side = Side::Send { iov, _msg: msg };
                    e
                }
            }
            Op::Shutdown { socket, how } => {
                let how = match how {
                    How::Read => libc::SHUT_RD,
                    How::Write => libc::SHUT_WR,
                    How::Both => libc::SHUT_RDWR,
                };
                if !self.shutdown_supported {
                    let fd = socket.0;
                    // SAFETY: plain syscall on an fd the caller owns.
                    let r = unsafe { libc::shutdown(fd, how) };
                    let res = if r == 0 {
                        0
                    } else {
                        -errno(&io::Error::last_os_error())
                    };
                    return self.complete_later(key, res);
                }
                opcode::Shutdown::new(types::Fd(socket.0), how).build()
            }
        };
        let entry = entry.user_data(ud);
        // SAFETY: every pointer in `entry` refers to heap memory owned by the
        // slot (the Vec's buffer, the Bytes, the boxed side data, including
        // the accept's address storage the kernel writes), which stays
        // put until the slot is removed when the op's CQE arrives, or is leaked
        // by `drop`.
        unsafe { self.push(entry) };
    }
}
