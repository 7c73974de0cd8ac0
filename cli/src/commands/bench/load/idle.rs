//! Idle connections for the memory figure: many connections, each after one
//! 64-byte round trip (so every server has accepted it and touched its
//! per-connection state), then left open and quiet.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::commands::bench::sys;

/// Bytes of the one round trip each idle connection makes.
pub const HELLO: usize = 64;

/// Opens `n` connections to `addr`, one verified round trip on each.
pub fn open(addr: SocketAddr, n: usize) -> Result<IdleSet, String> {
    let mut set = IdleSet(Vec::with_capacity(n));
    let mut buf = [0u8; HELLO];
    for i in 0..n {
        let mut s =
            TcpStream::connect(addr).map_err(|e| format!("idle connection {i} to {addr}: {e}"))?;
        let _ = s.set_nodelay(true);
        let msg = [(i % 251) as u8; HELLO];
        s.write_all(&msg)
            .and_then(|()| s.read_exact(&mut buf))
            .map_err(|e| format!("idle connection {i}: {e}"))?;
        if buf != msg {
            return Err(format!("idle connection {i}: the echo differs"));
        }
        set.0.push(s);
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
