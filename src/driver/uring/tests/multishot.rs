//! Multishot receives over a provided buffer ring that runs dry: the
//! kernel ends the multishot with `ENOBUFS`, having taken nothing it did not
//! report, and arming it again reads on from where it stopped.

use std::io::Write;

use super::*;

/// Arms a multishot on `ours` and collects its completions up to the
/// final one: (bytes, final result).
fn shots(d: &mut UringDriver, ours: SocketId) -> (Vec<u8>, io::Result<usize>) {
    let key = d.submit(
        Op::RecvMulti {
            socket: ours,
            buf: Vec::new(),
        },
        0,
    );
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
    // Two buffers of 64 bytes: 1,000 bytes cannot fit in one reap.
    let mut d = match UringDriver::with_buffer_ring(64, 512, 2, 64) {
        Ok(d) if d.supports_multishot_recv() => d,
        Ok(_) => return eprintln!("SKIPPED: this kernel has no multishot receive"),
        Err(e) => return eprintln!("SKIPPED: io_uring refused: {e}"),
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

/// A peer that never stops sending keeps an armed multishot posting
/// arrivals: one `wait` returns after about a ring's worth of them, so the
/// loop gets to deliver (and pause) instead of reading on without end.
#[test]
fn one_wait_reaps_about_a_ring_of_arrivals_from_a_peer_that_keeps_sending() {
    let mut d = match UringDriver::with_buffer_ring(64, 4096, 256, 64) {
        Ok(d) if d.supports_multishot_recv() => d,
        Ok(_) => return eprintln!("SKIPPED: this kernel has no multishot receive"),
        Err(e) => return eprintln!("SKIPPED: io_uring refused: {e}"),
    };
    let (ours, mut peer) = pair();
    let writer = std::thread::spawn(move || {
        let chunk = [7u8; 4096];
        // Until our side closes: EPIPE ends it.
        while peer.write_all(&chunk).is_ok() {}
    });
    let key = d.submit(
        Op::RecvMulti {
            socket: ours,
            buf: Vec::new(),
        },
        0,
    );
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
