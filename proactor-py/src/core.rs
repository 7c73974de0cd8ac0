//! `LoopCore`: the native half of `proactor.Loop` (the Python class adds
//! asyncio's API around it). It owns a proactor [`EventLoop`]: its ready
//! queue, timers and driver are the loop's.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proactor::{DriverKind, EventLoop, RemoteHandle};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::bound::ThreadBound;
use crate::errors::{install_handler, panic_text, Entered, Shared};
use crate::handles::{self, CallbackHandle};

/// The loop state that lives on the loop's thread.
pub(crate) struct Local {
    pub(crate) event_loop: EventLoop,
    pub(crate) handle: proactor::Handle,
    pub(crate) shared: Rc<Shared>,
}

#[pyclass(frozen, subclass, module = "proactor._proactor")]
pub(crate) struct LoopCore {
    pub(crate) local: ThreadBound<Local>,
    remote: RemoteHandle,
    /// `loop.time()` at `anchor`: the clock is `time.monotonic()`'s.
    anchor: Instant,
    anchor_time: f64,
    closed: AtomicBool,
    driver: DriverKind,
    /// `call_soon_threadsafe` callbacks from other threads, moved to the
    /// ready queue before the next local `call_soon` (so the two keep the
    /// order they were called in, as in asyncio's single ready queue) or
    /// by the wake-up they send, whichever comes first.
    foreign: Mutex<Vec<Py<CallbackHandle>>>,
    has_foreign: AtomicBool,
    /// asyncio's debug mode: `call_soon`/`call_later`/`call_at` from another
    /// thread raise (without it they are forwarded, as asyncio lets them run).
    debug: AtomicBool,
}

impl LoopCore {
    pub(crate) fn local(&self) -> PyResult<&Local> {
        self.local.get()
    }

    fn check_open(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Relaxed) {
            Err(PyRuntimeError::new_err("Event loop is closed"))
        } else {
            Ok(())
        }
    }

    /// Queues a handle on proactor's ready queue (loop thread only).
    fn enqueue(&self, local: &Local, h: Py<CallbackHandle>) {
        let shared = local.shared.clone();
        local.handle.call_soon(move || {
            Python::attach(|py| handles::run(py, &shared, h.bind(py)));
        });
    }

    /// Moves callbacks other threads sent to the ready queue.
    pub(crate) fn take_foreign(&self, local: &Local) {
        if !self.has_foreign.swap(false, Ordering::AcqRel) {
            return;
        }
        let pending = std::mem::take(&mut *self.foreign.lock().unwrap_or_else(|e| e.into_inner()));
        for h in pending {
            self.enqueue(local, h);
        }
    }

    /// Called from a thread other than the loop's, outside debug mode:
    /// asyncio does not check the thread there, so the call is forwarded.
    fn forward_foreign(&self) -> bool {
        self.local.get().is_err() && !self.debug.load(Ordering::Relaxed)
    }

    /// `call_at` from another thread outside debug mode: the handle is made
    /// here, the timer is armed on the loop's thread. (Its `cancel()` then
    /// only marks it: the timer stays armed, and does nothing when due.)
    fn call_at_foreign(
        &self,
        py: Python<'_>,
        when: f64,
        callback: Py<PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<CallbackHandle>> {
        if !callback.bind(py).is_callable() {
            return Err(PyTypeError::new_err(format!(
                "a callable object was expected by call_at(), got {}",
                callback.bind(py).repr()?
            )));
        }
        self.check_open()?;
        let h = Py::new(
            py,
            CallbackHandle::new(
                py,
                callback,
                args.unbind(),
                context,
                Some(when),
                self.debug.load(Ordering::Relaxed),
            )?,
        )?;
        let run = h.clone_ref(py);
        self.remote.call_soon_threadsafe(move || {
            Python::attach(|py| {
                let Some(lp) = crate::errors::current_loop(py) else {
                    return;
                };
                let Ok(core) = lp.cast::<LoopCore>() else {
                    return;
                };
                let core = core.get();
                let Ok(local) = core.local() else {
                    return;
                };
                let d = when - core.now();
                let delay = if d.is_finite() && d > 0.0 {
                    Duration::try_from_secs_f64(d).unwrap_or(Duration::MAX)
                } else if d > 0.0 {
                    Duration::MAX
                } else {
                    Duration::ZERO
                };
                let shared = local.shared.clone();
                local.handle.call_later(delay, move || {
                    Python::attach(|py| handles::run(py, &shared, run.bind(py)))
                });
            });
        });
        Ok(h)
    }

    fn now(&self) -> f64 {
        self.anchor_time + self.anchor.elapsed().as_secs_f64()
    }

    fn schedule(
        &self,
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
        when: Option<f64>,
        what: &str,
    ) -> PyResult<(Py<CallbackHandle>, Rc<Shared>, Option<Duration>)> {
        if !callback.bind(py).is_callable() {
            return Err(PyTypeError::new_err(format!(
                "a callable object was expected by {what}(), got {}",
                callback.bind(py).repr()?
            )));
        }
        let local = self.local()?;
        self.check_open()?;
        let delay = when.map(|w| {
            let d = w - self.now();
            if d.is_finite() && d > 0.0 {
                Duration::try_from_secs_f64(d).unwrap_or(Duration::MAX)
            } else if d.is_nan() {
                Duration::ZERO
            } else if d > 0.0 {
                Duration::MAX
            } else {
                Duration::ZERO
            }
        });
        let h = Py::new(
            py,
            CallbackHandle::new(
                py,
                callback,
                args.unbind(),
                context,
                when,
                self.debug.load(Ordering::Relaxed),
            )?,
        )?;
        Ok((h, local.shared.clone(), delay))
    }
}

#[pymethods]
impl LoopCore {
    /// A loop on `driver` (`"uring"`, `"poll"`; default: `PROACTOR_DRIVER`,
    /// else io_uring with a fallback to epoll).
    #[new]
    #[pyo3(signature = (driver=None, *_args, **_kwargs))]
    fn new(
        py: Python<'_>,
        driver: Option<&str>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let mut builder = EventLoop::builder();
        if let Some(d) = driver {
            let kind: DriverKind = d
                .parse()
                .map_err(|e: std::io::Error| PyValueError::new_err(e.to_string()))?;
            builder = builder.driver(kind);
        }
        let event_loop = builder.build().map_err(|e| crate::errors::os_error(&e))?;
        let handle = event_loop.handle();
        let shared = Rc::new(Shared::default());
        install_handler(&handle, shared.clone());
        let remote = handle.remote();
        let signals = remote.clone();
        crate::gil::release_while_waiting(&handle, move || {
            // A signal may have ended the sleep: let Python run its handlers
            // at the start of the next batch of callbacks.
            signals.call_soon_threadsafe(check_signals);
        });
        let anchor_time: f64 = py.import("time")?.call_method0("monotonic")?.extract()?;
        Ok(LoopCore {
            driver: handle.driver_kind(),
            local: ThreadBound::new(Local {
                event_loop,
                handle,
                shared,
            }),
            remote,
            anchor: Instant::now(),
            anchor_time,
            closed: AtomicBool::new(false),
            foreign: Mutex::new(Vec::new()),
            has_foreign: AtomicBool::new(false),
            debug: AtomicBool::new(false),
        })
    }

    /// Keeps the native side's copy of asyncio's debug flag.
    fn _set_native_debug(&self, enabled: bool) {
        self.debug.store(enabled, Ordering::Relaxed);
        if let Ok(local) = self.local() {
            local.shared.debug.set(enabled);
        }
    }

    /// The driver this loop runs on: `"uring"` or `"poll"`.
    #[getter]
    fn _driver(&self) -> &'static str {
        self.driver.name()
    }

    fn time(&self) -> f64 {
        self.now()
    }

    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon(
        &self,
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<CallbackHandle>> {
        if self.forward_foreign() {
            return self.call_soon_threadsafe(py, callback, args, context);
        }
        let (h, shared, _) = self.schedule(py, callback, args, context, None, "call_soon")?;
        let _ = shared;
        let local = self.local()?;
        self.take_foreign(local);
        self.enqueue(local, h.clone_ref(py));
        Ok(h)
    }

    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon_threadsafe(
        &self,
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<CallbackHandle>> {
        if !callback.bind(py).is_callable() {
            return Err(PyTypeError::new_err(format!(
                "a callable object was expected by call_soon_threadsafe(), got {}",
                callback.bind(py).repr()?
            )));
        }
        self.check_open()?;
        let h = Py::new(
            py,
            CallbackHandle::new(
                py,
                callback,
                args.unbind(),
                context,
                None,
                self.debug.load(Ordering::Relaxed),
            )?,
        )?;
        if let Ok(local) = self.local() {
            // On the loop's own thread: an ordinary call_soon.
            self.take_foreign(local);
            self.enqueue(local, h.clone_ref(py));
            return Ok(h);
        }
        self.foreign
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(h.clone_ref(py));
        self.has_foreign.store(true, Ordering::Release);
        self.remote.call_soon_threadsafe(|| {
            Python::attach(|py| {
                let Some(lp) = crate::errors::current_loop(py) else {
                    return;
                };
                let Ok(core) = lp.cast::<LoopCore>() else {
                    return;
                };
                let core = core.get();
                if let Ok(local) = core.local() {
                    core.take_foreign(local);
                }
            });
        });
        Ok(h)
    }

    #[pyo3(signature = (delay, callback, *args, context=None))]
    fn call_later(
        &self,
        py: Python<'_>,
        delay: f64,
        callback: Py<PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<CallbackHandle>> {
        let when = self.now() + delay;
        self.call_at(py, when, callback, args, context)
    }

    #[pyo3(signature = (when, callback, *args, context=None))]
    fn call_at(
        &self,
        py: Python<'_>,
        when: f64,
        callback: Py<PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<CallbackHandle>> {
        if self.forward_foreign() {
            return self.call_at_foreign(py, when, callback, args, context);
        }
        let (h, shared, delay) =
            self.schedule(py, callback, args, context, Some(when), "call_at")?;
        let run = h.clone_ref(py);
        let timer = self
            .local()?
            .handle
            .call_later(delay.unwrap_or(Duration::ZERO), move || {
                Python::attach(|py| handles::run(py, &shared, run.bind(py)))
            });
        h.get().set_timer(timer);
        Ok(h)
    }

    /// Runs until `stop()`; the Python side sets the running loop first.
    fn _run_forever(slf: &Bound<'_, Self>) -> PyResult<()> {
        let core = slf.get();
        let local = core.local()?;
        core.check_open()?;
        let _entered = Entered::new(slf.clone().into_any().unbind());
        let outcome = catch_unwind(AssertUnwindSafe(|| local.event_loop.run_forever()));
        finish(&local.shared, outcome)
    }

    /// Stops the loop after the current step. From another thread (which
    /// asyncio lets set its flag without an error) the stop is sent to the
    /// loop's thread, waking it.
    fn stop(&self) {
        match self.local() {
            Ok(local) => local.handle.stop(),
            Err(_) => self.remote.call_soon_threadsafe(|| {
                Python::attach(|py| {
                    let Some(lp) = crate::errors::current_loop(py) else {
                        return;
                    };
                    if let Ok(core) = lp.cast::<LoopCore>() {
                        if let Ok(local) = core.get().local() {
                            local.handle.stop();
                        }
                    }
                })
            }),
        }
    }

    /// Closes proactor's loop: transports aborted, servers closed, every
    /// queued callback and timer dropped.
    fn _close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let core = slf.get();
        let local = core.local()?;
        if core.closed.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        let _entered = Entered::new(slf.clone().into_any().unbind());
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            local.event_loop.close().map_err(std::io::Error::from)
        }));
        finish(&local.shared, outcome)
    }

    fn _is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    fn _is_running(&self) -> PyResult<bool> {
        Ok(self.local()?.handle.is_running())
    }

    /// Sizes of proactor's tables (leak checks in tests).
    fn _table_sizes(&self) -> PyResult<(usize, usize, usize, usize, usize)> {
        let t = self.local()?.handle.table_sizes();
        Ok((t.ops_in_flight, t.tasks, t.timers, t.ready, t.transports))
    }
}

/// The result of running or closing the loop: a `SystemExit` or
/// `KeyboardInterrupt` parked by a callback is raised here; any other
/// unwinding (a bug) becomes a `RuntimeError`, never a Rust panic in Python.
fn finish(shared: &Shared, outcome: std::thread::Result<std::io::Result<()>>) -> PyResult<()> {
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => match shared.take_base_exc() {
            Some(b) => Err(b),
            None => Err(crate::errors::os_error(&e)),
        },
        Err(payload) => match shared.take_base_exc() {
            Some(b) => Err(b),
            None => Err(PyRuntimeError::new_err(format!(
                "proactor: internal panic: {}",
                panic_text(&*payload)
            ))),
        },
    }
}

/// Runs Python's pending signal handlers (on the main thread); one that
/// raises `KeyboardInterrupt` stops the loop like any callback would.
fn check_signals() {
    Python::attach(|py| {
        if let Err(e) = py.check_signals() {
            let Some(lp) = crate::errors::current_loop(py) else {
                e.restore(py);
                return;
            };
            let Ok(core) = lp.cast::<LoopCore>() else {
                return;
            };
            let Ok(local) = core.get().local() else {
                return;
            };
            let shared = local.shared.clone();
            let e = shared.raise_if_base(py, e);
            e.write_unraisable(py, Some(&lp));
        }
    });
}
