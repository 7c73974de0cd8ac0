//! tokio's echo servers: current-thread or multi-thread runtime (as many
//! workers as CPUs this process may use: one when pinned), a task per
//! connection; over TLS with tokio-rustls on the current-thread runtime.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use super::BUF;

pub fn serve(multi_thread: bool, tls: Option<Arc<rustls::ServerConfig>>) -> Result<(), String> {
    let rt = if multi_thread {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_io()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
    }
    .map_err(|e| format!("tokio: cannot build a runtime: {e}"))?;
    let std_listener = super::listener()?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = TcpListener::from_std(std_listener).map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        super::ready(addr);
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            match &acceptor {
                None => {
                    tokio::spawn(echo(s));
                }
                Some(a) => {
                    let a = a.clone();
                    tokio::spawn(async move {
                        if let Ok(s) = a.accept(s).await {
                            echo(s).await;
                        }
                    });
                }
            }
        }
    })
}

/// Reads into a 64 KiB buffer (never zeroed) and writes back what came.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = Vec::with_capacity(BUF);
    loop {
        buf.clear();
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                // flush: tokio-rustls may hold records back otherwise
                // (a no-op on plain TCP).
                if s.write_all(&buf).await.is_err() || s.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}
