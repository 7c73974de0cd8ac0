//! Every way a TLS connection ends is a `TlsError` variant a caller can
//! match on, always inside an `io::Error` of the same kind. Each ending is
//! provoked for real, on every driver. (`TlsError::Unsent` needs a
//! half-closed peer with a full backlog: see
//! `tls_contract::unsent_backlog_at_raw_loss_is_an_error`.)
mod tls_support;
mod util;

use std::cell::RefCell;
use std::io;
use std::mem::{discriminant, Discriminant};
use std::rc::Rc;
use std::time::Duration;

use proactor::tls::{TlsError, TlsOptions};
use proactor::{BaseProtocol, Handle, Protocol, Server, Transport};
use tls_support::*;

const LIMIT: Duration = Duration::from_secs(20);
const SHORT: Duration = Duration::from_millis(200);

#[test]
fn every_tls_ending_is_a_variant_with_one_kind() {
    drivers("tls_endings", None, |lp| {
        let h = lp.handle();
        lp.run_until_complete(async move {
            let endings = [
                handshake_timeout(&h).await,
                closed_during_handshake(&h).await,
                aborted_during_handshake(&h).await,
                truncated(&h).await,
                shutdown_timeout(&h).await,
                engine_error(&h).await,
            ];
            let mut variants: Vec<Discriminant<TlsError>> = Vec::new();
            for (i, e) in endings.iter().enumerate() {
                let Some(tls) = TlsError::of(e) else {
                    panic!("ending {i} is not a TlsError: {e:?}");
                };
                let kind = match tls {
                    TlsError::HandshakeTimeout | TlsError::ShutdownTimeout => {
                        io::ErrorKind::TimedOut
                    }
                    TlsError::ClosedDuringHandshake => io::ErrorKind::ConnectionReset,
                    TlsError::Aborted => io::ErrorKind::ConnectionAborted,
                    TlsError::Truncated => io::ErrorKind::UnexpectedEof,
                    TlsError::Engine(_) => io::ErrorKind::InvalidData,
                    TlsError::Unsent { .. } => io::ErrorKind::BrokenPipe,
                    other => panic!("a variant this test does not know: {other:?}"),
                };
                assert_eq!(e.kind(), kind, "{e}");
                assert_eq!(tls.kind(), kind);
                variants.push(discriminant(tls));
            }
            let order = [
                discriminant(&TlsError::HandshakeTimeout),
                discriminant(&TlsError::ClosedDuringHandshake),
                discriminant(&TlsError::Aborted),
                discriminant(&TlsError::Truncated),
                discriminant(&TlsError::ShutdownTimeout),
                discriminant(&TlsError::Engine(rustls::Error::DecryptError)),
            ];
            assert_eq!(variants, order, "{endings:?}");
        })
        .unwrap();
    });
}

/// A server that never answers: the handshake timeout fires.
async fn handshake_timeout(h: &Handle) -> io::Error {
    let silent = h
        .create_server(localhost(), || Sink::new(&shared()))
        .unwrap();
    let opts = client_options().handshake_timeout(SHORT);
    let e = h
        .create_tls_connection(silent.local_addr(), Sink::new(&shared()), opts)
        .await
        .unwrap_err();
    silent.close();
    e
}

/// A plain server that half-closes at once: its FIN, and nothing else.
struct HalfClose;

impl BaseProtocol for HalfClose {
    fn connection_made(&mut self, t: Transport) {
        t.write_eof().unwrap();
    }
}

impl Protocol for HalfClose {
    fn data_received(&mut self, _data: &[u8]) {}
}

/// The server's EOF arrives mid-handshake (a half-close, so that no reset
/// can overtake it).
async fn closed_during_handshake(h: &Handle) -> io::Error {
    let server = h.create_server(localhost(), || HalfClose).unwrap();
    let e = h
        .create_tls_connection(server.local_addr(), Sink::new(&shared()), client_options())
        .await
        .unwrap_err();
    server.close();
    e
}

/// Our side aborts the raw transport while `start_tls` waits.
async fn aborted_during_handshake(h: &Handle) -> io::Error {
    let silent = h
        .create_server(localhost(), || Sink::new(&shared()))
        .unwrap();
    let raw = h
        .create_connection(silent.local_addr(), Sink::new(&shared()))
        .await
        .unwrap();
    let upgrade = h.start_tls(&raw, Sink::new(&shared()), client_options());
    raw.abort();
    let e = upgrade.await.unwrap_err();
    silent.close();
    e
}

/// A hand-driven TLS server, and our client connected to it with `opts`.
async fn manual_peer(h: &Handle, opts: TlsOptions, app: &Shared) -> (Server, PeerRef, Transport) {
    let (peer, state) = ManualPeer::server();
    let slot = Rc::new(RefCell::new(Some(peer)));
    let server = h
        .create_server(localhost(), move || slot.borrow_mut().take().unwrap())
        .unwrap();
    let t = h
        .create_tls_connection(server.local_addr(), Sink::new(app), opts)
        .await
        .unwrap();
    until(h, LIMIT, "peer handshake", || !state.borrow().handshaking()).await;
    (server, state, t)
}

/// The connection `app` saw end, and its error.
async fn lost(h: &Handle, app: &Shared) -> io::Error {
    until(h, LIMIT, "connection_lost", || app.borrow().lost == 1).await;
    let e = app.borrow_mut().error.take();
    e.expect("an error")
}

/// The peer's FIN without its close_notify.
async fn truncated(h: &Handle) -> io::Error {
    let app = shared();
    let (server, peer, _t) = manual_peer(h, client_options(), &app).await;
    let raw = peer.borrow().transport.clone().unwrap();
    raw.close();
    let e = lost(h, &app).await;
    server.close();
    e
}

/// The peer never answers our close_notify.
async fn shutdown_timeout(h: &Handle) -> io::Error {
    let app = shared();
    let opts = client_options().shutdown_timeout(SHORT);
    let (server, _peer, t) = manual_peer(h, opts, &app).await;
    t.close();
    let e = lost(h, &app).await;
    server.close();
    e
}

/// A record that does not decrypt.
async fn engine_error(h: &Handle) -> io::Error {
    let app = shared();
    let (server, peer, _t) = manual_peer(h, client_options(), &app).await;
    let raw = peer.borrow().transport.clone().unwrap();
    raw.write(b"\x17\x03\x03\x00\x10garbage-garbage!");
    let e = lost(h, &app).await;
    server.close();
    e
}
