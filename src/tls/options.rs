//! Settings of one TLS connection: its role and rustls config, timeouts,
//! and the plaintext bytes that belong to the TLS stream.
#![forbid(unsafe_code)]

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};

use super::{DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_SHUTDOWN_TIMEOUT};

/// Which side of the handshake we play, with its configuration.
#[derive(Clone, Debug)]
pub(crate) enum Role {
    Client {
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
    },
    Server {
        config: Arc<ServerConfig>,
    },
}

/// Settings of one TLS connection: the role and rustls config, timeouts, and
/// for [`Handle::start_tls`](crate::Handle::start_tls) the bytes already received in plaintext that
/// belong to the TLS stream.
#[derive(Clone, Debug)]
pub struct TlsOptions {
    pub(crate) role: Role,
    /// How long the handshake may take (default 60 s; must be > 0).
    pub handshake_timeout: Duration,
    /// How long `close()` waits for the peer's `close_notify` (default 30 s;
    /// must be > 0).
    pub shutdown_timeout: Duration,
    /// Bytes the old protocol received but did not consume, for example a
    /// ClientHello that came in the same read as the `STARTTLS` command. They
    /// are fed to the TLS engine first (T3), never to the application.
    pub unconsumed: Bytes,
    /// `start_tls` only: tell the new protocol `connection_made` with the TLS
    /// transport (default `false`, like asyncio: the protocol already saw the
    /// raw transport and gets the TLS one from the future).
    pub call_connection_made: bool,
}

impl TlsOptions {
    /// Client side, verifying the server as `server_name` (a DNS name or an
    /// IP address, also sent as SNI for DNS names).
    ///
    /// # Errors
    /// `server_name` is neither a valid DNS name nor an IP address
    /// (`InvalidInput`).
    pub fn client(config: Arc<ClientConfig>, server_name: &str) -> io::Result<TlsOptions> {
        let server_name = ServerName::try_from(server_name.to_string()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid server name {server_name:?}: {e}"),
            )
        })?;
        Ok(TlsOptions::with_role(Role::Client {
            config,
            server_name,
        }))
    }

    /// Server side.
    pub fn server(config: Arc<ServerConfig>) -> TlsOptions {
        TlsOptions::with_role(Role::Server { config })
    }

    fn with_role(role: Role) -> TlsOptions {
        TlsOptions {
            role,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            unconsumed: Bytes::new(),
            call_connection_made: false,
        }
    }

    /// Sets [`TlsOptions::handshake_timeout`].
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets [`TlsOptions::shutdown_timeout`].
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Sets [`TlsOptions::unconsumed`].
    pub fn unconsumed(mut self, bytes: impl Into<Bytes>) -> Self {
        self.unconsumed = bytes.into();
        self
    }

    /// Sets [`TlsOptions::call_connection_made`].
    pub fn call_connection_made(mut self, yes: bool) -> Self {
        self.call_connection_made = yes;
        self
    }

    /// Whether this is the server side.
    pub fn is_server(&self) -> bool {
        matches!(self.role, Role::Server { .. })
    }

    pub(super) fn validate(&self) -> io::Result<()> {
        for (name, d) in [
            ("handshake_timeout", self.handshake_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
        ] {
            if d.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name} should be a positive duration"),
                ));
            }
        }
        Ok(())
    }
}
