//! Moving bytes: receives, sends (bounded by the sender's send buffer plus
//! the receiver's receive buffer), and `shutdown(2)`.

use std::io;
use std::net::Shutdown;

use bytes::Bytes;

use super::{os_err, Network};

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
    fn send_room(&self, fd: i32) -> Result<usize, io::Error> {
        let s = self.connected_stream(fd)?;
        if let Some(code) = s.error {
            return Err(os_err(code));
        }
        if s.wr_shut {
            return Err(os_err(libc::EPIPE));
        }
        let Some(peer) = s.peer else {
            return Err(os_err(libc::EPIPE));
        };
        let p = self.stream(peer).map_err(|_| os_err(libc::EPIPE))?;
        Ok((s.sndbuf + p.rcvbuf).saturating_sub(p.incoming.len()))
    }

    /// Whether a send of `len` bytes on `fd` can complete now.
    pub(in crate::driver::sim) fn send_ready(&self, fd: i32, len: usize) -> bool {
        match self.send_room(fd) {
            Err(_) => true,
            Ok(room) => len == 0 || room > 0,
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
        let peer = self.stream(fd).ok()?.peer?;
        let p = self.stream_mut(peer).ok()?;
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
            p.incoming.extend(&part[..take]);
            left -= take;
        }
        Some(Ok(n))
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
