//! The callbacks applications implement: [`Protocol`] and [`BufferedProtocol`].
//!
//! Call order (R4): `connection_made` → (`data_received` | `get_buffer` +
//! `buffer_updated`)* → `eof_received`? → `connection_lost`, exactly once.
//! Callbacks never nest (L4): a transport method called from a callback only
//! queues work; the events it causes are delivered after the callback returns.
#![forbid(unsafe_code)]

use std::fmt;
use std::io;

use crate::transport::Transport;

/// Callbacks shared by both protocol flavours.
pub trait BaseProtocol {
    /// The connection is up; keep `transport` to write or control reading.
    fn connection_made(&mut self, transport: Transport) {
        let _ = transport;
    }

    /// The connection is gone: `None` after a regular close/EOF/abort, the
    /// error otherwise. Called exactly once, last.
    fn connection_lost(&mut self, error: Option<io::Error>) {
        let _ = error;
    }

    /// The peer closed its write side. Return `true` to keep our write side
    /// open (half-close), `false` to let the transport close itself.
    fn eof_received(&mut self) -> bool {
        false
    }

    /// The write buffer rose above the high-water mark: stop writing (W2).
    fn pause_writing(&mut self) {}

    /// The write buffer fell to the low-water mark: writing may go on (W2).
    fn resume_writing(&mut self) {}
}

/// A protocol that receives data as byte slices.
pub trait Protocol: BaseProtocol {
    /// Bytes arrived, in order, exactly once (R1).
    fn data_received(&mut self, data: &[u8]);
}

/// A protocol that provides its own receive buffers.
pub trait BufferedProtocol: BaseProtocol {
    /// A buffer to receive into; `size_hint` is how many bytes are waiting.
    /// Returning an empty buffer ends the connection with an error.
    fn get_buffer(&mut self, size_hint: usize) -> &mut [u8];

    /// `nbytes` bytes were written at the start of the last buffer.
    fn buffer_updated(&mut self, nbytes: usize);
}

/// Either protocol flavour, as a transport holds it.
pub enum AnyProtocol {
    /// A [`Protocol`].
    Plain(Box<dyn Protocol>),
    /// A [`BufferedProtocol`].
    Buffered(Box<dyn BufferedProtocol>),
}

impl fmt::Debug for AnyProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AnyProtocol::Plain(_) => "AnyProtocol::Plain",
            AnyProtocol::Buffered(_) => "AnyProtocol::Buffered",
        })
    }
}

impl<P: Protocol + 'static> From<P> for AnyProtocol {
    fn from(p: P) -> Self {
        AnyProtocol::Plain(Box::new(p))
    }
}

impl AnyProtocol {
    /// Wraps a [`BufferedProtocol`].
    pub fn buffered(p: impl BufferedProtocol + 'static) -> Self {
        AnyProtocol::Buffered(Box::new(p))
    }

    fn base(&mut self) -> &mut dyn BaseProtocol {
        match self {
            AnyProtocol::Plain(p) => &mut **p as &mut dyn BaseProtocol,
            AnyProtocol::Buffered(p) => &mut **p as &mut dyn BaseProtocol,
        }
    }

    /// The name of the callback that receives data, for error reports.
    pub(crate) fn data_callback(&self) -> &'static str {
        match self {
            AnyProtocol::Plain(_) => "data_received",
            AnyProtocol::Buffered(_) => "buffer_updated",
        }
    }

    pub(crate) fn connection_made(&mut self, t: Transport) {
        self.base().connection_made(t)
    }
    pub(crate) fn connection_lost(&mut self, e: Option<io::Error>) {
        self.base().connection_lost(e)
    }
    pub(crate) fn eof_received(&mut self) -> bool {
        self.base().eof_received()
    }
    pub(crate) fn pause_writing(&mut self) {
        self.base().pause_writing()
    }
    pub(crate) fn resume_writing(&mut self) {
        self.base().resume_writing()
    }

    /// Hands `data` to the protocol and counts what it took in `consumed`
    /// (kept up to date as it goes, so a panic mid-chunk still knows).
    ///
    /// A [`Protocol`] takes the whole chunk in one `data_received`. A
    /// [`BufferedProtocol`] is fed one `get_buffer`/`buffer_updated` at a
    /// time, and `stop` is asked after each: once it says so (the protocol
    /// paused, closed, aborted, switched protocol or started TLS), the rest
    /// is left for the caller to hold (R5).
    pub(crate) fn deliver(
        &mut self,
        data: &[u8],
        consumed: &mut usize,
        stop: &mut dyn FnMut() -> bool,
    ) -> io::Result<()> {
        match self {
            AnyProtocol::Plain(p) => {
                p.data_received(data);
                *consumed = data.len();
                Ok(())
            }
            AnyProtocol::Buffered(p) => {
                while *consumed < data.len() {
                    let rest = &data[*consumed..];
                    let buf = p.get_buffer(rest.len());
                    if buf.is_empty() {
                        return Err(io::Error::other("get_buffer() returned an empty buffer"));
                    }
                    let n = buf.len().min(rest.len());
                    buf[..n].copy_from_slice(&rest[..n]);
                    *consumed += n;
                    p.buffer_updated(n);
                    if stop() {
                        break;
                    }
                }
                Ok(())
            }
        }
    }
}
