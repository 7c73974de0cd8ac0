//! TLS transports: handshake, echo, info, close.
mod tls_support;
mod util;

use std::time::Duration;

use tls_support::*;

#[test]
fn tls_echo_round_trip() {
    drivers("tls_echo_round_trip", None, |lp| {
        let h = lp.handle();
        lp.run_until_complete(async move {
            let srv_seen = shared();
            let s2 = srv_seen.clone();
            let server = h
                .create_tls_server(localhost(), move || Sink::echo(&s2), server_options())
                .unwrap();
            let cli = shared();
            let t = h
                .create_tls_connection(server.local_addr(), Sink::new(&cli), client_options())
                .await
                .unwrap();
            let info = t.tls_info().expect("tls info");
            assert_eq!(info.version, "TLSv1_3");
            assert_eq!(info.server_name.as_deref(), Some("localhost"));
            assert!(!info.peer_certificates.is_empty());
            let msg = pattern(1, 300_000);
            t.write(&msg);
            until(&h, Duration::from_secs(10), "echo", || {
                cli.borrow().data.len() >= msg.len()
            })
            .await;
            assert!(cli.borrow().data == msg);
            assert_eq!(cli.borrow().made, 1);
            t.close();
            until(&h, Duration::from_secs(10), "both lost", || {
                cli.borrow().lost == 1 && srv_seen.borrow().lost == 1
            })
            .await;
            assert!(cli.borrow().error.is_none(), "{:?}", cli.borrow().error);
            assert!(
                srv_seen.borrow().error.is_none(),
                "{:?}",
                srv_seen.borrow().error
            );
            assert_eq!(srv_seen.borrow().eof, 1);
            let sinfo = srv_seen
                .borrow()
                .transport
                .as_ref()
                .unwrap()
                .tls_info()
                .unwrap();
            assert_eq!(sinfo.server_name.as_deref(), Some("localhost"));
            server.close();
            server.wait_closed().await;
        })
        .unwrap();
    });
}
