//! [`ThreadBound`]: state that is not `Send` (proactor's loop is
//! single-threaded, built on `Rc`), kept in Python objects that any thread
//! may hold.
//!
//! Python objects can be reached from every thread, so PyO3 wants their
//! Rust contents `Send + Sync`. The loop's state is only ever touched on
//! the thread that made it: every access checks the thread first and
//! fails with a Python `RuntimeError` elsewhere, and a value dropped on
//! another thread (a garbage collection there) is leaked rather than
//! dropped, so its `Rc`s are never touched off their thread.

use std::mem::ManuallyDrop;
use std::thread::{self, ThreadId};

use pyo3::exceptions::PyRuntimeError;
use pyo3::PyResult;

/// A value usable only on the thread that created it.
pub(crate) struct ThreadBound<T> {
    owner: ThreadId,
    value: ManuallyDrop<T>,
}

// SAFETY: the value is only reached through `get`, which checks that the
// caller runs on the owning thread, and `Drop` leaks it on any other
// thread; so the `!Send`/`!Sync` parts (Rc counts, RefCells) are only
// ever used on one thread, as if the value had never left it.
unsafe impl<T> Send for ThreadBound<T> {}
// SAFETY: as for `Send`: shared references lead to the value only on the
// owning thread.
unsafe impl<T> Sync for ThreadBound<T> {}

impl<T> ThreadBound<T> {
    pub(crate) fn new(value: T) -> Self {
        ThreadBound {
            owner: thread::current().id(),
            value: ManuallyDrop::new(value),
        }
    }

    /// The value, on its own thread.
    pub(crate) fn get(&self) -> PyResult<&T> {
        if thread::current().id() == self.owner {
            Ok(&self.value)
        } else {
            Err(PyRuntimeError::new_err(
                "Non-thread-safe operation invoked on an event loop other than the current one",
            ))
        }
    }
}

impl<T> Drop for ThreadBound<T> {
    fn drop(&mut self) {
        if thread::current().id() == self.owner {
            // SAFETY: dropped once, here, on the owning thread; `value` is
            // never used again.
            unsafe { ManuallyDrop::drop(&mut self.value) }
        }
        // Elsewhere: leaked (see the module docs).
    }
}
