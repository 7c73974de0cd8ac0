//! The closed-loop echo client every plain server is measured with: its own
//! io_uring, independent of every server, one message in flight per
//! connection (Send, then Recv until the whole echo is back, compared with
//! what was sent, then the next Send).

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{opcode, types::Fd};

use super::ring::Ring;
use crate::commands::bench::stats::{Measured, Meter};
use crate::commands::bench::sys;

const SEND: u64 = 0;
const RECV: u64 = 1;

struct Conn {
    stream: TcpStream,
    msg: Vec<u8>,
    buf: Vec<u8>,
    /// Bytes of `msg` sent, or of the echo received, so far.
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

fn send(i: usize, c: &Conn) -> io_uring::squeue::Entry {
    let rest = &c.msg[c.done..];
    opcode::Send::new(Fd(c.stream.as_raw_fd()), rest.as_ptr(), rest.len() as u32)
        .build()
        .user_data(((i as u64) << 1) | SEND)
}

fn recv(i: usize, c: &mut Conn) -> io_uring::squeue::Entry {
    let rest = &mut c.buf[c.done..];
    opcode::Recv::new(
        Fd(c.stream.as_raw_fd()),
        rest.as_mut_ptr(),
        rest.len() as u32,
    )
    .build()
    .user_data(((i as u64) << 1) | RECV)
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
        unsafe { ring.push(send(i, c)) }?;
    }
    let mut batch = Vec::with_capacity(conns.len());
    while ring.in_flight() > 0 {
        ring.wait(&mut batch)?;
        let now = Instant::now();
        if now >= measure_from {
            meter.start();
        }
        if now >= end {
            meter.stop();
        }
        let measuring = meter.started() && !meter.stopped();
        for &(ud, res) in &batch {
            let i = (ud >> 1) as usize;
            let op = if ud & 1 == SEND { "send" } else { "recv" };
            if res < 0 {
                let e = std::io::Error::from_raw_os_error(-res);
                return Err(format!("connection {i}: {op}: {e}"));
            }
            let c = &mut conns[i];
            c.done += res as usize;
            if ud & 1 == SEND {
                if c.done < size {
                    // SAFETY: as above, `conns` outlives the operation.
                    unsafe { ring.push(send(i, c)) }?;
                } else {
                    c.done = 0;
                    // SAFETY: as above, `conns` outlives the operation.
                    unsafe { ring.push(recv(i, c)) }?;
                }
                continue;
            }
            if res == 0 {
                return Err(format!("connection {i}: the server closed it"));
            }
            if c.done < size {
                // SAFETY: as above, `conns` outlives the operation.
                unsafe { ring.push(recv(i, c)) }?;
                continue;
            }
            if c.buf != c.msg {
                return Err(format!("connection {i}: the echo differs from the message"));
            }
            c.done = 0;
            if measuring {
                count += 1;
                latencies.push(now.saturating_duration_since(c.t0).as_nanos() as u64);
            }
            if !meter.stopped() {
                c.t0 = now;
                // SAFETY: as above, `conns` outlives the operation.
                unsafe { ring.push(send(i, c)) }?;
            }
        }
    }
    latencies.sort_unstable();
    Ok(meter.measured(count, &latencies))
}
