//! Idle connections for the memory figure: many connections, each after one
//! 64-byte round trip (so every server has accepted it and touched its
//! per-connection state), then left open and quiet.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::commands::bench::sys;

/// Bytes of the one round trip each idle connection makes.
pub const HELLO: usize = 64;

/// Connections opened before their round trips, within the servers'
/// listen backlog (1024) so that no SYN is dropped.
const BATCH: usize = 512;

/// Opens `n` connections to `addr`, one verified round trip on each: a
/// batch is connected, then every connection of the batch writes, then
/// every one reads its echo, so the round trips overlap.
pub fn open(addr: SocketAddr, n: usize) -> Result<IdleSet, String> {
    let mut set = IdleSet(Vec::with_capacity(n));
    let mut buf = [0u8; HELLO];
    let msg = |i: usize| [(i % 251) as u8; HELLO];
    while set.0.len() < n {
        let first = set.0.len();
        let last = n.min(first + BATCH);
        for i in first..last {
            let s = TcpStream::connect(addr)
                .map_err(|e| format!("idle connection {i} to {addr}: {e}"))?;
            let _ = s.set_nodelay(true);
            set.0.push(s);
        }
        for (i, mut s) in set.0[first..last].iter().enumerate() {
            s.write_all(&msg(first + i))
                .map_err(|e| format!("idle connection {}: {e}", first + i))?;
        }
        for (i, mut s) in set.0[first..last].iter().enumerate() {
            s.read_exact(&mut buf)
                .map_err(|e| format!("idle connection {}: {e}", first + i))?;
            if buf != msg(first + i) {
                return Err(format!("idle connection {}: the echo differs", first + i));
            }
        }
    }
    Ok(set)
}

/// Open idle connections; closed with a reset when dropped.
#[derive(Debug)]
pub struct IdleSet(Vec<TcpStream>);

impl Drop for IdleSet {
    fn drop(&mut self) {
        for s in &self.0 {
            sys::reset_on_close(s);
        }
    }
}
