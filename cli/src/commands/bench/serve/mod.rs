//! `proactor bench-server --kind KIND`: one echo server in its own process,
//! pinned to one CPU, so that its CPU time and resident memory are its own.
//! It prints `listening ADDR` as its first line and serves until its
//! standard input closes (the bench holds the other end).
//!
//! Every server echoes with a 64 KiB receive buffer per connection,
//! allocated without being zeroed (pages are touched only as data lands),
//! listens with backlog 1024 and sets TCP_NODELAY on accepted sockets: the
//! same terms as proactor's own transports.

#[cfg(feature = "compio")]
mod compio;
#[cfg(feature = "monoio")]
mod monoio;
mod ours;
mod ring;
mod threads;
mod tokio;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;

use super::plan::ServerKind;
use super::{sys, tlsconf};
use crate::args::BenchServerArgs;
use crate::failure::Failure;

/// Receive buffer per connection.
pub const BUF: usize = 64 * 1024;
/// `listen(2)` backlog of every server (proactor's default).
pub const BACKLOG: i32 = 1024;

/// A listener on 127.0.0.1 with an ephemeral port and [`BACKLOG`].
pub fn listener() -> Result<TcpListener, String> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
    s.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .and_then(|()| s.listen(BACKLOG))
        .map_err(|e| format!("cannot listen: {e}"))?;
    Ok(s.into())
}

/// Announces the address to the bench: the first line of stdout.
pub fn ready(addr: SocketAddr) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening {addr}");
    let _ = out.flush();
}

pub fn run(args: &BenchServerArgs) -> Result<(), Failure> {
    let kind = ServerKind::from_name(&args.kind)
        .filter(|k| *k != ServerKind::Loopback)
        .ok_or_else(|| Failure::setup(format!("bench-server: unknown kind {:?}", args.kind)))?;
    sys::raise_nofile();
    if let Some(cpu) = args.cpu {
        sys::pin_current_thread(cpu)
            .map_err(|e| Failure::setup(format!("cannot pin to CPU {cpu}: {e}")))?;
    }
    let tls = if kind.is_tls() {
        let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
            return Err(Failure::setup(
                "a TLS bench server needs --tls-cert and --tls-key",
            ));
        };
        Some(
            tlsconf::server_config_from_files(cert, key)
                .map_err(|e| Failure::setup(format!("TLS configuration: {e}")))?,
        )
    } else {
        None
    };
    // The bench closes our stdin to stop us (or dies, which does the same).
    std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            std::process::exit(0);
        })
        .map_err(|e| Failure::setup(format!("cannot start a thread: {e}")))?;
    serve(kind, tls).map_err(Failure::run)
}

fn serve(kind: ServerKind, tls: Option<Arc<rustls::ServerConfig>>) -> Result<(), String> {
    use proactor::DriverKind;
    match (kind, tls) {
        (ServerKind::ProactorUring | ServerKind::ProactorUringSingle, _) => {
            ours::serve(DriverKind::Uring, None)
        }
        (ServerKind::ProactorPoll, _) => ours::serve(DriverKind::Poll, None),
        (ServerKind::ProactorUringTls, Some(c)) => ours::serve(DriverKind::Uring, Some(c)),
        (ServerKind::ProactorPollTls, Some(c)) => ours::serve(DriverKind::Poll, Some(c)),
        (ServerKind::TokioCt, _) => tokio::serve(false, None),
        (ServerKind::TokioMt, _) => tokio::serve(true, None),
        (ServerKind::TokioRustls, Some(c)) => tokio::serve(false, Some(c)),
        (ServerKind::BareRing, _) => ring::serve(),
        (ServerKind::StdThreads, _) => threads::serve(),
        #[cfg(feature = "monoio")]
        (ServerKind::Monoio, _) => monoio::serve(),
        #[cfg(feature = "compio")]
        (ServerKind::Compio, _) => compio::serve(),
        (k, _) => Err(format!(
            "{}: not available in this build ({})",
            k.name(),
            k.unavailable().unwrap_or("no TLS configuration")
        )),
    }
}
