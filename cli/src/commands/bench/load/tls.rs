//! The TLS load client: tokio-rustls on a current-thread runtime (on the
//! client's CPU), the same for every TLS server. Echo: N connections, one
//! message in flight each. Bulk: one connection, 64 KiB writes while the
//! echo is read back and checked.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{join, join_all, select, try_join, Either};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::bulk::{expected, pattern, WRITE};
use crate::commands::bench::stats::{Measured, Meter};

/// How long a TLS run may overrun its window before it is called stalled.
const GRACE: Duration = Duration::from_secs(10);

/// What a TLS run measured, and the suite the handshake agreed on.
#[derive(Debug, Clone)]
pub struct TlsMeasured {
    pub measured: Measured,
    pub suite: String,
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("the TLS client's runtime: {e}"))
}

async fn connect(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {addr}: {e}"))
}

fn suite_of(s: &TlsStream<TcpStream>) -> String {
    s.get_ref()
        .1
        .negotiated_cipher_suite()
        .map(|cs| format!("{:?}", cs.suite()))
        .unwrap_or_else(|| "none".into())
}

fn reset(s: &TlsStream<TcpStream>) {
    // A reset, not a FIN: no TIME_WAIT left for the next cell.
    let _ = socket2::SockRef::from(s.get_ref().0).set_linger(Some(Duration::ZERO));
}

/// Opens the window at `from` and closes it at `to`, flagging `measuring`.
async fn window(meter: &RefCell<Meter<'_>>, measuring: &Cell<bool>, from: Instant, to: Instant) {
    tokio::time::sleep_until(from.into()).await;
    meter.borrow_mut().start();
    measuring.set(true);
    tokio::time::sleep_until(to.into()).await;
    measuring.set(false);
    meter.borrow_mut().stop();
}

/// TLS echo: `connections` closed loops of `size` bytes.
pub fn echo(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    connections: usize,
    size: usize,
    warmup: Duration,
    duration: Duration,
    server_cpu: &dyn Fn() -> f64,
) -> Result<TlsMeasured, String> {
    let rt = runtime()?;
    rt.block_on(async {
        let mut streams = Vec::with_capacity(connections);
        for _ in 0..connections {
            streams.push(connect(addr, config).await?);
        }
        let suite = streams.first().map(suite_of).unwrap_or_default();
        let meter = RefCell::new(Meter::new(server_cpu));
        let measuring = Cell::new(false);
        let latencies = RefCell::new(Vec::new());
        let from = Instant::now() + warmup;
        let to = from + duration;
        let loops = streams.iter_mut().enumerate().map(|(i, s)| {
            let (measuring, latencies) = (&measuring, &latencies);
            async move {
                let msg: Vec<u8> = (0..size).map(|j| (i * 131 + j * 7 + 1) as u8).collect();
                let mut buf = vec![0u8; size];
                while Instant::now() < to {
                    let t0 = Instant::now();
                    s.write_all(&msg)
                        .await
                        .map_err(|e| format!("TLS write: {e}"))?;
                    s.flush().await.map_err(|e| format!("TLS flush: {e}"))?;
                    s.read_exact(&mut buf)
                        .await
                        .map_err(|e| format!("TLS read: {e}"))?;
                    if buf != msg {
                        return Err(format!("connection {i}: the TLS echo differs"));
                    }
                    if measuring.get() {
                        latencies.borrow_mut().push(t0.elapsed().as_nanos() as u64);
                    }
                }
                Ok::<(), String>(())
            }
        });
        let all = async {
            let (results, ()) = join(join_all(loops), window(&meter, &measuring, from, to)).await;
            results.into_iter().collect::<Result<Vec<()>, String>>()
        };
        tokio::time::timeout_at((to + GRACE).into(), all)
            .await
            .map_err(|_| "the TLS server stalled".to_string())??;
        for s in &streams {
            reset(s);
        }
        let mut lat = latencies.into_inner();
        lat.sort_unstable();
        let measured = meter.borrow().measured(lat.len() as u64, &lat);
        Ok(TlsMeasured { measured, suite })
    })
}

/// TLS bulk: one connection, 64 KiB writes, the echo read back and checked.
pub fn bulk(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    warmup: Duration,
    duration: Duration,
    server_cpu: &dyn Fn() -> f64,
) -> Result<TlsMeasured, String> {
    let rt = runtime()?;
    rt.block_on(async {
        let stream = connect(addr, config).await?;
        let suite = suite_of(&stream);
        reset(&stream);
        let (mut r, mut w) = tokio::io::split(stream);
        let pattern = pattern();
        let meter = RefCell::new(Meter::new(server_cpu));
        let measuring = Cell::new(false);
        let counted = Cell::new(0u64);
        let from = Instant::now() + warmup;
        let to = from + duration;
        let writer = async {
            let mut sent = 0u64;
            loop {
                if let Err(e) = w.write_all(expected(&pattern, sent, WRITE)).await {
                    return Err::<(), String>(format!("TLS bulk write: {e}"));
                }
                sent += WRITE as u64;
            }
        };
        let reader = async {
            let mut buf = vec![0u8; WRITE];
            let mut received = 0u64;
            loop {
                let n = match r.read(&mut buf).await {
                    Ok(0) => return Err::<(), String>("TLS bulk: the server closed".into()),
                    Ok(n) => n,
                    Err(e) => return Err(format!("TLS bulk read: {e}")),
                };
                if buf[..n] != *expected(&pattern, received, n) {
                    return Err(format!("TLS bulk: the echo differs at byte {received}"));
                }
                received += n as u64;
                if measuring.get() {
                    counted.set(counted.get() + n as u64);
                }
            }
        };
        let work = try_join(writer, reader);
        let win = window(&meter, &measuring, from, to);
        match select(std::pin::pin!(work), std::pin::pin!(win)).await {
            Either::Left((r, _)) => {
                r?;
                return Err("TLS bulk: the loops ended early".into());
            }
            Either::Right(((), _)) => {}
        }
        let measured = meter.borrow().measured(counted.get(), &[]);
        Ok(TlsMeasured { measured, suite })
    })
}
