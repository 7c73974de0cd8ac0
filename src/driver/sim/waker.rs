//! The remote waker: a flag under a mutex and a condvar, so a real thread
//! can end a `wait(None)` of the simulator.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::driver::RemoteWaker;

/// Remote waker: a flag under a mutex plus a condvar (real threads).
#[derive(Debug, Default)]
pub(super) struct SimWaker {
    pending: Mutex<bool>,
    cv: Condvar,
}

impl RemoteWaker for SimWaker {
    fn wake(&self) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        *p = true;
        self.cv.notify_all();
    }
}

impl SimWaker {
    pub(super) fn take(&self) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *p, false)
    }

    /// Blocks until a wake, for at most `limit` of real time; returns
    /// whether a wake came (and takes it).
    pub(super) fn block_for(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        while !*p {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            p = self
                .cv
                .wait_timeout(p, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *p = false;
        true
    }
}
