//! Sockets made elsewhere: a connected stream to run a protocol on, a
//! listening socket to serve, an unconnected (perhaps bound) socket to
//! connect. Embedders that create their sockets themselves (the Python face:
//! `sock=`, `local_addr`, `reuse_port`, `connect_accepted_socket`) hand them
//! to the loop here. Only the kernel drivers (`uring`, `poll`) take them;
//! `sim` answers `Unsupported`.

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_channel::oneshot;

use super::server::Starter;
use crate::address::Address;
use crate::driver::{Op, OpKey};
use crate::event_loop::{Handle, WeakHandle};
use crate::net::{Server, ServerOptions};
use crate::protocol::AnyProtocol;
use crate::transport::{StreamTransport, Transport};

impl Handle {
    /// Runs `protocol` on a connected stream socket (TCP or Unix) made
    /// elsewhere; the loop owns the socket from now on and closes it when the
    /// transport is done. `connection_made` is delivered on the next step,
    /// exactly as for [`Handle::create_connection`].
    ///
    /// # Errors
    /// Not a stream socket (`InvalidInput`), a driver without kernel
    /// sockets (`Unsupported`), or the kernel refused to change its mode.
    /// The socket is closed on error.
    pub fn adopt_stream(
        &self,
        socket: OwnedFd,
        protocol: impl Into<AnyProtocol>,
    ) -> io::Result<Transport> {
        let socket = self.with_driver(|d| d.adopt(socket))?;
        Ok(StreamTransport::start(self, socket, protocol.into()))
    }

    /// Serves a listening stream socket made elsewhere (bound and in
    /// listening mode, with whatever options its maker chose), like
    /// [`Handle::create_server_with`]. [`Server::close`] closes it; a Unix
    /// listener's path is left for its maker to unlink.
    ///
    /// # Errors
    /// As [`Handle::adopt_stream`]. The socket is closed on error.
    pub fn adopt_listener(
        &self,
        listener: OwnedFd,
        factory: impl Fn() -> AnyProtocol + 'static,
        options: ServerOptions,
    ) -> io::Result<Server> {
        let listener = self.with_driver(|d| d.adopt(listener))?;
        let addr = match self.with_driver(|d| d.local_addr(listener)) {
            Ok(addr) => addr,
            Err(e) => {
                self.with_driver(|d| d.close(listener));
                return Err(e);
            }
        };
        let starter: Starter = Rc::new(StreamTransport::start);
        Ok(self.serve(listener, addr, Box::new(factory), options, starter))
    }

    /// Connects a stream socket made elsewhere (unconnected, perhaps bound
    /// to a local address) to `addr` with the driver's connect, and hands it
    /// back connected, for [`Handle::adopt_stream`] or any other use. The
    /// error is the kernel's, errno included. Dropping the future before it
    /// resolves cancels the connect and closes the socket.
    ///
    /// # Errors
    /// As [`Handle::adopt_stream`], and the connect's own error (refused,
    /// unreachable, timed out). The socket is closed on error.
    pub fn connect_fd(&self, socket: OwnedFd, addr: Address) -> ConnectFd {
        let socket = match self.with_driver(|d| d.adopt(socket)) {
            Ok(s) => s,
            Err(e) => return ConnectFd::failed(e),
        };
        let (tx, rx) = oneshot::channel();
        let h = self.downgrade();
        let key = self.submit(
            Op::Connect { socket, addr },
            Box::new(move |c| {
                let Some(h) = h.upgrade() else { return };
                let result = match c.result {
                    Ok(_) => h.with_driver(|d| d.release(socket)),
                    Err(e) => {
                        h.with_driver(|d| d.close(socket));
                        Err(e)
                    }
                };
                // Nobody waiting: the released socket is dropped, so closed.
                let _ = tx.send(result);
            }),
        );
        ConnectFd {
            state: Some((rx, key, self.downgrade())),
            error: None,
        }
    }
}

/// The future of [`Handle::connect_fd`]: the connected socket, or the error.
#[derive(Debug)]
pub struct ConnectFd {
    state: Option<(oneshot::Receiver<io::Result<OwnedFd>>, OpKey, WeakHandle)>,
    error: Option<io::Error>,
}

impl ConnectFd {
    fn failed(e: io::Error) -> ConnectFd {
        ConnectFd {
            state: None,
            error: Some(e),
        }
    }
}

impl Future for ConnectFd {
    type Output = io::Result<OwnedFd>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some((rx, _, _)) = self.state.as_mut() else {
            let e = self.error.take();
            return Poll::Ready(Err(e.unwrap_or_else(|| {
                io::Error::other("connect_fd polled after it finished")
            })));
        };
        let result = std::task::ready!(Pin::new(rx).poll(cx));
        self.state = None;
        Poll::Ready(match result {
            Ok(r) => r,
            Err(oneshot::Canceled) => Err(io::Error::other(crate::RunError::Closed)),
        })
    }
}

impl Drop for ConnectFd {
    fn drop(&mut self) {
        if let Some((_, key, h)) = self.state.take() {
            if let Some(h) = h.upgrade() {
                h.cancel(key);
            }
        }
    }
}
