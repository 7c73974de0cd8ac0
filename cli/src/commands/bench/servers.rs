//! The echo servers under comparison, each on its own thread, listening on
//! 127.0.0.1 with an ephemeral port.
//!
//! Both sides echo with a 64 KiB receive buffer (the proactor loop's receive
//! size), so neither gets an advantage from buffer sizing.

use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use futures_channel::oneshot;
use proactor::DriverKind;

use crate::protocols::{EchoCounters, EchoProtocol};

/// A server running on its thread; dropping it stops the server.
#[derive(Debug)]
pub struct RunningServer {
    pub name: String,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the server called `name`: `proactor-uring`, `proactor-poll` or `tokio`.
pub fn start(name: &str) -> Result<RunningServer, String> {
    let (ready_tx, ready_rx) = mpsc::channel::<Result<SocketAddr, String>>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = match name {
        "proactor-uring" => spawn(move || proactor_server(DriverKind::Uring, ready_tx, stop_rx)),
        "proactor-poll" => spawn(move || proactor_server(DriverKind::Poll, ready_tx, stop_rx)),
        "tokio" => spawn(move || tokio_server(ready_tx, stop_rx)),
        other => {
            return Err(format!(
                "unknown server {other:?} (expected proactor-uring, proactor-poll or tokio)"
            ))
        }
    }?;
    let addr = ready_rx
        .recv()
        .map_err(|_| format!("{name}: the server thread ended before listening"))??;
    Ok(RunningServer {
        name: name.to_string(),
        addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

fn spawn(f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name("bench-server".into())
        .spawn(f)
        .map_err(|e| format!("cannot start a server thread: {e}"))
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn proactor_server(
    kind: DriverKind,
    ready: mpsc::Sender<Result<SocketAddr, String>>,
    stop: oneshot::Receiver<()>,
) {
    let event_loop = match proactor::EventLoop::builder().driver(kind).build() {
        Ok(event_loop) => event_loop,
        Err(e) => {
            let _ = ready.send(Err(format!("the {kind} driver is unavailable: {e}")));
            return;
        }
    };
    let h = event_loop.handle();
    let counters = Rc::new(EchoCounters::default());
    let server = match h.create_server(loopback(), move || EchoProtocol::new(counters.clone())) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(format!("proactor-{kind}: cannot listen: {e}")));
            return;
        }
    };
    let Some(addr) = server.local_addr().as_inet() else {
        let _ = ready.send(Err("the server has no IP address".into()));
        return;
    };
    let _ = ready.send(Ok(addr));
    // The oneshot's waker is thread-safe: sending from the bench thread wakes
    // the loop out of the kernel (L2).
    if let Err(e) = event_loop.run_until_complete(stop) {
        tracing::warn!(%e, "proactor bench server stopped");
    }
    server.close();
    server.abort_clients();
}

fn tokio_server(ready: mpsc::Sender<Result<SocketAddr, String>>, stop: oneshot::Receiver<()>) {
    use futures_util::future::{select, Either};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("tokio: cannot build a runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(loopback()).await {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("tokio: cannot listen: {e}")));
                return;
            }
        };
        match listener.local_addr() {
            Ok(a) => {
                let _ = ready.send(Ok(a));
            }
            Err(e) => {
                let _ = ready.send(Err(format!("tokio: {e}")));
                return;
            }
        }
        let accept = async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let _ = s.set_nodelay(true);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        };
        let accept = std::pin::pin!(accept);
        if let Either::Right(_) = select(stop, accept).await {
            tracing::warn!("tokio bench server's accept loop ended");
        }
    });
}
