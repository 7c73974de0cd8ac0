//! The life of a TLS connection, as one enum whose variants hold exactly
//! what is meaningful in them.
//!
//! ```text
//! Handshaking ──handshake done──▶ Established { app, closing: No }
//!      │                              │ close(): Draining → NotifySent
//!      └──────── error, abort, loss of the raw transport ───▶ Done
//! ```
//!
//! Facts that are not about this life live elsewhere: whether the peer's
//! `close_notify` arrived is the engine's ([`TlsEngine::peer_closed`]); the
//! flow control with the raw transport is [`RawFlow`], two flags that are
//! independent of each other and of the phase.
//!
//! [`TlsEngine::peer_closed`]: super::engine::TlsEngine::peer_closed
#![forbid(unsafe_code)]

use std::io;

use futures_channel::oneshot;

/// Resolves the future of whoever waits for the handshake.
pub(super) type HandshakeSender = oneshot::Sender<io::Result<()>>;

/// Where a TLS connection is.
#[derive(Debug)]
pub(super) enum TlsState {
    /// The handshake runs; the application hears nothing.
    Handshaking {
        /// The caller of `start_tls`/`create_tls_connection`, told the
        /// outcome; `None` on a server, which logs a failure instead.
        waiter: Option<HandshakeSender>,
    },
    /// The handshake completed: application data flows.
    Established { app: App, closing: Closing },
    /// The connection is over.
    Done {
        /// What the application was in the connection; `None`: it ended
        /// during the handshake and the application never hears of it.
        app: Option<App>,
        /// `connection_lost` to deliver once the held plaintext is
        /// delivered (the raw transport went away without an error).
        pending_loss: Option<Option<io::Error>>,
    },
}

/// Whether the application of an established connection hears events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum App {
    /// The caller of `start_tls`/`create_tls_connection` does not hold the
    /// transport yet: nothing is delivered (uvloop's first-data order).
    Gated,
    /// Events are delivered.
    Live,
}

/// How far our side of an established connection got in closing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Closing {
    /// `close()` was not called: application writes are taken.
    No,
    /// `close()` was called: the backlog drains, even into a raw transport
    /// that is paused for writing (gh-115514), then `close_notify` goes out.
    Draining,
    /// Our `close_notify` went out; the peer's is awaited under the
    /// shutdown timer.
    NotifySent,
}

/// What [`TlsState::finish`] ended.
#[derive(Debug)]
pub(super) enum Ended {
    /// It was already over: nothing to do.
    Already,
    /// A handshake: its waiter, if any, must be told why.
    Handshake(Option<HandshakeSender>),
    /// An established connection.
    Established,
}

impl TlsState {
    /// A connection whose handshake is about to start.
    pub(super) fn handshaking(waiter: Option<HandshakeSender>) -> Self {
        TlsState::Handshaking { waiter }
    }

    pub(super) fn is_handshaking(&self) -> bool {
        matches!(self, TlsState::Handshaking { .. })
    }

    pub(super) fn is_established(&self) -> bool {
        matches!(self, TlsState::Established { .. })
    }

    pub(super) fn is_done(&self) -> bool {
        matches!(self, TlsState::Done { .. })
    }

    /// Whether the application's events are delivered.
    pub(super) fn is_live(&self) -> bool {
        matches!(
            self,
            TlsState::Established { app: App::Live, .. }
                | TlsState::Done {
                    app: Some(App::Live),
                    ..
                }
        )
    }

    /// Whether application writes are taken (queued behind the handshake
    /// while it runs, T2).
    pub(super) fn accepts_writes(&self) -> bool {
        matches!(
            self,
            TlsState::Handshaking { .. }
                | TlsState::Established {
                    closing: Closing::No,
                    ..
                }
        )
    }

    /// Whether `close()` was called on an established connection.
    pub(super) fn closing(&self) -> Closing {
        match self {
            TlsState::Established { closing, .. } => *closing,
            _ => Closing::No,
        }
    }

    /// The handshake completed: returns its waiter, to be told.
    pub(super) fn complete_handshake(&mut self) -> Option<HandshakeSender> {
        let TlsState::Handshaking { waiter } = self else {
            return None;
        };
        let waiter = waiter.take();
        // Someone awaits the transport: hold events until they have it.
        let app = if waiter.is_some() {
            App::Gated
        } else {
            App::Live
        };
        *self = TlsState::Established {
            app,
            closing: Closing::No,
        };
        waiter
    }

    /// The caller now holds the transport: events may be delivered.
    pub(super) fn open_gate(&mut self) {
        match self {
            TlsState::Established { app, .. } | TlsState::Done { app: Some(app), .. } => {
                *app = App::Live;
            }
            TlsState::Handshaking { .. } | TlsState::Done { app: None, .. } => {}
        }
    }

    /// `close()` on an established connection: starts draining. Returns
    /// whether it did (false: not established, or already closing).
    pub(super) fn start_closing(&mut self) -> bool {
        match self {
            TlsState::Established { closing, .. } if *closing == Closing::No => {
                *closing = Closing::Draining;
                true
            }
            _ => false,
        }
    }

    /// The backlog drained and `close_notify` went out.
    pub(super) fn notify_sent(&mut self) {
        if let TlsState::Established { closing, .. } = self {
            *closing = Closing::NotifySent;
        }
    }

    /// Ends the connection (no `connection_lost` pending yet) and says what
    /// it ended.
    pub(super) fn finish(&mut self) -> Ended {
        let app = match self {
            TlsState::Done { .. } => return Ended::Already,
            TlsState::Handshaking { .. } => None,
            TlsState::Established { app, .. } => Some(*app),
        };
        let old = std::mem::replace(
            self,
            TlsState::Done {
                app,
                pending_loss: None,
            },
        );
        match old {
            TlsState::Handshaking { waiter } => Ended::Handshake(waiter),
            TlsState::Established { .. } => Ended::Established,
            TlsState::Done { .. } => unreachable!("returned above"),
        }
    }

    /// Once over: `connection_lost(outcome)` is due after the held plaintext.
    pub(super) fn set_pending_loss(&mut self, outcome: Option<io::Error>) {
        if let TlsState::Done { pending_loss, .. } = self {
            *pending_loss = Some(outcome);
        }
    }

    /// Forgets a pending `connection_lost` (the application aborted).
    pub(super) fn clear_pending_loss(&mut self) {
        if let TlsState::Done { pending_loss, .. } = self {
            *pending_loss = None;
        }
    }

    /// The pending `connection_lost`, if one is due.
    pub(super) fn take_pending_loss(&mut self) -> Option<Option<io::Error>> {
        match self {
            TlsState::Done { pending_loss, .. } => pending_loss.take(),
            _ => None,
        }
    }

    pub(super) fn has_pending_loss(&self) -> bool {
        matches!(
            self,
            TlsState::Done {
                pending_loss: Some(_),
                ..
            }
        )
    }
}

/// Flow control with the raw transport (T5). Both flags are independent of
/// each other and may be set in any phase but `Done`, where they no longer
/// matter.
#[derive(Debug, Default)]
pub(super) struct RawFlow {
    /// The raw transport told us `pause_writing` (and not yet
    /// `resume_writing`): the write pump waits, unless we are closing.
    pub(super) write_paused: bool,
    /// We paused the raw transport's reading because too much plaintext is
    /// held for a paused application.
    pub(super) read_paused: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn established(app: App) -> TlsState {
        TlsState::Established {
            app,
            closing: Closing::No,
        }
    }

    #[test]
    fn a_waiter_gates_the_application_until_it_holds_the_transport() {
        let (tx, _rx) = oneshot::channel();
        let mut state = TlsState::handshaking(Some(tx));
        assert!(!state.is_live() && state.accepts_writes());
        assert!(state.complete_handshake().is_some());
        assert!(state.is_established() && !state.is_live());
        state.open_gate();
        assert!(state.is_live());

        let mut server = TlsState::handshaking(None);
        assert!(server.complete_handshake().is_none());
        assert!(server.is_live(), "nobody to wait for");
    }

    #[test]
    fn close_drains_then_sends_close_notify() {
        let mut state = established(App::Live);
        assert!(state.start_closing());
        assert_eq!(state.closing(), Closing::Draining);
        assert!(!state.accepts_writes());
        assert!(!state.start_closing(), "once");
        state.notify_sent();
        assert_eq!(state.closing(), Closing::NotifySent);
        assert!(!TlsState::handshaking(None).start_closing());
    }

    #[test]
    fn finish_says_what_ended_and_keeps_the_gate() {
        let (tx, _rx) = oneshot::channel();
        let mut state = TlsState::handshaking(Some(tx));
        assert!(matches!(state.finish(), Ended::Handshake(Some(_))));
        assert!(state.is_done() && !state.is_live() && !state.accepts_writes());
        assert!(matches!(state.finish(), Ended::Already));
        state.open_gate();
        assert!(!state.is_live(), "a failed handshake is never live");

        let mut state = established(App::Gated);
        state.start_closing();
        assert!(matches!(state.finish(), Ended::Established));
        assert!(!state.is_live());
        state.open_gate();
        assert!(
            state.is_live(),
            "the caller may still take it and hear the end"
        );
    }

    #[test]
    fn a_pending_loss_exists_only_once_done() {
        let mut state = established(App::Live);
        state.set_pending_loss(None);
        assert!(!state.has_pending_loss());
        state.finish();
        state.set_pending_loss(Some(io::Error::other("x")));
        assert!(state.has_pending_loss());
        assert!(matches!(state.take_pending_loss(), Some(Some(_))));
        assert!(state.take_pending_loss().is_none());
        state.set_pending_loss(None);
        state.clear_pending_loss();
        assert!(!state.has_pending_loss());
    }
}
