//! How a TLS connection ends: the application's `close()` and `abort()`,
//! failures, and the raw transport's EOF and loss.
//!
//! A failed handshake goes to the waiter (or the log, for a server) and the
//! application hears nothing; a connection that was established ends with
//! the application's `connection_lost`. Every ending that is not a clean
//! close carries a [`TlsError`] (or the raw transport's own error).
#![forbid(unsafe_code)]

use std::io;

use super::state::{Closing, Ended, TlsState};
use super::transport::{Deadline, TlsTransport};
use super::TlsError;
use crate::transport::Transport;

/// What a failure does to the raw transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RawEnd {
    /// Abort it at once.
    Abort,
    /// Close it, so that a pending alert still goes out; bounded by the
    /// shutdown timeout.
    Close,
}

impl TlsTransport {
    /// Ends the connection with `error` (see the module docs).
    pub(super) fn fail(&self, error: io::Error, raw_end: RawEnd) {
        let mut session = self.session.borrow_mut();
        let ended = session.state.finish();
        if matches!(ended, Ended::Already) {
            return;
        }
        let timers: Vec<_> = session.take_timers().collect();
        drop(session);
        self.core.discard_unsent();
        for timer in timers {
            timer.cancel();
        }
        if let Some(raw) = self.raw() {
            match raw_end {
                RawEnd::Abort => raw.abort(),
                RawEnd::Close => {
                    raw.close();
                    self.bound_raw_close(raw);
                }
            }
        }
        match ended {
            Ended::Handshake(Some(waiter)) => {
                let _ = waiter.send(Err(error));
            }
            Ended::Handshake(None) => tracing::info!(
                peer = ?self.raw().and_then(Transport::peer_addr),
                %error,
                "TLS handshake failed"
            ),
            Ended::Established => {
                tracing::debug!(%error, "TLS connection failed");
                self.core.delivery_mut().lose(Some(error));
            }
            Ended::Already => unreachable!("returned above"),
        }
        self.core.schedule();
    }

    /// The application's `close()`: receives nothing more; an established
    /// connection drains its backlog, then sends `close_notify`.
    pub(super) fn close_connection(&self) {
        let mut session = self.session.borrow_mut();
        let state = &mut session.state;
        let handshaking = state.is_handshaking();
        let drains = state.start_closing();
        if !handshaking && !drains && !state.is_done() {
            return; // already closing
        }
        drop(session);
        // Receive nothing more (like a plain transport's close).
        self.core.delivery_mut().close_reading();
        if handshaking {
            // bpo-29743: no close_notify mid-handshake, just abort.
            self.fail(TlsError::Aborted.into(), RawEnd::Abort);
            return;
        }
        if drains {
            self.arm(Deadline::Shutdown);
            self.pump();
        }
        // Already over (raw transport gone, or failed): `connection_lost`
        // only waited for held plaintext, now dropped, not for a
        // `resume_reading` that may never come.
        self.core.schedule();
    }

    /// The application's `abort()`: ends the connection at once.
    pub(super) fn abort_connection(&self) {
        let mut session = self.session.borrow_mut();
        session.state.clear_pending_loss();
        if session.state.is_handshaking() {
            drop(session);
            self.fail(TlsError::Aborted.into(), RawEnd::Abort);
            return;
        }
        let timers: Vec<_> = session.take_timers().collect();
        // Already over: held plaintext may still wait for a paused
        // application; it is dropped all the same.
        let was_over = matches!(session.state.finish(), Ended::Already);
        drop(session);
        if !was_over {
            self.core.discard_unsent();
            for timer in timers {
                timer.cancel();
            }
            if let Some(raw) = self.raw() {
                raw.abort();
            }
        }
        self.core.delivery_mut().lose(None);
        self.core.schedule();
    }

    /// The raw transport's EOF. Returns whether the raw transport keeps its
    /// write side open (else it closes itself, flushing what it holds).
    pub(super) fn on_raw_eof(&self) -> bool {
        let session = self.session.borrow();
        let closing = match session.state {
            TlsState::Handshaking { .. } => {
                drop(session);
                self.fail(TlsError::ClosedDuringHandshake.into(), RawEnd::Close);
                return false;
            }
            TlsState::Established { closing, .. } => closing,
            TlsState::Done { .. } => return false,
        };
        match closing {
            // The peer's close_notify came first: a clean TLS EOF, already
            // on its way to the application. The peer may only have
            // half-closed, so our backlog and our close_notify still go out;
            // the application's close() (or its eof_received returning
            // false) ends the connection, bounded by the shutdown timeout.
            Closing::No | Closing::Draining if session.engine.peer_closed() => true,
            Closing::No | Closing::Draining => {
                // Truncation: the raw transport closes itself and
                // `on_raw_lost` reports it; a peer that stopped reading must
                // not hold that close open for ever.
                drop(session);
                if let Some(raw) = self.raw() {
                    self.bound_raw_close(raw);
                }
                false
            }
            // Shutting down: the raw transport closes itself, under the
            // shutdown timer armed by close().
            Closing::NotifySent => false,
        }
    }

    /// Aborts `raw` if its graceful close has not released the socket
    /// within the shutdown timeout: a peer that stopped reading would
    /// otherwise keep it open for ever. The timer goes away with the socket.
    pub(super) fn bound_raw_close(&self, raw: &Transport) {
        let Some(event_loop) = self.core.event_loop() else {
            return;
        };
        let target = raw.clone();
        let timer = event_loop.call_later(self.shutdown_timeout, move || {
            if !target.is_released() {
                tracing::debug!(
                    peer = ?target.peer_addr(),
                    "raw close did not finish within the TLS shutdown timeout: aborting"
                );
                target.abort();
            }
        });
        raw.on_release(Box::new(move || {
            timer.cancel();
        }));
    }

    /// The raw transport is gone.
    pub(super) fn on_raw_lost(&self, error: Option<io::Error>) {
        let mut session = self.session.borrow_mut();
        let closing = match session.state {
            TlsState::Done { .. } => return,
            TlsState::Handshaking { .. } => {
                drop(session);
                let error = error.unwrap_or_else(|| TlsError::Aborted.into());
                self.fail(error, RawEnd::Abort);
                return;
            }
            TlsState::Established { closing, .. } => closing,
        };
        // The end is clean only if TLS closed cleanly (our close or the
        // peer's close_notify) and everything written went out.
        let clean_tls = closing != Closing::No || session.engine.peer_closed();
        session.state.finish();
        for timer in session.take_timers() {
            timer.cancel();
        }
        let unsent = self.core.discard_unsent();
        match error {
            Some(e) => {
                drop(session);
                self.core.delivery_mut().lose(Some(e));
            }
            None => {
                // Plaintext received before the end is delivered first.
                let outcome = if !clean_tls {
                    Some(TlsError::Truncated.into())
                } else if unsent > 0 {
                    tracing::debug!(unsent, "TLS connection ended with unsent data");
                    Some(TlsError::Unsent { bytes: unsent }.into())
                } else {
                    None
                };
                session.state.set_pending_loss(outcome);
            }
        }
        self.core.schedule();
    }
}
