//! Outgoing connections.

use std::future::Future;
use std::io;
use std::time::Duration;

use futures_channel::oneshot;

use crate::address::Address;
use crate::driver::{Op, SockOpt, SocketId};
use crate::event_loop::{Handle, WeakHandle};
use crate::protocol::AnyProtocol;
use crate::transport::{StreamTransport, Transport};

/// Socket settings for [`Handle::create_connection_with`].
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// `TCP_NODELAY` (default on, as asyncio does).
    pub nodelay: bool,
    /// `SO_SNDBUF`, if set.
    pub send_buffer: Option<usize>,
    /// `SO_RCVBUF`, if set.
    pub recv_buffer: Option<usize>,
    /// `SO_LINGER`, if set; `Some(ZERO)` makes `abort()` reset the connection.
    pub linger: Option<Duration>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            nodelay: true,
            send_buffer: None,
            recv_buffer: None,
            linger: None,
        }
    }
}

impl ConnectOptions {
    pub(crate) fn apply(&self, h: &Handle, socket: crate::driver::SocketId) -> io::Result<()> {
        h.with_driver(|d| {
            d.set_option(socket, SockOpt::NoDelay(self.nodelay))?;
            if let Some(n) = self.send_buffer {
                d.set_option(socket, SockOpt::SendBuffer(n))?;
            }
            if let Some(n) = self.recv_buffer {
                d.set_option(socket, SockOpt::RecvBuffer(n))?;
            }
            if let Some(l) = self.linger {
                d.set_option(socket, SockOpt::Linger(Some(l)))?;
            }
            Ok(())
        })
    }
}

impl Handle {
    /// Connects to `addr` and starts `protocol` on the new transport.
    /// Resolves once connected; `connection_made` is delivered on the next step.
    pub fn create_connection(
        &self,
        addr: impl Into<Address>,
        protocol: impl Into<AnyProtocol>,
    ) -> impl Future<Output = io::Result<Transport>> {
        self.create_connection_with(addr.into(), protocol.into(), ConnectOptions::default())
    }

    /// [`Handle::create_connection`] with socket options.
    pub fn create_connection_with(
        &self,
        addr: Address,
        protocol: AnyProtocol,
        options: ConnectOptions,
    ) -> impl Future<Output = io::Result<Transport>> {
        let started = self.connect_socket(addr.clone(), options);
        let h = self.clone();
        async move {
            let socket = started?
                .await
                .map_err(|_| io::Error::other("event loop closed"))??
                .claim();
            let _ = &addr;
            Ok(StreamTransport::start(&h, socket, protocol))
        }
    }

    /// Opens a socket and submits the connect; the receiver yields the
    /// connected socket or the error (the socket is closed on error). The
    /// socket is closed too if nobody claims it: the receiver dropped
    /// before or after the connect completed.
    pub(crate) fn connect_socket(
        &self,
        addr: Address,
        options: ConnectOptions,
    ) -> io::Result<oneshot::Receiver<io::Result<ConnectedSocket>>> {
        let socket = self.with_driver(|d| d.open_stream(&addr))?;
        if let Err(e) = options.apply(self, socket) {
            self.with_driver(|d| d.close(socket));
            return Err(e);
        }
        let (tx, rx) = oneshot::channel();
        let h = self.clone();
        self.submit(
            Op::Connect {
                socket,
                addr: addr.clone(),
            },
            Box::new(move |c| {
                let result = match c.result {
                    Ok(_) => Ok(ConnectedSocket {
                        socket: Some(socket),
                        lp: h.downgrade(),
                    }),
                    Err(e) => {
                        h.with_driver(|d| d.close(socket));
                        Err(io::Error::new(e.kind(), format!("connect to {addr}: {e}")))
                    }
                };
                // If nobody waits any more, the socket comes back and is
                // dropped here, which closes it.
                let _ = tx.send(result);
            }),
        );
        Ok(rx)
    }
}

/// A connected socket on its way to its owner. Dropped unclaimed — the
/// connect future was dropped after the connect completed, before it was
/// polled again — it closes the socket, so no descriptor leaks.
#[derive(Debug)]
pub(crate) struct ConnectedSocket {
    socket: Option<SocketId>,
    lp: WeakHandle,
}

impl ConnectedSocket {
    /// Takes the socket: its owner closes it from now on.
    pub(crate) fn claim(mut self) -> SocketId {
        self.socket
            .take()
            .expect("a ConnectedSocket is claimed once")
    }
}

impl Drop for ConnectedSocket {
    fn drop(&mut self) {
        if let (Some(socket), Some(h)) = (self.socket.take(), self.lp.upgrade()) {
            h.with_driver(|d| d.close(socket));
        }
    }
}
