//! Options of connections and servers.

use std::io;
use std::time::Duration;

use crate::driver::{SockOpt, SocketId};
use crate::event_loop::Handle;

/// Socket settings: of an outgoing connection
/// ([`Handle::create_connection_with`]), or of every connection a server
/// accepts ([`ServerOptions::socket`]).
#[derive(Clone, Debug)]
pub struct SocketOptions {
    /// `TCP_NODELAY` (default on, as asyncio does).
    pub nodelay: bool,
    /// `SO_SNDBUF`, if set.
    pub send_buffer: Option<usize>,
    /// `SO_RCVBUF`, if set.
    pub recv_buffer: Option<usize>,
    /// `SO_LINGER`, if set; `Some(ZERO)` makes `abort()` reset the connection.
    pub linger: Option<Duration>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            nodelay: true,
            send_buffer: None,
            recv_buffer: None,
            linger: None,
        }
    }
}

impl SocketOptions {
    pub(crate) fn apply(&self, h: &Handle, socket: SocketId) -> io::Result<()> {
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

/// Settings for [`Handle::create_server_with`].
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// `listen(2)` backlog.
    pub backlog: u32,
    /// Options applied to each accepted socket.
    pub socket: SocketOptions,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            backlog: 1024,
            socket: SocketOptions::default(),
        }
    }
}
