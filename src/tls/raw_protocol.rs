//! The protocol on the raw transport: forwards every event to the TLS
//! transport that owns the engine.
#![forbid(unsafe_code)]

use std::io;
use std::rc::Rc;

use bytes::Bytes;

use super::transport::TlsTransport;
use crate::protocol::{BaseProtocol, Protocol};
use crate::transport::Transport;

/// The raw transport's protocol under a TLS transport.
pub(super) struct RawProtocol(pub(super) Rc<TlsTransport>);

impl BaseProtocol for RawProtocol {
    fn connection_made(&mut self, transport: Transport) {
        // create_tls_connection / create_tls_server: the handshake starts
        // here, synchronously (T1; bpo-33674).
        self.0.set_raw(transport);
        self.0.start_handshake(Bytes::new());
    }

    fn connection_lost(&mut self, error: Option<io::Error>) {
        self.0.on_raw_lost(error);
    }

    fn eof_received(&mut self) -> bool {
        self.0.on_raw_eof()
    }

    fn pause_writing(&mut self) {
        self.0.on_raw_pause_writing();
    }

    fn resume_writing(&mut self) {
        self.0.on_raw_resume_writing();
    }
}

impl Protocol for RawProtocol {
    fn data_received(&mut self, data: &[u8]) {
        self.0.feed(data);
    }
}

/// A protocol that ignores everything (for a connection refused at start).
pub(super) struct Refuse;

impl BaseProtocol for Refuse {}

impl Protocol for Refuse {
    fn data_received(&mut self, _data: &[u8]) {}
}
