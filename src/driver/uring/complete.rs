//! Reaping: every CQE becomes the one completion of its op (O1), or
//! updates the driver's own ops (waker, fallback timeout, lingering close,
//! cancels); completions the kernel reports dropped are an error.

use std::io;

use io_uring::cqueue;

use super::prep::Side;
use super::ring::{is_busy, Enter};
use super::{
    Slot, UringDriver, CANCEL_BIT, CLOSE_UD, INTERNAL_BIT, KERNEL_TASK_WORK_BATCH,
    MAX_DRAIN_ROUNDS, MERGE_MAX, TIMEOUT_UD, WAKER_CANCEL_UD, WAKER_UD,
};
use crate::address::Address;
use crate::driver::{cancelled_error, socket, Completion, Op, OpKey, Slots, SocketId};

impl UringDriver {
    /// Reaps every CQE; then, in the same turn, what an overflowed CQ still
    /// holds in the kernel, and (DEFER_TASKRUN) the completions the kernel
    /// posts only in batches as it is entered. Reports completions the
    /// kernel dropped (CQ overflow without `IORING_FEAT_NODROP`, or an
    /// overflow entry it could not allocate) as an error: the ops they
    /// belonged to will never complete.
    pub(super) fn reap_all(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        self.arrivals = 0;
        let mut n = self.reap(out);
        let mut rounds = 0;
        let mut result = Ok(());
        loop {
            let overflow = self.ring.submission().cq_overflow();
            let batch = self.defer_taskrun && n >= KERNEL_TASK_WORK_BATCH;
            // Armed multishot ops post arrivals for as long as peers send
            // or connect: entering again would read on (and hold), or
            // accept on, without end before the loop ever delivers, pauses
            // or runs anything else (a storm of connecting clients kept one
            // turn accepting for over a second). `turn_arrivals` is one
            // turn's share; the rest waits for the next.
            let enough = self.arrivals > 0 && self.arrivals >= self.turn_arrivals;
            if !(overflow || batch) || rounds == MAX_DRAIN_ROUNDS || enough {
                break;
            }
            rounds += 1;
            match self.sys_enter(Enter::Poll) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) || is_busy(&e) => {}
                Err(e) => {
                    result = Err(self.enter_error(e));
                    break;
                }
            }
            n = self.reap(out);
            if n == 0 {
                break; // nothing more to post (or the kernel could not now)
            }
        }
        let dropped = self.ring.completion().overflow();
        if dropped != self.cq_dropped {
            let lost = dropped.wrapping_sub(self.cq_dropped);
            self.cq_dropped = dropped;
            tracing::error!(lost, "uring: the kernel dropped completions (CQ overflow)");
            result = Err(io::Error::from_raw_os_error(libc::EBADR));
        }
        result
    }

    /// Moves every CQE in the ring into completions; returns how many CQEs.
    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        let n = cqes.len();
        for &(ud, res, flags) in &cqes {
            if ud & INTERNAL_BIT != 0 {
                match ud {
                    WAKER_UD => {
                        self.waker_armed = false;
                        if res < 0 && res != -libc::ECANCELED && res != -libc::EINTR {
                            tracing::warn!(
                                "uring: waker read failed: {}",
                                io::Error::from_raw_os_error(-res)
                            );
                        }
                        self.arm_waker();
                    }
                    TIMEOUT_UD => self.fallback_timeouts -= 1,
                    CLOSE_UD => {
                        self.closes_in_flight -= 1;
                        if res < 0 {
                            tracing::warn!(
                                "uring: close failed: {}",
                                io::Error::from_raw_os_error(-res)
                            );
                        }
                    }
                    WAKER_CANCEL_UD => {}
                    other => tracing::warn!("uring: unknown internal CQE {other:#x}"),
                }
            } else if ud & CANCEL_BIT != 0 {
                let key = Slots::<Slot>::decode(ud & !CANCEL_BIT);
                if let Some(slot) = self.slots.get_mut(key) {
                    slot.cancel_result = Some(res);
                }
            } else {
                let key = Slots::<Slot>::decode(ud);
                if cqueue::more(flags) {
                    if !self.merge_arrival(key, flags, res, out) {
                        let arrival = self.take_arrival(flags, res);
                        self.arrived(key, arrival, res, out);
                    }
                    continue;
                }
                let arrival = self.take_arrival(flags, res);
                match self.slots.remove(key) {
                    Some(mut slot) => {
                        if let (Op::RecvMulti { buf, .. }, Some(bytes)) = (&mut slot.op, arrival) {
                            *buf = bytes;
                        }
                        out.push(self.finish(key, slot, res));
                    }
                    None => tracing::warn!("uring: CQE for unknown op {ud:#x} ({res})"),
                }
            }
        }
        cqes.clear();
        self.cqes = cqes;
        n
    }

    /// The bytes a CQE's provided buffer holds (copied out, the buffer given
    /// back to the ring), if it names one.
    fn take_arrival(&mut self, flags: u32, res: i32) -> Option<Vec<u8>> {
        let bid = cqueue::buffer_select(flags)?;
        let ring = self.buf_ring.as_mut()?;
        let n = usize::try_from(res).unwrap_or(0);
        let spare = self.spare_bufs.pop().unwrap_or_default();
        Some(ring.take(bid, n, flags, spare))
    }

    /// Appends the bytes of a multishot receive's CQE to the arrival reaped
    /// just before it, if that is the last completion in `out` and of the
    /// same op, up to [`MERGE_MAX`] bytes in all. A burst on one socket comes
    /// as CQEs back to back, one per ring buffer: merged, its bytes are
    /// copied out of the ring once, into the buffer the protocol gets,
    /// instead of into one buffer each and again when delivery coalesces
    /// them. Returns whether it merged (the buffer is back in the ring).
    fn merge_arrival(&mut self, key: OpKey, flags: u32, res: i32, out: &mut [Completion]) -> bool {
        let (Some(bid), Ok(n)) = (cqueue::buffer_select(flags), usize::try_from(res)) else {
            return false;
        };
        let Some(Completion {
            more: true,
            key: last_key,
            op: Op::RecvMulti { buf, .. },
            result: Ok(total),
            ..
        }) = out.last_mut()
        else {
            return false;
        };
        let Some(ring) = self.buf_ring.as_mut() else {
            return false;
        };
        if *last_key != key || buf.len() + n > MERGE_MAX {
            return false;
        }
        // Room for a whole burst at once: growing step by step would copy
        // the bytes already there again.
        if buf.capacity() < MERGE_MAX {
            buf.reserve_exact(MERGE_MAX - buf.len());
        }
        ring.append(bid, n, flags, buf);
        *total = buf.len();
        self.arrivals += 1;
        true
    }

    /// A CQE of an armed multishot receive: one arrival, returned as a
    /// completion of its own (`more`); the op stays in its slot.
    fn arrived(
        &mut self,
        key: OpKey,
        arrival: Option<Vec<u8>>,
        res: i32,
        out: &mut Vec<Completion>,
    ) {
        let Some(slot) = self.slots.get(key) else {
            tracing::warn!(?key, res, "uring: multishot CQE for unknown op");
            return;
        };
        let user = slot.user;
        let (op, result) = match slot.op {
            Op::RecvMulti { socket, .. } => {
                self.arrivals += 1;
                let op = Op::RecvMulti {
                    socket,
                    buf: arrival.unwrap_or_default(),
                };
                (op, u32::try_from(res).map(|n| n as usize))
            }
            Op::AcceptMulti { listener, .. } => {
                self.arrivals += 1;
                let accepted = (res >= 0).then(|| self.accepted(listener, res));
                let op = Op::AcceptMulti { listener, accepted };
                (op, u32::try_from(res).map(|_| 0))
            }
            _ => {
                tracing::warn!(?key, res, "uring: MORE on a single-shot op");
                return;
            }
        };
        let result = result.map_err(|_| io::Error::from_raw_os_error(-res));
        let completion = Completion {
            more: true,
            user,
            key,
            op,
            result,
        };
        self.stats.count_completion(&completion, false);
        out.push(completion);
    }

    /// A socket a multishot accept on `listener` made (`fd`): recorded as
    /// accepted, with its peer asked of the socket (the CQE has no address).
    fn accepted(&mut self, listener: SocketId, fd: i32) -> (SocketId, Address) {
        let id = SocketId(fd);
        self.sockets.accepted(listener, id);
        let peer = socket::accepted_peer(id).unwrap_or_else(|e| {
            tracing::debug!("uring: no peer address for an accepted socket: {e}");
            Address::Unix(Default::default())
        });
        (id, peer)
    }

    /// Turns an op's one result (raw: negative errno) into its completion.
    pub(super) fn finish(&mut self, key: OpKey, slot: Slot, res: i32) -> Completion {
        let Slot {
            mut op,
            user,
            side,
            offered,
            cancel_requested,
            cancel_result,
        } = slot;
        // The kernel is done with the side data now.
        let peer = match side {
            Side::Accept(addr) => Some(addr.take()),
            _ => None,
        };
        let result = if cancel_requested && (res == -libc::ECANCELED || res == -libc::EINTR) {
            // Truly cancelled: nothing was transferred.
            Err(cancelled_error())
        } else {
            if cancel_requested {
                // The op finished anyway (cancel said ENOENT/EALREADY, or lost
                // the race): its real result goes to the owner (O2).
                tracing::trace!(?key, res, ?cancel_result, "uring: cancel race");
            }
            if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                let n = res as usize;
                match &mut op {
                    Op::Accept { listener, accepted } => {
                        let id = SocketId(res);
                        self.sockets.accepted(*listener, id);
                        let peer = peer.unwrap_or_else(|| Address::Unix(Default::default()));
                        *accepted = Some((id, peer));
                        Ok(0)
                    }
                    // The kernel accepted one more, then ended the multishot.
                    Op::AcceptMulti { listener, accepted } => {
                        let listener = *listener;
                        *accepted = Some(self.accepted(listener, res));
                        Ok(0)
                    }
                    Op::Recv { buf, .. } => {
                        debug_assert!(n <= offered);
                        // SAFETY: the kernel wrote `n` initialized bytes into the
                        // spare capacity starting at `buf.len()`, and `n` is at
                        // most the spare capacity we offered.
                        unsafe { buf.set_len(buf.len() + n.min(offered)) };
                        Ok(n)
                    }
                    // Its last bytes (if any) were put in `buf` by `reap`.
                    Op::RecvMulti { .. } | Op::Send { .. } => Ok(n),
                    Op::Connect { .. } | Op::Shutdown { .. } => Ok(0),
                }
            }
        };
        let completion = Completion {
            more: false,
            user,
            key,
            op,
            result,
        };
        self.stats.count_completion(&completion, cancel_requested);
        completion
    }
}
