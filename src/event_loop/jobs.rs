//! What the loop runs: ready entries (a boxed callback only for the
//! application's `call_soon` and timers; a transport's run or a task's poll
//! without an allocation) and whoever an operation's completions go to.

use std::rc::Rc;

#[cfg(doc)]
use super::Handle;
use crate::driver::Completion;
#[cfg(doc)]
use crate::driver::Op;

/// A callback queued on the loop.
pub(crate) type Callback = Box<dyn FnOnce()>;

/// A ready callback, and whether the application queued it (`call_soon`,
/// timers) or proactor did (transport dispatch, task polls): a closed loop
/// drops the application's and still runs its own while it shuts down.
pub(super) struct Ready {
    pub(super) job: Job,
    pub(super) user: bool,
}

/// What a ready entry runs. Only `call_soon` and friends box a closure;
/// the loop's own frequent work (a transport's run, a task's poll) is
/// queued without an allocation.
pub(super) enum Job {
    Callback(Callback),
    Run(Rc<dyn Runnable>),
    Task { index: usize, generation: u64 },
}

/// Something the loop runs when it is ready (a transport's run), queued by
/// [`Handle::call_soon_run`] without an allocation.
pub(crate) trait Runnable {
    /// Runs it; called once per `call_soon_run`.
    fn run_ready(self: Rc<Self>);
}

/// What runs when an operation completes.
pub(crate) type CompletionHandler = Box<dyn FnOnce(Completion)>;

/// The owner of operations (a transport), told of their completions by
/// [`OpOwner::complete`]: the loop keeps the owner itself, not a boxed
/// closure per operation. The completion's op says which operation it was.
pub(crate) trait OpOwner {
    /// `completion` is a completion of an op submitted with
    /// [`Handle::submit_owned`]: its one completion, or, for a multishot op
    /// ([`Op::RecvMulti`]), each of them up to and including the final one
    /// (`more == false`).
    fn complete(self: Rc<Self>, completion: Completion);
}

/// Who gets an operation's completions.
pub(crate) enum Handler {
    /// A boxed closure: the one completion of a single-shot op.
    Once(CompletionHandler),
    /// The op's owner: every completion. It stays registered while they
    /// come with `more == true` (a multishot op stays armed) and is removed
    /// with the final one; sharing it costs a reference count, not an
    /// allocation.
    Owner(Rc<dyn OpOwner>),
}

impl Handler {
    pub(crate) fn call(self, completion: Completion) {
        match self {
            Handler::Once(f) => f(completion),
            Handler::Owner(owner) => owner.complete(completion),
        }
    }
}
