//! L3 at the driver level, the same on every driver: a peer that reset
//! before its accept is, on Linux, a successful accept of a dead socket; the
//! peer's address comes with it (taken from the accept itself, not from a
//! later `getpeername`, which would fail with `ENOTCONN`). The loop-level half
//! of L3 (a reset storm never stalls accept) is `tests/accept_storm.rs`.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::poll::PollDriver;
use super::sim::{SimConfig, SimDriver};
use super::uring::UringDriver;
use super::{Completion, Driver, DriverKind, Op, OpKey, SockOpt, SocketId};
use crate::address::Address;

/// Sim seeds: `PROACTOR_SIM_SEED` replays one, else `PROACTOR_CONTRACT_SEEDS`
/// (default 8) seeds from 0, as the contract tests do.
fn contract_seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("PROACTOR_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n = std::env::var("PROACTOR_CONTRACT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    (0..n).collect()
}

/// Whether `PROACTOR_TEST_DRIVERS` (default: all) includes `kind`.
fn wanted(kind: DriverKind) -> bool {
    std::env::var("PROACTOR_TEST_DRIVERS")
        .map(|v| v.split(',').any(|s| s.trim() == kind.name()))
        .unwrap_or(true)
}

/// A uring driver of `entries` SQ and `cq_entries` CQ entries with
/// multishot accept on, or `None` (the reason printed) where io_uring is
/// refused or the kernel has no multishot accept.
pub(super) fn multishot_accept_driver(entries: u32, cq_entries: u32) -> Option<UringDriver> {
    let mut d = match UringDriver::with_queues(entries, cq_entries) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipping uring: io_uring refused on this machine ({e})");
            return None;
        }
    };
    d.set_multishot_accept(true);
    if !d.supports_multishot_accept() {
        eprintln!("skipping: this kernel has no multishot accept");
        return None;
    }
    Some(d)
}

/// The socket and peer a successful multishot accept completion hands over.
pub(super) fn accepted_socket(c: Completion) -> (SocketId, Address) {
    assert_eq!(c.result.unwrap(), 0, "every accept succeeds");
    let Op::AcceptMulti {
        accepted: Some(socket_and_peer),
        ..
    } = c.op
    else {
        panic!("accept completed without a socket: {:?}", c.op);
    };
    socket_and_peer
}

fn localhost() -> Address {
    "127.0.0.1:0".parse().unwrap()
}

/// Waits (on the driver alone) for the one completion of `key`.
fn complete(d: &mut dyn Driver, key: OpKey) -> Completion {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(i) = out.iter().position(|c: &Completion| c.key == key) {
            let c = out.swap_remove(i);
            assert!(out.is_empty(), "unexpected completions: {out:?}");
            return c;
        }
        assert!(Instant::now() < deadline, "no completion");
        d.wait(Some(Duration::from_millis(100)), &mut out).unwrap();
    }
}

/// A client of `listener` that connects, then resets before it is accepted.
/// Returns the client's address (what the accept must report as the peer).
fn connect_and_reset(d: &mut dyn Driver, listener: SocketId) -> Address {
    let addr = d.local_addr(listener).unwrap();
    if d.kind() == DriverKind::Sim {
        let c = d.open_stream(&addr).unwrap();
        let k = d.submit(
            Op::Connect {
                socket: c,
                addr: addr.clone(),
            },
            0,
        );
        complete(d, k).result.unwrap();
        let local = d.local_addr(c).unwrap();
        d.set_option(c, SockOpt::Linger(Some(Duration::ZERO)))
            .unwrap();
        d.close(c); // RST
        local
    } else {
        let c = TcpStream::connect(addr.as_inet().unwrap()).unwrap();
        let local = Address::Inet(c.local_addr().unwrap());
        let c = socket2::Socket::from(c);
        c.set_linger(Some(Duration::ZERO)).unwrap();
        drop(c); // RST
                 // Loopback handles the RST at once; leave it a moment anyway.
        std::thread::sleep(Duration::from_millis(20));
        local
    }
}

fn accept_after_peer_reset(d: &mut dyn Driver) {
    let listener = d.listen(&localhost(), 16).unwrap();
    let client = connect_and_reset(d, listener);
    let k = d.submit(
        Op::Accept {
            listener,
            accepted: None,
        },
        0,
    );
    let c = complete(d, k);
    let kind = d.kind();
    let n = c
        .result
        .unwrap_or_else(|e| panic!("{kind}: accept after a peer reset failed: {e}"));
    assert_eq!(n, 0);
    let Op::Accept {
        accepted: Some((socket, peer)),
        ..
    } = c.op
    else {
        panic!("{kind}: accept completed without a socket: {:?}", c.op);
    };
    assert_eq!(peer, client, "{kind}: the peer address of the accept");
    // The connection is dead: its first recv reports the reset (or EOF).
    let k = d.submit(
        Op::Recv {
            socket,
            buf: Vec::with_capacity(16),
        },
        1,
    );
    match complete(d, k).result {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ECONNRESET), "{kind}: {e}"),
        Ok(n) => assert_eq!(n, 0, "{kind}: bytes from a reset peer"),
    }
    d.close(socket);
    d.close(listener);
    let s = d.stats();
    assert_eq!(s.submitted, s.completed, "{kind}: O1");
}

#[test]
fn l3_peer_reset_before_accept_is_accepted_with_its_address() {
    if wanted(DriverKind::Uring) {
        match UringDriver::new(64) {
            Ok(mut d) => accept_after_peer_reset(&mut d),
            Err(e) => eprintln!("skipping uring: io_uring refused on this machine ({e})"),
        }
    }
    if wanted(DriverKind::Poll) {
        accept_after_peer_reset(&mut PollDriver::new().unwrap());
    }
    if wanted(DriverKind::Sim) {
        for seed in contract_seeds() {
            accept_after_peer_reset(&mut SimDriver::new(SimConfig::with_seed(seed)));
        }
    }
}

/// Multishot accept (uring): one armed op hands over every connection,
/// each with its peer's address, a peer that reset before its accept
/// included (the CQE has no address; `getpeername` would fail there with
/// `ENOTCONN`); a cancel ends it with one final completion (O1).
#[test]
fn l3_multishot_accept_reports_every_peer_with_its_address() {
    if !wanted(DriverKind::Uring) {
        return;
    }
    let Some(mut d) = multishot_accept_driver(64, 512) else {
        return;
    };
    let listener = d.listen(&localhost(), 16).unwrap();
    let addr = d.local_addr(listener).unwrap();
    let reset = connect_and_reset(&mut d, listener);
    let live: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(addr.as_inet().unwrap()).unwrap())
        .collect();
    let mut expected: Vec<Address> = live
        .iter()
        .map(|c| Address::Inet(c.local_addr().unwrap()))
        .collect();
    expected.insert(0, reset);
    let key = d.submit(
        Op::AcceptMulti {
            listener,
            accepted: None,
        },
        7,
    );
    let mut peers = Vec::new();
    let mut sockets = Vec::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while peers.len() < expected.len() {
        assert!(Instant::now() < deadline, "accepted only {peers:?}");
        d.wait(Some(Duration::from_millis(100)), &mut out).unwrap();
        for c in out.drain(..) {
            assert_eq!((c.key, c.user), (key, 7));
            assert!(c.more, "the multishot accept ended: {c:?}");
            let (socket, peer) = accepted_socket(c);
            sockets.push(socket);
            peers.push(peer);
        }
    }
    assert_eq!(peers, expected, "the peer address of each accept, in order");
    d.cancel(key);
    let last = complete(&mut d, key);
    assert!(!last.more);
    let err = last.result.unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECANCELED), "{err}");
    for s in sockets {
        d.close(s);
    }
    d.close(listener);
    let s = d.stats();
    assert_eq!(s.submitted, s.completed, "O1");
    assert_eq!(d.in_flight(), 0);
}
