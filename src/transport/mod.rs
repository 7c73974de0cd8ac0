//! Stream transports: the read state machine, the write queue, water marks,
//! `close`/`abort`/`write_eof`, and protocol dispatch that is safe to re-enter.
//!
//! The public face is [`Transport`], whose docs hold the write flow control
//! rules (W2).

mod delivery;
mod flow;
mod send_queue;
mod shared;
mod stream;

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;

use bytes::Bytes;

use crate::address::Address;
use crate::event_loop::Handle;
use crate::protocol::AnyProtocol;

pub use delivery::Ledger;
pub(crate) use delivery::{dispatch, Delivery};
pub use flow::{DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER};
pub(crate) use send_queue::SendQueue;
pub(crate) use shared::{TransportCore, TransportImpl};
pub(crate) use stream::StreamTransport;

/// What the TLS layer reports about a secured connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// Negotiated protocol version, e.g. `TLSv1_3`.
    pub version: String,
    /// Negotiated cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher_suite: String,
    /// Negotiated ALPN protocol.
    pub alpn_protocol: Option<Vec<u8>>,
    /// The peer's certificate chain (DER), leaf first.
    pub peer_certificates: Vec<Vec<u8>>,
    /// The server name the client asked for (SNI).
    pub server_name: Option<String>,
}

/// A handle to a stream transport (TCP, Unix, or TLS over either).
///
/// A `Transport` is a cheap clonable handle. Its methods only change state
/// and queue work (an op to submit, an event to deliver); they never call the
/// protocol themselves, so any of them may be called from any callback (L4).
///
/// # Write flow control (W2)
/// `pause_writing()` is due when the buffered size rises strictly above the
/// high mark, `resume_writing()` when it falls to the low mark or below. Like
/// every event they are delivered after the running callback returns, not
/// inside `write()` as in asyncio, and every crossing is delivered: when the
/// size goes above the high mark and back to the low one before the
/// transport dispatches (a write, then the completion of an earlier send, in
/// one loop turn), the protocol is told `pause_writing()` and then
/// `resume_writing()`, back to back, in that order. Calls alternate, start
/// with a pause, and stop once `connection_lost` is due; a protocol installed
/// with `set_protocol` starts from the current state (told `pause_writing`
/// first if writing is paused). So a producer may stop at the mark and rely
/// on the matching `resume_writing`.
///
/// asyncio's `while not self.paused: transport.write(chunk)` relies on
/// `pause_writing()` running inside `write()`; port it with the exact size:
/// `while t.get_write_buffer_size() <= high { t.write(chunk) }`, continued
/// from `resume_writing()`.
///
/// # Examples
///
/// A producer that sends a large payload without buffering it all, then
/// half-closes:
///
/// ```
/// use proactor::{BaseProtocol, Protocol, Transport};
///
/// struct Producer {
///     transport: Option<Transport>,
///     chunks_left: usize,
/// }
///
/// impl Producer {
///     /// Writes until the buffer is above the high-water mark; the matching
///     /// `resume_writing` calls this again.
///     fn pump(&mut self) {
///         let Some(t) = &self.transport else { return };
///         let (_low, high) = t.get_write_buffer_limits();
///         while self.chunks_left > 0 && t.get_write_buffer_size() <= high {
///             t.write(&[0u8; 16 * 1024]);
///             self.chunks_left -= 1;
///         }
///         if self.chunks_left == 0 {
///             let _ = t.write_eof(); // after the flush: the peer sees EOF
///         }
///     }
/// }
///
/// impl BaseProtocol for Producer {
///     fn connection_made(&mut self, transport: Transport) {
///         self.transport = Some(transport);
///         self.pump();
///     }
///
///     fn resume_writing(&mut self) {
///         self.pump();
///     }
/// }
///
/// impl Protocol for Producer {
///     fn data_received(&mut self, _data: &[u8]) {}
/// }
/// ```
#[derive(Clone)]
pub struct Transport(pub(crate) Rc<dyn TransportImpl>);

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("peer", &self.peer_addr())
            .field("closing", &self.is_closing())
            .field("tls", &self.tls_info().is_some())
            .finish()
    }
}

impl Transport {
    /// Queues `data` for sending (copying it). Never blocks, never reorders (W1).
    /// Writes after `close()`/`abort()`/`write_eof()` are dropped with a warning.
    pub fn write(&self, data: &[u8]) {
        self.0.write(data)
    }

    /// Like [`Transport::write`], without copying.
    pub fn write_bytes(&self, data: Bytes) {
        self.0.write_bytes(data)
    }

    /// Queues several buffers, in order, sent with vectored writes.
    pub fn writelines<B: AsRef<[u8]>>(&self, bufs: impl IntoIterator<Item = B>) {
        for b in bufs {
            self.0.write(b.as_ref());
        }
    }

    /// Half-closes after the queued data is sent; the peer sees EOF and may
    /// still send (W3). A no-op once the transport is closing or already
    /// half-closed.
    ///
    /// # Errors
    /// `Unsupported` on a TLS transport, which cannot half-close (see
    /// [`Transport::can_write_eof`]).
    pub fn write_eof(&self) -> io::Result<()> {
        self.0.write_eof()
    }

    /// Whether [`Transport::write_eof`] is supported.
    pub fn can_write_eof(&self) -> bool {
        self.0.can_write_eof()
    }

    /// Stops `data_received` calls. Never cancels a receive in flight: what it
    /// returns is held and delivered first on resume (R2).
    pub fn pause_reading(&self) {
        self.0.pause_reading()
    }

    /// Delivers held data, then receives again (R3).
    pub fn resume_reading(&self) {
        self.0.resume_reading()
    }

    /// Whether reading is not paused (and the transport is not closing).
    pub fn is_reading(&self) -> bool {
        self.0.is_reading()
    }

    /// Sets the water marks (W2). `None` for both gives the defaults (64 KiB,
    /// 16 KiB); only `low` gives high = 4 × low; only `high` gives low = high / 4.
    ///
    /// # Errors
    /// `InvalidInput` unless high ≥ low.
    pub fn set_write_buffer_limits(
        &self,
        high: Option<usize>,
        low: Option<usize>,
    ) -> io::Result<()> {
        self.0.set_write_water_marks(high, low)
    }

    /// The water marks as `(low, high)`, asyncio's order.
    pub fn get_write_buffer_limits(&self) -> (usize, usize) {
        self.0.write_water_marks()
    }

    /// Bytes written but not yet sent on. Exact at every moment: `write()`
    /// adds its length before it returns, each completed send (for TLS: each
    /// step that hands plaintext to the engine) takes off what it moved,
    /// `abort()` and loss make it 0. The water marks compare this very number.
    /// For a plain transport it counts bytes not yet accepted by the kernel;
    /// for TLS, plaintext not yet given to the engine (the ciphertext then
    /// counts on the raw transport).
    pub fn get_write_buffer_size(&self) -> usize {
        self.0.write_buffer_size()
    }

    /// Flushes what was written, then closes; `connection_lost(None)` follows (W3).
    pub fn close(&self) {
        self.0.close()
    }

    /// Closes at once, dropping unsent data; `connection_lost(None)` follows.
    pub fn abort(&self) {
        self.0.abort()
    }

    /// Whether `close`/`abort` was called or the connection is lost.
    pub fn is_closing(&self) -> bool {
        self.0.is_closing()
    }

    /// Replaces the protocol. Events not yet delivered, held data and the
    /// paused-for-writing state carry over to the new protocol (which is told
    /// `pause_writing` first if writing is paused).
    pub fn set_protocol(&self, protocol: impl Into<AnyProtocol>) {
        self.0.set_protocol(protocol.into())
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Option<Address> {
        self.0.peer_addr()
    }

    /// Our address.
    pub fn local_addr(&self) -> Option<Address> {
        self.0.local_addr()
    }

    /// TLS details, once the handshake completed (None for plain transports).
    pub fn tls_info(&self) -> Option<TlsInfo> {
        self.0.tls_info()
    }

    /// The loop this transport runs on (None once the loop is gone).
    pub fn loop_handle(&self) -> Option<Handle> {
        self.0.loop_handle()
    }

    /// The byte ledger (R1 accounting): received, delivered, discarded.
    pub fn ledger(&self) -> Ledger {
        self.0.ledger()
    }

    /// Whether the socket underneath is closed and nothing is in flight on it.
    pub fn is_released(&self) -> bool {
        self.0.is_released()
    }

    pub(crate) fn on_release(&self, f: Box<dyn FnOnce()>) {
        self.0.on_release(f)
    }

    /// The file descriptor of the socket underneath (for a TLS transport,
    /// of its plain stream), for `getsockopt`-style calls; `None` once the
    /// socket is closed, and on the `sim` driver. The loop owns it: never
    /// close it, nor read or write it behind the transport's back.
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.0.raw_fd()
    }

    /// The plain stream under a TLS transport; itself for a plain transport.
    pub fn raw_transport(&self) -> Transport {
        self.0.raw().unwrap_or_else(|| self.clone())
    }
}
