//! L3: a server survives accept errors (EMFILE) with back-off, and serves
//! again once descriptors are available. Its own test binary because it
//! lowers the process's descriptor limit.

mod util;

use std::time::Duration;

use proactor::{BaseProtocol, DriverKind, EventLoop, Protocol, Transport};
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

fn survive_emfile(kind: DriverKind) {
    let lp = EventLoop::builder().driver(kind).build().unwrap();
    let h = lp.handle();
    lp.run_until_complete(async move {
        let server = h.create_server(localhost(), || Hello).unwrap();
        let addr = server.local_addr().as_inet().unwrap();
        // Leave room for a few descriptors, then let blocking clients fill
        // the backlog from a thread: the server's accept hits EMFILE.
        let limit = open_fds() as u64 + 4;
        let old = set_nofile(limit);
        let t = std::thread::spawn(move || {
            let mut conns = Vec::new();
            for _ in 0..8 {
                if let Ok(c) = std::net::TcpStream::connect(addr) {
                    conns.push(c);
                }
            }
            conns
        });
        wait_until(&h, Duration::from_secs(10), "accept errors", || {
            server.accept_errors() > 0
        })
        .await;
        set_nofile(old);
        let conns = t.join().unwrap();
        assert!(!conns.is_empty());
        // The server recovers and serves every queued client.
        wait_until(
            &h,
            Duration::from_secs(10),
            "all accepted after recovery",
            || server.accepted() as usize >= conns.len(),
        )
        .await;
        assert!(!server.is_closed(), "L3: the server keeps serving");
        server.close();
    })
    .unwrap();
}

#[test]
fn l3_server_survives_emfile() {
    if uring_available() {
        survive_emfile(DriverKind::Uring);
    }
    survive_emfile(DriverKind::Poll);
    // sim: accept errors are injected by its fault schedule; see tests/sim_sweep.rs.
}
