//! The scheduler: which ready ops complete at each step, in what order,
//! which are deferred, and when late cancels land. Which completions one
//! `wait` returns is `reap`.

use super::{key_str, Cancel, Pending, SimDriver, State};
use crate::driver::{Op, OpKey};

impl SimDriver {
    /// The live ops (in submission order) for which `pred` holds.
    fn live_where(&self, pred: impl Fn(&Pending) -> bool) -> Vec<OpKey> {
        self.active
            .iter()
            .copied()
            .filter(|&k| self.ops.get(k).is_some_and(&pred))
            .collect()
    }

    /// Whether the (live) op under `key` can complete now, ignoring latency.
    fn progressable(&self, key: OpKey) -> bool {
        let Some(pending) = self.ops.get(key) else {
            return false;
        };
        if matches!(pending.state, State::Done(_)) {
            return false;
        }
        matches!(pending.cancel, Cancel::Late(_)) || self.op_ready(key)
    }

    pub(super) fn any_progressable(&self) -> bool {
        self.active.iter().any(|&k| self.progressable(k))
    }

    /// Moves queued ops into the "kernel", giving each a latency.
    pub(super) fn activate(&mut self) {
        let races = self.config.races;
        for i in 0..self.active.len() {
            let key = self.active[i];
            let Some(pending) = self.ops.get_mut(key) else {
                continue;
            };
            if !matches!(pending.state, State::Queued) {
                continue;
            }
            let latency = if !races {
                0
            } else if matches!(pending.op, Op::Connect { .. }) {
                self.rngs
                    .sched
                    .between(1, u64::from(self.config.connect_latency_steps.max(1)))
            } else {
                self.rngs
                    .sched
                    .between(0, u64::from(self.config.max_latency_steps))
            };
            pending.state = State::Active;
            pending.ready_at = self.step + 1 + latency;
            if let Op::Send { socket, .. } = pending.op {
                if !self.op_ready(key) {
                    self.net.note_send_blocked(socket.0);
                }
            }
        }
    }

    /// Faults that strike connections whose receive is blocked.
    fn idle_faults(&mut self) {
        let reset_p = self.config.fault(self.config.reset_prob);
        let half_p = self.config.fault(self.config.half_close_prob);
        if reset_p <= 0.0 && half_p <= 0.0 {
            return;
        }
        for i in 0..self.active.len() {
            let key = self.active[i];
            let Some(pending) = self.ops.get(key) else {
                continue;
            };
            let (Op::Recv { socket, .. } | Op::RecvMulti { socket, .. }) = pending.op else {
                continue;
            };
            let fd = socket.0;
            if !self.net.is_live(fd) || self.net.recv_ready(fd) {
                continue;
            }
            if self.rngs.fault.chance(reset_p) && self.net.reset(fd) {
                self.log(format_args!("fault reset sock={fd} (idle recv)"));
            } else if self.rngs.fault.chance(half_p) && self.net.half_close(fd) {
                self.log(format_args!(
                    "fault half-close peer of sock={fd} (idle recv)"
                ));
            }
        }
    }

    /// One scheduler step: completes some of the ready ops, in seeded order.
    pub(super) fn step(&mut self) {
        self.step += 1;
        self.elapsed += self.config.step_time;
        let races = self.config.races;
        self.idle_faults();

        let step = self.step;
        let mut candidates: Vec<OpKey> = self
            .live_where(|pending| {
                matches!(pending.state, State::Active) && pending.ready_at <= step
            })
            .into_iter()
            .filter(|&k| self.op_ready(k))
            .collect();
        if races {
            self.rngs.sched.shuffle(&mut candidates);
        }
        let mut completed = 0usize;
        let mut deferred = Vec::new();
        for &key in &candidates {
            if !self.op_ready(key) {
                continue;
            }
            if races {
                let max = self.config.max_defer_steps;
                let pending = self.ops.get(key).expect("candidate is live");
                if pending.deferred < max && self.rngs.sched.chance(self.config.defer_prob) {
                    let pending = self.ops.get_mut(key).expect("candidate is live");
                    pending.deferred += 1;
                    let line = format!("defer {} {}", pending.op.name(), key_str(key));
                    self.log(format_args!("{line}"));
                    deferred.push(key);
                    continue;
                }
            }
            if self.complete_now(key) {
                completed += 1;
            }
        }
        // Never stall: if everything ready was deferred, one completes anyway.
        if completed == 0 && !deferred.is_empty() {
            let pick = self.rngs.sched.index(deferred.len());
            let mut order: Vec<OpKey> = deferred[pick..].to_vec();
            order.extend_from_slice(&deferred[..pick]);
            for key in order {
                if self.op_ready(key) && self.complete_now(key) {
                    break;
                }
            }
        }

        // Late cancels whose time has come.
        let due =
            self.live_where(|pending| matches!(pending.cancel, Cancel::Late(at) if at <= step));
        for key in due {
            self.cancel_lands(key, " [late cancel]");
        }
    }
}
