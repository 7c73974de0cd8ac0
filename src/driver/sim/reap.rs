//! Reaping: which of the completions produced so far one `wait` returns,
//! and in what order.
//!
//! A kernel posts completions in the order they happen, and a reaper takes
//! them from one ring (io_uring) or port (IOCP) shared by every socket, so
//! what one wait sees is an interleaving of all sockets' completions. The
//! only order a kernel keeps is per socket and per kind: two receives (or
//! two sends, two accepts) on one socket complete in the order they were
//! queued, while a receive and a send on one socket, or any two sockets,
//! can be seen in either order. The simulator holds back and reorders
//! within exactly that freedom.

use std::collections::BTreeMap;

use super::{op_socket, Done, SimDriver, State};
use crate::driver::{Completion, Op, OpKey};

/// The ordering class of a completion: its socket and kind of op.
type Class = (i32, &'static str);

impl SimDriver {
    fn class(&self, key: OpKey) -> Class {
        self.ops
            .get(key)
            .map_or((-1, ""), |p| (op_socket(&p.op), p.op.name()))
    }

    /// Returns completions produced so far (at least one if any), holding
    /// back a random subset for a later wait and reordering the rest, both
    /// within the order a kernel keeps (see the module docs).
    pub(super) fn drain(&mut self, out: &mut Vec<Completion>) {
        let mut ready = std::mem::take(&mut self.done);
        if self.config.races && ready.len() > 1 {
            if self.rngs.sched.chance(self.config.holdback_prob) {
                ready = self.hold_back(ready);
            }
            let p = self.config.race(self.config.reap_shuffle_prob);
            if ready.len() > 1 && self.rngs.kernel.chance(p) {
                self.shuffle_within_classes(&mut ready);
            }
        }
        for Done { key, arrival } in ready {
            if let Some(buf) = arrival {
                self.return_buffer();
                let Some(pending) = self.ops.get(key) else {
                    continue;
                };
                let Op::RecvMulti { socket, .. } = pending.op else {
                    unreachable!("only a multishot receive has arrivals");
                };
                let completion = Completion {
                    more: true,
                    user: pending.user,
                    key,
                    result: Ok(buf.len()),
                    op: Op::RecvMulti { socket, buf },
                };
                self.stats.count_completion(&completion, false);
                out.push(completion);
                continue;
            }
            let Some(pending) = self.ops.remove(key) else {
                continue;
            };
            let State::Done(result) = pending.state else {
                unreachable!("done queue holds done ops");
            };
            if let Op::RecvMulti { buf, .. } = &pending.op {
                if !buf.is_empty() {
                    self.return_buffer();
                }
            }
            let completion = Completion {
                more: false,
                user: pending.user,
                key,
                op: pending.op,
                result,
            };
            self.stats
                .count_completion(&completion, pending.cancel != super::Cancel::None);
            out.push(completion);
        }
    }

    /// Keeps some of `ready` in the done queue (produced, not reaped) and
    /// returns the rest: a random subset is held, closed under each class's
    /// order (a held completion holds the later ones of its class), and at
    /// least one completion is returned.
    /// A reaped arrival's ring buffer goes back to the ring (the driver
    /// copied its bytes out).
    fn return_buffer(&mut self) {
        self.buffers_free = (self.buffers_free + 1).min(self.config.provided_buffers);
    }

    fn hold_back(&mut self, ready: Vec<Done>) -> Vec<Done> {
        let n = ready.len();
        let hold = self.rngs.sched.between(1, n as u64 - 1) as usize;
        let mut held = vec![false; n];
        for _ in 0..hold {
            held[self.rngs.sched.index(n)] = true;
        }
        let mut closed: BTreeMap<Class, bool> = BTreeMap::new();
        for (i, done) in ready.iter().enumerate() {
            let class = self.class(done.key);
            let c = closed.entry(class).or_insert(false);
            *c |= held[i];
            held[i] = *c;
        }
        if held.iter().all(|&h| h) {
            // The first completion is the first of its class: returning it
            // keeps the order.
            held[0] = false;
        }
        let (mut kept, mut reaped) = (Vec::new(), Vec::new());
        for (done, h) in ready.into_iter().zip(held) {
            if h {
                kept.push(done);
            } else {
                reaped.push(done);
            }
        }
        let line = format!(
            "reap {}, hold back {} completions (any sockets)",
            reaped.len(),
            kept.len()
        );
        self.log(format_args!("{line}"));
        self.sim_stats.reaps_held_back += 1;
        self.done = kept;
        reaped
    }

    /// Shuffles `keys`, then puts each class's keys back in their original
    /// order over the positions that class got: a uniformly random
    /// interleaving of the classes.
    fn shuffle_within_classes(&mut self, dones: &mut Vec<Done>) {
        let classes: Vec<Class> = dones.iter().map(|d| self.class(d.key)).collect();
        let mut by_class: BTreeMap<Class, std::collections::VecDeque<Done>> = BTreeMap::new();
        for (done, &class) in std::mem::take(dones).into_iter().zip(&classes) {
            by_class.entry(class).or_default().push_back(done);
        }
        let mut order = classes.clone();
        self.rngs.kernel.shuffle(&mut order);
        for class in &order {
            let next = by_class.get_mut(class).and_then(|q| q.pop_front());
            dones.extend(next);
        }
        if order != classes {
            self.sim_stats.reaps_reordered += 1;
            self.log(format_args!("reap in another order than produced"));
        }
    }
}
