//! The TLS engine without I/O: ciphertext in, plaintext out into buffers
//! the caller owns, application plaintext from a [`SendQueue`] in,
//! ciphertext out for the caller to send. It knows nothing of transports,
//! loops or timers, so it runs entirely in memory (see the tests), in the
//! manner of rustls's own state machines.
#![forbid(unsafe_code)]

use std::io::{self, BufRead, Write};

use bytes::Bytes;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, Connection, ServerConnection};

use super::{Role, TlsError};
use crate::transport::{SendQueue, TlsInfo};

/// Plaintext given to rustls per [`TlsEngine::encrypt`] step, so that one
/// step never floods the raw transport far past its high-water mark.
const ENCRYPT_STEP_BYTES: usize = 64 * 1024;
/// Most queued writes handed to rustls in one vectored write.
const ENCRYPT_STEP_SLICES: usize = 64;

/// Most plaintext one feed puts in one buffer: what delivery hands a
/// protocol at once.
const PLAINTEXT_BUFFER_MAX: usize = crate::event_loop::RECV_BUF_SIZE;

/// Most plaintext in one TLS record.
const RECORD_MAX: usize = 16 * 1024;

/// Appends the `n` bytes of plaintext rustls holds to `out`, without
/// zeroing a buffer for them first.
fn read_plaintext(conn: &mut Connection, n: usize, out: &mut Vec<u8>) -> io::Result<()> {
    let mut reader = conn.reader();
    let mut left = n;
    while left > 0 {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Err(io::Error::other("rustls held less plaintext than it said"));
        }
        let k = chunk.len().min(left);
        out.extend_from_slice(&chunk[..k]);
        reader.consume(k);
        left -= k;
    }
    Ok(())
}

/// A rustls connection and what it told us.
pub(super) struct TlsEngine {
    conn: Connection,
    /// The name a client asked for (reported as SNI); `None` on a server,
    /// which reports the name the client sent.
    client_name: Option<String>,
    /// The peer's `close_notify` arrived: input after it is ignored.
    peer_closed: bool,
}

/// What one [`TlsEngine::feed`] did.
#[derive(Debug, Default)]
pub(super) struct Fed {
    /// The peer's `close_notify` came in this input.
    pub(super) peer_closed: bool,
    /// The engine failed: the input after the failing record was not read.
    /// Output (an alert, say) may still wait in the engine.
    pub(super) error: Option<io::Error>,
}

impl TlsEngine {
    /// An engine for `role`, before its handshake.
    pub(super) fn new(role: Role) -> Result<TlsEngine, TlsError> {
        let (mut conn, client_name) = match role {
            Role::Client {
                config,
                server_name,
            } => {
                let name = match &server_name {
                    ServerName::DnsName(d) => d.as_ref().to_string(),
                    ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
                    other => format!("{other:?}"),
                };
                let client = ClientConnection::new(config, server_name)?;
                (Connection::Client(client), Some(name))
            }
            Role::Server { config } => (Connection::Server(ServerConnection::new(config)?), None),
        };
        // The transports bound buffering themselves (backlog, water marks).
        conn.set_buffer_limit(None);
        Ok(TlsEngine {
            conn,
            client_name,
            peer_closed: false,
        })
    }

    pub(super) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether the peer's `close_notify` arrived.
    pub(super) fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Decrypts `ciphertext`, in every phase (T1): the plaintext it yields
    /// is appended to `plaintext`, in buffers of up to 64 KiB. Stops at the
    /// first error, and ignores whatever follows the peer's `close_notify`.
    pub(super) fn feed(&mut self, mut ciphertext: &[u8], plaintext: &mut Vec<Vec<u8>>) -> Fed {
        let mut fed = Fed::default();
        let first_new = plaintext.len();
        while !ciphertext.is_empty() {
            if self.peer_closed {
                tracing::debug!(n = ciphertext.len(), "ignoring bytes after close_notify");
                break;
            }
            match self.conn.read_tls(&mut ciphertext) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    fed.error = Some(e);
                    break;
                }
            }
            let state = match self.conn.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    fed.error = Some(TlsError::Engine(e).into());
                    break;
                }
            };
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                // Plaintext is never longer than the ciphertext it came in:
                // room for what is left of the input (and a record rustls
                // may have read ahead) keeps one buffer for the whole feed,
                // so delivery does not copy the pieces together.
                let room = if ciphertext.is_empty() {
                    n
                } else {
                    (n + ciphertext.len() + RECORD_MAX).min(PLAINTEXT_BUFFER_MAX)
                };
                let fits = plaintext.len() > first_new
                    && plaintext
                        .last()
                        .is_some_and(|l| l.len() + n <= l.capacity());
                if !fits {
                    plaintext.push(Vec::with_capacity(room));
                }
                let buf = plaintext
                    .last_mut()
                    .expect("a buffer was just made or found");
                if let Err(e) = read_plaintext(&mut self.conn, n, buf) {
                    fed.error = Some(e);
                    break;
                }
            }
            if state.peer_has_closed() && !self.peer_closed {
                self.peer_closed = true;
                fed.peer_closed = true;
            }
        }
        fed
    }

    /// One step of encryption: gives rustls plaintext from the front of
    /// `queue` (at most [`ENCRYPT_STEP_BYTES`], in at most
    /// [`ENCRYPT_STEP_SLICES`] writes) and takes what it took off the
    /// queue. Returns how many bytes that was.
    pub(super) fn encrypt(&mut self, queue: &mut SendQueue) -> io::Result<usize> {
        queue.seal();
        let slices = queue.front_slices(ENCRYPT_STEP_SLICES, ENCRYPT_STEP_BYTES);
        let written = self.conn.writer().write_vectored(&slices)?;
        drop(slices);
        queue.advance(written);
        Ok(written)
    }

    /// Queues our `close_notify`.
    pub(super) fn send_close_notify(&mut self) {
        self.conn.send_close_notify();
    }

    /// The ciphertext waiting to be sent (handshake flights, records,
    /// alerts), if any.
    pub(super) fn take_output(&mut self) -> io::Result<Option<Bytes>> {
        if !self.conn.wants_write() {
            return Ok(None);
        }
        let mut out = Vec::new();
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut out)? == 0 {
                break;
            }
        }
        Ok((!out.is_empty()).then(|| Bytes::from(out)))
    }

    /// What was negotiated (meaningful once the handshake completed).
    pub(super) fn info(&self) -> TlsInfo {
        let conn = &self.conn;
        let server_name = match conn {
            Connection::Server(s) => s.server_name().map(str::to_string),
            Connection::Client(_) => self.client_name.clone(),
        };
        TlsInfo {
            version: conn
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            cipher_suite: conn
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default(),
            alpn_protocol: conn.alpn_protocol().map(<[u8]>::to_vec),
            peer_certificates: conn
                .peer_certificates()
                .map(|chain| chain.iter().map(|cert| cert.to_vec()).collect())
                .unwrap_or_default(),
            server_name,
        }
    }
}

#[cfg(test)]
mod tests;
