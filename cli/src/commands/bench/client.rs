//! The one load client every server is measured with: a closed loop of N
//! connections on a tokio current-thread runtime, one message outstanding per
//! connection, round-trip time recorded per message.
//!
//! One client thread and one server thread: on a 2-vCPU machine that is one
//! core each, the pinning the reference notes recommend for fair numbers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What one cell of the table measured.
#[derive(Debug, Clone)]
pub struct Sample {
    pub round_trips: u64,
    pub seconds: f64,
    /// Sorted round-trip times, in nanoseconds.
    pub latencies_ns: Vec<u64>,
}

impl Sample {
    pub fn round_trips_per_s(&self) -> f64 {
        self.round_trips as f64 / self.seconds
    }

    pub fn percentile_us(&self, p: f64) -> f64 {
        if self.latencies_ns.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_ns.len() - 1) as f64 * p).round() as usize;
        self.latencies_ns[i] as f64 / 1000.0
    }
}

/// Runs `connections` closed loops of `size`-byte messages against `addr`:
/// `warmup` unmeasured, then `duration` measured. Every echo is compared
/// with what was sent.
pub fn run(
    addr: SocketAddr,
    connections: usize,
    size: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Sample, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("cannot build the client runtime: {e}"))?;
    rt.block_on(async move {
        let start = Instant::now() + Duration::from_millis(50);
        let measure_from = start + warmup;
        let end = measure_from + duration;
        let tasks: Vec<_> = (0..connections)
            .map(|i| tokio::spawn(connection(addr, i, size, measure_from, end)))
            .collect();
        let mut sample = Sample {
            round_trips: 0,
            seconds: duration.as_secs_f64(),
            latencies_ns: Vec::new(),
        };
        for t in tasks {
            let lat = t.await.map_err(|e| format!("client task failed: {e}"))??;
            sample.round_trips += lat.len() as u64;
            sample.latencies_ns.extend(lat);
        }
        sample.latencies_ns.sort_unstable();
        Ok(sample)
    })
}

async fn connection(
    addr: SocketAddr,
    index: usize,
    size: usize,
    measure_from: Instant,
    end: Instant,
) -> Result<Vec<u64>, String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    s.set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let msg: Vec<u8> = (0..size).map(|j| (index * 31 + j) as u8).collect();
    let mut buf = vec![0u8; size];
    let mut latencies = Vec::new();
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        s.write_all(&msg)
            .await
            .map_err(|e| format!("write to {addr}: {e}"))?;
        s.read_exact(&mut buf)
            .await
            .map_err(|e| format!("read from {addr}: {e}"))?;
        if buf != msg {
            return Err(format!("the echo from {addr} differs from what was sent"));
        }
        if t0 >= measure_from {
            latencies.push(t0.elapsed().as_nanos() as u64);
        }
    }
    Ok(latencies)
}
