//! Thread-safe wake-ups: `call_soon_threadsafe` and task wakers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

use crate::driver::RemoteWaker;

/// A callback sent from another thread.
pub(crate) type SendCallback = Box<dyn FnOnce() + Send>;

/// What other threads (and task wakers) hand to the loop.
#[derive(Debug)]
pub(crate) struct Remote {
    queue: Mutex<Incoming>,
    /// Set while the loop may block in the kernel; wakers only pay for a
    /// syscall when it is set. Paired with the queue lock (see `push`).
    sleeping: AtomicBool,
    waker: Arc<dyn RemoteWaker>,
}

#[derive(Default)]
pub(crate) struct Incoming {
    pub(crate) callbacks: Vec<SendCallback>,
    pub(crate) woken_tasks: Vec<(usize, u64)>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("callbacks", &self.callbacks.len())
            .field("woken_tasks", &self.woken_tasks.len())
            .finish()
    }
}

impl Remote {
    pub(crate) fn new(waker: Arc<dyn RemoteWaker>) -> Arc<Remote> {
        Arc::new(Remote {
            queue: Mutex::new(Incoming::default()),
            sleeping: AtomicBool::new(false),
            waker,
        })
    }

    fn push(&self, f: impl FnOnce(&mut Incoming)) {
        f(&mut self.queue.lock().unwrap_or_else(|e| e.into_inner()));
        // SeqCst pairs with `prepare_sleep`: either the loop sees our item, or
        // we see `sleeping` and wake it.
        if self.sleeping.load(Ordering::SeqCst) {
            self.waker.wake();
        }
    }

    pub(crate) fn call_soon(&self, cb: SendCallback) {
        self.push(|q| q.callbacks.push(cb));
    }

    pub(crate) fn wake_task(&self, index: usize, generation: u64) {
        self.push(|q| q.woken_tasks.push((index, generation)));
    }

    /// Marks the loop as about to block; returns false if work already arrived.
    pub(crate) fn prepare_sleep(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let idle = q.callbacks.is_empty() && q.woken_tasks.is_empty();
        if !idle {
            self.sleeping.store(false, Ordering::SeqCst);
        }
        idle
    }

    pub(crate) fn awake(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }

    pub(crate) fn take(&self) -> Incoming {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The `Waker` of one spawned task.
pub(crate) struct TaskWaker {
    pub(crate) remote: Arc<Remote>,
    pub(crate) index: usize,
    pub(crate) generation: u64,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.remote.wake_task(self.index, self.generation);
    }
}

pub(crate) fn task_waker(remote: &Arc<Remote>, index: usize, generation: u64) -> Waker {
    Waker::from(Arc::new(TaskWaker {
        remote: remote.clone(),
        index,
        generation,
    }))
}
