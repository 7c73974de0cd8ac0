//! Bulk: one connection, the client writing 64 KiB at a time while it reads
//! the echo back (one Send and one Recv always in flight on its io_uring).
//! The figure is echoed payload per second; every byte is checked against
//! a pattern whose period (a prime) shifts the phase of each write.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{opcode, types::Fd};

use super::ring::Ring;
use crate::commands::bench::stats::{Measured, Meter};
use crate::commands::bench::sys;

/// Bytes per write.
pub const WRITE: usize = 64 * 1024;
/// Period of the byte pattern (prime, so no write lines up with it).
const PERIOD: usize = 65_521;

const SEND: u64 = 0;
const RECV: u64 = 1;

/// `PERIOD + WRITE` bytes: any window of `WRITE` bytes starting below
/// `PERIOD` is the stream from that phase on.
pub fn pattern() -> Vec<u8> {
    (0..PERIOD + WRITE)
        .map(|k| {
            let x = (k % PERIOD) as u32;
            (x.wrapping_mul(2_654_435_761) >> 13) as u8
        })
        .collect()
}

/// The expected bytes at stream offset `offset`, `len` ≤ `WRITE` of them.
pub fn expected(pattern: &[u8], offset: u64, len: usize) -> &[u8] {
    let phase = (offset % PERIOD as u64) as usize;
    &pattern[phase..phase + len]
}

/// Runs bulk against `addr`: `warmup` unmeasured, then `duration` measured.
pub fn run(
    addr: SocketAddr,
    warmup: Duration,
    duration: Duration,
    server_cpu: &dyn Fn() -> f64,
) -> Result<Measured, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let pattern = pattern();
    let mut rbuf = vec![0u8; WRITE];
    let mut ring = Ring::new(2)?;
    let result = stream_loop(
        &mut ring, &stream, &pattern, &mut rbuf, warmup, duration, server_cpu,
    );
    if result.is_err() && !ring.drain_after_shutdown(std::iter::once(stream.as_raw_fd())) {
        // The kernel may still use the buffers: never free them.
        std::mem::forget(pattern);
        std::mem::forget(rbuf);
        return result;
    }
    sys::reset_on_close(&stream);
    result
}

fn stream_loop(
    ring: &mut Ring,
    stream: &TcpStream,
    pattern: &[u8],
    rbuf: &mut [u8],
    warmup: Duration,
    duration: Duration,
    server_cpu: &dyn Fn() -> f64,
) -> Result<Measured, String> {
    let fd = Fd(stream.as_raw_fd());
    let send = |sent: u64| {
        let chunk = expected(pattern, sent, WRITE);
        opcode::Send::new(fd, chunk.as_ptr(), WRITE as u32)
            .build()
            .user_data(SEND)
    };
    let recv = |rbuf: &mut [u8]| {
        opcode::Recv::new(fd, rbuf.as_mut_ptr(), rbuf.len() as u32)
            .build()
            .user_data(RECV)
    };
    let (mut sent, mut received) = (0u64, 0u64);
    let measure_from = Instant::now() + warmup;
    let end = measure_from + duration;
    let mut meter = Meter::new(server_cpu);
    let mut counted = 0u64;
    let (mut send_busy, mut recv_busy) = (false, false);
    let mut batch = Vec::with_capacity(4);
    loop {
        if !send_busy && !meter.stopped() {
            // SAFETY: `pattern` and `rbuf` outlive every operation: `run`
            // drains the ring before freeing them, or leaks them.
            unsafe { ring.push(send(sent)) }?;
            send_busy = true;
        }
        // After the window, read until everything sent has come back.
        if !recv_busy && (!meter.stopped() || send_busy || received < sent) {
            // SAFETY: as above.
            unsafe { ring.push(recv(rbuf)) }?;
            recv_busy = true;
        }
        if ring.in_flight() == 0 {
            break;
        }
        // Wakes up at the window's edges, so that it is exactly measured.
        let edge = [measure_from, end]
            .into_iter()
            .find(|&t| Instant::now() < t);
        ring.wait(&mut batch, edge)?;
        let now = Instant::now();
        if now >= measure_from {
            meter.start();
        }
        if now >= end {
            meter.stop();
        }
        for &(ud, res) in &batch {
            if res < 0 {
                let e = std::io::Error::from_raw_os_error(-res);
                let op = if ud == SEND { "send" } else { "recv" };
                return Err(format!("bulk {op}: {e}"));
            }
            let n = res as usize;
            if ud == SEND {
                send_busy = false;
                sent += n as u64;
                continue;
            }
            recv_busy = false;
            if n == 0 {
                return Err("bulk: the server closed the connection".into());
            }
            if rbuf[..n] != *expected(pattern, received, n) {
                return Err(format!("bulk: the echo differs at byte {received}"));
            }
            received += n as u64;
            if meter.started() && !meter.stopped() {
                counted += n as u64;
            }
        }
    }
    Ok(meter.measured(counted, &[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_is_one_stream_whatever_the_cut() {
        let p = pattern();
        let stream: Vec<u8> = (0..4 * WRITE as u64)
            .map(|o| expected(&p, o, 1)[0])
            .collect();
        let mut o = 0u64;
        for n in [WRITE, 1, 4096, WRITE - 7, WRITE] {
            assert_eq!(expected(&p, o, n), &stream[o as usize..o as usize + n]);
            o += n as u64;
        }
        // Consecutive 64 KiB writes differ (the period is not a divisor).
        assert_ne!(expected(&p, 0, WRITE), expected(&p, WRITE as u64, WRITE));
    }
}
