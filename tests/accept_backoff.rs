//! L3: a server survives accept errors (EMFILE) with back-off, and serves
//! again once descriptors are available. Its own test binary because it
//! lowers the process's descriptor limit.

mod util;

use std::time::Duration;

use proactor::{BaseProtocol, EventLoop, Protocol, Transport};
use util::*;

struct Hello;
impl BaseProtocol for Hello {
    fn connection_made(&mut self, t: Transport) {
        t.write(b"hi");
        t.close();
    }
}
impl Protocol for Hello {
    fn data_received(&mut self, _: &[u8]) {}
}

fn set_nofile(n: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with valid pointers to rlimit structs.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut old);
        let new = libc::rlimit {
            rlim_cur: n,
            rlim_max: old.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &new), 0);
    }
    old.rlim_cur
}

fn survive_emfile(lp: &EventLoop) {
    let h = lp.handle();
    let clients = lp
        .run_until_complete(async move {
            let server = h.create_server(localhost(), || Hello).unwrap();
            let addr = server.local_addr().as_inet().unwrap();
            // Leave room for a few descriptors, then let blocking clients fill
            // the backlog from a thread: the server's accept hits EMFILE.
            let limit = open_fds() as u64 + 4;
            let old = set_nofile(limit);
            // The clients share the process's limit: those that find no
            // descriptor fail to connect, the others wait in the backlog.
            let t = std::thread::spawn(move || {
                (0..CLIENTS)
                    .filter_map(|_| std::net::TcpStream::connect(addr).ok())
                    .collect::<Vec<_>>()
            });
            wait_until(&h, Duration::from_secs(10), "accept errors", || {
                server.accept_errors() > 0
            })
            .await;
            let errors = server.accept_errors();
            set_nofile(old);
            let conns = t.join().unwrap();
            assert!(!conns.is_empty(), "some clients got into the backlog");
            // The server recovers and serves every queued client.
            wait_until(
                &h,
                Duration::from_secs(10),
                "all accepted and served after recovery",
                || server.accepted() == conns.len() as u64 && server.active_connections() == 0,
            )
            .await;
            assert!(!server.is_closed(), "L3: the server keeps serving");
            assert_eq!(
                server.accept_errors(),
                errors,
                "no errors once descriptors are back"
            );
            server.close();
            conns
        })
        .unwrap();
    // Every client was served: the greeting, then EOF.
    for (i, mut c) in clients.into_iter().enumerate() {
        use std::io::Read as _;
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got)
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!(got, b"hi", "client {i}");
    }
}

/// Clients queued in the backlog while the server is out of descriptors.
const CLIENTS: usize = 8;

#[test]
fn l3_server_survives_emfile() {
    let plan = Plan {
        sim_skip: Some(
            "EMFILE comes from the kernel; sim injects accept errors in its fault schedule (tests/sim_faults.rs)",
        ),
        ..Plan::new("l3_server_survives_emfile")
    };
    matrix::run(plan, |lp| survive_emfile(&lp));
}
