//! Panics in application code, caught at the loop boundary (L5) and handed
//! to the loop's exception handler, asyncio's `call_exception_handler`.
//!
//! Every place the loop calls user code (protocol callbacks, a server's
//! protocol factory, tasks, `call_soon`/`call_later` callbacks) runs it under
//! `catch_unwind`. The failing connection is aborted and its protocol told
//! `connection_lost(Some(error))` with a [`CallbackPanicked`] inside; a
//! panicking task's [`JoinHandle`](super::JoinHandle) resolves to
//! [`JoinError::Panicked`](super::JoinError); everything else keeps running.
//!
//! The handler is called at a safe point of the loop turn, once the loop's
//! state is consistent again, so a handler that re-raises
//! ([`ExceptionContext::resume_unwind`], crash-fast) leaves a loop that can
//! be run again.

use std::any::Any;
use std::fmt;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use super::Handle;
use crate::address::Address;

/// Where the panicking code was called from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExceptionSource {
    /// A protocol callback (`"data_received"`, `"buffer_updated"`, …, or
    /// `"drop"` for the protocol's destructor).
    Protocol(&'static str),
    /// A server's protocol factory; the accepted connection was closed.
    ProtocolFactory,
    /// A task started with [`Handle::spawn`].
    Task,
    /// A `call_soon`, `call_later`/`call_at` or `call_soon_threadsafe` callback.
    Callback,
    /// proactor's own code (a bug: please report it).
    Internal(&'static str),
}

impl fmt::Display for ExceptionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExceptionSource::Protocol(callback) => write!(f, "protocol callback {callback}"),
            ExceptionSource::ProtocolFactory => f.write_str("protocol factory"),
            ExceptionSource::Task => f.write_str("task"),
            ExceptionSource::Callback => f.write_str("callback"),
            ExceptionSource::Internal(what) => write!(f, "proactor internal {what}"),
        }
    }
}

/// What the exception handler is told about a caught panic.
pub struct ExceptionContext {
    /// Where it happened.
    pub source: ExceptionSource,
    /// `"<source> panicked: <panic message>"`.
    pub message: String,
    /// The peer of the connection it belongs to, if any.
    pub peer: Option<Address>,
    /// Our address on that connection, if any.
    pub local: Option<Address>,
    payload: Option<Box<dyn Any + Send>>,
}

impl fmt::Debug for ExceptionContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExceptionContext")
            .field("source", &self.source)
            .field("message", &self.message)
            .field("peer", &self.peer)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl ExceptionContext {
    pub(crate) fn from_panic(source: ExceptionSource, payload: Box<dyn Any + Send>) -> Self {
        ExceptionContext {
            message: format!("{source} panicked: {}", panic_message(&*payload)),
            source,
            peer: None,
            local: None,
            payload: Some(payload),
        }
    }

    pub(crate) fn with_addresses(mut self, peer: Option<Address>, local: Option<Address>) -> Self {
        self.peer = peer;
        self.local = local;
        self
    }

    /// The panic's own message (`panic!("…")` text), if it had one.
    pub fn panic_message(&self) -> String {
        self.payload
            .as_deref()
            .map_or_else(String::new, panic_message)
    }

    /// Re-raises the panic (crash-fast): call this from a handler that wants
    /// any application panic to unwind out of `run_forever`. The loop stays
    /// consistent and may be run again.
    pub fn resume_unwind(self) -> ! {
        let payload = self
            .payload
            .unwrap_or_else(|| Box::new(self.message.clone()));
        std::panic::resume_unwind(payload)
    }
}

/// The loop's exception handler.
pub(crate) type ExceptionHandler = Rc<dyn Fn(&Handle, ExceptionContext)>;

/// The default handler: one `tracing` event at error level, with the
/// connection's addresses.
pub fn default_exception_handler(_handle: &Handle, context: ExceptionContext) {
    tracing::error!(
        source = %context.source,
        peer = ?context.peer,
        local = ?context.local,
        "{}",
        context.message
    );
}

/// The error a connection ends with when its protocol panicked: found inside
/// the `io::Error` given to `connection_lost` (see [`CallbackPanicked::of`]).
#[derive(Debug, Clone)]
pub struct CallbackPanicked {
    /// The callback that panicked.
    pub callback: &'static str,
    /// The panic message.
    pub message: String,
}

impl CallbackPanicked {
    pub(crate) fn io_error(callback: &'static str, payload: &(dyn Any + Send)) -> io::Error {
        io::Error::other(CallbackPanicked {
            callback,
            message: panic_message(payload),
        })
    }

    /// The `CallbackPanicked` inside `e`, if it is one.
    pub fn of(e: &io::Error) -> Option<&CallbackPanicked> {
        e.get_ref().and_then(|inner| inner.downcast_ref())
    }
}

impl fmt::Display for CallbackPanicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "protocol callback {} panicked: {}",
            self.callback, self.message
        )
    }
}

impl std::error::Error for CallbackPanicked {}

/// The text of a panic payload (`&str` or `String`), or a placeholder.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// Runs `f`, catching a panic. User code the loop calls goes through here.
pub(crate) fn guarded<R>(f: impl FnOnce() -> R) -> Result<R, Box<dyn Any + Send>> {
    catch_unwind(AssertUnwindSafe(f))
}
