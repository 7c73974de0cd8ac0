//! Performing ops against the simulated network, with the seeded choices
//! (short transfers, faults) made here, and finishing them.

use std::io;

use super::network::{errno_name, os_err, Network};
use super::{key_str, op_socket, result_str, Cancel, Done, SimDriver, State, Syn};

/// What one step of an op did: the op ended with its result, or (a
/// multishot receive) an arrival came and it stays armed.
enum Arrival {
    End(io::Result<usize>),
    More(Vec<u8>),
}
use crate::driver::{cancelled_error, Op, OpKey};

impl SimDriver {
    pub(super) fn op_ready(&self, key: OpKey) -> bool {
        let Some(pending) = self.ops.get(key) else {
            return false;
        };
        match &pending.op {
            Op::Accept { listener, .. } => self.net.accept_ready(listener.0),
            // A connect whose SYN went unanswered waits for its next
            // retransmission (or for giving up).
            Op::Connect { .. } => pending.syn.is_none_or(|syn| self.elapsed >= syn.next),
            // Completed at submit (`EOPNOTSUPP`): never waits.
            Op::Shutdown { .. } | Op::AcceptMulti { .. } => true,
            Op::Recv { socket, .. } | Op::RecvMulti { socket, .. } => self.net.recv_ready(socket.0),
            Op::Send { socket, .. } => self.net.send_ready(socket.0, pending.op.send_len()),
        }
    }

    /// Performs the op under `key` against the network. `None`: it would block.
    fn execute(&mut self, key: OpKey) -> Option<io::Result<usize>> {
        let races = self.config.races;
        let short_p = if races {
            self.config.short_io_prob
        } else {
            0.0
        };
        let reset_p = self.config.fault(self.config.reset_prob);
        let half_p = self.config.fault(self.config.half_close_prob);
        let accept_p = self.config.fault(self.config.accept_error_prob);
        let refuse_p = self.config.fault(self.config.connect_refuse_prob);
        let timeout_p = self.config.fault(self.config.connect_timeout_prob);
        let send_reset_p = self.config.fault(self.config.send_reset_prob);
        let reset_abort_p = self.config.reset_accept_abort_prob;
        let (rto, retries) = (self.config.syn_rto, self.config.syn_retries);
        let (step, now) = (self.step, self.elapsed);
        let pending = self.ops.get_mut(key)?;
        let net = &mut self.net;
        let rngs = &mut self.rngs;
        let trace = &mut self.trace;
        let counts = &mut self.sim_stats;
        match &mut pending.op {
            Op::Accept { listener, accepted } => {
                let l = listener.0;
                if !net.accept_ready(l) {
                    return None;
                }
                if rngs.fault.chance(accept_p) {
                    // Unix listeners never see ECONNABORTED: no network
                    // aborts a Unix connection before its accept.
                    if rngs.fault.chance(0.5) && !net.is_unix_listener(l) && net.abort_queued(l) {
                        trace.push(format!(
                            "step {step}: fault accept listener={l} ECONNABORTED"
                        ));
                        return Some(Err(os_err(libc::ECONNABORTED)));
                    }
                    // Resource exhaustion (accept(2): EMFILE, ENOBUFS, ENOMEM);
                    // the connection stays queued.
                    let errno = [libc::EMFILE, libc::ENOBUFS, libc::ENOMEM][rngs.fault.index(3)];
                    counts.accept_resource_errors += 1;
                    if errno == libc::ENOBUFS {
                        counts.accept_enobufs += 1;
                    }
                    let e = os_err(errno);
                    let name = errno_name(&e);
                    trace.push(format!("step {step}: fault accept listener={l} {name}"));
                    return Some(Err(e));
                }
                if net.queued_head_was_reset(l)
                    && rngs.fault.chance(reset_abort_p)
                    && net.abort_queued(l)
                {
                    trace.push(format!(
                        "step {step}: accept listener={l} ECONNABORTED (client reset first)"
                    ));
                    return Some(Err(os_err(libc::ECONNABORTED)));
                }
                match net.accept(l)? {
                    Ok((sock, addr)) => {
                        trace.push(format!(
                            "step {step}: accepted listener={l} sock={} peer={addr}",
                            sock.0
                        ));
                        *accepted = Some((sock, addr));
                        Some(Ok(0))
                    }
                    Err(e) => Some(Err(e)),
                }
            }
            Op::Connect { socket, addr } => {
                let fd = socket.0;
                if Network::is_tcp_target(addr) && !net.is_connected(fd) {
                    match pending.syn.as_mut() {
                        None => {
                            // The first SYN: dropped (fault), or unanswered
                            // while the accept queue is full; either way the
                            // kernel retransmits it.
                            let dropped = rngs.fault.chance(timeout_p);
                            if dropped || !net.syn_answered(fd, addr) {
                                let next = now + rto;
                                pending.syn = Some(Syn {
                                    next,
                                    sent: 0,
                                    dropped,
                                });
                                let why = if dropped {
                                    "dropped"
                                } else {
                                    "accept queue full"
                                };
                                trace.push(format!(
                                    "step {step}: connect sock={fd}: SYN unanswered ({why}), retransmit at {next:?}"
                                ));
                                return None;
                            }
                        }
                        // A retransmission is due (`op_ready` checked the time).
                        Some(syn) => {
                            if syn.sent >= retries {
                                counts.connect_timeouts += 1;
                                trace.push(format!(
                                    "step {step}: connect sock={fd}: no answer to {} SYNs, ETIMEDOUT",
                                    syn.sent + 1
                                ));
                                return Some(Err(os_err(libc::ETIMEDOUT)));
                            }
                            if syn.dropped || !net.syn_answered(fd, addr) {
                                syn.sent += 1;
                                syn.next = now + rto * 2u32.saturating_pow(syn.sent);
                                counts.syn_retransmits += 1;
                                let (sent, next) = (syn.sent, syn.next);
                                trace.push(format!(
                                    "step {step}: connect sock={fd}: SYN retransmit {sent}, next at {next:?}"
                                ));
                                return None;
                            }
                        }
                    }
                }
                let refuse = rngs.fault.chance(refuse_p);
                match net.connect(socket.0, addr, refuse) {
                    Ok(c) => {
                        trace.push(format!(
                            "step {step}: connected sock={} to {addr} server={} listener={}",
                            socket.0, c.server, c.listener
                        ));
                        Some(Ok(0))
                    }
                    Err(e) => {
                        if refuse {
                            trace.push(format!(
                                "step {step}: fault connect sock={} refused",
                                socket.0
                            ));
                        }
                        if e.raw_os_error() == Some(libc::EAGAIN) {
                            counts.unix_connect_eagain += 1;
                        }
                        Some(Err(e))
                    }
                }
            }
            Op::Recv { socket, buf } => {
                let fd = socket.0;
                if net.is_live(fd) {
                    if rngs.fault.chance(reset_p) && net.reset(fd) {
                        counts.resets += 1;
                        trace.push(format!("step {step}: fault reset sock={fd} (recv)"));
                    } else if rngs.fault.chance(half_p) && net.half_close(fd) {
                        counts.half_closes += 1;
                        trace.push(format!("step {step}: fault half-close peer of sock={fd}"));
                    }
                }
                let io = &mut rngs.io;
                net.recv(fd, buf, |avail| {
                    if io.chance(short_p) {
                        io.split(avail)
                    } else {
                        avail
                    }
                })
            }
            Op::Send {
                socket,
                bufs,
                offset,
            } => {
                let fd = socket.0;
                if net.is_live(fd) && rngs.fault.chance(reset_p) && net.reset(fd) {
                    counts.resets += 1;
                    trace.push(format!("step {step}: fault reset sock={fd} (send)"));
                }
                if net.is_live_tcp(fd) && rngs.fault.chance(send_reset_p) {
                    let io = &mut rngs.io;
                    let cut = net.send_then_reset(
                        fd,
                        bufs,
                        *offset,
                        |max| {
                            if io.chance(short_p) {
                                io.split(max)
                            } else {
                                max
                            }
                        },
                        |n| rngs.fault.between(0, n as u64) as usize,
                    );
                    if let Some((n, k)) = cut {
                        counts.send_resets += 1;
                        trace.push(format!(
                            "step {step}: fault send sock={fd} accepted {n}, {k} reached the peer, then reset"
                        ));
                        return Some(Ok(n));
                    }
                }
                let io = &mut rngs.io;
                net.send(fd, bufs, *offset, |max| {
                    if io.chance(short_p) {
                        io.split(max)
                    } else {
                        max
                    }
                })
            }
            Op::Shutdown { socket, how } => Some(net.shutdown(socket.0, *how).map(|()| 0)),
            // Performed by `arrive`, one arrival at a time.
            Op::RecvMulti { .. } => None,
            // Not modelled: completed at submit with `EOPNOTSUPP`.
            Op::AcceptMulti { .. } => Some(Err(os_err(libc::EOPNOTSUPP))),
        }
    }

    /// One step of the armed multishot receive under `key`: an arrival
    /// (taking a ring buffer until it is reaped), or the end of the
    /// multishot. `None`: nothing to receive yet.
    fn arrive(&mut self, key: OpKey) -> Option<Arrival> {
        let reset_p = self.config.fault(self.config.reset_prob);
        let half_p = self.config.fault(self.config.half_close_prob);
        let short_p = self.config.race(self.config.short_io_prob);
        let end_p = self.config.race(self.config.multishot_end_prob);
        let step = self.step;
        let Some(Op::RecvMulti { socket, .. }) = self.ops.get(key).map(|p| &p.op) else {
            return None;
        };
        let fd = socket.0;
        if self.net.is_live(fd) {
            if self.rngs.fault.chance(reset_p) && self.net.reset(fd) {
                self.sim_stats.resets += 1;
                self.log(format_args!("fault reset sock={fd} (recv)"));
            } else if self.rngs.fault.chance(half_p) && self.net.half_close(fd) {
                self.sim_stats.half_closes += 1;
                self.log(format_args!("fault half-close peer of sock={fd}"));
            }
        }
        if !self.net.recv_ready(fd) {
            return None;
        }
        if self.buffers_free == 0 {
            // The kernel selects a buffer before it receives: none, ENOBUFS.
            self.sim_stats.multishot_enobufs += 1;
            self.trace.push(format!(
                "step {step}: recv_multi sock={fd}: buffer ring empty"
            ));
            return Some(Arrival::End(Err(os_err(libc::ENOBUFS))));
        }
        let mut buf = Vec::with_capacity(self.config.provided_buffer_size.max(1));
        let io = &mut self.rngs.io;
        let result = self.net.recv(fd, &mut buf, |avail| {
            if io.chance(short_p) {
                io.split(avail)
            } else {
                avail
            }
        })?;
        match result {
            Ok(n) if n > 0 => {
                self.buffers_free -= 1;
                if self.rngs.multishot.chance(end_p) {
                    self.sim_stats.multishot_ends += 1;
                    if let Some(Op::RecvMulti { buf: last, .. }) =
                        self.ops.get_mut(key).map(|p| &mut p.op)
                    {
                        *last = buf;
                    }
                    return Some(Arrival::End(Ok(n)));
                }
                Some(Arrival::More(buf))
            }
            other => Some(Arrival::End(other)),
        }
    }

    /// Whether `key` is a multishot receive.
    pub(super) fn is_multishot(&self, key: OpKey) -> bool {
        self.ops
            .get(key)
            .is_some_and(|p| matches!(p.op, Op::RecvMulti { .. }))
    }

    /// Marks `key` done with `result` and moves it to the done queue.
    pub(super) fn finish(&mut self, key: OpKey, result: io::Result<usize>, note: &str) {
        let step = self.step;
        let Some(pending) = self.ops.get_mut(key) else {
            return;
        };
        let short = match (&pending.op, &result) {
            (Op::Recv { buf, .. }, Ok(n)) if *n > 0 && buf.len() < buf.capacity() => " (short)",
            (Op::Send { .. }, Ok(n)) if *n < pending.op.send_len() => " (short)",
            _ => "",
        };
        let line = format!(
            "step {step}: complete {} sock={} {} user={} {}{short}{note}",
            pending.op.name(),
            op_socket(&pending.op),
            key_str(key),
            pending.user,
            result_str(&result),
        );
        pending.state = State::Done(result);
        self.trace.push(line);
        self.active.retain(|k| *k != key);
        self.done.push(Done { key, arrival: None });
    }

    /// Executes `key` and, if it did not block, finishes it. Returns whether
    /// it completed.
    pub(super) fn complete_now(&mut self, key: OpKey) -> bool {
        let outcome = if self.is_multishot(key) {
            self.arrive(key)
        } else {
            self.execute(key).map(Arrival::End)
        };
        let result = match outcome {
            None => return false,
            Some(Arrival::End(result)) => result,
            Some(Arrival::More(buf)) => {
                // The multishot stays armed (a late cancel still pending).
                let (step, n) = (self.step, buf.len());
                let user = self.ops.get(key).map_or(0, |p| p.user);
                let line = format!(
                    "step {step}: arrival recv_multi {} user={user} n={n} (more)",
                    key_str(key)
                );
                self.trace.push(line);
                self.done.push(Done {
                    key,
                    arrival: Some(buf),
                });
                return true;
            }
        };
        let mut note = "";
        if let Some(pending) = self.ops.get_mut(key) {
            if let Cancel::Late(_) = pending.cancel {
                pending.cancel = Cancel::Settled;
                note = " [cancel lost the race]";
            }
        }
        self.finish(key, result, note);
        true
    }

    /// Lets the cancel of `key` land a few steps from now (the kernel is
    /// already working on the op); returns the step it lands at.
    pub(super) fn land_cancel_later(&mut self, key: OpKey) -> u64 {
        let delay = self
            .rngs
            .cancel
            .between(1, u64::from(self.config.late_cancel_steps.max(1)));
        let at = self.step + delay;
        self.ops.get_mut(key).expect("live").cancel = Cancel::Late(at);
        at
    }

    /// A cancel lands on `key` (at once, or late) and wins: a send that can
    /// move more than one byte may be stopped mid-transfer, completing
    /// "aborted after N bytes" (IOCP's `ERROR_OPERATION_ABORTED` with N
    /// transferred) as the partial success `Ok(N)`, N short of its offer;
    /// anything else is truly cancelled.
    pub(super) fn cancel_lands(&mut self, key: OpKey, note: &str) {
        let p = self.config.race(self.config.partial_cancel_prob);
        let candidate = match self.ops.get(key).map(|pending| &pending.op) {
            Some(op @ Op::Send { socket, .. }) => {
                op.send_len() > 1 && self.net.send_room_now(socket.0) > 0
            }
            _ => false,
        };
        if candidate && self.rngs.kernel.chance(p) {
            if let Some(n) = self.partial_send(key) {
                self.sim_stats.partial_cancels += 1;
                if let Some(pending) = self.ops.get_mut(key) {
                    pending.cancel = Cancel::Settled;
                }
                let note = format!(" [cancel landed mid-transfer: aborted after {n} bytes]");
                self.finish(key, Ok(n), &note);
                return;
            }
        }
        self.cancel_now(key, note);
    }

    /// Sends part of the send under `key` (at least one byte, at most one
    /// short of its offer). `None`: it could not move a byte.
    fn partial_send(&mut self, key: OpKey) -> Option<usize> {
        let pending = self.ops.get_mut(key)?;
        let len = pending.op.send_len();
        let Op::Send {
            socket,
            bufs,
            offset,
        } = &pending.op
        else {
            return None;
        };
        let io = &mut self.rngs.io;
        // The caller checked there is room: this send cannot fail.
        self.net
            .send(socket.0, bufs, *offset, |max| io.split(max.min(len - 1)))?
            .ok()
    }

    /// Truly cancels `key`.
    pub(super) fn cancel_now(&mut self, key: OpKey, note: &str) {
        if let Some(pending) = self.ops.get_mut(key) {
            pending.cancel = Cancel::Settled;
        }
        self.finish(key, Err(cancelled_error()), note);
    }
}
