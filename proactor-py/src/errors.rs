//! Python exceptions on their way through proactor's loop.
//!
//! asyncio's rules: an exception in a callback goes to the loop's
//! `call_exception_handler`; `SystemExit` and `KeyboardInterrupt` leave
//! `run_forever` at once, the rest of the ready queue staying queued; an
//! exception in a protocol's data callbacks is a fatal error of that
//! connection (reported, then the transport is closed with it).
//!
//! proactor already has that shape for Rust panics (L5): it catches them at
//! the loop boundary, aborts the connection they belong to, and calls its
//! exception handler at a safe point, which may re-raise. So a Python
//! exception that must leave a callback is parked here and proactor is
//! told with a panic payload naming it (`resume_unwind`: no panic hook, no
//! message); the handler installed by [`install_handler`] takes it back and
//! either reports it to Python or re-raises the unwinding for a
//! `SystemExit`/`KeyboardInterrupt`, which `LoopCore` turns back into the
//! Python exception. No Rust panic ever reaches Python: the `LoopCore`
//! methods catch every unwind.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::panic::resume_unwind;
use std::rc::Rc;

use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyRuntimeError, PySystemExit};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Prefix of the panic payloads that carry a parked Python exception.
const MARKER: &str = "\u{0}proactor-py:";

/// Per-loop state for exceptions in flight.
#[derive(Default)]
pub(crate) struct Shared {
    /// A `SystemExit`/`KeyboardInterrupt` to raise out of `run_*`.
    base_exc: RefCell<Option<PyErr>>,
    /// Fatal protocol errors waiting for proactor's exception handler.
    fatal: RefCell<HashMap<u64, Fatal>>,
    next_id: Cell<u64>,
    /// asyncio's debug mode (`loop.set_debug`): callbacks are timed.
    pub(crate) debug: Cell<bool>,
}

/// A protocol callback failed: what `call_exception_handler` is told.
pub(crate) struct Fatal {
    pub(crate) error: PyErr,
    pub(crate) message: &'static str,
    pub(crate) protocol: Option<Py<PyAny>>,
    pub(crate) transport: Option<Py<PyAny>>,
}

impl Shared {
    /// The `SystemExit`/`KeyboardInterrupt` that stopped the loop, if any.
    pub(crate) fn take_base_exc(&self) -> Option<PyErr> {
        self.base_exc.borrow_mut().take()
    }

    /// Leaves the running callback with `error`, unless it is an ordinary
    /// exception (the caller reports those itself): `SystemExit` and
    /// `KeyboardInterrupt` unwind to `run_*` (asyncio's behaviour).
    pub(crate) fn raise_if_base(&self, py: Python<'_>, error: PyErr) -> PyErr {
        if is_exit(py, &error) {
            *self.base_exc.borrow_mut() = Some(error);
            resume_unwind(Box::new(format!("{MARKER}exit")))
        }
        error
    }

    /// Ends the current protocol callback with a fatal error: proactor aborts
    /// the connection and its handler reports `fatal` to Python.
    pub(crate) fn fail_protocol(&self, py: Python<'_>, fatal: Fatal) -> ! {
        let Fatal { error, .. } = &fatal;
        if is_exit(py, error) {
            *self.base_exc.borrow_mut() = Some(fatal.error);
            resume_unwind(Box::new(format!("{MARKER}exit")))
        }
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        self.fatal.borrow_mut().insert(id, fatal);
        resume_unwind(Box::new(format!("{MARKER}{id}")))
    }
}

fn is_exit(py: Python<'_>, e: &PyErr) -> bool {
    e.is_instance_of::<PySystemExit>(py) || e.is_instance_of::<PyKeyboardInterrupt>(py)
}

thread_local! {
    /// The Python loop objects running (or closing) on this thread,
    /// innermost last: callbacks report to it.
    static CURRENT: RefCell<Vec<Py<PyAny>>> = const { RefCell::new(Vec::new()) };
}

/// Marks `lp` as the loop whose callbacks run on this thread until dropped.
pub(crate) struct Entered;

impl Entered {
    pub(crate) fn new(lp: Py<PyAny>) -> Entered {
        CURRENT.with(|c| c.borrow_mut().push(lp));
        Entered
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let lp = CURRENT.with(|c| c.borrow_mut().pop());
        drop(lp);
    }
}

/// The loop object whose callbacks run now.
pub(crate) fn current_loop(py: Python<'_>) -> Option<Bound<'_, PyAny>> {
    CURRENT.with(|c| c.borrow().last().map(|l| l.bind(py).clone()))
}

/// `loop.call_exception_handler(context)`; an exception it raises is
/// printed as unraisable, except `SystemExit`/`KeyboardInterrupt`, which
/// leave the loop.
pub(crate) fn report(py: Python<'_>, shared: &Shared, context: Bound<'_, PyDict>) {
    let Some(lp) = current_loop(py) else {
        print_context(py, &context);
        return;
    };
    if let Err(e) = lp.call_method1("call_exception_handler", (context,)) {
        let e = shared.raise_if_base(py, e);
        e.write_unraisable(py, Some(&lp));
    }
}

fn print_context(py: Python<'_>, context: &Bound<'_, PyDict>) {
    let e = PyRuntimeError::new_err(format!("{context}"));
    e.write_unraisable(py, None);
}

/// Installs proactor's exception handler for a loop (see the module docs).
pub(crate) fn install_handler(handle: &proactor::Handle, shared: Rc<Shared>) {
    handle.set_exception_handler(move |_, ctx| {
        if shared.base_exc.borrow().is_some() {
            ctx.resume_unwind();
        }
        Python::attach(|py| {
            let message = ctx.panic_message();
            let fatal = message
                .strip_prefix(MARKER)
                .and_then(|id| id.parse::<u64>().ok())
                .and_then(|id| shared.fatal.borrow_mut().remove(&id));
            let built = match fatal {
                Some(f) => fatal_context(py, f),
                None => internal_context(py, &ctx),
            };
            match built {
                Ok(context) => report(py, &shared, context),
                Err(e) => e.write_unraisable(py, None),
            }
        });
        if shared.base_exc.borrow().is_some() {
            ctx.resume_unwind();
        }
    });
}

fn fatal_context(py: Python<'_>, f: Fatal) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("message", f.message)?;
    d.set_item("exception", f.error.into_value(py))?;
    if let Some(t) = f.transport {
        d.set_item("transport", t)?;
    }
    if let Some(p) = f.protocol {
        d.set_item("protocol", p)?;
    }
    Ok(d)
}

/// A panic in Rust code (proactor's or ours): a bug, reported as a
/// `RuntimeError` rather than crossing into Python.
fn internal_context<'py>(
    py: Python<'py>,
    ctx: &proactor::ExceptionContext,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("message", format!("proactor: {}", ctx.message))?;
    let e = PyRuntimeError::new_err(ctx.message.clone());
    d.set_item("exception", e.into_value(py))?;
    if let Some(peer) = &ctx.peer {
        d.set_item("peername", peer.to_string())?;
    }
    Ok(d)
}

/// An `OSError` with the errno of `e` (Python picks the subclass:
/// `ConnectionRefusedError` for `ECONNREFUSED`...).
pub(crate) fn os_error(e: &io::Error) -> PyErr {
    if let Some(p) = proactor::CallbackPanicked::of(e) {
        return PyRuntimeError::new_err(p.to_string());
    }
    match e.raw_os_error() {
        Some(code) => PyOSError::new_err((code, strerror(code))),
        None => match e.kind() {
            io::ErrorKind::Unsupported => {
                pyo3::exceptions::PyNotImplementedError::new_err(e.to_string())
            }
            _ => PyOSError::new_err(e.to_string()),
        },
    }
}

fn strerror(code: i32) -> String {
    let s = io::Error::from_raw_os_error(code).to_string();
    // "Connection refused (os error 111)" -> "Connection refused"
    match s.rfind(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The message of a caught panic payload.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}
