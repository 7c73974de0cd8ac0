//! `NativeTransport`: proactor's transport as the Python transport object
//! (`_transport.py`) sees it. Methods only queue work (L4); the one
//! callback that runs inside a method is `pause_writing()` from `write()`,
//! as asyncio promises.

use std::rc::Rc;

use bytes::Bytes;
use proactor::Transport;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyString};

use crate::bound::ThreadBound;
use crate::protocol::{Adapter, ConnState, DeferredClose};

/// A `bytes` object at least this long is queued by reference, not copied
/// (smaller ones are copied: proactor coalesces small writes into one send).
const SHARE_FROM: usize = 16 * 1024;

struct Inner {
    transport: Transport,
    state: Rc<ConnState>,
}

#[pyclass(frozen, module = "proactor._proactor")]
pub(crate) struct NativeTransport {
    inner: ThreadBound<Inner>,
}

impl NativeTransport {
    pub(crate) fn new(transport: Transport, state: Rc<ConnState>) -> NativeTransport {
        NativeTransport {
            inner: ThreadBound::new(Inner { transport, state }),
        }
    }

    /// asyncio calls `pause_writing()` inside the `write()` that crossed the
    /// high-water mark; so do we (proactor then skips its own call).
    fn check_pause(&self, py: Python<'_>, inner: &Inner) {
        let (_, high) = inner
            .state
            .deferred_limits()
            .unwrap_or_else(|| inner.transport.get_write_buffer_limits());
        if !inner.state.told_paused.get()
            && !inner.transport.is_closing()
            && inner.transport.get_write_buffer_size() > high
        {
            inner.state.pause_writing(py);
        }
    }

    fn push(&self, py: Python<'_>, inner: &Inner, data: &Bound<'_, PyAny>) -> PyResult<()> {
        if let Ok(b) = data.cast::<PyBytes>() {
            if b.as_bytes().len() < SHARE_FROM {
                inner.transport.write(b.as_bytes());
            } else {
                // `bytes` is immutable: the send queue holds the object
                // itself (a reference, released once the bytes went out).
                let owned = PyBackedBytes::from(b.clone());
                inner.transport.write_bytes(Bytes::from_owner(owned));
            }
            return Ok(());
        }
        if data.is_instance_of::<PyString>() {
            return Err(type_error(data));
        }
        let buf = PyBuffer::<u8>::get(data).map_err(|_| type_error(data))?;
        let bytes = buf.to_vec(py)?;
        inner.transport.write(&bytes);
        Ok(())
    }
}

fn type_error(data: &Bound<'_, PyAny>) -> PyErr {
    let name = data
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default();
    PyTypeError::new_err(format!(
        "data argument must be a bytes-like object, not '{name}'"
    ))
}

#[pymethods]
impl NativeTransport {
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let inner = self.inner.get()?;
        self.push(py, inner, data)?;
        self.check_pause(py, inner);
        Ok(())
    }

    fn writelines(&self, py: Python<'_>, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        let inner = self.inner.get()?;
        for item in lines.try_iter()? {
            self.push(py, inner, &item?)?;
        }
        self.check_pause(py, inner);
        Ok(())
    }

    fn write_eof(&self) -> PyResult<()> {
        let inner = self.inner.get()?;
        inner.state.eof_written.set(true);
        inner
            .transport
            .write_eof()
            .map_err(|e| crate::errors::os_error(&e))
    }

    fn can_write_eof(&self) -> PyResult<bool> {
        Ok(self.inner.get()?.transport.can_write_eof())
    }

    /// asyncio's `close()`: with nothing buffered the connection ends at
    /// once (`connection_lost` on the next step, as asyncio's loop does);
    /// with bytes buffered, writes are still taken until they drained
    /// (asyncio's `SSLProtocol` writes its `close_notify` then), and the
    /// close follows (see `ConnState::closing`).
    fn close(&self) -> PyResult<()> {
        let inner = self.inner.get()?;
        let t = &inner.transport;
        if t.is_closing() || inner.state.closing.borrow().is_some() {
            return Ok(());
        }
        if t.get_write_buffer_size() == 0 {
            if inner.state.eof_written.get() {
                // A shutdown may be in flight: let proactor finish it.
                t.close();
            } else {
                // Nothing to send and nothing in flight: closing and
                // aborting are the same, and abort completes at once.
                t.abort();
            }
            return Ok(());
        }
        let limits = t.get_write_buffer_limits();
        *inner.state.closing.borrow_mut() = Some(DeferredClose {
            transport: t.clone(),
            limits,
        });
        t.set_write_buffer_limits(Some(0), Some(0))
            .map_err(|e| crate::errors::os_error(&e))?;
        Ok(())
    }

    fn abort(&self) -> PyResult<()> {
        let inner = self.inner.get()?;
        let deferred = inner.state.closing.borrow_mut().take();
        drop(deferred);
        inner.transport.abort();
        Ok(())
    }

    fn is_closing(&self) -> PyResult<bool> {
        let inner = self.inner.get()?;
        Ok(inner.transport.is_closing() || inner.state.closing.borrow().is_some())
    }

    fn pause_reading(&self) -> PyResult<()> {
        self.inner.get()?.transport.pause_reading();
        Ok(())
    }

    fn resume_reading(&self) -> PyResult<()> {
        self.inner.get()?.transport.resume_reading();
        Ok(())
    }

    fn is_reading(&self) -> PyResult<bool> {
        Ok(self.inner.get()?.transport.is_reading())
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        &self,
        py: Python<'_>,
        high: Option<i64>,
        low: Option<i64>,
    ) -> PyResult<()> {
        let inner = self.inner.get()?;
        let bad = || {
            let show = |v: Option<i64>| v.map_or("None".to_string(), |v| v.to_string());
            PyValueError::new_err(format!(
                "high ({}) must be >= low ({}) must be >= 0",
                show(high),
                show(low)
            ))
        };
        let to_usize = |v: Option<i64>| match v {
            Some(v) if v < 0 => Err(bad()),
            Some(v) => Ok(Some(usize::try_from(v).map_err(|_| bad())?)),
            None => Ok(None),
        };
        inner
            .transport
            .set_write_buffer_limits(to_usize(high)?, to_usize(low)?)
            .map_err(|_| bad())?;
        let deferred = match inner.state.closing.borrow_mut().as_mut() {
            // A deferred close keeps (0, 0): the new marks are the protocol's.
            Some(c) => {
                c.limits = inner.transport.get_write_buffer_limits();
                true
            }
            None => false,
        };
        if deferred {
            inner
                .transport
                .set_write_buffer_limits(Some(0), Some(0))
                .map_err(|e| crate::errors::os_error(&e))?;
        }
        self.check_pause(py, inner);
        Ok(())
    }

    fn get_write_buffer_limits(&self) -> PyResult<(usize, usize)> {
        let inner = self.inner.get()?;
        Ok(inner
            .state
            .deferred_limits()
            .unwrap_or_else(|| inner.transport.get_write_buffer_limits()))
    }

    fn get_write_buffer_size(&self) -> PyResult<usize> {
        Ok(self.inner.get()?.transport.get_write_buffer_size())
    }

    /// Installs `protocol` (a `BufferedProtocol` when `buffered`): events not
    /// yet delivered, held data and the paused-for-writing state carry over.
    fn set_protocol(&self, protocol: Py<PyAny>, buffered: bool) -> PyResult<()> {
        let inner = self.inner.get()?;
        *inner.state.protocol.borrow_mut() = Some(protocol);
        inner.state.told_paused.set(false);
        inner
            .transport
            .set_protocol(Adapter::any(inner.state.clone(), buffered));
        Ok(())
    }

    /// The socket's descriptor, or -1 once it is closed.
    fn fileno(&self) -> PyResult<i32> {
        Ok(self.inner.get()?.transport.raw_fd().unwrap_or(-1))
    }
}
