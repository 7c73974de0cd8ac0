//! The application's transport over TLS, and the owner of the engine.
//!
//! # Re-entrancy
//! Engine steps run inside callbacks of the raw protocol and never call the
//! application: plaintext goes to the [`Delivery`], which
//! [`TlsTransport::run`](TransportImpl::run) dispatches from a loop
//! callback. Raw transport methods only queue work, so calling them while
//! the session is borrowed is safe.
#![forbid(unsafe_code)]

use std::cell::{OnceCell, RefCell};
use std::io;
use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;

use super::ending::RawEnd;
use super::engine::TlsEngine;
use super::raw_protocol::RawProtocol;
use super::state::{Closing, RawFlow, TlsState};
use super::waiter::HandshakeReceiver;
use super::{
    TlsError, TlsOptions, TLS_READ_HIGH_WATER, TLS_READ_LOW_WATER, TLS_WRITE_HIGH_WATER,
    TLS_WRITE_LOW_WATER,
};
use crate::address::Address;
use crate::event_loop::{Handle, TimerHandle};
use crate::protocol::AnyProtocol;
use crate::transport::{dispatch, Delivery, TlsInfo, Transport, TransportCore, TransportImpl};

/// What a timer of a TLS connection bounds.
#[derive(Clone, Copy, Debug)]
pub(super) enum Deadline {
    /// The handshake (default 60 s).
    Handshake,
    /// Waiting for the peer's `close_notify` after ours (default 30 s).
    Shutdown,
}

/// The application's transport over TLS.
pub(crate) struct TlsTransport {
    /// This transport, for the raw protocol, the waiter and the timers.
    this: Weak<TlsTransport>,
    /// Its send queue is the backlog: application plaintext not yet given
    /// to the engine (T2, T5). Its water marks are the TLS ones.
    pub(super) core: TransportCore,
    /// The plain transport underneath (set once, before the handshake).
    raw: OnceCell<Transport>,
    pub(super) session: RefCell<Session>,
    handshake_timeout: Duration,
    pub(super) shutdown_timeout: Duration,
}

/// The engine, and where the connection is.
pub(super) struct Session {
    pub(super) engine: TlsEngine,
    pub(super) state: TlsState,
    pub(super) raw_flow: RawFlow,
    /// What the handshake negotiated (kept after the connection ended).
    info: Option<TlsInfo>,
    handshake_timer: Option<TimerHandle>,
    shutdown_timer: Option<TimerHandle>,
    /// BROKEN ON PURPOSE (`broken-scheduled-handshake`): whether the
    /// scheduled handshake has run (see [`TlsTransport::start_handshake`]).
    #[cfg(feature = "broken-scheduled-handshake")]
    started: bool,
}

impl Session {
    /// Takes both timers, for the caller to cancel once nothing is borrowed.
    pub(super) fn take_timers(&mut self) -> impl Iterator<Item = TimerHandle> {
        [self.handshake_timer.take(), self.shutdown_timer.take()]
            .into_iter()
            .flatten()
    }
}

impl TlsTransport {
    /// A connection in the handshaking phase. `already_made`: the protocol
    /// was told `connection_made` before (start_tls). `with_waiter`: a caller
    /// awaits the handshake (client side, start_tls); else a server logs.
    pub(crate) fn new(
        handle: &Handle,
        options: TlsOptions,
        protocol: AnyProtocol,
        already_made: bool,
        with_waiter: bool,
    ) -> io::Result<(Rc<TlsTransport>, HandshakeReceiver)> {
        let engine = TlsEngine::new(options.role)?;
        let (tx, rx) = oneshot::channel();
        let delivery = if already_made {
            Delivery::already_made(protocol)
        } else {
            Delivery::new(protocol)
        };
        let tls = Rc::new_cyclic(|this: &Weak<TlsTransport>| TlsTransport {
            this: this.clone(),
            core: TransportCore::new(
                handle,
                this.clone(),
                delivery,
                (TLS_WRITE_HIGH_WATER, TLS_WRITE_LOW_WATER),
            ),
            raw: OnceCell::new(),
            session: RefCell::new(Session {
                engine,
                state: TlsState::handshaking(with_waiter.then_some(tx)),
                raw_flow: RawFlow::default(),
                info: None,
                handshake_timer: None,
                shutdown_timer: None,
                #[cfg(feature = "broken-scheduled-handshake")]
                started: false,
            }),
            handshake_timeout: options.handshake_timeout,
            shutdown_timeout: options.shutdown_timeout,
        });
        Ok((tls, rx))
    }

    fn strong(&self) -> Rc<TlsTransport> {
        self.this.upgrade().expect("TLS transport used after drop")
    }

    pub(crate) fn set_raw(&self, raw: Transport) {
        let _ = self.raw.set(raw);
    }

    pub(super) fn raw(&self) -> Option<&Transport> {
        self.raw.get()
    }

    /// The protocol to install on the raw transport.
    pub(crate) fn raw_protocol(&self) -> AnyProtocol {
        AnyProtocol::Plain(Box::new(RawProtocol(self.strong())))
    }

    /// The application's handle.
    pub(crate) fn transport(&self) -> Transport {
        self.core.transport()
    }

    /// Starts the handshake now (T1): arms the timeout, writes the client's
    /// first flight, feeds the bytes the old protocol did not consume (T3).
    pub(crate) fn start_handshake(&self, unconsumed: Bytes) {
        self.arm(Deadline::Handshake);
        // BROKEN ON PURPOSE (`broken-scheduled-handshake`, bpo-33674), a
        // test-only feature: the handshake is scheduled with `call_soon`, as
        // `SSLProtocol.connection_made()` did before CPython's be00a558.
        // Bytes the raw transport delivers before it runs pass through
        // `feed` unencrypted, where `_SSLPipe` sent them (see `feed`).
        #[cfg(feature = "broken-scheduled-handshake")]
        if let Some(event_loop) = self.core.event_loop() {
            let this = self.strong();
            event_loop.call_soon(move || {
                this.session.borrow_mut().started = true;
                this.begin_handshake(unconsumed);
            });
            return;
        }
        self.begin_handshake(unconsumed);
    }

    /// Writes the client's first flight and feeds the engine the bytes the
    /// old protocol did not consume (T3).
    fn begin_handshake(&self, unconsumed: Bytes) {
        self.flush_output();
        if !unconsumed.is_empty() {
            self.feed(&unconsumed);
        }
    }

    /// Arms (or re-arms) the timer of `deadline`.
    pub(super) fn arm(&self, deadline: Deadline) {
        let Some(event_loop) = self.core.event_loop() else {
            return;
        };
        let delay = match deadline {
            Deadline::Handshake => self.handshake_timeout,
            Deadline::Shutdown => self.shutdown_timeout,
        };
        let weak = self.this.clone();
        let timer = event_loop.call_later(delay, move || {
            if let Some(tls) = weak.upgrade() {
                tls.on_deadline(deadline);
            }
        });
        let mut session = self.session.borrow_mut();
        let old = match deadline {
            Deadline::Handshake => session.handshake_timer.replace(timer),
            Deadline::Shutdown => session.shutdown_timer.replace(timer),
        };
        drop(session);
        if let Some(old) = old {
            old.cancel();
        }
    }

    /// A deadline passed: fails the connection if it is still in the phase
    /// the deadline bounds (T4).
    fn on_deadline(&self, deadline: Deadline) {
        let (due, error) = {
            let state = &self.session.borrow().state;
            match deadline {
                Deadline::Handshake => (state.is_handshaking(), TlsError::HandshakeTimeout),
                Deadline::Shutdown => (state.is_established(), TlsError::ShutdownTimeout),
            }
        };
        if due {
            self.fail(error.into(), RawEnd::Abort);
        }
    }

    /// Pauses the raw transport's reading while too much plaintext is held
    /// for a paused application, resumes it once enough was delivered (T5).
    fn control_raw_reading(&self) {
        let Some(raw) = self.raw() else { return };
        let held = self.core.delivery().held_bytes();
        let mut session = self.session.borrow_mut();
        if session.state.is_done() {
            return;
        }
        let flow = &mut session.raw_flow;
        if !flow.read_paused && held > TLS_READ_HIGH_WATER as u64 {
            flow.read_paused = true;
            raw.pause_reading();
        } else if flow.read_paused && held <= TLS_READ_LOW_WATER as u64 {
            flow.read_paused = false;
            raw.resume_reading();
        }
    }

    /// Writes whatever the engine has to send to the raw transport; a
    /// failure to take it from the engine ends the connection.
    fn flush_output(&self) {
        let Some(raw) = self.raw() else { return };
        let flushed = send_output(&mut self.session.borrow_mut(), raw);
        if let Err(e) = flushed {
            self.fail(e, RawEnd::Close);
        }
    }

    /// Feeds received ciphertext to the engine (T1: in every phase).
    pub(super) fn feed(&self, data: &[u8]) {
        let Some(raw) = self.raw() else { return };
        let mut session = self.session.borrow_mut();
        if session.state.is_done() {
            return;
        }
        #[cfg(feature = "broken-scheduled-handshake")]
        if !session.started {
            // BROKEN ON PURPOSE (bpo-33674): the handshake has not started,
            // so, like `_SSLPipe.feed_ssldata()` while unwrapped, the bytes
            // pass straight through to the application as plaintext; the
            // engine never sees them and the handshake hangs.
            drop(session);
            self.core.delivery_mut().push_data(data.to_vec());
            return;
        }
        let mut plaintext = Vec::new();
        let fed = session.engine.feed(data, &mut plaintext);
        let closing = session.state.closing();
        {
            let mut delivery = self.core.delivery_mut();
            for buf in plaintext {
                if closing == Closing::No {
                    delivery.push_data(buf);
                } else {
                    // The application closed: counted, never delivered.
                    delivery.push_discarded(buf.len());
                }
            }
        }
        if session.state.is_handshaking() && !session.engine.is_handshaking() {
            handshake_completed(&mut session);
        }
        // Handshake flights, alerts (a failure's included), key updates.
        let mut failure = fed.error;
        if let Err(e) = send_output(&mut session, raw) {
            match &failure {
                Some(first) => tracing::debug!(%e, %first, "TLS output lost after an engine error"),
                None => failure = Some(e),
            }
        }
        if let Some(e) = failure {
            drop(session);
            self.fail(e, RawEnd::Close);
            return;
        }
        if fed.peer_closed {
            match session.state.closing() {
                // Both close_notify sent: the TLS session is over.
                Closing::NotifySent => raw.close(),
                Closing::No => self.core.delivery_mut().push_eof(),
                Closing::Draining => {}
            }
        }
        drop(session);
        self.pump();
        self.control_raw_reading();
        self.core.schedule();
    }

    /// Gives backlog plaintext to the engine while the raw transport has room
    /// (T5) — or all of it once closing (gh-115514) — then, once closing and
    /// drained, sends `close_notify`.
    ///
    /// It stops when the raw transport is over its high mark: told
    /// `pause_writing`, or above the mark with that edge not delivered yet.
    /// Either way the raw transport owes the matching `resume_writing` (it
    /// delivers every edge, even a pause and resume within one turn), which
    /// runs this again; nothing else has to restart it.
    pub(super) fn pump(&self) {
        let Some(raw) = self.raw() else { return };
        let mut session = self.session.borrow_mut();
        let draining = match session.state {
            TlsState::Established { closing, .. } if closing != Closing::NotifySent => {
                closing == Closing::Draining
            }
            _ => return,
        };
        let (_, raw_high_water) = raw.get_write_buffer_limits();
        let mut failure = None;
        while self.write_buffer_size() > 0 {
            if raw.is_closing() {
                // It would drop what we write: keep it counted in the backlog,
                // so that it ends in an error, not in silence.
                break;
            }
            let raw_full =
                session.raw_flow.write_paused || raw.get_write_buffer_size() > raw_high_water;
            if raw_full && !draining {
                break;
            }
            let step = self
                .core
                .with_send_queue(|backlog| session.engine.encrypt(backlog))
                .and_then(|n| send_output(&mut session, raw).map(|()| n));
            match step {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if draining && self.write_buffer_size() == 0 && failure.is_none() {
            session.engine.send_close_notify();
            session.state.notify_sent();
            failure = send_output(&mut session, raw).err();
            if session.engine.peer_closed() {
                raw.close();
            }
        }
        drop(session);
        if let Some(e) = failure {
            self.fail(e, RawEnd::Close);
        }
    }

    /// The caller now holds the transport: deliver its events.
    pub(super) fn open_gate(&self) {
        self.session.borrow_mut().state.open_gate();
        self.core.schedule();
    }

    pub(super) fn on_raw_pause_writing(&self) {
        self.session.borrow_mut().raw_flow.write_paused = true;
    }

    pub(super) fn on_raw_resume_writing(&self) {
        let mut session = self.session.borrow_mut();
        debug_assert!(
            session.raw_flow.write_paused,
            "resume_writing without pause_writing (gh-109051)"
        );
        session.raw_flow.write_paused = false;
        drop(session);
        self.pump();
        self.core.schedule();
    }
}

/// Moves the engine's pending output to the raw transport.
fn send_output(session: &mut Session, raw: &Transport) -> io::Result<()> {
    if let Some(ciphertext) = session.engine.take_output()? {
        raw.write_bytes(ciphertext);
    }
    Ok(())
}

/// The engine finished its handshake: records what it negotiated and tells
/// whoever waits.
fn handshake_completed(session: &mut Session) {
    let waiter = session.state.complete_handshake();
    if let Some(timer) = session.handshake_timer.take() {
        timer.cancel();
    }
    let info = session.engine.info();
    tracing::debug!(?info, "TLS handshake completed");
    session.info = Some(info);
    if let Some(tx) = waiter {
        // If nobody listens any more, the waiter's drop already aborted.
        let _ = tx.send(Ok(()));
    }
}

impl TransportImpl for TlsTransport {
    fn core(&self) -> &TransportCore {
        &self.core
    }

    /// Feeds the engine, delivers what is deliverable, keeps flow control.
    fn run(&self) {
        self.pump();
        if self.session.borrow().state.is_live() {
            dispatch(self);
            let loss = {
                let mut session = self.session.borrow_mut();
                if session.state.has_pending_loss() && !self.core.delivery().has_held() {
                    session.state.take_pending_loss()
                } else {
                    None
                }
            };
            if let Some(loss) = loss {
                self.core.delivery_mut().lose(loss);
                dispatch(self);
            }
        }
        self.control_raw_reading();
    }

    fn accepts_writes(&self) -> bool {
        self.session.borrow().state.accepts_writes()
    }

    fn fail(&self, error: io::Error) {
        TlsTransport::fail(self, error, RawEnd::Abort)
    }

    /// Not coalesced: every write stays a slice of its own, so a step of
    /// the write pump gives the engine at most a fixed number of writes.
    fn write(&self, data: &[u8]) {
        self.write_bytes(Bytes::copy_from_slice(data));
    }

    fn write_eof(&self) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "TLS transports do not support write_eof (half-close)",
        ))
    }

    fn can_write_eof(&self) -> bool {
        false
    }

    /// Counted with the raw transport's receive: that is the one in flight.
    fn count_read_pause(&self) {
        if let Some(raw) = TlsTransport::raw(self) {
            raw.0.count_read_pause();
        }
    }

    fn close(&self) {
        self.close_connection();
    }

    fn abort(&self) {
        self.abort_connection();
    }

    // BROKEN ON PURPOSE (`broken-tls-pause-leaks`), a test-only feature
    // (bpo-45159): pausing the TLS transport pauses only the raw one, as
    // asyncio's `_SSLProtocolTransport` did up to 3.10. Nothing decrypted
    // after the call is delivered (no more ciphertext is read), but
    // plaintext already decrypted and held still goes to `data_received`.
    #[cfg(feature = "broken-tls-pause-leaks")]
    fn pause_reading(&self) {
        self.raw().map(Transport::pause_reading);
    }
    #[cfg(feature = "broken-tls-pause-leaks")]
    fn resume_reading(&self) {
        self.raw().map(Transport::resume_reading);
    }
    #[cfg(feature = "broken-tls-pause-leaks")]
    fn is_reading(&self) -> bool {
        self.raw().is_some_and(Transport::is_reading)
    }

    /// Also true once the raw transport is closing, whoever closed it
    /// (gh-118950): nothing written from then on can reach the peer.
    fn is_closing(&self) -> bool {
        let session = self.session.borrow();
        let state = &session.state;
        state.closing() != Closing::No
            || state.is_done()
            || self.core.delivery().is_lost()
            || self.raw().is_some_and(Transport::is_closing)
    }

    fn peer_addr(&self) -> Option<Address> {
        self.raw().and_then(Transport::peer_addr)
    }

    fn local_addr(&self) -> Option<Address> {
        self.raw().and_then(Transport::local_addr)
    }

    fn tls_info(&self) -> Option<TlsInfo> {
        self.session.borrow().info.clone()
    }

    fn raw(&self) -> Option<Transport> {
        TlsTransport::raw(self).cloned()
    }

    fn is_released(&self) -> bool {
        TlsTransport::raw(self).is_some_and(Transport::is_released)
    }

    fn on_release(&self, f: Box<dyn FnOnce()>) {
        match TlsTransport::raw(self) {
            Some(raw) => raw.on_release(f),
            None => f(),
        }
    }
}
