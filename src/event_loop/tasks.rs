//! Futures spawned on the loop, and the handles that await their output.
//!
//! A task's future is wrapped so that its output, or its panic (L5), lands
//! in the [`JoinHandle`]'s state; the loop only ever polls futures that
//! return `()` and never unwind.

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures_util::FutureExt;

use super::exceptions::{guarded, panic_message, ExceptionContext, ExceptionSource};
use super::{remote, Handle, Job, WeakHandle};

/// A spawned future, boxed.
pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = ()>>>;

/// A task slot: the future and the generation that tells stale wakes apart.
pub(crate) struct Task {
    pub(crate) future: Option<BoxFuture>,
    pub(crate) generation: u64,
    pub(crate) queued: bool,
    /// Made at the first poll and reused by every later one.
    waker: Option<Waker>,
}

/// What happens to a task's panic.
pub(crate) enum OnPanic {
    /// Goes to the loop's exception handler (spawned tasks).
    Report(WeakHandle),
    /// Kept for the caller to re-raise (`run_until_complete`'s future).
    Keep,
}

/// Shared between a task and its [`JoinHandle`].
pub(crate) struct JoinState<T> {
    pub(crate) outcome: Option<Result<T, JoinError>>,
    /// The panic of an [`OnPanic::Keep`] task.
    pub(crate) panic: Option<Box<dyn Any + Send>>,
    waker: Option<Waker>,
}

/// Awaits the output of a task started with [`Handle::spawn`].
///
/// Dropping the handle detaches the task; it keeps running.
pub struct JoinHandle<T> {
    pub(crate) state: Rc<RefCell<JoinState<T>>>,
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T> JoinHandle<T> {
    /// Whether the task has ended (output or error not yet taken).
    pub fn is_finished(&self) -> bool {
        self.state.borrow().outcome.is_some()
    }
}

/// Why a task produced no output.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinError {
    /// The task was dropped before it finished, because its loop was closed.
    Cancelled,
    /// The task panicked with this message; the panic went to the loop's
    /// exception handler.
    Panicked(String),
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Cancelled => {
                f.write_str("task dropped before completion (its event loop was closed)")
            }
            JoinError::Panicked(m) => write!(f, "task panicked: {m}"),
        }
    }
}

impl std::error::Error for JoinError {}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.state.borrow_mut();
        match s.outcome.take() {
            Some(outcome) => Poll::Ready(outcome),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Ends the join state with `outcome` (once) and wakes the awaiting task.
fn finish<T>(state: &RefCell<JoinState<T>>, outcome: Result<T, JoinError>) {
    let waker = {
        let Ok(mut s) = state.try_borrow_mut() else {
            return;
        };
        if s.outcome.is_some() {
            return;
        }
        s.outcome = Some(outcome);
        s.waker.take()
    };
    if let Some(w) = waker {
        w.wake();
    }
}

/// Marks the join state cancelled if the wrapped future is dropped unfinished.
struct DropGuard<T>(Rc<RefCell<JoinState<T>>>);

impl<T> Drop for DropGuard<T> {
    fn drop(&mut self) {
        finish(&self.0, Err(JoinError::Cancelled));
    }
}

/// Wraps a future so its output, or its panic, lands in the join state.
pub(crate) fn wrap<F>(fut: F, on_panic: OnPanic) -> (BoxFuture, JoinHandle<F::Output>)
where
    F: Future + 'static,
    F::Output: 'static,
{
    let state = Rc::new(RefCell::new(JoinState {
        outcome: None,
        panic: None,
        waker: None,
    }));
    let guard = DropGuard(state.clone());
    let boxed = Box::pin(async move {
        let guard = guard;
        let outcome = match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(v) => Ok(v),
            Err(payload) => {
                let message = panic_message(&*payload);
                match on_panic {
                    OnPanic::Report(h) => {
                        if let Some(h) = h.upgrade() {
                            h.report_exception(ExceptionContext::from_panic(
                                ExceptionSource::Task,
                                payload,
                            ));
                        }
                    }
                    OnPanic::Keep => guard.0.borrow_mut().panic = Some(payload),
                }
                Err(JoinError::Panicked(message))
            }
        };
        finish(&guard.0, outcome);
    });
    (boxed, JoinHandle { state })
}

impl Handle {
    /// Spawns a future on this loop; its output is available through the
    /// returned [`JoinHandle`]. A panic in it resolves the handle to
    /// [`JoinError::Panicked`] and goes to the exception handler (L5). On a
    /// closed loop the future is dropped and the handle resolves to
    /// [`JoinError::Cancelled`].
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let (boxed, join) = wrap(fut, OnPanic::Report(self.downgrade()));
        self.spawn_boxed(boxed);
        join
    }

    pub(crate) fn spawn_boxed(&self, future: BoxFuture) {
        if self.is_closed() {
            drop(future);
            return;
        }
        let generation = self.inner.next_task_generation.get();
        self.inner.next_task_generation.set(generation + 1);
        let index = self.inner.tasks.borrow_mut().insert(Task {
            future: Some(future),
            generation,
            queued: true,
            waker: None,
        });
        self.push_task_poll(index, generation);
    }

    /// Queues a poll of the task as proactor's own ready callback.
    fn push_task_poll(&self, index: usize, generation: u64) {
        self.push_ready(Job::Task { index, generation }, false);
    }

    pub(super) fn poll_task(&self, index: usize, generation: u64) {
        let (mut fut, waker) = {
            let mut tasks = self.inner.tasks.borrow_mut();
            let Some(t) = tasks.get_mut(index) else {
                return;
            };
            if t.generation != generation {
                return;
            }
            t.queued = false;
            let Some(f) = t.future.take() else {
                return; // already being polled (woken from within its own poll)
            };
            let waker = t
                .waker
                .get_or_insert_with(|| remote::task_waker(&self.inner.remote, index, generation))
                .clone();
            (f, waker)
        };
        let mut cx = Context::from_waker(&waker);
        // The wrapper catches the future's own panics; this only sees a
        // panic from a destructor run during the poll.
        let done = match guarded(|| fut.as_mut().poll(&mut cx)) {
            Ok(poll) => poll.is_ready(),
            Err(payload) => {
                self.report_exception(ExceptionContext::from_panic(ExceptionSource::Task, payload));
                true
            }
        };
        let mut tasks = self.inner.tasks.borrow_mut();
        if done {
            if tasks.get(index).is_some_and(|t| t.generation == generation) {
                tasks.remove(index);
            }
            drop(tasks);
            if let Err(payload) = guarded(|| drop(fut)) {
                self.report_exception(ExceptionContext::from_panic(ExceptionSource::Task, payload));
            }
        } else if let Some(t) = tasks.get_mut(index) {
            t.future = Some(fut);
        }
    }

    pub(crate) fn schedule_task(&self, index: usize, generation: u64) {
        let mut tasks = self.inner.tasks.borrow_mut();
        if let Some(t) = tasks.get_mut(index) {
            if t.generation == generation && !t.queued {
                t.queued = true;
                drop(tasks);
                self.push_task_poll(index, generation);
            }
        }
    }
}
