//! The GIL is released only while the loop sleeps in the driver: the wait
//! hook proactor offers (`Handle::set_wait_hook`) wraps each blocking wait
//! in `PyEval_SaveThread`/`PyEval_RestoreThread`.

use pyo3::ffi;

/// Releases the GIL for its lifetime; re-takes it when dropped (also while
/// unwinding), so the thread always leaves holding the GIL it came with.
struct Released(*mut ffi::PyThreadState);

impl Released {
    /// # Safety
    /// The calling thread holds the GIL, and touches no Python object until
    /// the guard is dropped.
    unsafe fn new() -> Released {
        // SAFETY: the caller holds the GIL (contract above).
        Released(unsafe { ffi::PyEval_SaveThread() })
    }
}

impl Drop for Released {
    fn drop(&mut self) {
        // SAFETY: the thread state came from `PyEval_SaveThread` on this
        // thread, and the GIL is not held here (we released it).
        unsafe { ffi::PyEval_RestoreThread(self.0) }
    }
}

/// Installs the hook on `handle`: every blocking driver wait runs with the
/// GIL released. `after_sleep` runs once the GIL is back (the loop uses it
/// to look at Python signals).
pub(crate) fn release_while_waiting(handle: &proactor::Handle, after_sleep: impl Fn() + 'static) {
    handle.set_wait_hook(move |wait| {
        {
            // SAFETY: the loop only runs from `LoopCore` methods called by
            // Python, so this thread holds the GIL; the driver's wait touches
            // no Python object (protocols run only after it returns).
            let _released = unsafe { Released::new() };
            wait();
        }
        after_sleep();
    });
}
