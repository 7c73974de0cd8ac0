//! The timer heap behind `call_later`/`call_at`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::time::Instant;

use super::Callback;

/// Identifies a scheduled timer so it can be cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TimerId(u64);

/// Timers ordered by deadline, then by scheduling order (FIFO among equal
/// deadlines). Cancelled timers are removed lazily when they reach the top.
#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, TimerId)>>,
    callbacks: std::collections::HashMap<TimerId, Callback>,
    cancelled: HashSet<TimerId>,
    next_id: u64,
}

impl std::fmt::Debug for Timers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timers")
            .field("pending", &self.len())
            .finish()
    }
}

impl Timers {
    pub(crate) fn insert(&mut self, when: Instant, cb: Callback) -> TimerId {
        let id = TimerId(self.next_id);
        self.next_id += 1;
        self.heap.push(Reverse((when, id)));
        self.callbacks.insert(id, cb);
        id
    }

    /// Cancels a timer; returns its callback if it was still pending, for
    /// the caller to drop once the timers are no longer borrowed.
    #[must_use = "drop the callback outside the borrow"]
    pub(crate) fn cancel(&mut self, id: TimerId) -> Option<Callback> {
        let callback = self.callbacks.remove(&id)?;
        self.cancelled.insert(id);
        self.drop_cancelled_top();
        Some(callback)
    }

    fn drop_cancelled_top(&mut self) {
        while let Some(Reverse((_, id))) = self.heap.peek() {
            if self.cancelled.remove(id) {
                self.heap.pop();
            } else {
                break;
            }
        }
    }

    /// The earliest pending deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((when, _))| *when)
    }

    /// Removes and returns the callback of the earliest timer due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Callback> {
        self.drop_cancelled_top();
        match self.heap.peek() {
            Some(Reverse((when, _))) if *when <= now => {
                let Reverse((_, id)) = self.heap.pop()?;
                let cb = self.callbacks.remove(&id);
                self.drop_cancelled_top();
                cb
            }
            _ => None,
        }
    }

    /// Pending (not cancelled) timers.
    pub(crate) fn len(&self) -> usize {
        self.callbacks.len()
    }

    /// Removes every timer; returns the callbacks for the caller to drop
    /// once the timers are no longer borrowed.
    #[must_use = "drop the callbacks outside the borrow"]
    pub(crate) fn take_all(&mut self) -> Vec<Callback> {
        self.heap.clear();
        self.cancelled.clear();
        self.callbacks.drain().map(|(_, cb)| cb).collect()
    }
}
