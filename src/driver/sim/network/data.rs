//! Moving bytes: receives, sends (bounded by the sender's send buffer plus
//! the receiver's receive buffer), and `shutdown(2)`.

use std::collections::VecDeque;
use std::io;
use std::net::Shutdown;

use bytes::Bytes;

use super::{os_err, Family, Network};

/// Appends to `dst` the first `n` bytes of `bufs` after skipping `offset`.
fn append(dst: &mut VecDeque<u8>, bufs: &[Bytes], offset: usize, n: usize) {
    let mut skip = offset;
    let mut left = n;
    for b in bufs {
        if left == 0 {
            break;
        }
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        let part = &b[skip..];
        skip = 0;
        let take = part.len().min(left);
        dst.extend(&part[..take]);
        left -= take;
    }
}

impl Network {
    /// Whether a recv on `fd` can complete now (bytes, EOF or an error).
    pub(in crate::driver::sim) fn recv_ready(&self, fd: i32) -> bool {
        match self.connected_stream(fd) {
            Err(_) => true,
            Ok(s) => s.error.is_some() || !s.incoming.is_empty() || s.rd_eof || s.rd_shut,
        }
    }

    /// Receives into the spare capacity of `buf`; `choose(avail)` picks how
    /// many of the `avail` bytes to take (1..=avail). `None`: would block.
    pub(in crate::driver::sim) fn recv(
        &mut self,
        fd: i32,
        buf: &mut Vec<u8>,
        choose: impl FnOnce(usize) -> usize,
    ) -> Option<io::Result<usize>> {
        if let Err(e) = self.connected_stream(fd) {
            return Some(Err(e));
        }
        let s = self.stream_mut(fd).expect("checked");
        // Like Linux, bytes that arrived before a reset are still readable;
        // the reset is reported after them.
        if !s.incoming.is_empty() {
            let spare = buf.capacity() - buf.len();
            let avail = spare.min(s.incoming.len());
            let n = choose(avail).clamp(1, avail);
            buf.extend(s.incoming.drain(..n));
            return Some(Ok(n));
        }
        if let Some(code) = s.error.take() {
            return Some(Err(os_err(code)));
        }
        if s.rd_eof || s.rd_shut {
            return Some(Ok(0));
        }
        None
    }

    /// Room left in the direction `fd` → peer, or the error a send would get.
    ///
    /// TCP: a direction holds the sender's send buffer plus the receiver's
    /// receive buffer. Unix (Linux `af_unix`): queued bytes are charged to
    /// the sender's `SO_SNDBUF` until read, and `SO_RCVBUF` does nothing, so
    /// a direction holds the sender's send buffer only.
    ///
    /// A TCP peer that closed cleanly still takes one send (its kernel
    /// answers it with a reset); see [`Network::send`].
    fn send_room(&self, fd: i32) -> Result<usize, io::Error> {
        let s = self.connected_stream(fd)?;
        if let Some(code) = s.error {
            return Err(os_err(code));
        }
        if s.wr_shut {
            return Err(os_err(libc::EPIPE));
        }
        let Some(peer) = s.peer else {
            return if s.peer_closed {
                Ok(s.sndbuf)
            } else {
                Err(os_err(libc::EPIPE))
            };
        };
        let p = self.stream(peer).map_err(|_| os_err(libc::EPIPE))?;
        let held = p.incoming.len();
        Ok(match s.family {
            Family::Unix => s.sndbuf.saturating_sub(held),
            _ => (s.sndbuf + p.rcvbuf).saturating_sub(held),
        })
    }

    /// Whether a Unix send on `fd` is stalled only by the Unix rule (the
    /// TCP rule would have had room): for the counters.
    fn unix_rule_stalls(&self, fd: i32) -> bool {
        let Ok(s) = self.connected_stream(fd) else {
            return false;
        };
        let Some(p) = s.peer.and_then(|p| self.stream(p).ok()) else {
            return false;
        };
        s.family == Family::Unix
            && s.sndbuf <= p.incoming.len()
            && p.incoming.len() < s.sndbuf + p.rcvbuf
    }

    /// Bytes a send on `fd` could move now (0: it would block or fail).
    pub(in crate::driver::sim) fn send_room_now(&self, fd: i32) -> usize {
        self.send_room(fd).unwrap_or(0)
    }

    /// Whether a send of `len` bytes on `fd` can complete now.
    pub(in crate::driver::sim) fn send_ready(&self, fd: i32, len: usize) -> bool {
        match self.send_room(fd) {
            Err(_) => true,
            Ok(room) => len == 0 || room > 0,
        }
    }

    /// Counts a Unix send that found the direction full (once per send
    /// found blocked: the caller decides when).
    pub(in crate::driver::sim) fn note_send_blocked(&mut self, fd: i32) {
        if self.unix_rule_stalls(fd) {
            self.counts.unix_sndbuf_stalls += 1;
        }
    }

    /// Sends from `bufs` (skipping `offset` bytes); `choose(max)` picks how
    /// many (1..=max). `None`: would block.
    pub(in crate::driver::sim) fn send(
        &mut self,
        fd: i32,
        bufs: &[Bytes],
        offset: usize,
        choose: impl FnOnce(usize) -> usize,
    ) -> Option<io::Result<usize>> {
        let room = match self.send_room(fd) {
            Ok(room) => room,
            Err(e) => {
                if self.is_unix(fd) && e.raw_os_error() == Some(libc::EPIPE) {
                    self.counts.unix_epipes += 1;
                }
                if let Ok(s) = self.stream_mut(fd) {
                    s.error = None;
                }
                return Some(Err(e));
            }
        };
        let len = bufs
            .iter()
            .map(|b| b.len())
            .sum::<usize>()
            .saturating_sub(offset);
        if len == 0 {
            return Some(Ok(0));
        }
        if room == 0 {
            return None;
        }
        let max = len.min(room);
        let n = choose(max).clamp(1, max);
        let s = self.stream_mut(fd).ok()?;
        let Some(peer) = s.peer else {
            // The TCP peer closed: the bytes leave, its kernel answers with a
            // reset, and in CLOSE_WAIT Linux reports that reset as `EPIPE`
            // (tcp_reset) to the next send. The bytes are lost.
            s.peer_closed = false;
            s.error = Some(libc::EPIPE);
            self.counts.sends_to_closed_peer += 1;
            return Some(Ok(n));
        };
        let p = self.stream_mut(peer).ok()?;
        append(&mut p.incoming, bufs, offset, n);
        Some(Ok(n))
    }

    /// Fault: a send of which `choose(max)` bytes are accepted and only
    /// `arrive(accepted)` of them (0..=accepted) reach the peer before the
    /// connection is reset. The peer reads what arrived, then `ECONNRESET`;
    /// our next op fails with `ECONNRESET`; bytes each side had received
    /// stay readable before the error, as on Linux. `None`: no live TCP
    /// connection with room (the caller sends normally).
    pub(in crate::driver::sim) fn send_then_reset(
        &mut self,
        fd: i32,
        bufs: &[Bytes],
        offset: usize,
        choose: impl FnOnce(usize) -> usize,
        arrive: impl FnOnce(usize) -> usize,
    ) -> Option<(usize, usize)> {
        if !self.is_live_tcp(fd) {
            return None;
        }
        let room = self.send_room(fd).ok()?;
        let len = bufs
            .iter()
            .map(|b| b.len())
            .sum::<usize>()
            .saturating_sub(offset);
        if len == 0 || room == 0 {
            return None;
        }
        let max = len.min(room);
        let n = choose(max).clamp(1, max);
        let k = arrive(n).min(n);
        let peer = self.stream(fd).ok()?.peer?;
        for (end, delivered) in [(peer, Some(k)), (fd, None)] {
            if let Ok(e) = self.stream_mut(end) {
                if let Some(k) = delivered {
                    append(&mut e.incoming, bufs, offset, k);
                }
                e.error = Some(libc::ECONNRESET);
                e.rd_eof = true;
                e.peer = None;
                e.peer_closed = false;
            }
        }
        Some((n, k))
    }

    /// `shutdown(2)`.
    pub(in crate::driver::sim) fn shutdown(&mut self, fd: i32, how: Shutdown) -> io::Result<()> {
        let s = self.connected_stream(fd)?;
        let peer = s.peer;
        let s = self.stream_mut(fd)?;
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            s.rd_shut = true;
        }
        if matches!(how, Shutdown::Write | Shutdown::Both) {
            s.wr_shut = true;
            if let Some(peer) = peer {
                if let Ok(p) = self.stream_mut(peer) {
                    p.rd_eof = true;
                }
            }
        }
        Ok(())
    }
}
