//! TLS over any transport, with rustls as a memory-BIO engine, and
//! `start_tls` to upgrade a live connection (STARTTLS).
//!
//! # Shape
//!
//! A raw protocol is installed on the *raw* transport; it forwards every
//! event to the TLS transport, which owns the rustls connection (the
//! sans-IO `engine`): every byte the raw transport delivers is fed to it,
//! in every state (T1);
//! the plaintext that comes out is pushed into the TLS transport's
//! `Delivery` — the same machinery plain transports use,
//! so the application sees the same contract (R1–R4, L4); encrypted output is
//! written to the raw transport after every engine step.
//!
//! The application gets a [`Transport`] backed by the TLS transport:
//! - its writes go to a backlog (water marks 512 KiB / 128 KiB, pause when the
//!   backlog rises *strictly above* high, like plain transports), fed to the
//!   engine only after the handshake (T2) and only while the raw transport is
//!   not full (T5);
//! - `pause_reading` only holds plaintext; once 256 KiB are held the raw
//!   transport is paused too, and resumed at 64 KiB (T5);
//! - `close` flushes the backlog even if the raw transport is paused for
//!   writing (gh-115514), sends `close_notify`, waits for the peer's for at
//!   most the shutdown timeout, then closes the raw transport; `abort` aborts
//!   the raw transport at once; `write_eof` is not supported; `close` after
//!   the connection already ended drops held plaintext and delivers
//!   `connection_lost` at once;
//! - an EOF without `close_notify` ends the connection with
//!   [`TlsError::Truncated`] (after the plaintext received before it), never
//!   as a silent EOF (T4);
//! - the peer's `close_notify` followed by its FIN is a half-close: our write
//!   side stays open, so the backlog and our `close_notify` still go out
//!   when the application closes; application data that could not be sent
//!   when the connection ended is [`TlsError::Unsent`], never a clean close;
//! - after an engine error the raw transport is closed so the alert goes
//!   out, and aborted if that close has not finished within the shutdown
//!   timeout;
//! - `is_closing` is also true once the raw transport is closing (gh-118950).
//!
//! The handshake starts synchronously, in `connection_made` of the raw
//! protocol ([`Handle::create_tls_connection`], [`Handle::create_tls_server`])
//! or inside [`Handle::start_tls`] itself. The application protocol hears
//! nothing until the handshake completes; if it fails, it hears nothing at
//! all and the caller's future gets the error (a server logs it). The first
//! event after the handshake is delivered only once the caller of
//! `start_tls`/`create_tls_connection` holds the new transport (uvloop's
//! order), so a protocol may swap transports before its first
//! `data_received`.
#![forbid(unsafe_code)]

mod config;
pub mod dangerous;
mod ending;
mod engine;
mod error;
mod options;
mod raw_protocol;
mod state;
mod transport;
mod waiter;

use std::future::Future;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use crate::address::Address;
use crate::driver::SocketId;
use crate::event_loop::Handle;
use crate::net::{Server, ServerOptions, SocketOptions};
use crate::protocol::AnyProtocol;
use crate::transport::{StreamTransport, Transport};

pub use config::{
    certs_from_pem, client_config_webpki, client_config_with_ca_file, client_config_with_ca_pem,
    key_from_pem, provider, server_config_from_pem, server_config_from_pem_files,
};
pub use error::TlsError;
pub(crate) use options::Role;
pub use options::TlsOptions;
use transport::TlsTransport;
use waiter::Waiter;

/// Default handshake timeout (asyncio's).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default shutdown timeout (asyncio's).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default high-water mark of the TLS application write buffer.
pub const TLS_WRITE_HIGH_WATER: usize = 512 * 1024;
/// Default low-water mark of the TLS application write buffer.
pub const TLS_WRITE_LOW_WATER: usize = 128 * 1024;
/// Held plaintext above which the raw transport is paused.
pub const TLS_READ_HIGH_WATER: usize = 256 * 1024;
/// Held plaintext at or below which the raw transport is resumed.
pub const TLS_READ_LOW_WATER: usize = 64 * 1024;

impl Handle {
    /// Upgrades `transport` to TLS and returns the TLS transport once the
    /// handshake completed.
    ///
    /// Synchronously, before this returns: reading on `transport` is paused,
    /// its protocol is replaced by the TLS engine (data it received and did
    /// not deliver yet, and its paused-for-writing state, carry over), the
    /// handshake starts (the client's first flight is queued behind whatever
    /// plaintext was written before), [`TlsOptions::unconsumed`] is fed to the
    /// engine, and reading resumes. `protocol` is the application protocol
    /// for the TLS transport; it is not told `connection_made` again unless
    /// [`TlsOptions::call_connection_made`] is set, and it hears nothing
    /// before the returned future resolves. The TLS transport starts with
    /// reading enabled.
    ///
    /// On failure the raw connection is closed and `protocol` hears nothing.
    /// Dropping the future before it resolves aborts the connection.
    ///
    /// # Errors
    /// Bad options (a zero timeout: `InvalidInput`) or a closing `transport`
    /// (`NotConnected`), at once; then a failed handshake or its timeout (a
    /// [`TlsError`] inside the `io::Error`, see [`TlsError::of`];
    /// [`TlsError::HandshakeTimeout`] after
    /// [`TlsOptions::handshake_timeout`]), or the connection lost during it.
    ///
    /// # Examples
    ///
    /// The server side of a STARTTLS line protocol: plaintext lines until
    /// `STARTTLS`, then TLS on the same connection. Bytes after the command
    /// in the same read belong to the TLS stream (the client's ClientHello
    /// may already be there), so they go to the engine as
    /// [`TlsOptions::unconsumed`], never to the application (T3).
    /// `examples/smtp_starttls.rs` is a complete server.
    ///
    /// ```no_run
    /// use proactor::tls::server_config_from_pem_files;
    /// use proactor::{Address, BaseProtocol, EventLoop, Protocol, TlsOptions, Transport};
    ///
    /// /// The application protocol, once the connection is secure.
    /// struct App;
    ///
    /// impl BaseProtocol for App {}
    ///
    /// impl Protocol for App {
    ///     fn data_received(&mut self, _data: &[u8]) { /* over TLS */ }
    /// }
    ///
    /// struct Plaintext {
    ///     transport: Option<Transport>,
    ///     tls: Option<TlsOptions>,
    ///     buf: Vec<u8>,
    /// }
    ///
    /// impl BaseProtocol for Plaintext {
    ///     fn connection_made(&mut self, transport: Transport) {
    ///         self.transport = Some(transport);
    ///     }
    /// }
    ///
    /// impl Protocol for Plaintext {
    ///     fn data_received(&mut self, data: &[u8]) {
    ///         let Some(t) = self.transport.clone() else { return };
    ///         self.buf.extend_from_slice(data);
    ///         let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
    ///             return; // no complete line yet
    ///         };
    ///         if self.buf[..end].trim_ascii() != b"STARTTLS" {
    ///             t.abort(); // this sketch knows one command
    ///             return;
    ///         }
    ///         let (Some(h), Some(tls)) = (t.loop_handle(), self.tls.take()) else {
    ///             return;
    ///         };
    ///         t.write(b"READY\r\n"); // goes out in plaintext, before the handshake
    ///         let rest = self.buf.split_off(end + 1);
    ///         let upgrade = h.start_tls(&t, App, tls.unconsumed(rest).call_connection_made(true));
    ///         h.spawn(async move {
    ///             if let Err(e) = upgrade.await {
    ///                 eprintln!("STARTTLS failed: {e}");
    ///             }
    ///         });
    ///     }
    /// }
    ///
    /// let tls = TlsOptions::server(server_config_from_pem_files("cert.pem", "key.pem")?);
    /// let event_loop = EventLoop::new()?;
    /// let addr: Address = "127.0.0.1:2525".parse()?;
    /// let server = event_loop.handle().create_server(addr, move || Plaintext {
    ///     transport: None,
    ///     tls: Some(tls.clone()),
    ///     buf: Vec::new(),
    /// })?;
    /// event_loop.run_forever()?;
    /// # drop(server);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn start_tls(
        &self,
        transport: &Transport,
        protocol: impl Into<AnyProtocol>,
        options: TlsOptions,
    ) -> impl Future<Output = io::Result<Transport>> {
        let prepared = self.start_tls_now(transport, protocol.into(), options);
        // The Waiter exists before the first poll: dropping the future at
        // any point aborts the connection.
        async move { prepared?.await }
    }

    fn start_tls_now(
        &self,
        transport: &Transport,
        protocol: AnyProtocol,
        options: TlsOptions,
    ) -> io::Result<Waiter> {
        options.validate()?;
        if transport.is_closing() {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "start_tls on a closing transport",
            ));
        }
        let unconsumed = options.unconsumed.clone();
        let already_made = !options.call_connection_made;
        let (tls, rx) = TlsTransport::new(self, options, protocol, already_made, true)?;
        tls.set_raw(transport.clone());
        transport.pause_reading();
        transport.set_protocol(tls.raw_protocol());
        tls.start_handshake(unconsumed);
        transport.resume_reading();
        Ok(Waiter::new(tls, rx))
    }

    /// Connects to `addr` and runs `protocol` over TLS. Resolves with the TLS
    /// transport once the handshake completed; `protocol` is then told
    /// `connection_made` (after the caller holds the transport). On failure
    /// `protocol` hears nothing and the socket is closed (after the alert,
    /// if any, went out or the shutdown timeout passed); dropping the future
    /// before it resolves closes it too.
    ///
    /// # Errors
    /// Bad options (server options, a zero timeout: `InvalidInput`), the
    /// errors of [`Handle::create_connection`], then as
    /// [`Handle::start_tls`]: the handshake failed or timed out.
    pub fn create_tls_connection(
        &self,
        addr: impl Into<Address>,
        protocol: impl Into<AnyProtocol>,
        options: TlsOptions,
    ) -> impl Future<Output = io::Result<Transport>> {
        let addr = addr.into();
        let protocol = protocol.into();
        let handle = self.clone();
        // The engine exists before any socket does, so that an error in
        // setting it up cannot leave a connected socket behind.
        let started = options.validate().and_then(|()| {
            if options.is_server() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "create_tls_connection needs client options",
                ));
            }
            let tls = TlsTransport::new(self, options, protocol, false, true)?;
            Ok((tls, self.connect_socket(addr, SocketOptions::default())?))
        });
        async move {
            let ((tls, rx), connecting) = started?;
            // Dropping this future closes the socket: before the connect
            // completes it is cancelled; after, the Waiter's drop aborts.
            let socket = connecting.await?;
            let raw = StreamTransport::start(&handle, socket, tls.raw_protocol());
            tls.set_raw(raw);
            Waiter::new(tls, rx).await
        }
    }

    /// Listens on `addr` and runs a protocol from `factory` over TLS on every
    /// accepted connection. Each protocol is told `connection_made` once its
    /// handshake completed; a failed handshake is logged, that connection is
    /// closed, and its protocol hears nothing (T6).
    ///
    /// # Errors
    /// Bad options (client options, a zero timeout: `InvalidInput`), or as
    /// [`Handle::create_server`].
    pub fn create_tls_server<P, F>(
        &self,
        addr: impl Into<Address>,
        factory: F,
        options: TlsOptions,
    ) -> io::Result<Server>
    where
        P: Into<AnyProtocol>,
        F: Fn() -> P + 'static,
    {
        self.create_tls_server_with(
            addr.into(),
            move || factory().into(),
            options,
            ServerOptions::default(),
        )
    }

    /// [`Handle::create_tls_server`] with server options.
    ///
    /// # Errors
    /// As [`Handle::create_tls_server`].
    pub fn create_tls_server_with(
        &self,
        addr: Address,
        factory: impl Fn() -> AnyProtocol + 'static,
        options: TlsOptions,
        server_options: ServerOptions,
    ) -> io::Result<Server> {
        options.validate()?;
        if !options.is_server() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "create_tls_server needs server options",
            ));
        }
        let starter = Rc::new(
            move |handle: &Handle, socket: SocketId, protocol: AnyProtocol| -> Transport {
                match TlsTransport::new(handle, options.clone(), protocol, false, false) {
                    Ok((tls, _rx)) => {
                        let raw = StreamTransport::start(handle, socket, tls.raw_protocol());
                        tls.set_raw(raw);
                        tls.transport()
                    }
                    Err(e) => {
                        tracing::warn!(%e, "could not start a TLS server connection");
                        let refuse = raw_protocol::Refuse.into();
                        let raw = StreamTransport::start(handle, socket, refuse);
                        raw.abort();
                        raw
                    }
                }
            },
        );
        self.create_server_inner(addr, Box::new(factory), server_options, starter)
    }
}
