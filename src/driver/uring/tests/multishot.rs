//! Multishot ops the kernel ends: receives over a provided buffer ring
//! that runs dry (the kernel ends the multishot with `ENOBUFS`, having taken
//! nothing it did not report, and arming it again reads on from where it
//! stopped), and accepts whose CQ overflows (the last socket comes with the
//! final completion; armed again, they accept the rest).

use std::io::Write;

use super::*;
use crate::driver::tests_accept::{accepted_socket, multishot_accept_driver};

/// A driver with a provided buffer ring of `buffers` x `size` bytes
/// (consumed `incremental`ly or whole), or `None` (the reason
/// printed) where the kernel has no multishot receive or refuses io_uring.
fn ring_driver(
    cq_entries: u32,
    buffers: u16,
    size: usize,
    incremental: bool,
) -> Option<UringDriver> {
    let shape = RingShape {
        buffers,
        size,
        incremental,
    };
    match UringDriver::with_buffer_ring(64, cq_entries, shape) {
        Ok(d) if d.supports_multishot_recv() => Some(d),
        Ok(_) if shape.incremental && kernel_has_incremental_rings() => {
            panic!("a 6.12+ kernel refused an incremental buffer ring")
        }
        Ok(_) => {
            eprintln!("SKIPPED: no multishot receive with {shape:?}");
            None
        }
        Err(e) => {
            eprintln!("SKIPPED: io_uring refused: {e}");
            None
        }
    }
}

/// Arms a multishot receive on `socket`.
fn arm(d: &mut UringDriver, socket: SocketId) -> OpKey {
    d.submit(
        Op::RecvMulti {
            socket,
            buf: Vec::new(),
        },
        0,
    )
}

/// The bytes of an arrival (a completion flagged `more`).
fn arrival(c: Completion) -> Vec<u8> {
    assert!(c.more, "the multishot ended: {:?}", c.result);
    let Op::RecvMulti { buf, .. } = c.op else {
        panic!("multishot completed as {}", c.op.name());
    };
    assert_eq!(c.result.unwrap(), buf.len());
    buf
}

/// Cancels the multishot `key`, waits for its final completion, closes
/// `ours` and checks nothing is left in flight.
fn cancel_and_close(d: &mut UringDriver, key: OpKey, ours: SocketId, out: &mut Vec<Completion>) {
    d.cancel(key);
    assert!(
        !wait_for(d, key, out).more,
        "the cancelled multishot went on"
    );
    d.close(ours);
    assert_quiescent(d);
}

/// Arms a multishot on `ours` and collects its completions up to the
/// final one: (bytes, final result).
fn shots(d: &mut UringDriver, ours: SocketId) -> (Vec<u8>, io::Result<usize>) {
    let key = arm(d, ours);
    let mut bytes = Vec::new();
    let mut later = Vec::new();
    loop {
        let c = wait_for(d, key, &mut later);
        let Op::RecvMulti { buf, .. } = c.op else {
            panic!("multishot completed as {}", c.op.name());
        };
        bytes.extend_from_slice(&buf);
        if !c.more {
            return (bytes, c.result);
        }
    }
}

#[test]
fn an_empty_buffer_ring_ends_the_multishot_with_enobufs_and_loses_nothing() {
    for incremental in [false, true] {
        empty_ring_loses_nothing(incremental);
    }
}

fn empty_ring_loses_nothing(incremental: bool) {
    // Two buffers of 64 bytes: 1,000 bytes cannot fit in one reap.
    let Some(mut d) = ring_driver(512, 2, 64, incremental) else {
        return;
    };
    let (ours, mut peer) = pair();
    let data = contract::pattern(1000, 5);
    peer.write_all(&data).unwrap();
    drop(peer);
    let mut got = Vec::new();
    let mut enobufs = 0;
    loop {
        let (bytes, end) = shots(&mut d, ours);
        got.extend_from_slice(&bytes);
        match end {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => enobufs += 1,
            Err(e) => panic!("multishot failed: {e}"),
        }
    }
    assert_eq!(got, data, "every byte once, in order, across re-arms");
    assert!(enobufs > 0, "the ring never ran dry");
    assert_eq!(d.stats().multishot_enobufs, enobufs);
    d.close(ours);
    assert_quiescent(&d);
}

/// Whether the running kernel is 6.12 or later (incremental buffer rings).
fn kernel_has_incremental_rings() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (6, 12)
}

/// Small arrivals, one at a time, each taking far less than a buffer: an
/// incremental ring hands out the same buffer again and again, each
/// arrival's bytes after the last one's, and each arrives exactly as sent
/// (read from the start of the buffer, the second and later ones would
/// repeat the first). A whole-buffer ring uses a buffer per arrival and
/// must give each back for 100 arrivals to fit in two.
#[test]
fn small_arrivals_come_exactly_as_sent_from_either_ring() {
    for incremental in [true, false] {
        let Some(mut d) = ring_driver(512, 2, 4096, incremental) else {
            return;
        };
        let ring_incremental = d.buf_ring.as_ref().is_some_and(BufRing::incremental);
        assert_eq!(ring_incremental, incremental);
        let (ours, mut peer) = pair();
        let key = arm(&mut d, ours);
        let mut out = Vec::new();
        for i in 0..100u8 {
            let message = contract::pattern(37, i.into());
            peer.write_all(&message).unwrap();
            let got = arrival(wait_for(&mut d, key, &mut out));
            assert_eq!(got, message, "arrival {i} (incremental: {incremental})");
        }
        cancel_and_close(&mut d, key, ours, &mut out);
    }
}

/// Bytes already waiting when a multishot is armed come as CQEs back to
/// back, one per 1 KiB buffer: they reach the loop merged, as fewer
/// arrivals than buffers, in order and whole (one copy out of the ring).
#[test]
fn consecutive_arrivals_of_one_receive_are_merged() {
    let Some(mut d) = ring_driver(512, 64, 1024, false) else {
        return;
    };
    let (ours, mut peer) = pair();
    let data = contract::pattern(16 * 1024, 3);
    peer.write_all(&data).unwrap();
    let key = arm(&mut d, ours);
    let (mut got, mut arrivals, mut out) = (Vec::new(), 0, Vec::new());
    while got.len() < data.len() {
        got.extend_from_slice(&arrival(wait_for(&mut d, key, &mut out)));
        arrivals += 1;
    }
    assert_eq!(got, data);
    assert!(arrivals < 16, "16 buffers came as {arrivals} arrivals");
    cancel_and_close(&mut d, key, ours, &mut out);
}

/// A peer that never stops sending keeps an armed multishot posting
/// arrivals: one `wait` returns after about a ring's worth of them, so the
/// loop gets to deliver (and pause) instead of reading on without end.
#[test]
fn one_wait_reaps_about_a_ring_of_arrivals_from_a_peer_that_keeps_sending() {
    let Some(mut d) = ring_driver(4096, 256, 64, false) else {
        return;
    };
    let (ours, mut peer) = pair();
    let writer = std::thread::spawn(move || {
        let chunk = [7u8; 4096];
        // Until our side closes: EPIPE ends it.
        while peer.write_all(&chunk).is_ok() {}
    });
    let key = arm(&mut d, ours);
    let mut out = Vec::new();
    while out.is_empty() {
        d.wait(Some(Duration::from_secs(1)), &mut out).unwrap();
    }
    assert!(
        out.len() < 2 * 256,
        "one wait reaped {} arrivals, a ring holds 256",
        out.len()
    );
    d.cancel(key);
    loop {
        if out.iter().any(|c| c.key == key && !c.more) {
            break;
        }
        d.wait(Some(Duration::from_secs(1)), &mut out).unwrap();
    }
    d.close(ours);
    writer.join().unwrap();
    assert_quiescent(&d);
}

/// A multishot accept the kernel ends (here: its CQ overflows under a
/// burst of connections) hands over its last socket in its final
/// completion; armed again, it accepts the rest. Every connection is
/// accepted exactly once, with its peer's address.
#[test]
fn a_multishot_accept_the_kernel_ends_hands_over_its_last_socket() {
    let Some(mut d) = multishot_accept_driver(8, 16) else {
        return;
    };
    let listener = d.listen(&"127.0.0.1:0".parse().unwrap(), 128).unwrap();
    let addr = d.local_addr(listener).unwrap();
    let clients: Vec<std::net::TcpStream> = (0..40)
        .map(|_| std::net::TcpStream::connect(addr.as_inet().unwrap()).unwrap())
        .collect();
    let mut expected: Vec<Address> = clients
        .iter()
        .map(|c| Address::Inet(c.local_addr().unwrap()))
        .collect();
    let arm = |d: &mut UringDriver| {
        d.submit(
            Op::AcceptMulti {
                listener,
                accepted: None,
            },
            1,
        )
    };
    let mut key = arm(&mut d);
    let (mut peers, mut sockets, mut ends) = (Vec::new(), Vec::new(), 0);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while peers.len() < expected.len() {
        assert!(Instant::now() < deadline, "accepted {} of 40", peers.len());
        d.wait(Some(Duration::from_millis(100)), &mut out).unwrap();
        for c in out.drain(..) {
            assert_eq!(c.key, key);
            let more = c.more;
            let (socket, peer) = accepted_socket(c);
            sockets.push(socket);
            peers.push(peer);
            if !more {
                ends += 1;
                key = arm(&mut d);
            }
        }
    }
    eprintln!("the kernel ended the multishot accept {ends} times");
    peers.sort_by_key(|a| a.to_string());
    expected.sort_by_key(|a| a.to_string());
    assert_eq!(
        peers, expected,
        "each connection accepted once, with its peer"
    );
    d.cancel(key);
    let mut rest = Vec::new();
    let last = super::wait_for(&mut d, key, &mut rest);
    assert!(rest.is_empty() && !last.more, "{rest:?}");
    for s in sockets {
        d.close(s);
    }
    d.close(listener);
    let s = d.stats();
    assert_eq!(s.submitted, s.completed, "O1");
}
