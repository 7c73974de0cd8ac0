//! Multishot receives ([`Op::RecvMulti`]): every arrival comes once, in
//! order, as a completion flagged `more`; the one final completion (O1)
//! ends it; a cancel lets the arrivals that beat it through (O2); whatever
//! ends it (the kernel, an empty buffer ring), arming again loses nothing.
//! A driver that does not offer them (`poll`, a kernel without buffer
//! rings, a `sim` seed that models one) completes one with `EOPNOTSUPP`.

use std::time::{Duration, Instant};

use super::harness::{pattern, Harness, DEADLINE};
use super::ops::localhost;
use crate::driver::{is_cancelled, Completion, Op, OpKey, SocketId};

/// How a multishot receive ended, and what it brought.
struct Shots {
    bytes: Vec<u8>,
    /// The final completion's result: bytes (in `bytes` too), EOF, error.
    end: std::io::Result<usize>,
}

fn arm(h: &mut Harness, socket: SocketId) -> OpKey {
    h.driver.submit(
        Op::RecvMulti {
            socket,
            buf: Vec::new(),
        },
        0,
    )
}

/// Collects the completions of the multishot `key` up to its final one,
/// checking each: arrivals are flagged `more` and carry exactly their bytes.
fn collect(h: &mut Harness, key: OpKey, mut after_turn: impl FnMut(&mut Harness)) -> Shots {
    let start = Instant::now();
    let mut bytes = Vec::new();
    loop {
        assert!(
            start.elapsed() < DEADLINE,
            "{}: the multishot never ended\n{}",
            h.test,
            h.trace()
        );
        h.turn(Duration::from_millis(20));
        let (mine, others): (Vec<Completion>, Vec<Completion>) =
            h.take_pending().into_iter().partition(|c| c.key == key);
        assert!(others.is_empty(), "{}: stray {others:?}", h.test);
        let mut end = None;
        for c in mine {
            assert!(
                end.is_none(),
                "{}: a completion after the final one",
                h.test
            );
            let Op::RecvMulti { buf, .. } = c.op else {
                panic!("{}: a multishot completed as {}", h.test, c.op.name());
            };
            if c.more {
                assert_eq!(c.result.as_ref().ok(), Some(&buf.len()), "{}", h.test);
                assert!(!buf.is_empty(), "{}: an empty arrival", h.test);
            }
            bytes.extend_from_slice(&buf);
            if !c.more {
                end = Some(c.result);
            }
        }
        if let Some(end) = end {
            return Shots { bytes, end };
        }
        after_turn(h);
    }
}

/// Skips (`false`) where the driver does not offer multishot receives,
/// after checking that one completes there, once, with `EOPNOTSUPP`.
fn offered(h: &mut Harness, socket: SocketId) -> bool {
    if h.driver.supports_multishot_recv() {
        return true;
    }
    let c = h.run(Op::RecvMulti {
        socket,
        buf: Vec::new(),
    });
    assert!(!c.more, "{}", h.test);
    assert_eq!(
        c.result.unwrap_err().raw_os_error(),
        Some(libc::EOPNOTSUPP),
        "{}",
        h.test
    );
    h.skip("multishot receives not offered (EOPNOTSUPP checked)");
    false
}

/// Arrivals in order across several writes, then EOF as the final
/// completion; a multishot that ended early (the kernel stopped it after
/// some bytes, or its buffer ring ran dry) is armed again and loses nothing.
pub(crate) fn multishot_receives_every_arrival_in_order_then_eof(h: &mut Harness) {
    let listener = h.listen(&localhost());
    let (ours, peer) = h.accept_peer(listener);
    if offered(h, ours) {
        let data = pattern(200_000, 7);
        let mut chunks = data.chunks(20_000);
        let mut got = Vec::new();
        let mut rearmed = 0;
        let mut peer = Some(peer);
        loop {
            let key = arm(h, ours);
            let shots = collect(h, key, |h| match chunks.next() {
                Some(c) => h.peer_write(peer.as_ref().expect("open"), c),
                None => {
                    if let Some(p) = peer.take() {
                        h.peer_close(p);
                    }
                }
            });
            got.extend_from_slice(&shots.bytes);
            match shots.end {
                Ok(0) => break,
                Ok(_) => rearmed += 1,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => rearmed += 1,
                Err(e) => panic!("{}: multishot failed: {e}", h.test),
            }
        }
        assert!(
            got == data,
            "{}: {} of {} bytes",
            h.test,
            got.len(),
            data.len()
        );
        assert!(h.driver.stats().multishot_completions > 0, "{}", h.test);
        eprintln!("{}: armed again {rearmed} times", h.test);
    } else {
        h.peer_close(peer);
    }
    h.close_all(&[ours, listener]);
    h.assert_quiescent();
}

/// A cancel is a request (O2): arrivals that beat it come through as
/// usual, the final completion says `ECANCELED` (or carries the real end),
/// and what the multishot did not take is still in the socket.
pub(crate) fn multishot_cancel_keeps_the_arrivals_that_beat_it(h: &mut Harness) {
    let listener = h.listen(&localhost());
    let (ours, peer) = h.accept_peer(listener);
    if offered(h, ours) {
        let data = pattern(50_000, 3);
        let key = arm(h, ours);
        h.peer_write(&peer, &data);
        let mut cancelled = false;
        let shots = collect(h, key, |h| {
            if !cancelled {
                cancelled = true;
                h.driver.cancel(key);
            }
        });
        match &shots.end {
            Err(e) if is_cancelled(e) => {}
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
            Err(e) => panic!("{}: {e}", h.test),
        }
        let mut got = shots.bytes;
        let rest = data.len() - got.len();
        got.extend(h.recv_exact(ours, rest));
        assert!(got == data, "{}: bytes lost or reordered", h.test);
    }
    h.peer_close(peer);
    h.close_all(&[ours, listener]);
    h.assert_quiescent();
}
