//! asyncio's `Handle` and `TimerHandle`, native: what `call_soon`,
//! `call_later` and `call_at` return, and what the loop runs.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};

use crate::bound::ThreadBound;
use crate::errors::{report, Shared};

/// What a handle runs: `context.run(callback, *args)`.
struct Call {
    callback: Py<PyAny>,
    args: Py<PyTuple>,
    context: Py<PyAny>,
}

/// A callback scheduled with `call_soon` (asyncio's `Handle`).
#[pyclass(frozen, module = "proactor._proactor", name = "Handle", weakref)]
pub(crate) struct CallbackHandle {
    call: Mutex<Option<Call>>,
    cancelled: AtomicBool,
    /// For timers: when it is due, on the loop's clock (`loop.time()`).
    when: Option<f64>,
    /// For timers: proactor's handle, to take the callback off the heap
    /// when cancelled (so a cancelled timer holds no references).
    timer: Option<ThreadBound<std::cell::RefCell<Option<proactor::TimerHandle>>>>,
    /// `repr` of the callback, frozen at cancel time as asyncio does.
    repr: Mutex<Option<String>>,
    /// Debug mode: where the handle was made (asyncio's
    /// `Handle._source_traceback`), reported with an exception it raises.
    source_traceback: Option<Py<PyAny>>,
}

static COPY_CONTEXT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static FORMAT_SOURCE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static FORMAT_HANDLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static EXTRACT_STACK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static GETFRAME: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `contextvars.copy_context()`.
fn copy_context(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    COPY_CONTEXT
        .import(py, "contextvars", "copy_context")?
        .call0()
}

/// asyncio's `format_helpers.extract_stack(sys._getframe(0))`: called from
/// a native `call_soon`/`call_later`, frame 0 is its Python caller's.
fn source_traceback(py: Python<'_>) -> PyResult<Py<PyAny>> {
    let frame = GETFRAME.import(py, "sys", "_getframe")?.call1((0,))?;
    Ok(EXTRACT_STACK
        .import(py, "asyncio.format_helpers", "extract_stack")?
        .call1((frame,))?
        .unbind())
}

impl CallbackHandle {
    /// `debug`: the loop is in debug mode (the handle then keeps where it
    /// was made, as asyncio's does).
    pub(crate) fn new(
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
        when: Option<f64>,
        debug: bool,
    ) -> PyResult<CallbackHandle> {
        let context = match context {
            Some(c) if !c.is_none(py) => c,
            _ => copy_context(py)?.unbind(),
        };
        let source_traceback = if debug {
            Some(source_traceback(py)?)
        } else {
            None
        };
        Ok(CallbackHandle {
            call: Mutex::new(Some(Call {
                callback,
                args,
                context,
            })),
            cancelled: AtomicBool::new(false),
            when,
            timer: when.map(|_| ThreadBound::new(std::cell::RefCell::new(None))),
            repr: Mutex::new(None),
            source_traceback,
        })
    }

    /// Remembers proactor's timer, to cancel it with the handle.
    pub(crate) fn set_timer(&self, t: proactor::TimerHandle) {
        if let Some(Ok(slot)) = self.timer.as_ref().map(ThreadBound::get) {
            *slot.borrow_mut() = Some(t);
        }
    }

    fn take_call(&self) -> Option<Call> {
        self.call.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Runs a handle (the closure the loop queues for it). An exception goes to
/// `call_exception_handler`; `SystemExit`/`KeyboardInterrupt` leave the loop.
pub(crate) fn run(py: Python<'_>, shared: &Rc<Shared>, handle: &Bound<'_, CallbackHandle>) {
    let h = handle.get();
    if h.cancelled.load(Ordering::Relaxed) {
        return;
    }
    let call = {
        let guard = h.call.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = guard.as_ref() else { return };
        Call {
            callback: c.callback.clone_ref(py),
            args: c.args.clone_ref(py),
            context: c.context.clone_ref(py),
        }
    };
    let started = shared.debug.get().then(Instant::now);
    let result = run_call(py, &call);
    if let Some(t0) = started {
        warn_if_slow(py, handle, t0.elapsed().as_secs_f64());
    }
    if let Err(e) = result {
        let e = shared.raise_if_base(py, e);
        let context = PyDict::new(py);
        let message = format!("Exception in callback {}", source(py, &call));
        let built = context
            .set_item("message", message)
            .and_then(|_| context.set_item("exception", e.into_value(py)))
            .and_then(|_| context.set_item("handle", handle))
            .and_then(|_| match &h.source_traceback {
                Some(tb) => context.set_item("source_traceback", tb),
                None => Ok(()),
            });
        match built {
            Ok(()) => report(py, shared, context),
            Err(e) => e.write_unraisable(py, None),
        }
    }
}

/// asyncio's debug-mode warning for a callback that ran longer than
/// `loop.slow_callback_duration`.
fn warn_if_slow(py: Python<'_>, handle: &Bound<'_, CallbackHandle>, took: f64) {
    let Some(lp) = crate::errors::current_loop(py) else {
        return;
    };
    let logged = (|| -> PyResult<()> {
        let limit: f64 = lp.getattr("slow_callback_duration")?.extract()?;
        if took < limit {
            return Ok(());
        }
        let text = FORMAT_HANDLE
            .import(py, "asyncio.base_events", "_format_handle")?
            .call1((handle,))?;
        LOGGER
            .import(py, "asyncio.log", "logger")?
            .call_method1("warning", ("Executing %s took %.3f seconds", text, took))?;
        Ok(())
    })();
    if let Err(e) = logged {
        e.write_unraisable(py, Some(&lp));
    }
}

fn run_call(py: Python<'_>, call: &Call) -> PyResult<()> {
    let args = call.args.bind(py);
    let mut full = Vec::with_capacity(args.len() + 1);
    full.push(call.callback.bind(py).clone());
    full.extend(args.iter());
    let full = PyTuple::new(py, full)?;
    call.context
        .bind(py)
        .call_method1(pyo3::intern!(py, "run"), full)?;
    Ok(())
}

/// asyncio's text for a callback: `func(args) at file:line`.
fn source(py: Python<'_>, call: &Call) -> String {
    let formatted = FORMAT_SOURCE
        .import(py, "asyncio.format_helpers", "_format_callback_source")
        .and_then(|f| f.call1((call.callback.bind(py), call.args.bind(py))))
        .and_then(|s| s.extract::<String>());
    formatted.unwrap_or_else(|_| format!("{}", call.callback.bind(py)))
}

#[pymethods]
impl CallbackHandle {
    /// Cancels the callback: it will not run. Idempotent.
    fn cancel(&self, py: Python<'_>) {
        if self.cancelled.swap(true, Ordering::Relaxed) {
            return;
        }
        let call = self.take_call();
        if let Some(c) = &call {
            *self.repr.lock().unwrap_or_else(|e| e.into_inner()) = Some(source(py, c));
        }
        if let Some(Ok(slot)) = self.timer.as_ref().map(ThreadBound::get) {
            let timer = slot.borrow_mut().take();
            if let Some(t) = timer {
                t.cancel();
            }
        }
        drop(call);
    }

    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// When a timer is due (`loop.time()` clock). A plain handle has none.
    fn when(&self) -> PyResult<f64> {
        self.when.ok_or_else(|| {
            pyo3::exceptions::PyAttributeError::new_err("a Handle has no when(); a TimerHandle has")
        })
    }

    fn get_context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        let call = self.call.lock().unwrap_or_else(|e| e.into_inner());
        call.as_ref().map(|c| c.context.clone_ref(py))
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        let call = self.call.lock().unwrap_or_else(|e| e.into_inner());
        call.as_ref().map(|c| c.callback.clone_ref(py))
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        let call = self.call.lock().unwrap_or_else(|e| e.into_inner());
        call.as_ref().map(|c| c.args.clone_ref(py))
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.source_traceback.as_ref().map(|tb| tb.clone_ref(py))
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.when.is_some()
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let kind = if self.when.is_some() {
            "TimerHandle"
        } else {
            "Handle"
        };
        let mut parts = vec![kind.to_string()];
        if let Some(w) = self.when {
            parts.push(format!("when={w}"));
        }
        if self.cancelled() {
            parts.push("cancelled".to_string());
        }
        let call = self.call.lock().unwrap_or_else(|e| e.into_inner());
        match call.as_ref() {
            Some(c) => parts.push(source(py, c)),
            None => {
                if let Some(r) = &*self.repr.lock().unwrap_or_else(|e| e.into_inner()) {
                    parts.push(r.clone());
                }
            }
        }
        format!("<{}>", parts.join(" "))
    }

    fn __lt__(&self, other: &Self) -> bool {
        self.when.unwrap_or(0.0) < other.when.unwrap_or(0.0)
    }

    fn __le__(&self, other: &Self) -> bool {
        self.when.unwrap_or(0.0) <= other.when.unwrap_or(0.0)
    }

    fn __gt__(&self, other: &Self) -> bool {
        self.when.unwrap_or(0.0) > other.when.unwrap_or(0.0)
    }

    fn __ge__(&self, other: &Self) -> bool {
        self.when.unwrap_or(0.0) >= other.when.unwrap_or(0.0)
    }
}
