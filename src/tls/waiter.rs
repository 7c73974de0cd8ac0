//! The future that resolves with the TLS transport once its handshake
//! completed.
#![forbid(unsafe_code)]

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_channel::oneshot;

use super::transport::TlsTransport;
use crate::event_loop::RunError;
use crate::transport::{Transport, TransportImpl};

/// Tells a [`Waiter`] how the handshake ended.
pub(crate) type HandshakeReceiver = oneshot::Receiver<io::Result<()>>;

/// Resolves with the TLS transport once the handshake completed. Dropping
/// it earlier aborts the connection; the application then hears nothing.
pub(crate) struct Waiter {
    tls: Option<Rc<TlsTransport>>,
    rx: HandshakeReceiver,
}

impl Waiter {
    pub(crate) fn new(tls: Rc<TlsTransport>, rx: HandshakeReceiver) -> Waiter {
        Waiter { tls: Some(tls), rx }
    }
}

impl Future for Waiter {
    type Output = io::Result<Transport>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = match Pin::new(&mut self.rx).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        let tls = self.tls.take().expect("Waiter polled after completion");
        Poll::Ready(match result {
            Ok(Ok(())) => {
                // The caller holds the transport from now on: deliver.
                tls.open_gate();
                Ok(tls.transport())
            }
            Ok(Err(e)) => Err(e),
            // Not seen in practice: every way out of the handshake tells
            // the sender, and the sender lives in the connection this waiter
            // keeps alive. Reported as what would be the one cause, a loop
            // that went away with it.
            Err(oneshot::Canceled) => Err(RunError::Closed.into()),
        })
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Some(tls) = self.tls.take() {
            // Cancelled: the application never gets this connection.
            TransportImpl::abort(&*tls);
        }
    }
}
