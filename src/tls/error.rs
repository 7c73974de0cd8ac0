//! How a TLS connection ends, as errors a caller can match on.
#![forbid(unsafe_code)]

use std::fmt;
use std::io;

/// Why a TLS connection ended. Carried inside an [`io::Error`] of kind
/// [`TlsError::kind`] (always the same kind for the same variant); get it
/// back with [`TlsError::of`].
///
/// Errors of the connection underneath (a reset socket, say) are not
/// wrapped: they reach the caller as the `io::Error` the socket gave.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// The handshake did not complete within the handshake timeout.
    HandshakeTimeout,
    /// The peer did not answer our `close_notify` within the shutdown timeout.
    ShutdownTimeout,
    /// The peer closed the connection (EOF) before the handshake completed.
    ClosedDuringHandshake,
    /// Our side ended the connection before the handshake completed: the
    /// TLS transport was closed or aborted, or the transport under it was.
    Aborted,
    /// The connection ended (EOF) without the peer's `close_notify`: the data
    /// may have been truncated by an attacker or a broken peer.
    Truncated,
    /// The TLS engine failed: bad certificate, alert from the peer, malformed
    /// or unexpected record (including plaintext injected after STARTTLS).
    Engine(rustls::Error),
    /// The connection ended (cleanly as far as TLS goes) while this many
    /// bytes the application wrote were still waiting to be sent: they were
    /// never sent. Never reported as a clean close.
    Unsent {
        /// Application bytes written and never sent.
        bytes: usize,
    },
}

impl TlsError {
    /// The `TlsError` inside `e`, if it is one.
    pub fn of(e: &io::Error) -> Option<&TlsError> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<TlsError>())
    }

    /// The kind of the [`io::Error`] that carries this error.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            TlsError::HandshakeTimeout | TlsError::ShutdownTimeout => io::ErrorKind::TimedOut,
            TlsError::ClosedDuringHandshake => io::ErrorKind::ConnectionReset,
            TlsError::Aborted => io::ErrorKind::ConnectionAborted,
            TlsError::Truncated => io::ErrorKind::UnexpectedEof,
            TlsError::Engine(_) => io::ErrorKind::InvalidData,
            TlsError::Unsent { .. } => io::ErrorKind::BrokenPipe,
        }
    }
}

impl From<TlsError> for io::Error {
    fn from(e: TlsError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> TlsError {
        TlsError::Engine(e)
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::HandshakeTimeout => f.write_str("TLS handshake timed out"),
            TlsError::ShutdownTimeout => f.write_str("TLS shutdown timed out"),
            TlsError::ClosedDuringHandshake => {
                f.write_str("connection closed by the peer during the TLS handshake")
            }
            TlsError::Aborted => f.write_str("TLS connection closed during the handshake"),
            TlsError::Truncated => {
                f.write_str("TLS connection truncated: EOF without close_notify")
            }
            TlsError::Engine(e) => write!(f, "TLS error: {e}"),
            TlsError::Unsent { bytes } => write!(
                f,
                "TLS connection ended with {bytes} bytes of application data not sent"
            ),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Engine(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_converts_to_one_kind_and_back() {
        let all = [
            (TlsError::HandshakeTimeout, io::ErrorKind::TimedOut),
            (TlsError::ShutdownTimeout, io::ErrorKind::TimedOut),
            (
                TlsError::ClosedDuringHandshake,
                io::ErrorKind::ConnectionReset,
            ),
            (TlsError::Aborted, io::ErrorKind::ConnectionAborted),
            (TlsError::Truncated, io::ErrorKind::UnexpectedEof),
            (
                TlsError::Engine(rustls::Error::DecryptError),
                io::ErrorKind::InvalidData,
            ),
            (TlsError::Unsent { bytes: 3 }, io::ErrorKind::BrokenPipe),
        ];
        for (tls, kind) in all {
            let text = tls.to_string();
            let e = io::Error::from(tls);
            assert_eq!(e.kind(), kind, "{text}");
            assert_eq!(e.to_string(), text);
            let back = TlsError::of(&e).expect("a TlsError inside");
            assert_eq!(back.kind(), kind);
        }
        assert!(TlsError::of(&io::Error::other("plain")).is_none());
    }
}
