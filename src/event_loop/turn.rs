//! One turn of the loop, and the shut-down turns of [`EventLoop::close`].
//!
//! A turn: submit everything queued and wait (one kernel call) → dispatch
//! completions to their owners → take what other threads sent → run the
//! callbacks that were ready at the start of the step (FIFO, L1) → move due
//! timers to the ready queue. After each piece of code that may have caught
//! a panic, the exception handler is called, at a point where the loop's
//! state is consistent (L5).
//!
//! [`EventLoop::close`]: super::EventLoop::close

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use super::exceptions::{default_exception_handler, guarded, ExceptionContext, ExceptionSource};
use super::{Handle, Handler, Job};

impl Handle {
    /// Runs one loop step by hand (see the module docs).
    ///
    /// # Errors
    /// The loop is closed or already running (from a callback: L4), or the
    /// driver failed to wait.
    pub fn run_once(&self) -> io::Result<()> {
        let _running = self.enter()?;
        self.turn()
    }

    /// One step; the caller has checked the loop is open and marked it running.
    pub(super) fn turn(&self) -> io::Result<()> {
        self.wait_for_io()?;
        self.dispatch_completions();
        self.take_remote();
        self.run_ready(true);
        self.fire_due_timers();
        Ok(())
    }

    fn wait_for_io(&self) -> io::Result<()> {
        let i = &self.inner;
        let busy = !i.ready.borrow().is_empty() || i.stopping.get();
        let timeout = if busy {
            Some(Duration::ZERO)
        } else {
            let deadline = i.timers.borrow().next_deadline();
            deadline.map(|d| d.saturating_duration_since(self.now()))
        };
        let may_sleep = timeout != Some(Duration::ZERO);
        let timeout = if may_sleep && !i.remote.prepare_sleep() {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        let result = self.wait_driver(timeout);
        if may_sleep {
            i.remote.awake();
        }
        result
    }

    fn wait_driver(&self, timeout: Option<Duration>) -> io::Result<()> {
        let i = &self.inner;
        let mut out = std::mem::take(&mut *i.completions.borrow_mut());
        let hook = match timeout {
            Some(Duration::ZERO) => None,
            _ => i.wait_hook.borrow().clone(),
        };
        let result = match hook {
            None => i.driver.borrow_mut().wait(timeout, &mut out),
            Some(hook) => {
                let mut driver = i.driver.borrow_mut();
                super::wait_hook::run(&*hook, || {
                    let r = driver.wait(timeout, &mut out);
                    // Awake before the hook's own code after the wait: what
                    // it sends through the remote handle is taken this turn,
                    // and leaves no wake behind to end the next wait early.
                    i.remote.awake();
                    r
                })
            }
        };
        *i.completions.borrow_mut() = out;
        result
    }

    /// Hands every completion to its owner. A handler that panics (a bug in
    /// proactor, or a protocol factory it calls) never costs the rest of the
    /// batch its completions.
    fn dispatch_completions(&self) {
        let i = &self.inner;
        let mut batch = std::mem::take(&mut *i.completions.borrow_mut());
        for c in batch.drain(..) {
            let handler = if c.more {
                // A multishot op stays armed: its owner stays registered
                // (shared, not moved out) until the final completion.
                match i.handlers.borrow().get(c.user) {
                    Some(Handler::Owner(owner)) => Some(Handler::Owner(owner.clone())),
                    _ => None,
                }
            } else {
                i.handlers.borrow_mut().try_remove(c.user)
            };
            match handler {
                Some(h) => {
                    if let Err(payload) = guarded(|| h.call(c)) {
                        self.report_exception(ExceptionContext::from_panic(
                            ExceptionSource::Internal("completion handler"),
                            payload,
                        ));
                    }
                }
                None => tracing::error!(op = c.op.name(), "completion without an owner"),
            }
        }
        // Keep the allocation for the next turn.
        let mut slot = i.completions.borrow_mut();
        if slot.is_empty() {
            *slot = batch;
        }
        drop(slot);
        self.flush_exceptions();
    }

    /// Queues the callbacks and task wake-ups other threads sent.
    fn take_remote(&self) {
        let incoming = self.inner.remote.take();
        for cb in incoming.callbacks {
            self.push_ready(Job::Callback(cb), true);
        }
        for (index, generation) in incoming.woken_tasks {
            self.schedule_task(index, generation);
        }
    }

    /// Runs the callbacks ready now (not those they queue: L1). With
    /// `user == false` (a closed loop), application callbacks are dropped.
    fn run_ready(&self, user: bool) {
        let n = self.inner.ready.borrow().len();
        for _ in 0..n {
            let Some(ready) = self.inner.ready.borrow_mut().pop_front() else {
                break;
            };
            if ready.user && !user {
                drop(ready);
                continue;
            }
            if let Err(payload) = guarded(|| self.run_job(ready.job)) {
                let source = if ready.user {
                    ExceptionSource::Callback
                } else {
                    ExceptionSource::Internal("callback")
                };
                self.report_exception(ExceptionContext::from_panic(source, payload));
            }
            self.flush_exceptions();
        }
    }

    fn run_job(&self, job: Job) {
        match job {
            Job::Callback(f) => f(),
            Job::Run(runnable) => runnable.run_ready(),
            Job::Task { index, generation } => self.poll_task(index, generation),
        }
    }

    fn fire_due_timers(&self) {
        let now = self.now();
        loop {
            let cb = self.inner.timers.borrow_mut().pop_due(now);
            match cb {
                Some(cb) => self.push_ready(Job::Callback(cb), true),
                None => break,
            }
        }
    }

    /// Calls the exception handler for every caught panic. A handler that
    /// re-raises leaves the rest queued for the next safe point.
    #[inline]
    pub(super) fn flush_exceptions(&self) {
        // Called after every ready job: the usual empty queue costs a check.
        if self.inner.exceptions.borrow().is_empty() {
            return;
        }
        self.flush_queued_exceptions();
    }

    fn flush_queued_exceptions(&self) {
        loop {
            let Some(context) = self.inner.exceptions.borrow_mut().pop_front() else {
                return;
            };
            let handler = self.inner.exception_handler.borrow().clone();
            match handler {
                Some(h) => h(self, context),
                None => default_exception_handler(self, context),
            }
        }
    }

    /// Drops the application's queued callbacks, timers and tasks (a closed
    /// loop never runs them), outside every borrow.
    pub(super) fn drop_application_work(&self) {
        let i = &self.inner;
        let user = {
            let mut ready = i.ready.borrow_mut();
            let (user, internal): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut *ready)
                .into_iter()
                .partition(|r| r.user);
            *ready = internal;
            user
        };
        drop(user);
        let tasks = std::mem::take(&mut *i.tasks.borrow_mut());
        drop(tasks);
        let timers = i.timers.borrow_mut().take_all();
        drop(timers);
    }

    /// Aborts every live transport and closes every server.
    pub(super) fn shut_down_resources(&self) {
        let resources: Vec<_> = self
            .inner
            .resources
            .borrow()
            .iter()
            .filter_map(|(_, weak)| weak.upgrade())
            .collect();
        for r in resources {
            if let Err(payload) = guarded(|| r.shut_down()) {
                self.report_exception(ExceptionContext::from_panic(
                    ExceptionSource::Internal("close"),
                    payload,
                ));
            }
        }
    }

    /// Turns of a closed loop: completions and proactor's own callbacks
    /// only, until every transport and server released its socket and no
    /// op is in flight, or `limit` passes.
    pub(super) fn drain(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let i = &self.inner;
            let idle = i.ready.borrow().is_empty();
            let settled = i.resources.borrow().is_empty() && i.handlers.borrow().is_empty();
            if (settled && idle) || Instant::now() >= deadline {
                return;
            }
            let timeout = if idle {
                Duration::from_millis(10)
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.wait_driver(Some(timeout)) {
                tracing::warn!(%e, "event loop close: driver failed to wait");
                return;
            }
            self.dispatch_completions();
            self.run_ready(false);
            self.flush_exceptions();
        }
    }
}
