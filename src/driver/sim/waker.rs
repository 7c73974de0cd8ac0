//! The remote waker: a flag under a mutex and a condvar, so a real thread
//! can end a `wait(None)` of the simulator.

use std::sync::{Condvar, Mutex};

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

    pub(super) fn block(&self) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        while !*p {
            p = self.cv.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        *p = false;
    }
}
