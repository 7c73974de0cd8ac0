//! The loopback limit, measured in the same run as the servers by a raw
//! blocking socket pair:
//! - echo: a thread pinned to the server's CPU echoes one connection with
//!   blocking `read`/`write_all` (64 KiB buffer), driven by the same bulk
//!   client as the servers; this is the ceiling of the bulk cell;
//! - one way: a blocking writer on the client's CPU, a blocking reader on
//!   the server's, no echo (context: what one direction of loopback moves).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::bulk::{pattern, WRITE};
use crate::commands::bench::sys;

/// A blocking echo of one connection on a thread pinned to `cpu`.
#[derive(Debug)]
pub struct RawEcho {
    pub addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl RawEcho {
    pub fn start(cpu: usize) -> Result<RawEcho, String> {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .map_err(|e| format!("loopback: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let thread = std::thread::Builder::new()
            .name("loopback-echo".into())
            .spawn(move || {
                let _ = sys::pin_current_thread(cpu);
                let Ok((mut s, _)) = listener.accept() else {
                    return;
                };
                let mut buf = vec![0u8; WRITE];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            })
            .map_err(|e| format!("loopback: {e}"))?;
        Ok(RawEcho {
            addr,
            thread: Some(thread),
        })
    }
}

impl Drop for RawEcho {
    fn drop(&mut self) {
        // Unblocks the accept if no client ever came.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Bytes per second one blocking connection carries one way: reader on
/// `server_cpu`, writer (this thread) on its CPU; `warmup` then `duration`.
pub fn one_way(server_cpu: usize, warmup: Duration, duration: Duration) -> Result<f64, String> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .map_err(|e| format!("loopback: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let measure_from = Instant::now() + Duration::from_millis(50) + warmup;
    let end = measure_from + duration;
    let reader = std::thread::Builder::new()
        .name("loopback-reader".into())
        .spawn(move || -> Result<f64, String> {
            let _ = sys::pin_current_thread(server_cpu);
            let (mut s, _) = listener.accept().map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; WRITE];
            let (mut bytes, mut first, mut last) = (0u64, None, None);
            loop {
                let n = s.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                let now = Instant::now();
                if now >= measure_from && now < end {
                    first.get_or_insert(now);
                    last = Some(now);
                    bytes += n as u64;
                }
            }
            match (first, last) {
                (Some(a), Some(b)) if b > a => Ok(bytes as f64 / (b - a).as_secs_f64()),
                _ => Err("loopback: nothing was read in the window".into()),
            }
        })
        .map_err(|e| format!("loopback: {e}"))?;
    let mut s = TcpStream::connect(addr).map_err(|e| format!("loopback: {e}"))?;
    let chunk = pattern();
    while Instant::now() < end {
        s.write_all(&chunk[..WRITE])
            .map_err(|e| format!("loopback write: {e}"))?;
    }
    drop(s);
    reader
        .join()
        .map_err(|_| "loopback: the reader panicked".to_string())?
}
