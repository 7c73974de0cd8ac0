//! Python protocols behind proactor's `Protocol`/`BufferedProtocol` traits.
//!
//! Hot callbacks (`data_received`, `get_buffer`/`buffer_updated`,
//! `eof_received`, `pause_writing`/`resume_writing`) call the Python
//! protocol directly; `connection_made`/`connection_lost` go through the
//! Python transport object (`_transport.py`), which keeps asyncio's
//! bookkeeping (waiters, servers, the socket object). proactor's ordering
//! guarantees (R1–R5, L4) hold as in Rust: the transport calls these.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;

use proactor::{AnyProtocol, BaseProtocol, BufferedProtocol, Protocol, Transport};

/// A `close()` that waits for the write buffer to drain before proactor's
/// close (see [`ConnState::closing`]).
pub(crate) struct DeferredClose {
    /// The transport to close once its write buffer is empty.
    pub(crate) transport: Transport,
    /// The protocol's `(low, high)` water marks (asyncio's order) while
    /// the transport's own are (0, 0).
    pub(crate) limits: (usize, usize),
}
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::errors::{os_error, report, Fatal, Shared};
use crate::transport::NativeTransport;

/// What one connection's adapters share with its `NativeTransport`.
pub(crate) struct ConnState {
    pub(crate) shared: Rc<Shared>,
    /// The Python transport object (set once `connection_made` ran).
    pub(crate) wrapper: RefCell<Option<Py<PyAny>>>,
    /// The current Python protocol.
    pub(crate) protocol: RefCell<Option<Py<PyAny>>>,
    /// The current protocol was told `pause_writing` (maybe by `write()`
    /// itself, as asyncio does; proactor's own later call is then skipped).
    pub(crate) told_paused: Cell<bool>,
    /// The exception that made a callback fail, for `connection_lost`.
    pub(crate) fatal: RefCell<Option<PyErr>>,
    /// `write_eof()` was called: a close must flush and shut down.
    pub(crate) eof_written: Cell<bool>,
    /// asyncio's `close()` with bytes still buffered: the transport keeps
    /// taking writes until the buffer drains (asyncio's `SSLProtocol`
    /// writes its `close_notify` then), and only then closes. proactor's
    /// `close()` drops later writes, so it is called once the buffer is
    /// empty: the transport's marks are set to (0, 0) meanwhile, so the
    /// drain comes as its `resume_writing`. Cleared at `connection_lost`
    /// (the transport refers back to this state).
    pub(crate) closing: RefCell<Option<DeferredClose>>,
    /// Called with `(native_transport, protocol)` at `connection_made`;
    /// returns the Python transport object.
    made_hook: RefCell<Option<Py<PyAny>>>,
}

impl ConnState {
    pub(crate) fn new(
        shared: Rc<Shared>,
        protocol: Option<Py<PyAny>>,
        made_hook: Py<PyAny>,
    ) -> Rc<ConnState> {
        Rc::new(ConnState {
            shared,
            wrapper: RefCell::new(None),
            protocol: RefCell::new(protocol),
            told_paused: Cell::new(false),
            fatal: RefCell::new(None),
            eof_written: Cell::new(false),
            closing: RefCell::new(None),
            made_hook: RefCell::new(Some(made_hook)),
        })
    }

    fn protocol<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.protocol.borrow().as_ref().map(|p| p.bind(py).clone())
    }

    fn wrapper(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.wrapper.borrow().as_ref().map(|w| w.clone_ref(py))
    }

    /// The protocol's `method` failed: a fatal error of the connection.
    fn fail(&self, py: Python<'_>, error: PyErr, message: &'static str) -> ! {
        *self.fatal.borrow_mut() = Some(error.clone_ref(py));
        let fatal = Fatal {
            error,
            message,
            protocol: self.protocol.borrow().as_ref().map(|p| p.clone_ref(py)),
            transport: self.wrapper(py),
        };
        self.shared.fail_protocol(py, fatal)
    }

    /// A callback whose failure asyncio only reports (the connection goes on).
    fn report(&self, py: Python<'_>, error: PyErr, message: &str) {
        let error = self.shared.raise_if_base(py, error);
        let d = PyDict::new(py);
        let built = d
            .set_item("message", message)
            .and_then(|_| d.set_item("exception", error.into_value(py)))
            .and_then(|_| d.set_item("transport", self.wrapper(py)))
            .and_then(|_| d.set_item("protocol", self.protocol(py)));
        match built {
            Ok(()) => report(py, &self.shared, d),
            Err(e) => e.write_unraisable(py, None),
        }
    }

    /// Tells the current protocol `pause_writing`, once.
    pub(crate) fn pause_writing(&self, py: Python<'_>) {
        if self.told_paused.replace(true) {
            return;
        }
        if let Some(p) = self.protocol(py) {
            if let Err(e) = p.call_method0(pyo3::intern!(py, "pause_writing")) {
                self.report(py, e, "protocol.pause_writing() failed");
            }
        }
    }

    /// The protocol's `(low, high)` water marks while a close is deferred.
    pub(crate) fn deferred_limits(&self) -> Option<(usize, usize)> {
        self.closing.borrow().as_ref().map(|c| c.limits)
    }

    /// Closes a deferred close's transport once its buffer is empty.
    fn finish_deferred_close(&self) {
        let drained = self
            .closing
            .borrow()
            .as_ref()
            .is_some_and(|c| c.transport.get_write_buffer_size() == 0);
        if drained {
            let deferred = self.closing.borrow_mut().take();
            if let Some(c) = deferred {
                if self.eof_written.get() {
                    c.transport.close();
                } else {
                    // Everything went out: as in NativeTransport::close, the
                    // connection ends at once (nothing to flush).
                    c.transport.abort();
                }
            }
        }
    }

    fn resume_writing(&self, py: Python<'_>) {
        if !self.told_paused.replace(false) {
            return;
        }
        if let Some(p) = self.protocol(py) {
            if let Err(e) = p.call_method0(pyo3::intern!(py, "resume_writing")) {
                self.report(py, e, "protocol.resume_writing() failed");
            }
        }
    }
}

/// The adapter proactor's transport holds: one flavour or the other.
pub(crate) struct Adapter {
    state: Rc<ConnState>,
    /// The buffer of the last `get_buffer` (buffered flavour only).
    buffer: Option<PyBuffer<u8>>,
}

impl Adapter {
    pub(crate) fn any(state: Rc<ConnState>, buffered: bool) -> AnyProtocol {
        let adapter = Adapter {
            state,
            buffer: None,
        };
        if buffered {
            AnyProtocol::buffered(adapter)
        } else {
            AnyProtocol::from(adapter)
        }
    }
}

impl BaseProtocol for Adapter {
    fn connection_made(&mut self, transport: Transport) {
        Python::attach(|py| {
            let state = &self.state;
            let hook = state.made_hook.borrow_mut().take();
            let Some(protocol) = state.protocol(py) else {
                // The protocol factory failed (reported already): refuse.
                transport.abort();
                return;
            };
            let Some(hook) = hook else { return };
            let native = NativeTransport::new(transport, state.clone());
            let made = Py::new(py, native).and_then(|n| hook.bind(py).call1((n, protocol)));
            match made {
                Ok(wrapper) => *state.wrapper.borrow_mut() = Some(wrapper.unbind()),
                Err(e) => state.report(py, e, "proactor: transport setup failed"),
            }
        })
    }

    fn connection_lost(&mut self, error: Option<io::Error>) {
        Python::attach(|py| {
            let state = &self.state;
            let exc: Option<PyErr> = match error {
                None => None,
                Some(e) => match state.fatal.borrow_mut().take() {
                    Some(f) if proactor::CallbackPanicked::of(&e).is_some() => Some(f),
                    _ => Some(os_error(&e)),
                },
            };
            let exc = exc.map(|e| e.into_value(py));
            let wrapper = state.wrapper.borrow_mut().take();
            if let Some(w) = wrapper {
                if let Err(e) = w.bind(py).call_method1("_connection_lost", (exc,)) {
                    state.report(py, e, "Exception in callback connection_lost");
                }
            }
            // Nothing refers back to Python objects any more: no cycle
            // through Rust that Python's collector could not see.
            state.protocol.borrow_mut().take();
            state.made_hook.borrow_mut().take();
            let deferred = state.closing.borrow_mut().take();
            drop(deferred);
        })
    }

    fn eof_received(&mut self) -> bool {
        Python::attach(|py| {
            let Some(p) = self.state.protocol(py) else {
                return false;
            };
            match p.call_method0(pyo3::intern!(py, "eof_received")) {
                Ok(keep) => keep.is_truthy().unwrap_or(false),
                Err(e) => {
                    self.state
                        .fail(py, e, "Fatal error: protocol.eof_received() call failed.")
                }
            }
        })
    }

    fn pause_writing(&mut self) {
        let state = &self.state;
        let below_protocol_mark = state
            .closing
            .borrow()
            .as_ref()
            .is_some_and(|c| c.transport.get_write_buffer_size() <= c.limits.1);
        if below_protocol_mark {
            // The deferred close's own (0, 0) mark: not the protocol's.
            return;
        }
        Python::attach(|py| state.pause_writing(py))
    }

    fn resume_writing(&mut self) {
        Python::attach(|py| self.state.resume_writing(py));
        self.state.finish_deferred_close();
    }
}

impl Protocol for Adapter {
    fn data_received(&mut self, data: &[u8]) {
        Python::attach(|py| {
            let Some(p) = self.state.protocol(py) else {
                return;
            };
            let bytes = PyBytes::new(py, data);
            if let Err(e) = p.call_method1(pyo3::intern!(py, "data_received"), (bytes,)) {
                self.state
                    .fail(py, e, "Fatal error: protocol.data_received() call failed.")
            }
        })
    }
}

impl BufferedProtocol for Adapter {
    fn get_buffer(&mut self, size_hint: usize) -> &mut [u8] {
        let got = Python::attach(|py| -> PyResult<Option<PyBuffer<u8>>> {
            let Some(p) = self.state.protocol(py) else {
                return Ok(None);
            };
            let obj = p.call_method1(pyo3::intern!(py, "get_buffer"), (size_hint,))?;
            let buf = PyBuffer::<u8>::get(&obj)?;
            if buf.readonly() || !buf.is_c_contiguous() {
                return Err(PyRuntimeError::new_err(
                    "get_buffer() must return a writable, contiguous buffer",
                ));
            }
            if buf.len_bytes() == 0 {
                return Err(PyRuntimeError::new_err(
                    "get_buffer() returned an empty buffer",
                ));
            }
            Ok(Some(buf))
        });
        match got {
            Ok(Some(buf)) => self.buffer = Some(buf),
            Ok(None) => return &mut [],
            Err(e) => Python::attach(|py| {
                self.state
                    .fail(py, e, "Fatal error: protocol.get_buffer() call failed.")
            }),
        }
        let Some(buf) = &self.buffer else {
            return &mut [];
        };
        let len = buf.len_bytes().min(size_hint.max(1));
        // SAFETY: the buffer is writable and C-contiguous with at least
        // `len` bytes (checked above); we hold its export (`PyBuffer`) until
        // `buffer_updated`, so the object cannot resize or free it; the
        // slice borrows `self`, and proactor writes into it at once, with
        // the GIL held and no Python code running meanwhile.
        unsafe { std::slice::from_raw_parts_mut(buf.buf_ptr().cast::<u8>(), len) }
    }

    fn buffer_updated(&mut self, nbytes: usize) {
        let buffer = self.buffer.take();
        Python::attach(|py| {
            drop(buffer);
            let Some(p) = self.state.protocol(py) else {
                return;
            };
            if let Err(e) = p.call_method1(pyo3::intern!(py, "buffer_updated"), (nbytes,)) {
                self.state
                    .fail(py, e, "Fatal error: protocol.buffer_updated() call failed.")
            }
        })
    }
}
