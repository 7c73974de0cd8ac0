//! Futures spawned on the loop, and the handles that await their output.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A spawned future, boxed.
pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = ()>>>;

/// A task slot: the future and the generation that tells stale wakes apart.
pub(crate) struct Task {
    pub(crate) future: Option<BoxFuture>,
    pub(crate) generation: u64,
    pub(crate) queued: bool,
}

/// Shared between a task and its [`JoinHandle`].
pub(crate) struct JoinState<T> {
    pub(crate) output: Option<T>,
    pub(crate) waker: Option<Waker>,
    /// Set when the task was dropped without finishing (loop closed).
    pub(crate) dropped: bool,
}

/// Awaits the output of a task started with [`crate::Handle::spawn`].
///
/// Dropping the handle detaches the task; it keeps running.
pub struct JoinHandle<T> {
    pub(crate) state: Rc<RefCell<JoinState<T>>>,
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.borrow();
        f.debug_struct("JoinHandle")
            .field("finished", &s.output.is_some())
            .finish()
    }
}

impl<T> JoinHandle<T> {
    /// Whether the task has produced its output (not yet taken).
    pub fn is_finished(&self) -> bool {
        self.state.borrow().output.is_some()
    }
}

/// The task was dropped before it finished, because its loop was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskDropped;

impl fmt::Display for TaskDropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("task dropped before completion (its event loop was closed)")
    }
}

impl std::error::Error for TaskDropped {}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, TaskDropped>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.state.borrow_mut();
        if let Some(v) = s.output.take() {
            return Poll::Ready(Ok(v));
        }
        if s.dropped {
            return Poll::Ready(Err(TaskDropped));
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Marks the join state dropped if the wrapped future never finished.
pub(crate) struct DropGuard<T>(pub(crate) Rc<RefCell<JoinState<T>>>);

impl<T> Drop for DropGuard<T> {
    fn drop(&mut self) {
        let waker = {
            let Ok(mut s) = self.0.try_borrow_mut() else {
                return;
            };
            if s.output.is_some() {
                return;
            }
            s.dropped = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Wraps a future so its output lands in `state`.
pub(crate) fn wrap<F>(fut: F) -> (BoxFuture, JoinHandle<F::Output>)
where
    F: Future + 'static,
    F::Output: 'static,
{
    let state = Rc::new(RefCell::new(JoinState {
        output: None,
        waker: None,
        dropped: false,
    }));
    let guard = DropGuard(state.clone());
    let boxed = Box::pin(async move {
        let guard = guard;
        let v = fut.await;
        let waker = {
            let mut s = guard.0.borrow_mut();
            s.output = Some(v);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    });
    (boxed, JoinHandle { state })
}
