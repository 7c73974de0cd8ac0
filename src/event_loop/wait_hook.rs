//! A hook around the driver's blocking wait, for embedders that hold a lock
//! while the loop runs and must let go of it only while the loop sleeps in
//! the kernel (Python's GIL: `PyEval_SaveThread` before the wait,
//! `PyEval_RestoreThread` after it).

use std::io;
use std::rc::Rc;

use super::Handle;

/// What [`Handle::set_wait_hook`] installs: it is given the wait and must
/// call it exactly once.
pub type WaitHook = dyn Fn(&mut dyn FnMut());

impl Handle {
    /// Runs every driver wait that may block (a wait with a non-zero
    /// timeout, or none) through `hook`, which gets the wait as a closure
    /// and must call it exactly once: before and after the call it may do
    /// what must not happen while the loop sleeps, such as releasing and
    /// re-taking a lock. Waits that cannot block (the loop has work ready)
    /// skip the hook, so it costs nothing on a busy loop.
    ///
    /// The hook runs while the loop is in the middle of a turn: it must not
    /// call the loop (no `call_soon`, no transport methods), only let other
    /// threads run. A hook that does not call the wait is treated as a wait
    /// that returned no completions; a hook that panics unwinds out of the
    /// loop's `run_*` like a re-raised exception.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::cell::Cell;
    /// use std::rc::Rc;
    /// use std::time::Duration;
    ///
    /// use proactor::EventLoop;
    ///
    /// let event_loop = EventLoop::new()?;
    /// let handle = event_loop.handle();
    /// let sleeps = Rc::new(Cell::new(0));
    /// let counter = sleeps.clone();
    /// handle.set_wait_hook(move |wait| {
    ///     counter.set(counter.get() + 1); // e.g. release a lock here
    ///     wait();
    ///     // ... and take it back here
    /// });
    /// let stopper = handle.clone();
    /// handle.call_later(Duration::from_millis(5), move || stopper.stop());
    /// event_loop.run_forever()?;
    /// assert!(sleeps.get() >= 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_wait_hook(&self, hook: impl Fn(&mut dyn FnMut()) + 'static) {
        *self.inner.wait_hook.borrow_mut() = Some(Rc::new(hook));
    }

    /// Removes the wait hook: waits call the driver directly again.
    pub fn clear_wait_hook(&self) {
        self.inner.wait_hook.borrow_mut().take();
    }
}

/// Runs `wait` through `hook`; a hook that never called it waited for nothing.
pub(super) fn run(hook: &WaitHook, mut wait: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    let mut result = None;
    hook(&mut || {
        if result.is_none() {
            result = Some(wait());
        }
    });
    result.unwrap_or(Ok(()))
}
