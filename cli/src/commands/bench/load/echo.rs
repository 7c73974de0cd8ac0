//! The closed-loop echo client every plain server is measured with: its own
//! io_uring, independent of every server, one message in flight per
//! connection. Each round trip is one linked pair, `Send(MSG_WAITALL)` →
//! `Recv(MSG_WAITALL)`, whose send posts no completion when it succeeds: one
//! completion per round trip, so the client (which does the same kernel TCP
//! work as the server, on its own CPU) keeps as much headroom as it can. The
//! echo is compared with what was sent before the next round trip.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue::Flags, types::Fd};

use super::ring::{Ring, UNCOUNTED};
use crate::commands::bench::stats::{Measured, Meter};
use crate::commands::bench::sys;

const SEND: u64 = 0;
const RECV: u64 = 1;

struct Conn {
    stream: TcpStream,
    msg: Vec<u8>,
    buf: Vec<u8>,
    /// Bytes of the echo received so far.
    done: usize,
    t0: Instant,
}

/// Opens `n` connections to `addr` with TCP_NODELAY.
pub fn connect_all(addr: SocketAddr, n: usize) -> Result<Vec<TcpStream>, String> {
    (0..n)
        .map(|i| {
            let s =
                TcpStream::connect(addr).map_err(|e| format!("connection {i} to {addr}: {e}"))?;
            s.set_nodelay(true)
                .map_err(|e| format!("TCP_NODELAY: {e}"))?;
            Ok(s)
        })
        .collect()
}

/// Runs `connections` closed loops of `size`-byte messages against `addr`,
/// `warmup` unmeasured then `duration` measured; `server_cpu` reads the
/// server's CPU seconds at both ends of the window.
pub fn run(
    addr: SocketAddr,
    connections: usize,
    size: usize,
    warmup: Duration,
    duration: Duration,
    server_cpu: &dyn Fn() -> f64,
) -> Result<Measured, String> {
    let streams = connect_all(addr, connections)?;
    let mut conns: Vec<Conn> = streams
        .into_iter()
        .enumerate()
        .map(|(i, stream)| Conn {
            stream,
            msg: (0..size).map(|j| (i * 131 + j * 7 + 1) as u8).collect(),
            buf: vec![0; size],
            done: 0,
            t0: Instant::now(),
        })
        .collect();
    prime(&mut conns)?;
    let mut ring = Ring::new(connections)?;
    let result = closed_loop(&mut ring, &mut conns, warmup, duration, server_cpu);
    if result.is_err() && !ring.drain_after_shutdown(conns.iter().map(|c| c.stream.as_raw_fd())) {
        // The kernel may still write into the buffers: never free them.
        std::mem::forget(conns);
        return result;
    }
    for c in &conns {
        sys::reset_on_close(&c.stream);
    }
    result
}

/// The whole message, linked to the Recv pushed right after it; no
/// completion unless it fails (then the Recv fails with ECANCELED).
fn send(i: usize, c: &Conn) -> io_uring::squeue::Entry {
    opcode::Send::new(Fd(c.stream.as_raw_fd()), c.msg.as_ptr(), c.msg.len() as u32)
        .flags(libc::MSG_WAITALL)
        .build()
        .flags(Flags::IO_LINK | Flags::SKIP_SUCCESS)
        .user_data(UNCOUNTED | ((i as u64) << 1) | SEND)
}

/// The rest of the echo (all of it unless a Recv came back short).
fn recv(i: usize, c: &mut Conn) -> io_uring::squeue::Entry {
    let rest = &mut c.buf[c.done..];
    opcode::Recv::new(
        Fd(c.stream.as_raw_fd()),
        rest.as_mut_ptr(),
        rest.len() as u32,
    )
    .flags(libc::MSG_WAITALL)
    .build()
    .user_data(((i as u64) << 1) | RECV)
}

/// Pushes one round trip of connection `i`: the linked Send and Recv.
///
/// # Safety
/// `c` (its message and buffer) stays put until the Recv's completion.
unsafe fn round_trip(ring: &mut Ring, i: usize, c: &mut Conn) -> Result<(), String> {
    c.done = 0;
    // SAFETY: the caller keeps `c` in place until the Recv completes, and
    // the linked Send completes before its Recv starts.
    unsafe {
        ring.push(send(i, c))?;
        ring.push(recv(i, c))
    }
}

/// One blocking round trip on every connection before the clock starts, so
/// that accepting them (a thread or a task each, for some servers) is not
/// part of the warm-up.
fn prime(conns: &mut [Conn]) -> Result<(), String> {
    use std::io::{Read, Write};
    for (i, c) in conns.iter_mut().enumerate() {
        (&c.stream)
            .write_all(&c.msg)
            .and_then(|()| (&c.stream).read_exact(&mut c.buf))
            .map_err(|e| format!("connection {i}: first round trip: {e}"))?;
        if c.buf != c.msg {
            return Err(format!("connection {i}: the first echo differs"));
        }
    }
    Ok(())
}

fn closed_loop(
    ring: &mut Ring,
    conns: &mut [Conn],
    warmup: Duration,
    duration: Duration,
    server_cpu: &dyn Fn() -> f64,
) -> Result<Measured, String> {
    let size = conns.first().map_or(0, |c| c.msg.len());
    let measure_from = Instant::now() + warmup;
    let end = measure_from + duration;
    let mut meter = Meter::new(server_cpu);
    let mut count = 0u64;
    let mut latencies = Vec::with_capacity(1 << 16);
    for (i, c) in conns.iter_mut().enumerate() {
        c.t0 = Instant::now();
        // SAFETY: `conns` outlives the ring's operations: `run` drains the
        // ring before dropping them, or leaks them.
        unsafe { round_trip(ring, i, c) }?;
    }
    let mut batch = Vec::with_capacity(conns.len());
    while ring.in_flight() > 0 {
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
        let measuring = meter.started() && !meter.stopped();
        for &(ud, res) in &batch {
            let i = ((ud & !UNCOUNTED) >> 1) as usize;
            if ud & 1 == SEND {
                // Only a failed or short send completes (its Recv is cancelled).
                return Err(match res {
                    r if r < 0 => format!(
                        "connection {i}: send: {}",
                        std::io::Error::from_raw_os_error(-r)
                    ),
                    r => format!("connection {i}: short send ({r} of {size} bytes)"),
                });
            }
            if res < 0 {
                let e = std::io::Error::from_raw_os_error(-res);
                return Err(format!("connection {i}: recv: {e}"));
            }
            if res == 0 {
                return Err(format!("connection {i}: the server closed it"));
            }
            let c = &mut conns[i];
            c.done += res as usize;
            if c.done < size {
                // SAFETY: as above, `conns` outlives the operation.
                unsafe { ring.push(recv(i, c)) }?;
                continue;
            }
            if c.buf != c.msg {
                return Err(format!("connection {i}: the echo differs from the message"));
            }
            if measuring {
                count += 1;
                latencies.push(now.saturating_duration_since(c.t0).as_nanos() as u64);
            }
            if !meter.stopped() {
                c.t0 = now;
                // SAFETY: as above, `conns` outlives the operation.
                unsafe { round_trip(ring, i, c) }?;
            }
        }
    }
    latencies.sort_unstable();
    Ok(meter.measured(count, &latencies))
}
