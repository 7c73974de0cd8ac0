//! Performing ops against the simulated network, with the seeded choices
//! (short transfers, faults) made here, and finishing them.

use std::io;

use super::network::os_err;
use super::{key_str, op_socket, result_str, Cancel, SimDriver, State};
use crate::driver::{cancelled_error, Op, OpKey};

impl SimDriver {
    pub(super) fn op_ready(&self, key: OpKey) -> bool {
        let Some(pending) = self.ops.get(key) else {
            return false;
        };
        match &pending.op {
            Op::Accept { listener, .. } => self.net.accept_ready(listener.0),
            Op::Connect { .. } | Op::Shutdown { .. } => true,
            Op::Recv { socket, .. } => self.net.recv_ready(socket.0),
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
        let reset_abort_p = self.config.reset_accept_abort_prob;
        let step = self.step;
        let pending = self.ops.get_mut(key)?;
        let net = &mut self.net;
        let rngs = &mut self.rngs;
        let trace = &mut self.trace;
        match &mut pending.op {
            Op::Accept { listener, accepted } => {
                let l = listener.0;
                if !net.accept_ready(l) {
                    return None;
                }
                if rngs.fault.chance(accept_p) {
                    if rngs.fault.chance(0.5) && net.abort_queued(l) {
                        trace.push(format!(
                            "step {step}: fault accept listener={l} ECONNABORTED"
                        ));
                        return Some(Err(os_err(libc::ECONNABORTED)));
                    }
                    trace.push(format!("step {step}: fault accept listener={l} EMFILE"));
                    return Some(Err(os_err(libc::EMFILE)));
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
                        Some(Err(e))
                    }
                }
            }
            Op::Recv { socket, buf } => {
                let fd = socket.0;
                if net.is_live(fd) {
                    if rngs.fault.chance(reset_p) && net.reset(fd) {
                        trace.push(format!("step {step}: fault reset sock={fd} (recv)"));
                    } else if rngs.fault.chance(half_p) && net.half_close(fd) {
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
                    trace.push(format!("step {step}: fault reset sock={fd} (send)"));
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
        }
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
        self.done.push(key);
    }

    /// Executes `key` and, if it did not block, finishes it. Returns whether
    /// it completed.
    pub(super) fn complete_now(&mut self, key: OpKey) -> bool {
        let Some(result) = self.execute(key) else {
            return false;
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

    /// Truly cancels `key`.
    pub(super) fn cancel_now(&mut self, key: OpKey, note: &str) {
        if let Some(pending) = self.ops.get_mut(key) {
            pending.cancel = Cancel::Settled;
        }
        self.finish(key, Err(cancelled_error()), note);
    }
}
