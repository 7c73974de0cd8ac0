//! The single-threaded event loop: ready callbacks, timers, spawned futures,
//! dispatch of completions to their owners, and thread-safe wake-ups.
//!
//! # Implementation
//!
//! One turn of [`EventLoop::run_forever`] is [`Handle::run_once`]:
//! submit everything queued and wait (one kernel call) → dispatch completions
//! to their owners → run the callbacks and tasks that were ready at the start
//! of the step (FIFO, L1) → move due timers to the ready queue. Transports
//! schedule their protocol deliveries as ready callbacks, so protocol events run
//! in the same turn as the completion that caused them.

mod builder;
mod remote;
mod tasks;
mod timers;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use slab::Slab;

use crate::driver::{Completion, Driver, DriverKind, DriverStats, Op, OpKey};
pub use builder::Builder;
use remote::Remote;
use tasks::{BoxFuture, Task};
pub use tasks::{JoinHandle, TaskDropped};
use timers::{TimerId, Timers};

/// A callback queued on the loop.
pub(crate) type Callback = Box<dyn FnOnce()>;
/// What runs when an operation completes.
pub(crate) type CompletionHandler = Box<dyn FnOnce(Completion)>;

/// Size of the receive buffers the loop hands to transports.
pub(crate) const RECV_BUF_SIZE: usize = 64 * 1024;
/// The furthest a timer is ever scheduled: longer delays mean "never" and
/// are clamped here, so no deadline arithmetic can overflow `Instant`.
pub const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// How many idle receive buffers the loop keeps for reuse.
const RECV_POOL_MAX: usize = 64;

/// An event loop. Not `Send`: it runs on the thread that built it.
///
/// Dropping it closes it (see [`EventLoop::close`]).
pub struct EventLoop {
    handle: Handle,
}

/// A cheap, clonable reference to a loop, for use on the loop's thread.
#[derive(Clone)]
pub struct Handle {
    inner: Rc<Inner>,
}

/// A `Send` handle that schedules callbacks from any thread (L2).
#[derive(Clone, Debug)]
pub struct RemoteHandle {
    remote: Arc<Remote>,
}

struct Inner {
    driver: RefCell<Box<dyn Driver>>,
    kind: DriverKind,
    ready: RefCell<VecDeque<Callback>>,
    timers: RefCell<Timers>,
    handlers: RefCell<Slab<CompletionHandler>>,
    tasks: RefCell<Slab<Task>>,
    next_task_generation: Cell<u64>,
    remote: Arc<Remote>,
    completions: RefCell<Vec<Completion>>,
    recv_pool: RefCell<Vec<Vec<u8>>>,
    stopping: Cell<bool>,
    running: Cell<bool>,
    closed: Cell<bool>,
    live_transports: Cell<usize>,
}

/// Why [`EventLoop::run_until_complete`] returned without an output.
#[derive(Debug)]
pub enum RunError {
    /// `stop()` was called before the future completed (L1).
    Stopped,
    /// The loop is closed.
    Closed,
    /// The driver failed to wait.
    Io(io::Error),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Stopped => f.write_str("event loop stopped before the future completed"),
            RunError::Closed => f.write_str("event loop is closed"),
            RunError::Io(e) => write!(f, "event loop driver failed: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

impl From<RunError> for io::Error {
    fn from(e: RunError) -> io::Error {
        match e {
            RunError::Io(e) => e,
            other => io::Error::other(other),
        }
    }
}

/// A scheduled `call_later`/`call_at`, cancellable until it runs.
#[derive(Debug, Clone)]
pub struct TimerHandle {
    id: TimerId,
    inner: Weak<Inner>,
}

impl TimerHandle {
    /// Cancels the timer; returns whether it had not run yet.
    pub fn cancel(&self) -> bool {
        self.inner
            .upgrade()
            .is_some_and(|i| i.timers.borrow_mut().cancel(self.id))
    }
}

impl fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.handle.fmt(f)
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("Handle")
            .field("driver", &i.kind)
            .field("ready", &i.ready.borrow().len())
            .field("timers", &i.timers.borrow().len())
            .field("tasks", &i.tasks.borrow().len())
            .field("ops_in_flight", &i.handlers.borrow().len())
            .finish()
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner").field("driver", &self.kind).finish()
    }
}

impl EventLoop {
    /// A builder to choose the driver and its settings.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A loop on the default driver: `PROACTOR_DRIVER` if set, else `uring`,
    /// falling back to `poll` (with one logged line) where io_uring is refused.
    pub fn new() -> io::Result<EventLoop> {
        Builder::default().build()
    }

    pub(crate) fn from_driver(driver: Box<dyn Driver>) -> EventLoop {
        let kind = driver.kind();
        let remote = Remote::new(driver.remote_waker());
        EventLoop {
            handle: Handle {
                inner: Rc::new(Inner {
                    driver: RefCell::new(driver),
                    kind,
                    ready: RefCell::default(),
                    timers: RefCell::default(),
                    handlers: RefCell::default(),
                    tasks: RefCell::default(),
                    next_task_generation: Cell::new(0),
                    remote,
                    completions: RefCell::default(),
                    recv_pool: RefCell::default(),
                    stopping: Cell::new(false),
                    running: Cell::new(false),
                    closed: Cell::new(false),
                    live_transports: Cell::new(0),
                }),
            },
        }
    }

    /// A clonable handle to this loop.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Runs until [`Handle::stop`] is called.
    pub fn run_forever(&self) -> io::Result<()> {
        let h = &self.handle;
        h.check_open()?;
        h.inner.running.set(true);
        let result = loop {
            if h.inner.stopping.replace(false) {
                break Ok(());
            }
            if let Err(e) = h.run_once() {
                break Err(e);
            }
        };
        h.inner.running.set(false);
        result
    }

    /// Runs `fut` to completion and returns its output; fails with
    /// [`RunError::Stopped`] if `stop()` was called first (L1).
    pub fn run_until_complete<F>(&self, fut: F) -> Result<F::Output, RunError>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let h = &self.handle;
        if h.inner.closed.get() {
            return Err(RunError::Closed);
        }
        let join = h.spawn(fut);
        h.inner.running.set(true);
        let result = loop {
            if let Some(v) = join.state.borrow_mut().output.take() {
                break Ok(v);
            }
            if h.inner.stopping.replace(false) {
                break Err(RunError::Stopped);
            }
            if let Err(e) = h.run_once() {
                break Err(RunError::Io(e));
            }
        };
        h.inner.running.set(false);
        result
    }

    /// Closes the loop: drops pending callbacks, timers and tasks. Operations
    /// still in flight are cancelled by the driver, which keeps their buffers
    /// until the kernel lets go (O3). Idempotent.
    pub fn close(&self) {
        let i = &self.handle.inner;
        if i.closed.replace(true) {
            return;
        }
        // Move everything out before dropping, so destructors that touch the
        // loop find it consistent.
        let ready = std::mem::take(&mut *i.ready.borrow_mut());
        let tasks = std::mem::take(&mut *i.tasks.borrow_mut());
        let handlers = std::mem::take(&mut *i.handlers.borrow_mut());
        i.timers.borrow_mut().clear();
        drop(ready);
        drop(tasks);
        drop(handlers);
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.close();
    }
}

impl Handle {
    fn check_open(&self) -> io::Result<()> {
        if self.inner.closed.get() {
            Err(io::Error::other(RunError::Closed))
        } else {
            Ok(())
        }
    }

    /// The driver this loop runs on.
    pub fn driver_kind(&self) -> DriverKind {
        self.inner.kind
    }

    /// The driver's counters.
    pub fn driver_stats(&self) -> DriverStats {
        self.inner.driver.borrow().stats()
    }

    /// The driver's recent scheduling trace (`sim` only).
    pub fn driver_trace(&self) -> Option<String> {
        self.inner.driver.borrow().trace()
    }

    /// The loop's monotonic clock (virtual on `sim`).
    pub fn now(&self) -> Instant {
        self.inner.driver.borrow().now()
    }

    /// Schedules `f` to run on a later step, after callbacks already queued (L1).
    pub fn call_soon(&self, f: impl FnOnce() + 'static) {
        self.inner.ready.borrow_mut().push_back(Box::new(f));
    }

    /// Schedules `f` to run `delay` from now; never early (L1). A delay too
    /// large for the clock (`Duration::MAX`, "never") is clamped to
    /// [`FAR_FUTURE`] from now: the timer stays pending and cancellable.
    pub fn call_later(&self, delay: Duration, f: impl FnOnce() + 'static) -> TimerHandle {
        let now = self.now();
        let when = now
            .checked_add(delay.min(FAR_FUTURE))
            .unwrap_or(now + Duration::from_secs(1));
        self.call_at(when, f)
    }

    /// Schedules `f` at `when` on the loop's clock ([`Handle::now`]).
    pub fn call_at(&self, when: Instant, f: impl FnOnce() + 'static) -> TimerHandle {
        let id = self.inner.timers.borrow_mut().insert(when, Box::new(f));
        TimerHandle {
            id,
            inner: Rc::downgrade(&self.inner),
        }
    }

    /// A `Send` handle for `call_soon_threadsafe` from other threads.
    pub fn remote(&self) -> RemoteHandle {
        RemoteHandle {
            remote: self.inner.remote.clone(),
        }
    }

    /// Asks the running loop to stop after the current step.
    pub fn stop(&self) {
        self.inner.stopping.set(true);
    }

    /// Whether `run_forever`/`run_until_complete` is running.
    pub fn is_running(&self) -> bool {
        self.inner.running.get()
    }

    /// Whether the loop was closed.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.get()
    }

    /// Spawns a future on this loop; its output is available through the
    /// returned [`JoinHandle`].
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let (boxed, join) = tasks::wrap(fut);
        self.spawn_boxed(boxed);
        join
    }

    fn spawn_boxed(&self, future: BoxFuture) {
        let generation = self.inner.next_task_generation.get();
        self.inner.next_task_generation.set(generation + 1);
        let index = self.inner.tasks.borrow_mut().insert(Task {
            future: Some(future),
            generation,
            queued: true,
        });
        self.call_soon({
            let h = self.clone();
            move || h.poll_task(index, generation)
        });
    }

    fn poll_task(&self, index: usize, generation: u64) {
        let mut fut = {
            let mut tasks = self.inner.tasks.borrow_mut();
            let Some(t) = tasks.get_mut(index) else {
                return;
            };
            if t.generation != generation {
                return;
            }
            t.queued = false;
            match t.future.take() {
                Some(f) => f,
                None => return, // already being polled (woken from within its own poll)
            }
        };
        let waker = remote::task_waker(&self.inner.remote, index, generation);
        let mut cx = Context::from_waker(&waker);
        let done = fut.as_mut().poll(&mut cx).is_ready();
        let mut tasks = self.inner.tasks.borrow_mut();
        if done {
            if tasks.get(index).is_some_and(|t| t.generation == generation) {
                tasks.remove(index);
            }
            drop(tasks);
            drop(fut);
        } else if let Some(t) = tasks.get_mut(index) {
            t.future = Some(fut);
        }
    }

    /// Queues `op`; `handler` gets its completion. Submitted in the next batch.
    pub(crate) fn submit(&self, op: Op, handler: CompletionHandler) -> OpKey {
        let user = self.inner.handlers.borrow_mut().insert(handler);
        self.inner.driver.borrow_mut().submit(op, user)
    }

    /// Requests cancellation; the handler still gets exactly one completion.
    pub(crate) fn cancel(&self, key: OpKey) {
        self.inner.driver.borrow_mut().cancel(key);
    }

    /// Runs `f` with the driver, for synchronous socket calls.
    pub(crate) fn with_driver<R>(&self, f: impl FnOnce(&mut dyn Driver) -> R) -> R {
        f(&mut **self.inner.driver.borrow_mut())
    }

    /// Takes a receive buffer from the pool (empty, with capacity).
    pub(crate) fn take_recv_buf(&self) -> Vec<u8> {
        self.inner
            .recv_pool
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(RECV_BUF_SIZE))
    }

    /// Returns a receive buffer to the pool.
    pub(crate) fn give_recv_buf(&self, mut buf: Vec<u8>) {
        let mut pool = self.inner.recv_pool.borrow_mut();
        if pool.len() < RECV_POOL_MAX && buf.capacity() >= RECV_BUF_SIZE {
            buf.clear();
            pool.push(buf);
        }
    }

    pub(crate) fn transport_opened(&self) {
        let n = &self.inner.live_transports;
        n.set(n.get() + 1);
    }

    pub(crate) fn transport_released(&self) {
        let n = &self.inner.live_transports;
        n.set(n.get() - 1);
    }

    pub(crate) fn downgrade(&self) -> WeakHandle {
        WeakHandle(Rc::downgrade(&self.inner))
    }

    /// Sizes of the loop's internal tables, for leak checks in tests and
    /// diagnostics: every value returns to its starting size once all
    /// connections are gone.
    pub fn table_sizes(&self) -> TableSizes {
        let i = &self.inner;
        TableSizes {
            ops_in_flight: i.handlers.borrow().len(),
            driver_in_flight: i.driver.borrow().in_flight(),
            tasks: i.tasks.borrow().len(),
            timers: i.timers.borrow().len(),
            ready: i.ready.borrow().len(),
            transports: i.live_transports.get(),
        }
    }

    /// One loop step; see the module docs.
    pub fn run_once(&self) -> io::Result<()> {
        self.check_open()?;
        let i = &self.inner;
        self.wait_for_io()?;
        self.dispatch_completions();
        let incoming = i.remote.take();
        for cb in incoming.callbacks {
            self.inner.ready.borrow_mut().push_back(cb);
        }
        for (index, generation) in incoming.woken_tasks {
            self.schedule_task(index, generation);
        }
        let n = i.ready.borrow().len();
        for _ in 0..n {
            let Some(cb) = i.ready.borrow_mut().pop_front() else {
                break;
            };
            cb();
        }
        let now = self.now();
        loop {
            let cb = i.timers.borrow_mut().pop_due(now);
            match cb {
                Some(cb) => i.ready.borrow_mut().push_back(cb),
                None => break,
            }
        }
        Ok(())
    }

    fn schedule_task(&self, index: usize, generation: u64) {
        let mut tasks = self.inner.tasks.borrow_mut();
        if let Some(t) = tasks.get_mut(index) {
            if t.generation == generation && !t.queued {
                t.queued = true;
                drop(tasks);
                let h = self.clone();
                self.call_soon(move || h.poll_task(index, generation));
            }
        }
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
        let mut out = std::mem::take(&mut *i.completions.borrow_mut());
        let result = i.driver.borrow_mut().wait(timeout, &mut out);
        if may_sleep {
            i.remote.awake();
        }
        *i.completions.borrow_mut() = out;
        result
    }

    fn dispatch_completions(&self) {
        let i = &self.inner;
        let mut batch = std::mem::take(&mut *i.completions.borrow_mut());
        for c in batch.drain(..) {
            let handler = i.handlers.borrow_mut().try_remove(c.user);
            match handler {
                Some(h) => h(c),
                None => tracing::error!(op = c.op.name(), "completion without an owner"),
            }
        }
        // Keep the allocation for the next turn.
        let mut slot = i.completions.borrow_mut();
        if slot.is_empty() {
            *slot = batch;
        }
    }
}

/// A weak reference to a loop, held by transports so they never keep a
/// closed loop alive.
#[derive(Clone, Debug)]
pub(crate) struct WeakHandle(Weak<Inner>);

impl WeakHandle {
    pub(crate) fn upgrade(&self) -> Option<Handle> {
        self.0.upgrade().map(|inner| Handle { inner })
    }
}

/// See [`Handle::table_sizes`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableSizes {
    /// Completion handlers waiting for their op.
    pub ops_in_flight: usize,
    /// Ops the driver has not completed.
    pub driver_in_flight: usize,
    /// Spawned tasks not finished.
    pub tasks: usize,
    /// Pending timers.
    pub timers: usize,
    /// Queued ready callbacks.
    pub ready: usize,
    /// Transports whose socket is not closed yet.
    pub transports: usize,
}

impl RemoteHandle {
    /// Schedules `f` on the loop from any thread, waking it if it is blocked
    /// in the kernel (L2).
    pub fn call_soon_threadsafe(&self, f: impl FnOnce() + Send + 'static) {
        self.remote.call_soon(Box::new(f));
    }
}

/// Polls a future once with a no-op waker context; used by tests of futures.
#[doc(hidden)]
pub fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    std::pin::Pin::new(f).poll(&mut cx)
}
