//! Dropping the driver (O3): every op still in the kernel is cancelled and
//! reaped; what the kernel never answers is leaked, never freed.

use std::time::{Duration, Instant};

use io_uring::opcode;

use super::{UringDriver, DROP_DEADLINE, WAKER_CANCEL_UD, WAKER_UD};
use crate::driver::{socket, Completion, Driver, Op, OpKey};

impl Drop for UringDriver {
    fn drop(&mut self) {
        let leaked = self.quiesce(DROP_DEADLINE);
        if leaked > 0 {
            tracing::warn!("uring: leaked {leaked} ops the kernel did not complete");
        }
        // `ring` closes when the fields drop, after everything the kernel could
        // still touch was either completed or leaked.
    }
}

impl UringDriver {
    /// Shuts the driver down (O3): cancels every op still in the kernel and
    /// reaps until each one's CQE arrived or `limit` passed. Ops the kernel
    /// never answered are leaked, never freed. Returns how many were leaked
    /// (the waker read included). The driver submits nothing afterwards.
    pub(super) fn quiesce(&mut self, limit: Duration) -> usize {
        self.closing = true;
        let mut garbage = Vec::new();
        while let Some((key, res)) = self.ready.pop_front() {
            if let Some(slot) = self.slots.remove(key) {
                garbage.push(self.finish(key, slot, res));
            }
        }
        let live: Vec<OpKey> = self.slots.keys().collect();
        for key in live {
            self.cancel(key);
        }
        if self.waker_armed {
            let entry = opcode::AsyncCancel::new(WAKER_UD)
                .build()
                .user_data(WAKER_CANCEL_UD);
            // SAFETY: ASYNC_CANCEL carries no pointers.
            unsafe { self.push(entry) };
        }
        let deadline = Instant::now() + limit;
        loop {
            Self::discard(&mut garbage);
            if self.slots.is_empty() && !self.waker_armed {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            let entered = self.enter(Some(wait));
            let reaped = self.reap_all(&mut garbage);
            if let Err(e) = entered.and(reaped) {
                tracing::warn!("uring: io_uring_enter failed during shutdown: {e}");
                break;
            }
        }
        Self::discard(&mut garbage);
        let mut leaked = self.slots.len();
        if leaked > 0 {
            // The kernel may still write these buffers (and, for a
            // multishot receive, the ring's): never free them.
            std::mem::forget(std::mem::take(&mut self.slots));
            std::mem::forget(self.buf_ring.take());
        }
        if self.waker_armed {
            leaked += 1;
        } else if !self.waker_buf.is_null() {
            // SAFETY: `waker_buf` came from Box::into_raw in `new`, the
            // kernel's read of it has completed and no new read will be
            // armed (`closing`); it is freed exactly once (then nulled).
            drop(unsafe { Box::from_raw(self.waker_buf) });
            self.waker_buf = std::ptr::null_mut();
        }
        leaked
    }

    /// Drops completions nobody will see, closing sockets they accepted.
    fn discard(garbage: &mut Vec<Completion>) {
        for c in garbage.drain(..) {
            if let Op::Accept {
                accepted: Some((id, _)),
                ..
            }
            | Op::AcceptMulti {
                accepted: Some((id, _)),
                ..
            } = c.op
            {
                socket::close(id);
            }
        }
    }
}
