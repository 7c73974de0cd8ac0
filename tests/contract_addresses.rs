//! create_server / create_connection over IPv4, IPv6 and Unix paths, on
//! every driver: an echo round trip and clean close on each.

mod util;

use std::time::Duration;

use proactor::{Address, Transport};
use util::*;

fn echo_over(addr: Address) {
    on_every_driver("echo_over_address_families", |lp| {
        let h = lp.handle();
        let addr = addr.clone();
        lp.run_until_complete(async move {
            let server = h
                .create_server(addr.clone(), || {
                    Recorder::with_hooks(Hooks {
                        data: Some(Box::new(|t: &Transport, d: &[u8]| t.write(d))),
                        ..Hooks::default()
                    })
                    .0
                })
                .unwrap();
            let bound = server.local_addr();
            if let (Address::Inet(a), Address::Inet(b)) = (&addr, &bound) {
                assert_eq!(a.ip(), b.ip());
                assert_ne!(b.port(), 0, "port 0 picks a real port");
            }
            let (cp, crec) = Recorder::new();
            let t = h.create_connection(bound.clone(), cp).await.unwrap();
            assert!(t.peer_addr().is_some());
            let payload = pattern(2, 0, 100_000);
            t.write(&payload);
            wait_until(&h, Duration::from_secs(10), "echo", || {
                crec.borrow().data.len() >= payload.len()
            })
            .await;
            assert!(crec.borrow().data == payload);
            t.close();
            wait_until(&h, Duration::from_secs(10), "closed", || {
                crec.borrow().lost == 1
            })
            .await;
            crec.borrow().assert_closed_cleanly();
            server.close();
            server.wait_closed().await;
        })
        .unwrap();
    });
}

#[test]
fn ipv4_loopback() {
    echo_over("127.0.0.1:0".parse().unwrap());
}

#[test]
fn ipv6_loopback() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipping: no IPv6 loopback on this machine");
        return;
    }
    echo_over("[::1]:0".parse().unwrap());
}

#[test]
fn unix_path() {
    let path = std::env::temp_dir().join(format!("proactor-test-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    echo_over(Address::Unix(path.clone()));
    let _ = std::fs::remove_file(&path);
}
