//! Protocol delivery that never nests (L4) and never reorders (R1–R4).
//!
//! A transport keeps a [`Delivery`]: the protocol, the data held for it, and
//! the events it still has to hear about. [`dispatch`] takes the protocol out,
//! calls it once, puts it back, and repeats until nothing is deliverable.
//! A transport method called from inside a callback only changes the
//! `Delivery` state; the running `dispatch` picks the change up right after
//! the callback returns, before any other event of that transport.
#![forbid(unsafe_code)]

use std::any::Any;
use std::cell::RefMut;
use std::io;

use super::flow::{is_pause_edge, WriteEdges};
use super::Transport;
use crate::event_loop::{guarded, CallbackPanicked, ExceptionContext, ExceptionSource};
use crate::inline_deque::InlineDeque;
use crate::protocol::AnyProtocol;

/// Byte accounting of one transport (R1): at `connection_lost`,
/// `received == delivered + discarded`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Bytes that came in from below (driver or TLS engine).
    pub received: u64,
    /// Bytes handed to the protocol.
    pub delivered: u64,
    /// Bytes dropped because the application closed or aborted, or the
    /// connection failed, before they could be delivered.
    pub discarded: u64,
    /// Bytes currently held (received, not yet delivered).
    pub held: u64,
    /// Write side: bytes passed on from the write queue, ever. For a plain
    /// transport, bytes the kernel accepted (what the peer can receive, at
    /// most), counting a send that completed after `abort()`; for TLS,
    /// plaintext handed to the engine. Not part of the balance.
    pub sent: u64,
}

impl Ledger {
    /// Whether every received byte is accounted for.
    pub fn balanced(&self) -> bool {
        self.received == self.delivered + self.discarded + self.held
    }
}

/// Data waiting for the protocol, in arrival order.
#[derive(Debug)]
pub(crate) enum Held {
    Data(Vec<u8>),
    Eof,
}

/// What the protocol of a transport has been told and still must be told.
#[derive(Debug)]
pub(crate) struct Delivery {
    protocol: Option<AnyProtocol>,
    /// A `set_protocol` made while the protocol was out being called (boxed:
    /// rare, and every connection carries the field).
    replacement: Option<Box<AnyProtocol>>,
    /// `connection_made` not yet delivered.
    made_pending: bool,
    /// How many of the write side's edges ([`WriteEdges`]) the current
    /// protocol was told; `None`: a protocol installed by `set_protocol` that
    /// was told nothing yet, and starts from the current level (W2).
    told_write: Option<WriteEdges>,
    /// Received data and EOF not delivered yet, oldest first (inline: an
    /// idle connection's queue owns no memory).
    held: InlineDeque<Held>,
    /// `pause_reading()` is in effect (R2, R3).
    pub(crate) read_paused: bool,
    /// The application closed: nothing more is delivered, bytes that still
    /// arrive are counted as discarded, and no EOF is reported (R4).
    reading_closed: bool,
    /// `connection_lost` is due with this error.
    lost: Option<Option<io::Error>>,
    /// `connection_lost` was delivered; nothing more ever is (R4).
    pub(crate) finished: bool,
    /// A callback is running: `dispatch` must not re-enter (L4).
    busy: bool,
    ledger: Ledger,
}

/// Held data chunks that follow each other are handed to the protocol as
/// one, up to this many bytes: one receive buffer's worth (what the poll
/// driver reads at once), so that a callback never carries more than one
/// receive could have brought.
const COALESCE_MAX: usize = crate::event_loop::RECV_BUF_SIZE;

/// The next thing to tell the protocol.
enum Next {
    Made,
    PauseWriting,
    ResumeWriting,
    /// Data, and the buffers whose bytes were coalesced into it.
    Data(Vec<u8>, Vec<Vec<u8>>),
    Eof,
    Lost(Option<io::Error>),
}

impl Delivery {
    pub(crate) fn new(protocol: AnyProtocol) -> Self {
        Delivery {
            protocol: Some(protocol),
            replacement: None,
            made_pending: true,
            told_write: Some(0),
            held: InlineDeque::new(),
            read_paused: false,
            reading_closed: false,
            lost: None,
            finished: false,
            busy: false,
            ledger: Ledger::default(),
        }
    }

    /// A delivery whose protocol was already told `connection_made` (a
    /// protocol swapped in by `start_tls`).
    pub(crate) fn already_made(protocol: AnyProtocol) -> Self {
        let mut d = Delivery::new(protocol);
        d.made_pending = false;
        d
    }

    /// Appends received bytes.
    pub(crate) fn push_data(&mut self, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        let n = data.len() as u64;
        self.ledger.received += n;
        if !self.accepts_data() {
            self.ledger.discarded += n;
            return;
        }
        self.ledger.held += n;
        self.held.push_back(Held::Data(data));
    }

    /// Puts back, in front of everything held, the part of a chunk a
    /// buffered protocol did not take because it paused, closed, switched
    /// protocol or started TLS mid-chunk (R5). Already counted as received.
    fn hold_front(&mut self, data: Vec<u8>) {
        let n = data.len() as u64;
        if !self.accepts_data() {
            self.ledger.discarded += n;
            return;
        }
        self.ledger.held += n;
        self.held.push_front(Held::Data(data));
    }

    /// Whether received bytes may still reach a protocol.
    fn accepts_data(&self) -> bool {
        self.lost.is_none() && !self.finished && !self.reading_closed
    }

    /// Whether feeding a buffered protocol must stop before the rest of the
    /// chunk: it paused, closed, aborted or handed over to another protocol
    /// (`set_protocol`, `start_tls`) inside `buffer_updated` (R5).
    fn stops_feeding(&self) -> bool {
        // BROKEN ON PURPOSE (`broken-switch-tail-to-old`), a test-only
        // feature: a protocol switch does not stop the feeding, so the old
        // protocol gets the rest of the chunk, as asyncio's
        // `_feed_data_to_buffered_proto(proto, data)` feeds all of it to the
        // protocol it was handed.
        let switched =
            cfg!(not(feature = "broken-switch-tail-to-old")) && self.replacement.is_some();
        self.read_paused || switched || !self.accepts_data()
    }

    /// Records bytes that arrived after the application closed: counted as
    /// received and discarded, never delivered.
    pub(crate) fn push_discarded(&mut self, n: usize) {
        self.ledger.received += n as u64;
        self.ledger.discarded += n as u64;
    }

    /// Appends the end of the stream (ignored once the application closed:
    /// it is never told `eof_received` after `close()`, R4).
    pub(crate) fn push_eof(&mut self) {
        if self.accepts_data() {
            self.held.push_back(Held::Eof);
        }
    }

    /// The application closed: held data (and EOF) is dropped, counted, and
    /// so is everything that still arrives.
    pub(crate) fn close_reading(&mut self) {
        self.reading_closed = true;
        self.discard_held();
    }

    /// Drops held data (the application closed, or the connection failed).
    pub(crate) fn discard_held(&mut self) {
        for h in self.held.drain() {
            if let Held::Data(d) = h {
                self.ledger.held -= d.len() as u64;
                self.ledger.discarded += d.len() as u64;
            }
        }
    }

    /// Schedules `connection_lost(error)` (once; later calls are ignored).
    /// Held data is discarded: the connection is over.
    pub(crate) fn lose(&mut self, error: Option<io::Error>) {
        if self.lost.is_some() || self.finished {
            return;
        }
        self.discard_held();
        self.lost = Some(error);
    }

    /// Whether `connection_lost` is scheduled or delivered.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.is_some() || self.finished
    }

    /// Whether held data or EOF waits for the protocol.
    pub(crate) fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// Bytes held for the protocol.
    pub(crate) fn held_bytes(&self) -> u64 {
        self.ledger.held
    }

    /// R1 accounting at `connection_lost`: every byte received was delivered
    /// or knowingly discarded. A violation is a bug in proactor: fatal in
    /// debug and test builds, logged in release.
    fn check_ledger(&self) {
        let l = self.ledger;
        if l.held != 0 || !l.balanced() {
            if cfg!(debug_assertions) {
                panic!("byte ledger unbalanced at connection_lost: {l:?}");
            }
            tracing::error!(?l, "byte ledger unbalanced at connection_lost");
        }
    }

    pub(crate) fn ledger(&self) -> Ledger {
        self.ledger
    }

    /// Installs a new protocol, now or as soon as the running callback returns.
    /// The new protocol starts out told nothing about writing, so a paused
    /// write side is announced to it with `pause_writing` first; edges the old
    /// protocol was not told yet are not replayed to it.
    ///
    /// Returns the protocol it displaces, for the caller to drop once this
    /// state is no longer borrowed (its `Drop` may call transport methods).
    #[must_use = "drop the displaced protocol after releasing the borrow"]
    pub(crate) fn set_protocol(&mut self, protocol: AnyProtocol) -> Option<AnyProtocol> {
        if self.finished {
            return Some(protocol);
        }
        self.told_write = None;
        if self.busy {
            self.replacement.replace(Box::new(protocol)).map(|p| *p)
        } else {
            self.protocol.replace(protocol)
        }
    }

    /// Appends to `first` (data just taken from the front) the data chunks
    /// held right behind it, up to [`COALESCE_MAX`] bytes in all: what
    /// already arrived reaches the protocol in one callback, not one per
    /// receive (a multishot receive brings a message in ring-buffer-sized
    /// pieces). Returns the emptied buffers, for reuse.
    fn coalesce(&mut self, first: &mut Vec<u8>) -> Vec<Vec<u8>> {
        let mut spent = Vec::new();
        let mut total = first.len();
        for h in self.held.iter() {
            match h {
                Held::Data(next) if total + next.len() <= COALESCE_MAX => total += next.len(),
                _ => break,
            }
        }
        if total == first.len() {
            return spent;
        }
        first.reserve_exact(total - first.len());
        while let Some(Held::Data(next)) = self.held.front() {
            if first.len() + next.len() > COALESCE_MAX {
                break;
            }
            if let Some(Held::Data(next)) = self.held.pop_front() {
                first.extend_from_slice(&next);
                spent.push(next);
            }
        }
        spent
    }

    /// The next event for the protocol, given the write side's `edges`.
    ///
    /// W2, what a protocol sees: every edge the write side recorded, one
    /// callback each, in order — pauses and resumes alternate, starting with
    /// a pause. When the buffered size rises above the high mark and falls
    /// back to the low one before the transport dispatches (a write, then an
    /// earlier send completing, in one loop turn), the protocol is told
    /// `pause_writing()` and then `resume_writing()`, back to back, ahead of
    /// any held data, EOF or `connection_lost`; n such round trips give n
    /// pairs. Edges are never merged or dropped, except that none is
    /// delivered once `connection_lost` is due.
    fn next(&mut self, edges: WriteEdges) -> Option<Next> {
        if self.finished || self.busy {
            return None;
        }
        // The scheduling bug (bpo-33674 shape), kept only to prove the tests
        // catch it: data that is already here goes out before connection_made.
        #[cfg(feature = "broken-early-delivery")]
        if self.made_pending {
            if let Some(Held::Data(d)) = self.held.pop_front() {
                self.ledger.held -= d.len() as u64;
                return Some(Next::Data(d, Vec::new()));
            }
        }
        if self.made_pending {
            self.made_pending = false;
            return Some(Next::Made);
        }
        if self.lost.is_none() {
            // A protocol told nothing yet starts from the current level: the
            // last resume (an even count), then the pause if one is in effect.
            let told = *self.told_write.get_or_insert(edges & !1);
            if told != edges {
                let n = told.wrapping_add(1);
                self.told_write = Some(n);
                return Some(if is_pause_edge(n) {
                    Next::PauseWriting
                } else {
                    Next::ResumeWriting
                });
            }
        }
        if !self.read_paused {
            match self.held.pop_front() {
                Some(Held::Data(mut d)) => {
                    let spent = self.coalesce(&mut d);
                    self.ledger.held -= d.len() as u64;
                    return Some(Next::Data(d, spent));
                }
                Some(Held::Eof) => return Some(Next::Eof),
                None => {}
            }
        }
        if let Some(e) = self.lost.take() {
            self.finished = true;
            self.check_ledger();
            return Some(Next::Lost(e));
        }
        None
    }
}

/// A transport that owns a [`Delivery`].
pub(crate) trait DeliveryHost {
    /// Borrows the delivery state (briefly: never across a callback).
    fn delivery(&self) -> RefMut<'_, Delivery>;
    /// The pause/resume edges the write side recorded so far (W2; see
    /// [`WriteFlow`](super::flow::WriteFlow)).
    fn write_edges(&self) -> WriteEdges;
    /// The handle given to `connection_made`.
    fn handle(&self) -> Transport;
    /// `eof_received` returned false: close the transport.
    fn close_after_eof(&self);
    /// The protocol failed (it panicked, or a buffered protocol gave no
    /// buffer): abort the connection with `error`.
    fn fail(&self, error: io::Error);
    /// A delivered receive buffer, for reuse.
    fn recycle(&self, buf: Vec<u8>);
}

/// Delivers every deliverable event of `host`, one callback at a time.
/// Returns at once if a callback of this protocol is already running (L4):
/// that running dispatch delivers the new events when the callback returns.
///
/// Every callback runs under `catch_unwind` (L5): a panic aborts this
/// connection (its protocol then hears `connection_lost` with a
/// [`CallbackPanicked`] error) and goes to the loop's exception handler.
pub(crate) fn dispatch(host: &dyn DeliveryHost) {
    loop {
        let write_edges = host.write_edges();
        let (next, mut protocol) = {
            let mut d = host.delivery();
            let Some(next) = d.next(write_edges) else {
                return;
            };
            let Some(p) = d.protocol.take() else {
                return;
            };
            d.busy = true;
            (next, p)
        };
        let mut eof_closes = false;
        let mut failure = None;
        let (callback, panic) = match next {
            Next::Made => (
                "connection_made",
                guarded(|| protocol.connection_made(host.handle())).err(),
            ),
            Next::PauseWriting => ("pause_writing", guarded(|| protocol.pause_writing()).err()),
            Next::ResumeWriting => (
                "resume_writing",
                guarded(|| protocol.resume_writing()).err(),
            ),
            Next::Data(buf, spent) => {
                for b in spent {
                    host.recycle(b);
                }
                let panic = deliver_data(host, &mut protocol, buf, &mut failure);
                (protocol.data_callback(), panic)
            }
            Next::Eof => match guarded(|| protocol.eof_received()) {
                Ok(keep_open) => {
                    eof_closes = !keep_open;
                    ("eof_received", None)
                }
                Err(p) => ("eof_received", Some(p)),
            },
            Next::Lost(e) => (
                "connection_lost",
                guarded(|| protocol.connection_lost(e)).err(),
            ),
        };
        let (replaced, finished) = {
            let mut d = host.delivery();
            d.busy = false;
            let replaced = match d.replacement.take() {
                Some(new) => Some(std::mem::replace(&mut protocol, *new)),
                None => None,
            };
            d.protocol = Some(protocol);
            // Once finished nothing is ever delivered again: release it now.
            let finished = if d.finished { d.protocol.take() } else { None };
            (replaced, finished)
        };
        if replaced.is_some() || finished.is_some() {
            for old in [replaced, finished].into_iter().flatten() {
                if let Err(p) = guarded(|| drop(old)) {
                    report_panic(host, "drop", p);
                }
            }
        }
        if let Some(p) = panic {
            let error = CallbackPanicked::io_error(callback, &*p);
            report_panic(host, callback, p);
            failure = Some(error);
        }
        if let Some(e) = failure {
            host.fail(e);
        }
        if eof_closes {
            host.close_after_eof();
        }
    }
}

/// Feeds one held chunk to the protocol (R5: a buffered protocol may stop
/// mid-chunk; the rest goes back to the front of the held data). Only what
/// the protocol took is counted as delivered.
fn deliver_data(
    host: &dyn DeliveryHost,
    protocol: &mut AnyProtocol,
    mut buf: Vec<u8>,
    failure: &mut Option<io::Error>,
) -> Option<Box<dyn Any + Send>> {
    let mut consumed = 0;
    let outcome = guarded(|| {
        let mut stop = || host.delivery().stops_feeding();
        protocol.deliver(&buf, &mut consumed, &mut stop)
    });
    let panic = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => {
            *failure = Some(e);
            None
        }
        Err(p) => Some(p),
    };
    let mut d = host.delivery();
    d.ledger.delivered += consumed as u64;
    if consumed < buf.len() {
        buf.drain(..consumed);
        d.hold_front(buf);
    } else {
        drop(d);
        host.recycle(buf);
    }
    panic
}

/// Hands a protocol's panic to its loop's exception handler.
fn report_panic(host: &dyn DeliveryHost, callback: &'static str, payload: Box<dyn Any + Send>) {
    let transport = host.handle();
    let context = ExceptionContext::from_panic(ExceptionSource::Protocol(callback), payload)
        .with_addresses(transport.peer_addr(), transport.local_addr());
    match transport.loop_handle() {
        Some(h) => h.report_exception(context),
        None => tracing::error!("{} (its loop is gone)", context.message),
    }
}
