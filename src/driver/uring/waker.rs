//! The remote waker: an eventfd that other threads write, with a read of it
//! kept in flight in the ring, so a write ends a wait in the kernel.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use io_uring::{opcode, types};

use super::{UringDriver, WAKER_UD};
use crate::driver::RemoteWaker;

/// The eventfd behind [`RemoteWaker`]; shared with other threads.
#[derive(Debug)]
pub(super) struct EventFd(pub(super) OwnedFd);

impl RemoteWaker for EventFd {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to an fd this struct owns.
        let n = unsafe {
            libc::write(
                self.0.as_raw_fd(),
                (&one as *const u64).cast::<libc::c_void>(),
                8,
            )
        };
        if n != 8 {
            tracing::warn!("uring: eventfd wake failed: {}", io::Error::last_os_error());
        }
    }
}

impl UringDriver {
    /// Keeps a read on the eventfd in flight.
    pub(super) fn arm_waker(&mut self) {
        if self.waker_armed || self.closing || self.waker_buf.is_null() {
            return;
        }
        let entry = opcode::Read::new(
            types::Fd(self.waker.0.as_raw_fd()),
            self.waker_buf.cast::<u8>(),
            8,
        )
        .build()
        .user_data(WAKER_UD);
        // SAFETY: `waker_buf` is freed only once the read's CQE arrived (or is
        // leaked in drop), and the eventfd is kept open by `self.waker`.
        unsafe { self.push(entry) };
        self.waker_armed = true;
    }
}
