//! Outgoing connections.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_channel::oneshot;

use crate::address::Address;
use crate::driver::{Op, OpKey, SocketId};
use crate::event_loop::{Handle, WeakHandle};
use crate::net::SocketOptions;
use crate::protocol::AnyProtocol;
use crate::transport::{StreamTransport, Transport};

impl Handle {
    /// Connects to `addr` and starts `protocol` on the new transport.
    /// Resolves once connected; `connection_made` is delivered on the next
    /// step. Dropping the future before it resolves cancels the connect and
    /// closes its socket.
    ///
    /// # Errors
    /// The socket could not be created, or the connect failed (refused,
    /// unreachable, timed out: the error names the address).
    ///
    /// # Examples
    ///
    /// ```
    /// use proactor::{Address, BaseProtocol, EventLoop, Protocol, Transport};
    ///
    /// /// Sends one line, then closes (after the line is sent).
    /// struct Hello;
    ///
    /// impl BaseProtocol for Hello {
    ///     fn connection_made(&mut self, transport: Transport) {
    ///         transport.write(b"hello\r\n");
    ///         transport.close();
    ///     }
    /// }
    ///
    /// impl Protocol for Hello {
    ///     fn data_received(&mut self, _data: &[u8]) {}
    /// }
    ///
    /// let event_loop = EventLoop::new()?;
    /// let handle = event_loop.handle();
    /// # let addr: Address = "127.0.0.1:0".parse()?;
    /// # let server = handle.create_server(addr, || Hello)?;
    /// let addr = server.local_addr(); // or "127.0.0.1:7878".parse()?, "unix:/tmp/s".parse()?
    /// let transport = event_loop.run_until_complete(handle.create_connection(addr, Hello))??;
    /// println!("connected to {:?}", transport.peer_addr());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create_connection(
        &self,
        addr: impl Into<Address>,
        protocol: impl Into<AnyProtocol>,
    ) -> impl Future<Output = io::Result<Transport>> {
        self.create_connection_with(addr.into(), protocol.into(), SocketOptions::default())
    }

    /// [`Handle::create_connection`] with socket options.
    ///
    /// # Errors
    /// As [`Handle::create_connection`], and options the socket refused.
    pub fn create_connection_with(
        &self,
        addr: Address,
        protocol: AnyProtocol,
        options: SocketOptions,
    ) -> impl Future<Output = io::Result<Transport>> {
        let started = self.connect_socket(addr, options);
        let h = self.clone();
        async move {
            let socket = started?.await?;
            Ok(StreamTransport::start(&h, socket, protocol))
        }
    }

    /// Opens a socket and submits the connect at once; the returned future
    /// yields the connected socket. On error, or if the future is dropped
    /// first (the connect is then cancelled), or if nobody claims the
    /// connected socket, the socket is closed.
    pub(crate) fn connect_socket(
        &self,
        addr: Address,
        options: SocketOptions,
    ) -> io::Result<Connecting> {
        let socket = self.with_driver(|d| d.open_stream(&addr))?;
        if let Err(e) = options.apply(self, socket) {
            self.with_driver(|d| d.close(socket));
            return Err(e);
        }
        let (tx, rx) = oneshot::channel();
        let h = self.clone();
        let key = self.submit(
            Op::Connect {
                socket,
                addr: addr.clone(),
            },
            Box::new(move |c| {
                let result = match c.result {
                    Ok(_) => Ok(ConnectedSocket {
                        socket: Some(socket),
                        handle: h.downgrade(),
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
        Ok(Connecting {
            rx,
            key,
            handle: self.downgrade(),
            finished: false,
        })
    }
}

/// A connect in flight. Dropping it before it resolves cancels the connect
/// (the completion handler then closes the socket).
pub(crate) struct Connecting {
    rx: oneshot::Receiver<io::Result<ConnectedSocket>>,
    key: OpKey,
    handle: WeakHandle,
    finished: bool,
}

impl Future for Connecting {
    type Output = io::Result<SocketId>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(Pin::new(&mut self.rx).poll(cx));
        self.finished = true;
        Poll::Ready(match result {
            Ok(connected) => connected.map(ConnectedSocket::claim),
            Err(oneshot::Canceled) => Err(io::Error::other(crate::RunError::Closed)),
        })
    }
}

impl Drop for Connecting {
    fn drop(&mut self) {
        if !self.finished {
            if let Some(h) = self.handle.upgrade() {
                h.cancel(self.key);
            }
        }
    }
}

/// A connected socket on its way to its owner. Dropped unclaimed — the
/// connect future was dropped after the connect completed, before it was
/// polled again — it closes the socket, so no descriptor leaks.
#[derive(Debug)]
pub(crate) struct ConnectedSocket {
    socket: Option<SocketId>,
    handle: WeakHandle,
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
        if let (Some(socket), Some(h)) = (self.socket.take(), self.handle.upgrade()) {
            h.with_driver(|d| d.close(socket));
        }
    }
}
