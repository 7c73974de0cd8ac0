//! The single-threaded event loop: ready callbacks, timers, spawned futures,
//! dispatch of completions to their owners, thread-safe wake-ups, and the
//! exception handler that catches panics in application code (L5).
//!
//! # Implementation
//!
//! One turn of [`EventLoop::run_forever`] is [`Handle::run_once`] (see
//! `turn.rs`): submit everything queued and wait (one kernel call) →
//! dispatch completions to their owners → run the callbacks and tasks that
//! were ready at the start of the step (FIFO, L1) → move due timers to the
//! ready queue. Transports schedule their protocol deliveries as ready
//! callbacks, so protocol events run in the same turn as the completion that
//! caused them.

mod builder;
mod error;
mod exceptions;
mod jobs;
mod remote;
mod tasks;
mod timers;
mod turn;
mod wait_hook;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;

use crate::driver::{Completion, Driver, DriverKind, DriverStats, Op, OpKey, SimStats, FAR_FUTURE};
pub use builder::Builder;
pub use error::RunError;
pub(crate) use exceptions::guarded;
use exceptions::ExceptionHandler;
pub use exceptions::{
    default_exception_handler, CallbackPanicked, ExceptionContext, ExceptionSource,
};
pub(crate) use jobs::{Callback, CompletionHandler, Handler, OpOwner, Runnable};
use jobs::{Job, Ready};
use remote::Remote;
pub use tasks::{JoinError, JoinHandle};
use tasks::{OnPanic, Task};
use timers::{TimerId, Timers};
pub use wait_hook::WaitHook;

/// Size of the receive buffers the loop hands to transports.
pub(crate) const RECV_BUF_SIZE: usize = 64 * 1024;
/// How many idle receive buffers the loop keeps for reuse.
const RECV_POOL_MAX: usize = 64;
/// How many emptied send `Vec`s the loop keeps for reuse.
const SEND_VEC_POOL_MAX: usize = 64;
/// How long [`EventLoop::close`] waits for aborted connections to release
/// their sockets (the kernel answering their cancels).
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// An event loop. Not `Send`: it runs on the thread that built it.
///
/// Dropping it closes it (see [`EventLoop::close`]).
///
/// # Examples
///
/// Callbacks, a timer and a task on one loop:
///
/// ```
/// use std::time::Duration;
///
/// use proactor::EventLoop;
///
/// let event_loop = EventLoop::new()?; // uring, or poll where io_uring is refused
/// let handle = event_loop.handle();
/// handle.call_soon(|| println!("runs first"));
/// let stopper = handle.clone();
/// handle.call_later(Duration::from_millis(10), move || stopper.stop());
/// event_loop.run_forever()?; // until the timer stops it
///
/// let task = handle.spawn(async { 6 * 7 });
/// assert_eq!(event_loop.run_until_complete(task)?, Ok(42));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
    ready: RefCell<VecDeque<Ready>>,
    timers: RefCell<Timers>,
    handlers: RefCell<Slab<Handler>>,
    tasks: RefCell<Slab<Task>>,
    next_task_generation: Cell<u64>,
    remote: Arc<Remote>,
    completions: RefCell<Vec<Completion>>,
    recv_pool: RefCell<Vec<Vec<u8>>>,
    /// Emptied `Vec`s of finished sends, for the next ones.
    send_vec_pool: RefCell<Vec<Vec<Bytes>>>,
    /// The driver provides receive buffers: receives go out with none
    /// (`Driver::provides_recv_buffers`), and the pool stays empty.
    driver_provides_recv: bool,
    stopping: Cell<bool>,
    running: Cell<bool>,
    closed: Cell<bool>,
    live_transports: Cell<usize>,
    /// Transports and servers to shut down when the loop closes.
    resources: RefCell<Slab<Weak<dyn Resource>>>,
    exception_handler: RefCell<Option<ExceptionHandler>>,
    /// Caught panics waiting for the handler (called at a safe point).
    exceptions: RefCell<VecDeque<ExceptionContext>>,
    /// Runs around each driver wait that may block (see `wait_hook.rs`).
    wait_hook: RefCell<Option<Rc<WaitHook>>>,
}

/// A transport or server that [`EventLoop::close`] must shut down, so that
/// closing a loop leaves no file descriptor open.
pub(crate) trait Resource {
    /// Aborts the connection or closes the listener.
    fn shut_down(self: Rc<Self>);
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
        let Some(inner) = self.inner.upgrade() else {
            return false;
        };
        let callback = inner.timers.borrow_mut().cancel(self.id);
        // Dropped outside the borrow: its captures' destructors may use the loop.
        callback.is_some()
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
    ///
    /// # Errors
    /// The driver could not be created (see [`Builder::build`]).
    pub fn new() -> io::Result<EventLoop> {
        Builder::default().build()
    }

    pub(crate) fn from_driver(driver: Box<dyn Driver>) -> EventLoop {
        let kind = driver.kind();
        let driver_provides_recv = driver.provides_recv_buffers();
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
                    send_vec_pool: RefCell::default(),
                    driver_provides_recv,
                    stopping: Cell::new(false),
                    running: Cell::new(false),
                    closed: Cell::new(false),
                    live_transports: Cell::new(0),
                    resources: RefCell::default(),
                    exception_handler: RefCell::new(None),
                    exceptions: RefCell::default(),
                    wait_hook: RefCell::new(None),
                }),
            },
        }
    }

    /// A clonable handle to this loop.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Runs until [`Handle::stop`] is called. Like asyncio, a `stop()` made
    /// before this is called lets exactly one turn run.
    ///
    /// # Errors
    /// [`RunError::Closed`] or [`RunError::Running`] (as `io::Error`s), or
    /// the driver's error if waiting failed.
    pub fn run_forever(&self) -> io::Result<()> {
        let h = &self.handle;
        let _running = h.enter()?;
        loop {
            h.turn()?;
            if h.inner.stopping.replace(false) {
                return Ok(());
            }
        }
    }

    /// Runs `fut` to completion and returns its output. If `fut` panics, the
    /// panic resumes in the caller (the loop stays usable).
    ///
    /// # Errors
    /// [`RunError::Stopped`] if `stop()` was called first (L1),
    /// [`RunError::Closed`], [`RunError::Running`] (called from inside the
    /// loop), or [`RunError::Io`].
    pub fn run_until_complete<F>(&self, fut: F) -> Result<F::Output, RunError>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let h = &self.handle;
        let running = h.enter()?;
        let (boxed, join) = tasks::wrap(fut, OnPanic::Keep);
        h.spawn_boxed(boxed);
        loop {
            h.turn().map_err(RunError::Io)?;
            let outcome = join.state.borrow_mut().outcome.take();
            match outcome {
                Some(Ok(v)) => return Ok(v),
                Some(Err(JoinError::Panicked(_))) => {
                    let payload = join.state.borrow_mut().panic.take();
                    drop(running);
                    match payload {
                        Some(p) => std::panic::resume_unwind(p),
                        None => unreachable!("a kept panic has its payload"),
                    }
                }
                Some(Err(_)) => return Err(RunError::Closed),
                None => {}
            }
            if h.inner.stopping.replace(false) {
                return Err(RunError::Stopped);
            }
        }
    }

    /// Closes the loop. Pending application callbacks, timers and tasks are
    /// dropped (their [`JoinHandle`]s resolve to [`JoinError::Cancelled`]);
    /// every live connection is aborted (its protocol hears
    /// `connection_lost(None)`) and every server stops listening, so no file
    /// descriptor is left open. Operations the kernel still holds are
    /// cancelled by the driver, which keeps their buffers until it lets go
    /// (O3). Idempotent.
    ///
    /// # Errors
    /// [`RunError::Running`] when called while the loop runs.
    pub fn close(&self) -> Result<(), RunError> {
        let h = &self.handle;
        let i = &h.inner;
        if i.running.get() {
            return Err(RunError::Running);
        }
        if i.closed.replace(true) {
            return Ok(());
        }
        h.drop_application_work();
        h.shut_down_resources();
        h.drain(CLOSE_DEADLINE);
        // Whatever is left never runs. Dropped outside every borrow, so
        // destructors that touch the loop find it consistent.
        let ready = std::mem::take(&mut *i.ready.borrow_mut());
        let handlers = std::mem::take(&mut *i.handlers.borrow_mut());
        drop(ready);
        drop(handlers);
        h.drop_application_work();
        h.flush_exceptions();
        Ok(())
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// Clears the loop's `running` flag when a run ends, also by unwinding.
struct RunningGuard<'a>(&'a Inner);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.running.set(false);
    }
}

impl Handle {
    /// Marks the loop running, refusing a closed or already running loop.
    fn enter(&self) -> Result<RunningGuard<'_>, RunError> {
        let i = &self.inner;
        if i.closed.get() {
            return Err(RunError::Closed);
        }
        if i.running.replace(true) {
            return Err(RunError::Running);
        }
        Ok(RunningGuard(i))
    }

    /// The driver this loop runs on.
    pub fn driver_kind(&self) -> DriverKind {
        self.inner.kind
    }

    /// The driver's counters.
    pub fn driver_stats(&self) -> DriverStats {
        self.inner.driver.borrow().stats()
    }

    /// What the simulator injected: how often it did each kernel behaviour
    /// it models (`sim` only).
    pub fn sim_stats(&self) -> Option<SimStats> {
        self.inner.driver.borrow().sim_stats()
    }

    /// The driver's recent scheduling trace (`sim` only).
    pub fn driver_trace(&self) -> Option<String> {
        self.inner.driver.borrow().trace()
    }

    /// The loop's monotonic clock (virtual on `sim`).
    pub fn now(&self) -> Instant {
        self.inner.driver.borrow().now()
    }

    /// Schedules `f` to run on a later step, after callbacks already queued
    /// (L1). Ignored once the loop is closed.
    pub fn call_soon(&self, f: impl FnOnce() + 'static) {
        if !self.inner.closed.get() {
            self.push_ready(Job::Callback(Box::new(f)), true);
        }
    }

    /// `call_soon` for proactor's own work (a transport's run), which still
    /// runs while a closed loop shuts its connections down; queued without
    /// an allocation.
    pub(crate) fn call_soon_run(&self, runnable: Rc<dyn Runnable>) {
        self.push_ready(Job::Run(runnable), false);
    }

    fn push_ready(&self, job: Job, user: bool) {
        self.inner.ready.borrow_mut().push_back(Ready { job, user });
    }

    /// Schedules `f` to run `delay` from now; never early (L1). A delay too
    /// large for the clock (`Duration::MAX`, "never") is clamped to 100
    /// years from now: the timer stays pending and cancellable.
    pub fn call_later(&self, delay: Duration, f: impl FnOnce() + 'static) -> TimerHandle {
        let now = self.now();
        let mut delay = delay.min(FAR_FUTURE);
        let when = loop {
            match now.checked_add(delay) {
                Some(when) => break when,
                // Cannot happen on Linux (FAR_FUTURE fits); stay far anyway.
                None => delay /= 2,
            }
        };
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

    /// Asks the running loop to stop after the current step; if it is not
    /// running, the next `run_forever` runs one step and returns.
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

    /// Replaces the exception handler, which is told about every panic
    /// caught in application code (L5). The default,
    /// [`default_exception_handler`], logs it. A handler that calls
    /// [`ExceptionContext::resume_unwind`] makes such panics unwind out of
    /// `run_forever` (crash-fast).
    pub fn set_exception_handler(&self, handler: impl Fn(&Handle, ExceptionContext) + 'static) {
        *self.inner.exception_handler.borrow_mut() = Some(Rc::new(handler));
    }

    /// Goes back to [`default_exception_handler`].
    pub fn reset_exception_handler(&self) {
        self.inner.exception_handler.borrow_mut().take();
    }

    /// Queues a caught panic for the exception handler, which runs at the
    /// next safe point of the turn.
    pub(crate) fn report_exception(&self, context: ExceptionContext) {
        self.inner.exceptions.borrow_mut().push_back(context);
    }

    /// Queues `op`; `handler` gets its completion. Submitted in the next batch.
    pub(crate) fn submit(&self, op: Op, handler: CompletionHandler) -> OpKey {
        let user = self
            .inner
            .handlers
            .borrow_mut()
            .insert(Handler::Once(handler));
        self.inner.driver.borrow_mut().submit(op, user)
    }

    /// Queues `op`; `owner` gets its completion ([`OpOwner::complete`]), or
    /// every completion of a multishot op ([`Op::RecvMulti`]) up to and
    /// including its final one.
    pub(crate) fn submit_owned(&self, op: Op, owner: Rc<dyn OpOwner>) -> OpKey {
        let user = self
            .inner
            .handlers
            .borrow_mut()
            .insert(Handler::Owner(owner));
        self.inner.driver.borrow_mut().submit(op, user)
    }

    /// Whether the driver offers [`Op::AcceptMulti`].
    pub(crate) fn supports_multishot_accept(&self) -> bool {
        self.inner.driver.borrow().supports_multishot_accept()
    }

    /// Whether the driver offers [`Op::RecvMulti`].
    pub(crate) fn supports_multishot_recv(&self) -> bool {
        self.inner.driver.borrow().supports_multishot_recv()
    }

    /// An empty `Vec` for the buffers of a send, reusing one of a finished send.
    pub(crate) fn take_send_vec(&self) -> Vec<Bytes> {
        self.inner
            .send_vec_pool
            .borrow_mut()
            .pop()
            .unwrap_or_default()
    }

    /// Returns the `Vec` of a finished send (its buffers are released here: W3).
    pub(crate) fn give_send_vec(&self, mut bufs: Vec<Bytes>) {
        bufs.clear();
        let mut pool = self.inner.send_vec_pool.borrow_mut();
        if pool.len() < SEND_VEC_POOL_MAX && bufs.capacity() > 0 {
            pool.push(bufs);
        }
    }

    /// Requests cancellation; the handler still gets exactly one final completion.
    pub(crate) fn cancel(&self, key: OpKey) {
        self.inner.driver.borrow_mut().cancel(key);
    }

    /// Runs `f` with the driver, for synchronous socket calls.
    pub(crate) fn with_driver<R>(&self, f: impl FnOnce(&mut dyn Driver) -> R) -> R {
        f(&mut **self.inner.driver.borrow_mut())
    }

    /// Takes a receive buffer from the pool (empty, with capacity), or an
    /// empty `Vec::new()` where the driver provides the buffer.
    pub(crate) fn take_recv_buf(&self) -> Vec<u8> {
        if self.inner.driver_provides_recv {
            return Vec::new();
        }
        self.inner
            .recv_pool
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(RECV_BUF_SIZE))
    }

    /// Returns a receive buffer to the pool.
    pub(crate) fn give_recv_buf(&self, buf: Vec<u8>) {
        // Multishot arrivals are copied into buffers the driver keeps.
        let buf = match self.inner.driver.try_borrow_mut() {
            Ok(mut driver) => driver.recycle_recv_buf(buf),
            Err(_) => Some(buf),
        };
        let Some(mut buf) = buf else { return };
        if self.inner.driver_provides_recv {
            return; // freed: nothing would take it from the pool
        }
        let mut pool = self.inner.recv_pool.borrow_mut();
        if pool.len() < RECV_POOL_MAX && buf.capacity() >= RECV_BUF_SIZE {
            buf.clear();
            pool.push(buf);
        }
    }

    /// Registers a transport (`transport: true`) or server to shut down
    /// when the loop closes; returns the key to [`Handle::unregister`] it.
    pub(crate) fn register(&self, resource: Weak<dyn Resource>, transport: bool) -> usize {
        if transport {
            let n = &self.inner.live_transports;
            n.set(n.get() + 1);
        }
        self.inner.resources.borrow_mut().insert(resource)
    }

    /// The resource closed its socket.
    pub(crate) fn unregister(&self, key: usize, transport: bool) {
        if transport {
            let n = &self.inner.live_transports;
            n.set(n.get() - 1);
        }
        self.inner.resources.borrow_mut().try_remove(key);
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
