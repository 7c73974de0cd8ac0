//! Issue 7 item 7 (TLS): a `create_tls_connection` that fails after the TCP
//! connect — handshake error, handshake timeout, or the future dropped —
//! closes its socket (and so does a plain `create_connection` dropped after
//! its connect completed). One test in its own binary, so that no other test
//! opens file descriptors while it counts `/proc/self/fd`.
mod tls_support;
mod util;

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use proactor::tls::{self, TlsError, TlsOptions};
use proactor::{DriverKind, Handle, Server, Transport};
use tls_support::*;
use util::poll_once;

const LIMIT: Duration = Duration::from_secs(20);

type Connecting = Pin<Box<dyn Future<Output = std::io::Result<Transport>>>>;

/// Waits until the server's side of every connection was closed (our
/// socket is gone, so it saw EOF) and, on a real driver, the process has
/// the file descriptors it had before.
async fn wait_released(h: &Handle, server: &Server, fds_before: usize, what: &str) {
    let real = h.driver_kind() != DriverKind::Sim;
    let deadline = h.now() + LIMIT;
    loop {
        let active = server.active_connections();
        let fds = util::open_fds();
        if active == 0 && (!real || fds == fds_before) {
            return;
        }
        assert!(
            h.now() < deadline,
            "{what}: socket left open ({active} server connection(s) open, {fds} fds, {fds_before} before)"
        );
        sleep(h, Duration::from_millis(1)).await;
    }
}

#[test]
fn failed_tls_connect_leaves_no_socket_open() {
    drivers("failed_tls_connect_leaves_no_socket", None, |lp| {
        let h = lp.handle();
        lp.run_until_complete(async move {
            // A TLS server whose certificate the client does not trust, and
            // a plain server that never answers a ClientHello.
            let tls_server = h
                .create_tls_server(localhost(), || Sink::new(&shared()), server_options())
                .unwrap();
            let conns: Rc<RefCell<Vec<Shared>>> = Rc::default();
            let c2 = conns.clone();
            let silent = h
                .create_server(localhost(), move || {
                    let seen = shared();
                    c2.borrow_mut().push(seen.clone());
                    Sink::new(&seen)
                })
                .unwrap();
            let fds_before = util::open_fds();

            // Handshake error (certificate verification).
            let untrusted =
                TlsOptions::client(tls::client_config_webpki().unwrap(), "localhost").unwrap();
            let e = h
                .create_tls_connection(tls_server.local_addr(), Sink::new(&shared()), untrusted)
                .await
                .unwrap_err();
            assert!(TlsError::of(&e).is_some(), "{e}");
            wait_released(&h, &tls_server, fds_before, "handshake error").await;

            // Handshake timeout.
            let opts = client_options().handshake_timeout(Duration::from_millis(200));
            let e = h
                .create_tls_connection(silent.local_addr(), Sink::new(&shared()), opts)
                .await
                .unwrap_err();
            assert!(
                matches!(TlsError::of(&e), Some(TlsError::HandshakeTimeout)),
                "{e}"
            );
            wait_released(&h, &silent, fds_before, "handshake timeout").await;

            // The future dropped during the handshake (the ClientHello is out).
            let accepted = silent.accepted();
            let mut fut: Connecting = Box::pin(h.create_tls_connection(
                silent.local_addr(),
                Sink::new(&shared()),
                client_options(),
            ));
            let deadline = h.now() + LIMIT;
            let hello_out = || {
                silent.accepted() > accepted
                    && conns
                        .borrow()
                        .last()
                        .is_some_and(|c| !c.borrow().data.is_empty())
            };
            while !hello_out() {
                assert!(poll_once(&mut fut).is_pending());
                assert!(h.now() < deadline, "no ClientHello");
                sleep(&h, Duration::from_millis(1)).await;
            }
            drop(fut);
            wait_released(&h, &silent, fds_before, "dropped during the handshake").await;

            // The future dropped after the TCP connect completed, before it
            // was polled again: the connected socket waits in the future.
            let accepted = silent.accepted();
            let mut fut: Connecting = Box::pin(h.create_tls_connection(
                silent.local_addr(),
                Sink::new(&shared()),
                client_options(),
            ));
            assert!(poll_once(&mut fut).is_pending());
            until(&h, LIMIT, "accepted", || silent.accepted() > accepted).await;
            // Aim at the window: give the client's connect completion a few
            // loop turns to arrive (it is reaped without polling `fut`).
            sleep(&h, Duration::from_millis(5)).await;
            drop(fut);
            wait_released(&h, &silent, fds_before, "dropped after the connect").await;

            // The same window on a plain create_connection (same connect path).
            let accepted = silent.accepted();
            let mut fut: Connecting =
                Box::pin(h.create_connection(silent.local_addr(), Sink::new(&shared())));
            assert!(poll_once(&mut fut).is_pending());
            until(&h, LIMIT, "accepted", || silent.accepted() > accepted).await;
            sleep(&h, Duration::from_millis(5)).await;
            drop(fut);
            wait_released(
                &h,
                &silent,
                fds_before,
                "plain connect dropped after the connect",
            )
            .await;

            tls_server.close();
            silent.close();
        })
        .unwrap();
    });
}
