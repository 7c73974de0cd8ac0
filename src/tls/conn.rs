//! The TLS connection: [`TlsProtocol`] on the raw transport, [`TlsConn`] as
//! the application's transport, sharing one state.
//!
//! # Phases
//! `Handshaking` → `Wrapped` → (`close()`: backlog flushed, `close_notify`
//! sent) `ShuttingDown` → `Done`; any phase → `Done` on error, abort or loss
//! of the raw transport. The application is live (its events are
//! dispatched) once the handshake completed and the caller holds the
//! transport (the gate); before that it hears nothing, so a failed
//! handshake is invisible to it.
//!
//! # Re-entrancy
//! Engine steps run inside raw-protocol callbacks and never call the
//! application: plaintext goes to the [`Delivery`], which [`TlsConn::run`]
//! dispatches from a loop callback. Raw transport methods only queue work,
//! so calling them while `st` is borrowed is safe.
#![forbid(unsafe_code)]

use std::cell::{OnceCell, RefCell};
use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, Connection, ServerConnection};

use super::{
    Role, TlsError, TlsOptions, TLS_READ_HIGH_WATER, TLS_READ_LOW_WATER, TLS_WRITE_HIGH_WATER,
    TLS_WRITE_LOW_WATER,
};
use crate::address::Address;
use crate::event_loop::{Handle, TimerHandle};
use crate::protocol::{AnyProtocol, BaseProtocol, Protocol};
use crate::transport::{dispatch, Delivery, TlsInfo, Transport, TransportCore, TransportImpl};

pub(crate) type Receiver = oneshot::Receiver<io::Result<()>>;

/// Plaintext fed to the engine per step, so one step never floods the raw
/// transport far past its high-water mark.
const FEED_CHUNK: usize = 64 * 1024;
/// Most backlog buffers handed to the engine in one vectored write.
const FEED_SLICES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Handshaking,
    Wrapped,
    ShuttingDown,
    Done,
}

struct State {
    conn: Connection,
    phase: Phase,
    /// The handshake completed at some point (the application may be live).
    established: bool,
    /// The caller of `start_tls`/`create_tls_connection` does not hold the
    /// transport yet: nothing is delivered (uvloop's first-data order).
    gated: bool,
    waiter: Option<oneshot::Sender<io::Result<()>>>,
    info: Option<TlsInfo>,
    /// The raw transport told us `pause_writing` (and not yet `resume_writing`).
    raw_write_paused: bool,
    /// We paused the raw transport's reading because too much plaintext is held.
    raw_read_paused: bool,
    /// The application called `close()`.
    closing: bool,
    /// The peer's `close_notify` arrived.
    peer_closed: bool,
    eof_pushed: bool,
    /// `connection_lost` to deliver once held plaintext is delivered.
    pending_loss: Option<Option<io::Error>>,
    handshake_timer: Option<TimerHandle>,
    shutdown_timer: Option<TimerHandle>,
    /// BROKEN ON PURPOSE (`broken-scheduled-handshake`): whether the
    /// scheduled handshake has run; bytes arriving before are dropped.
    #[cfg(feature = "broken-scheduled-handshake")]
    started: bool,
}

/// The application's transport over TLS, and the engine's owner.
pub(crate) struct TlsConn {
    me: Weak<TlsConn>,
    /// Its send queue holds application plaintext not yet given to the
    /// engine (T2, T5).
    core: TransportCore,
    raw: OnceCell<Transport>,
    st: RefCell<State>,
    handshake_timeout: Duration,
    shutdown_timeout: Duration,
    /// The name a client asked for (reported as SNI).
    client_name: Option<String>,
}

impl TlsConn {
    /// A connection in the handshaking phase. `already_made`: the protocol
    /// was told `connection_made` before (start_tls). `with_waiter`: a caller
    /// awaits the handshake (client side, start_tls); else a server logs.
    pub(crate) fn new(
        handle: &Handle,
        options: TlsOptions,
        protocol: AnyProtocol,
        already_made: bool,
        with_waiter: bool,
    ) -> io::Result<(Rc<TlsConn>, Receiver)> {
        let engine = |e: rustls::Error| TlsError::Engine(e).into_io();
        let (mut conn, client_name) = match options.role {
            Role::Client {
                config,
                server_name,
            } => {
                let name = match &server_name {
                    ServerName::DnsName(d) => d.as_ref().to_string(),
                    ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
                    other => format!("{other:?}"),
                };
                let c = ClientConnection::new(config, server_name).map_err(engine)?;
                (Connection::Client(c), Some(name))
            }
            Role::Server { config } => (
                Connection::Server(ServerConnection::new(config).map_err(engine)?),
                None,
            ),
        };
        // We bound buffering ourselves (backlog, water marks).
        conn.set_buffer_limit(None);
        let (tx, rx) = oneshot::channel();
        let delivery = if already_made {
            Delivery::already_made(protocol)
        } else {
            Delivery::new(protocol)
        };
        let tls = Rc::new_cyclic(|me: &Weak<TlsConn>| TlsConn {
            me: me.clone(),
            core: TransportCore::new(
                handle,
                me.clone(),
                delivery,
                (TLS_WRITE_HIGH_WATER, TLS_WRITE_LOW_WATER),
            ),
            raw: OnceCell::new(),
            st: RefCell::new(State {
                conn,
                phase: Phase::Handshaking,
                established: false,
                gated: with_waiter,
                waiter: with_waiter.then_some(tx),
                info: None,
                raw_write_paused: false,
                raw_read_paused: false,
                closing: false,
                peer_closed: false,
                eof_pushed: false,
                pending_loss: None,
                handshake_timer: None,
                shutdown_timer: None,
                #[cfg(feature = "broken-scheduled-handshake")]
                started: false,
            }),
            handshake_timeout: options.handshake_timeout,
            shutdown_timeout: options.shutdown_timeout,
            client_name,
        });
        Ok((tls, rx))
    }

    fn rc(&self) -> Rc<TlsConn> {
        self.me.upgrade().expect("TLS transport used after drop")
    }

    pub(crate) fn set_raw(&self, raw: Transport) {
        let _ = self.raw.set(raw);
    }

    fn raw(&self) -> Option<&Transport> {
        self.raw.get()
    }

    /// The protocol to install on the raw transport.
    pub(crate) fn protocol(&self) -> AnyProtocol {
        AnyProtocol::Plain(Box::new(TlsProtocol(self.rc())))
    }

    /// The application's handle.
    pub(crate) fn transport(&self) -> Transport {
        Transport(self.rc())
    }

    /// Starts the handshake now (T1): arms the timeout, writes the client's
    /// first flight, feeds the bytes the old protocol did not consume (T3).
    pub(crate) fn start_handshake(&self, unconsumed: Bytes) {
        self.arm_handshake_timer();
        #[cfg(feature = "broken-scheduled-handshake")]
        {
            // BROKEN ON PURPOSE (bpo-33674 shape), test-only feature: the
            // handshake is scheduled instead of started, and bytes arriving
            // before it runs — `unconsumed` included — are dropped.
            drop(unconsumed);
            let me = self.rc();
            if let Some(h) = self.core.event_loop() {
                h.call_soon(move || {
                    me.st.borrow_mut().started = true;
                    me.flush_output();
                });
            }
        }
        #[cfg(not(feature = "broken-scheduled-handshake"))]
        {
            self.flush_output();
            if !unconsumed.is_empty() {
                self.feed(&unconsumed);
            }
        }
    }

    fn arm_handshake_timer(&self) {
        let Some(h) = self.core.event_loop() else {
            return;
        };
        let weak = self.me.clone();
        let timer = h.call_later(self.handshake_timeout, move || {
            if let Some(me) = weak.upgrade() {
                if me.st.borrow().phase == Phase::Handshaking {
                    me.fail(TlsError::HandshakeTimeout.into_io(), true);
                }
            }
        });
        if let Some(old) = self.st.borrow_mut().handshake_timer.replace(timer) {
            old.cancel();
        }
    }

    fn arm_shutdown_timer(&self) {
        let Some(h) = self.core.event_loop() else {
            return;
        };
        let weak = self.me.clone();
        let timer = h.call_later(self.shutdown_timeout, move || {
            if let Some(me) = weak.upgrade() {
                let phase = me.st.borrow().phase;
                if matches!(phase, Phase::Wrapped | Phase::ShuttingDown) {
                    me.fail(TlsError::ShutdownTimeout.into_io(), true);
                }
            }
        });
        if let Some(old) = self.st.borrow_mut().shutdown_timer.replace(timer) {
            old.cancel();
        }
    }

    fn schedule(&self) {
        self.core.schedule();
    }

    /// Feeds the engine, delivers what is deliverable, keeps flow control.
    fn run_tls(&self) {
        self.pump();
        let live = {
            let st = self.st.borrow();
            st.established && !st.gated
        };
        if live {
            dispatch(self);
            let loss = {
                let mut st = self.st.borrow_mut();
                if st.pending_loss.is_some() && !self.core.delivery().has_held() {
                    st.pending_loss.take()
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

    /// Pauses the raw transport's reading while too much plaintext is held
    /// for a paused application, resumes it once enough was delivered (T5).
    fn control_raw_reading(&self) {
        let Some(raw) = self.raw() else { return };
        let held = self.core.delivery().held_bytes();
        let mut st = self.st.borrow_mut();
        if st.phase == Phase::Done {
            return;
        }
        if !st.raw_read_paused && held > TLS_READ_HIGH_WATER as u64 {
            st.raw_read_paused = true;
            raw.pause_reading();
        } else if st.raw_read_paused && held <= TLS_READ_LOW_WATER as u64 {
            st.raw_read_paused = false;
            raw.resume_reading();
        }
    }

    /// Writes whatever the engine has to send to the raw transport.
    fn flush_output(&self) {
        let Some(raw) = self.raw() else { return };
        flush_engine(&mut self.st.borrow_mut(), raw);
    }

    /// One engine step over received ciphertext (T1: in every phase).
    fn feed(&self, mut data: &[u8]) {
        let Some(raw) = self.raw() else { return };
        let mut st = self.st.borrow_mut();
        if st.phase == Phase::Done {
            return;
        }
        #[cfg(feature = "broken-scheduled-handshake")]
        if !st.started {
            // BROKEN ON PURPOSE: see `start_handshake`.
            tracing::debug!(n = data.len(), "broken-scheduled-handshake: dropping bytes");
            return;
        }
        let mut failure = None;
        while !data.is_empty() {
            if st.peer_closed {
                tracing::debug!(n = data.len(), "ignoring bytes after close_notify");
                break;
            }
            match st.conn.read_tls(&mut data) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    failure = Some(io::Error::other(e));
                    break;
                }
            }
            match st.conn.process_new_packets() {
                Ok(io_state) => {
                    let n = io_state.plaintext_bytes_to_read();
                    if n > 0 {
                        let mut buf = vec![0; n];
                        if let Err(e) = st.conn.reader().read_exact(&mut buf) {
                            failure = Some(e);
                            break;
                        }
                        if st.closing {
                            self.core.delivery_mut().push_discarded(n);
                        } else {
                            self.core.delivery_mut().push_data(buf);
                        }
                    }
                    if io_state.peer_has_closed() {
                        st.peer_closed = true;
                    }
                }
                Err(e) => {
                    failure = Some(TlsError::Engine(e).into_io());
                    break;
                }
            }
            if st.phase == Phase::Handshaking && !st.conn.is_handshaking() {
                self.handshake_completed(&mut st);
            }
        }
        // Handshake flights, alerts (a failure's included), key updates.
        flush_engine(&mut st, raw);
        if let Some(e) = failure {
            drop(st);
            self.fail(e, false);
            return;
        }
        if st.peer_closed {
            if st.phase == Phase::ShuttingDown {
                // Both close_notify sent: the TLS session is over.
                raw.close();
            } else if !st.closing && !st.eof_pushed {
                st.eof_pushed = true;
                self.core.delivery_mut().push_eof();
            }
        }
        drop(st);
        self.pump();
        self.control_raw_reading();
        self.schedule();
    }

    fn handshake_completed(&self, st: &mut State) {
        st.phase = Phase::Wrapped;
        st.established = true;
        if let Some(t) = st.handshake_timer.take() {
            t.cancel();
        }
        let server_name = match &st.conn {
            Connection::Server(s) => s.server_name().map(str::to_string),
            Connection::Client(_) => self.client_name.clone(),
        };
        let c = &st.conn;
        let info = TlsInfo {
            version: c
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            cipher_suite: c
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default(),
            alpn_protocol: c.alpn_protocol().map(<[u8]>::to_vec),
            peer_certificates: c
                .peer_certificates()
                .map(|cs| cs.iter().map(|c| c.to_vec()).collect())
                .unwrap_or_default(),
            server_name,
        };
        tracing::debug!(?info, "TLS handshake completed");
        st.info = Some(info);
        if let Some(tx) = st.waiter.take() {
            // If nobody listens any more, the waiter's drop already aborted.
            let _ = tx.send(Ok(()));
        }
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
    fn pump(&self) {
        let Some(raw) = self.raw() else { return };
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        if st.phase != Phase::Wrapped {
            return;
        }
        let (_, raw_high) = raw.get_write_buffer_limits();
        let mut failure = None;
        loop {
            if self.write_buffer_size() == 0 {
                break;
            }
            if raw.is_closing() {
                // It would drop what we write: keep it counted in the backlog,
                // so that it ends in an error, not in silence.
                break;
            }
            if !st.closing && (st.raw_write_paused || raw.get_write_buffer_size() > raw_high) {
                break;
            }
            let written = self.core.with_send_queue(|queue| {
                queue.seal();
                let slices = queue.front_slices(FEED_SLICES, FEED_CHUNK);
                let written = st.conn.writer().write_vectored(&slices);
                drop(slices);
                if let Ok(n) = written {
                    queue.advance(n);
                }
                written
            });
            let n = match written {
                Ok(n) => n,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            flush_engine(st, raw);
            if n == 0 {
                break;
            }
        }
        if st.closing && self.write_buffer_size() == 0 && failure.is_none() {
            st.conn.send_close_notify();
            flush_engine(st, raw);
            st.phase = Phase::ShuttingDown;
            if st.peer_closed {
                raw.close();
            }
        }
        drop(guard);
        if let Some(e) = failure {
            self.fail(e, false);
        }
    }

    /// Ends the connection with `error`. A handshake failure goes to the
    /// waiter (or the log, for a server) and the application hears nothing;
    /// later, the application gets `connection_lost(error)`. The raw
    /// transport is aborted, or closed so that a pending alert still goes out.
    fn fail(&self, error: io::Error, abort_raw: bool) {
        let mut st = self.st.borrow_mut();
        let was = st.phase;
        if was == Phase::Done {
            return;
        }
        st.phase = Phase::Done;
        st.pending_loss = None;
        self.core.discard_unsent();
        let timers = [st.handshake_timer.take(), st.shutdown_timer.take()];
        let waiter = st.waiter.take();
        drop(st);
        for t in timers.into_iter().flatten() {
            t.cancel();
        }
        if let Some(raw) = self.raw() {
            if abort_raw {
                raw.abort();
            } else {
                raw.close();
                self.bound_raw_close(raw);
            }
        }
        if was == Phase::Handshaking {
            match waiter {
                Some(tx) => {
                    let _ = tx.send(Err(error));
                }
                None => tracing::info!(
                    peer = ?self.raw().and_then(Transport::peer_addr),
                    %error,
                    "TLS handshake failed"
                ),
            }
        } else {
            tracing::debug!(%error, "TLS connection failed");
            self.core.delivery_mut().lose(Some(error));
        }
        self.schedule();
    }

    /// The raw transport's EOF. Returns whether the raw transport keeps its
    /// write side open (else it closes itself, flushing what it holds).
    fn on_raw_eof(&self) -> bool {
        let (phase, peer_closed) = {
            let st = self.st.borrow();
            (st.phase, st.peer_closed)
        };
        match phase {
            Phase::Handshaking => {
                let e = io::Error::new(io::ErrorKind::ConnectionReset, TlsError::Truncated);
                self.fail(e, false);
                false
            }
            // The peer's close_notify came first: a clean TLS EOF, already
            // on its way to the application. The peer may only have
            // half-closed, so our backlog and our close_notify still go out;
            // the application's close() (or its eof_received returning
            // false) ends the connection, bounded by the shutdown timeout.
            Phase::Wrapped if peer_closed => true,
            Phase::Wrapped => {
                // Truncation: the raw transport closes itself and
                // `on_raw_lost` reports it; a peer that stopped reading must
                // not hold that close open for ever.
                if let Some(raw) = self.raw() {
                    self.bound_raw_close(raw);
                }
                false
            }
            // Shutting down: the raw transport closes itself, under the
            // shutdown timer armed by close().
            Phase::ShuttingDown | Phase::Done => false,
        }
    }

    /// Aborts `raw` if its graceful close has not released the socket
    /// within the shutdown timeout: a peer that stopped reading would
    /// otherwise keep it open for ever. The timer goes away with the socket.
    fn bound_raw_close(&self, raw: &Transport) {
        let Some(h) = self.core.event_loop() else {
            return;
        };
        let target = raw.clone();
        let timer = h.call_later(self.shutdown_timeout, move || {
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
    fn on_raw_lost(&self, error: Option<io::Error>) {
        let mut st = self.st.borrow_mut();
        let was = st.phase;
        if was == Phase::Done {
            return;
        }
        if was == Phase::Handshaking {
            drop(st);
            let e = error.unwrap_or_else(|| {
                io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "connection closed during the TLS handshake",
                )
            });
            self.fail(e, true);
            return;
        }
        st.phase = Phase::Done;
        let unsent = self.core.discard_unsent();
        let timers = [st.handshake_timer.take(), st.shutdown_timer.take()];
        for t in timers.into_iter().flatten() {
            t.cancel();
        }
        match error {
            Some(e) => {
                drop(st);
                self.core.delivery_mut().lose(Some(e));
            }
            None => {
                // Plaintext received before the end is delivered first. The
                // end is clean only if TLS closed cleanly (our close or the
                // peer's close_notify) and everything written went out.
                let outcome = if !(st.closing || st.peer_closed) {
                    Some(TlsError::Truncated.into_io())
                } else if unsent > 0 {
                    tracing::debug!(unsent, "TLS connection ended with unsent data");
                    Some(TlsError::Unsent { bytes: unsent }.into_io())
                } else {
                    None
                };
                st.pending_loss = Some(outcome);
            }
        }
        self.schedule();
    }

    fn on_raw_pause_writing(&self) {
        self.st.borrow_mut().raw_write_paused = true;
    }

    fn on_raw_resume_writing(&self) {
        let mut st = self.st.borrow_mut();
        debug_assert!(
            st.raw_write_paused,
            "resume_writing without pause_writing (gh-109051)"
        );
        st.raw_write_paused = false;
        drop(st);
        self.pump();
        self.schedule();
    }

    fn open_gate(&self) {
        self.st.borrow_mut().gated = false;
        self.schedule();
    }
}

/// Moves the engine's pending output to the raw transport.
fn flush_engine(st: &mut State, raw: &Transport) {
    if !st.conn.wants_write() {
        return;
    }
    let mut out = Vec::new();
    while st.conn.wants_write() {
        match st.conn.write_tls(&mut out) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    if !out.is_empty() {
        raw.write_bytes(Bytes::from(out));
    }
}

impl TransportImpl for TlsConn {
    fn core(&self) -> &TransportCore {
        &self.core
    }

    fn run(&self) {
        self.run_tls();
    }

    fn accepts_writes(&self) -> bool {
        let st = self.st.borrow();
        !st.closing && st.phase != Phase::Done
    }

    /// Not coalesced: every write stays a slice of its own, so a step of
    /// the write pump feeds the engine at most `FEED_SLICES` writes.
    fn write(&self, data: &[u8]) {
        self.write_bytes(Bytes::copy_from_slice(data));
    }

    fn fail(&self, error: io::Error) {
        TlsConn::fail(self, error, true)
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

    fn close(&self) {
        let mut st = self.st.borrow_mut();
        if st.closing {
            return;
        }
        st.closing = true;
        let phase = st.phase;
        drop(st);
        // Receive nothing more (like a plain transport's close).
        self.core.delivery_mut().close_reading();
        if phase == Phase::Done {
            // The connection already ended (raw transport gone, or failed):
            // `connection_lost` only waited for held plaintext, now dropped,
            // not for a `resume_reading` that may never come.
            self.schedule();
            return;
        }
        if phase == Phase::Handshaking {
            // bpo-29743: no close_notify mid-handshake, just abort.
            let e = io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "TLS transport closed during the handshake",
            );
            self.fail(e, true);
            return;
        }
        self.arm_shutdown_timer();
        self.pump();
        self.schedule();
    }

    fn abort(&self) {
        let mut st = self.st.borrow_mut();
        let was = st.phase;
        st.pending_loss = None;
        drop(st);
        if was == Phase::Done {
            // Held plaintext may still wait for a paused application: drop it.
            self.core.delivery_mut().lose(None);
            self.schedule();
            return;
        }
        if was == Phase::Handshaking {
            let e = io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "TLS transport aborted during the handshake",
            );
            self.fail(e, true);
            return;
        }
        let mut st = self.st.borrow_mut();
        st.phase = Phase::Done;
        self.core.discard_unsent();
        let timers = [st.handshake_timer.take(), st.shutdown_timer.take()];
        drop(st);
        for t in timers.into_iter().flatten() {
            t.cancel();
        }
        if let Some(raw) = self.raw() {
            raw.abort();
        }
        self.core.delivery_mut().lose(None);
        self.schedule();
    }

    /// Also true once the raw transport is closing, whoever closed it
    /// (gh-118950): nothing written from then on can reach the peer.
    fn is_closing(&self) -> bool {
        let st = self.st.borrow();
        st.closing
            || st.phase == Phase::Done
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
        self.st.borrow().info.clone()
    }

    fn raw(&self) -> Option<Transport> {
        TlsConn::raw(self).cloned()
    }

    fn is_released(&self) -> bool {
        TlsConn::raw(self).is_some_and(Transport::is_released)
    }

    fn on_release(&self, f: Box<dyn FnOnce()>) {
        match TlsConn::raw(self) {
            Some(raw) => raw.on_release(f),
            None => f(),
        }
    }
}

/// The protocol on the raw transport: forwards every event to the engine.
struct TlsProtocol(Rc<TlsConn>);

impl BaseProtocol for TlsProtocol {
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

impl Protocol for TlsProtocol {
    fn data_received(&mut self, data: &[u8]) {
        self.0.feed(data);
    }
}

/// A protocol that ignores everything (for a connection refused at start).
pub(crate) struct Refuse;

impl BaseProtocol for Refuse {}

impl Protocol for Refuse {
    fn data_received(&mut self, _data: &[u8]) {}
}

/// Resolves with the TLS transport once the handshake completed. Dropping
/// it earlier aborts the connection; the application then hears nothing.
pub(crate) struct Waiter {
    tls: Option<Rc<TlsConn>>,
    rx: Receiver,
}

impl Waiter {
    pub(crate) fn new(tls: Rc<TlsConn>, rx: Receiver) -> Waiter {
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
            Err(oneshot::Canceled) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "TLS connection dropped before its handshake completed",
            )),
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
