//! Waits, remote wakes, closing sockets and dropping the driver (O3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::ops::localhost;
use super::{new_driver, pattern, recv_bytes, Harness};
use crate::driver::{is_cancelled, DriverKind, Op, SockOpt};

/// `wait(ZERO)` never blocks; a timeout passes on the driver's clock
/// (virtual on `sim`) without a completion; a completion ends a long wait.
pub(crate) fn wait_honours_its_timeout(h: &mut Harness) {
    let listener = h.listen(&localhost());
    let (ours, peer) = h.accept_peer(listener);
    let recv = h.submit_recv(ours, 8);
    let start = Instant::now();
    h.turn(Duration::ZERO);
    assert!(start.elapsed() < Duration::from_secs(1));
    // A signal may end a wait early (EINTR: the kernel drivers return, the
    // simulator models it); a caller that needs the time waits again.
    let (clock, start) = (h.driver.now(), Instant::now());
    let limit = Duration::from_millis(150);
    let mut waits = 0;
    while h.driver.now() - clock < limit {
        waits += 1;
        assert!(waits <= 20, "twenty waits and {limit:?} never passed");
        let left = limit - (h.driver.now() - clock);
        h.turn(left);
    }
    assert!(h.take_pending().is_empty());
    assert!(start.elapsed() < Duration::from_secs(5));
    h.peer_write(&peer, b"x");
    let start = Instant::now();
    h.turn(Duration::from_secs(30));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "slept past a completion"
    );
    assert_eq!(recv_bytes(h.complete(recv)).unwrap(), b"x");
    h.peer_close(peer);
    h.close_all(&[ours, listener]);
    h.assert_quiescent();
}

/// A remote wake from another thread ends a wait without a limit, whether
/// it comes before the wait or during it, and again after that.
pub(crate) fn remote_wake_interrupts_a_wait(h: &mut Harness) {
    let mut out = Vec::new();
    let start = Instant::now();
    h.driver.remote_waker().wake();
    h.driver.wait(None, &mut out).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "pending wake ignored"
    );
    for delay in [Duration::from_millis(200), Duration::from_millis(50)] {
        let waker = h.driver.remote_waker();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(delay);
            waker.wake();
        });
        let start = Instant::now();
        h.driver.wait(None, &mut out).unwrap();
        let took = start.elapsed();
        thread.join().unwrap();
        assert!(took >= delay * 3 / 4, "returned before the wake: {took:?}");
        assert!(took < Duration::from_secs(5), "wake ignored: {took:?}");
    }
    assert!(out.is_empty(), "{out:?}");
    h.assert_quiescent();
}

/// Closing a socket whose `SO_LINGER` is above zero, with data the peer has
/// not read yet, never blocks the loop thread (Linux blocks in close(2)
/// for the linger time, non-blocking socket or not); the peer still gets
/// every byte, then EOF.
pub(crate) fn close_with_a_linger_never_blocks_the_loop(h: &mut Harness) {
    let listener = h.listen(&localhost());
    let (ours, peer) = h.accept_peer(listener);
    h.peer_set_option(&peer, SockOpt::RecvBuffer(4096));
    h.driver
        .set_option(ours, SockOpt::SendBuffer(4096))
        .unwrap();
    // Fill our send buffer and the peer's receive buffer: the peer does not
    // read yet. A send that waits that long is blocked for good: cancel it.
    let data = pattern(8 << 20, 5);
    let mut written = 0;
    loop {
        assert!(written < data.len(), "the buffers never filled");
        let end = (written + (64 << 10)).min(data.len());
        let key = h.driver.submit(
            Op::Send {
                socket: ours,
                bufs: vec![Bytes::copy_from_slice(&data[written..end])],
                offset: 0,
            },
            0,
        );
        for _ in 0..5 {
            h.turn(Duration::from_millis(40));
        }
        let blocked = !h.has_completion(key);
        if blocked {
            h.driver.cancel(key);
        }
        match h.complete(key).result {
            Ok(n) => written += n,
            Err(e) => assert!(is_cancelled(&e), "{e}"),
        }
        if blocked {
            break;
        }
    }
    h.driver
        .set_option(ours, SockOpt::Linger(Some(Duration::from_secs(2))))
        .unwrap();
    let start = Instant::now();
    h.driver.close(ours);
    h.turn(Duration::ZERO);
    h.turn(Duration::ZERO);
    let blocked = start.elapsed();
    assert!(
        blocked < Duration::from_millis(500),
        "close blocked the loop thread for {blocked:?} (SO_LINGER 2 s, {written} bytes unsent)"
    );
    let got = h.peer_read_to_eof(&peer);
    assert_eq!(got.len(), written, "bytes lost");
    assert!(got == data[..written], "bytes reordered");
    h.peer_close(peer);
    h.close_all(&[listener]);
    h.assert_quiescent();
}

/// A buffer whose release can be observed: it holds a count of `watch`.
struct Watched {
    _watch: Arc<()>,
    bytes: Vec<u8>,
}

impl AsRef<[u8]> for Watched {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Dropping a driver with ops in flight (waiting in the kernel, or queued
/// and not submitted yet) returns promptly and releases every buffer the
/// driver owned. (`uring` cancels and reaps them first: the kernel never
/// writes into freed memory.)
pub(crate) fn drop_with_ops_in_flight_releases_their_buffers(h: &mut Harness) {
    let listener = h.listen(&localhost());
    let (ours, peer) = h.accept_peer(listener);
    let watch = Arc::new(());
    h.submit_recv(ours, 1 << 20);
    h.driver.submit(
        Op::Accept {
            listener,
            accepted: None,
        },
        2,
    );
    h.turn(Duration::ZERO);
    h.driver.submit(
        Op::Send {
            socket: ours,
            bufs: vec![Bytes::from_owner(Watched {
                _watch: watch.clone(),
                bytes: vec![5; 1024],
            })],
            offset: 0,
        },
        3,
    );
    assert_eq!(h.driver.in_flight(), 3);
    assert_eq!(Arc::strong_count(&watch), 2);
    let fresh = new_driver(h.kind());
    let driver = std::mem::replace(&mut h.driver, fresh);
    let start = Instant::now();
    drop(driver);
    let took = start.elapsed();
    assert!(took < Duration::from_millis(900), "drop took {took:?}");
    assert_eq!(
        Arc::strong_count(&watch),
        1,
        "a send's buffer outlived the driver"
    );
    // The sockets are the caller's: on the kernel backends the new driver
    // closes them (`sim`'s went with its network).
    if h.kind() != DriverKind::Sim {
        h.close_all(&[ours, listener]);
    }
    drop(peer);
    h.assert_quiescent();
}

/// Open descriptors of this process.
fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Set in the child process that runs the fd count alone.
const FD_CHILD: &str = "PROACTOR_DRIVER_FD_CHILD";

/// A thousand sockets opened, connected, parked on, cancelled and closed
/// leave no descriptor behind (counted in a child process of its own, where
/// tests on other threads do not open any).
pub(crate) fn no_descriptor_left_after_a_thousand_sockets(h: &mut Harness) {
    if h.kind() == DriverKind::Sim {
        h.skip("no descriptors; the sim tests count open_sockets() instead");
        return;
    }
    if std::env::var_os(FD_CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([h.test, "--exact", "--test-threads=1", "--nocapture"])
            .env(FD_CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child failed:\n{stdout}\n{stderr}"
        );
        return;
    }
    let before = fd_count();
    let listener = h.listen(&localhost());
    let bound = h.driver.local_addr(listener).unwrap();
    let mut sockets = 0;
    for _round in 0..10 {
        let mut open = Vec::new();
        for i in 0..40 {
            let (client, server) = h.connect_to(listener);
            if i % 2 == 0 {
                let key = h.submit_recv(server, 8);
                h.turn(Duration::ZERO);
                h.driver.cancel(key);
                assert!(is_cancelled(&h.complete(key).result.unwrap_err()));
            }
            open.extend([client, server, h.driver.open_stream(&bound).unwrap()]);
        }
        sockets += open.len();
        h.close_all(&open);
    }
    assert!(sockets >= 1000);
    h.driver.close(listener);
    h.assert_quiescent();
    assert_eq!(fd_count(), before, "descriptors leaked");
}

/// The window counters: a pause of reading is counted with where the
/// transport's receive stood (none, in flight), and counting changes
/// nothing about the receive (R2): it still completes with its bytes.
pub(crate) fn read_pauses_count_where_the_receive_stood(h: &mut Harness) {
    let listener = h.listen(&localhost());
    let (ours, peer) = h.accept_peer(listener);
    h.driver.count_read_pause(None);
    let recv = h.submit_recv(ours, 8);
    h.turn(Duration::ZERO);
    assert!(h.take_pending().is_empty(), "completed without data");
    h.driver.count_read_pause(Some(recv));
    let s = h.driver.stats();
    assert_eq!(
        (s.read_pauses, s.pauses_recv_in_flight, s.pauses_recv_ready),
        (2, 1, 0),
        "{s:?}"
    );
    h.peer_write(&peer, b"kept");
    let mut got = recv_bytes(h.complete(recv)).unwrap();
    let rest = 4 - got.len();
    got.extend(h.recv_exact(ours, rest));
    assert_eq!(got, b"kept");
    // A stale key: its receive is over.
    h.driver.count_read_pause(Some(recv));
    let s = h.driver.stats();
    assert_eq!((s.read_pauses, s.pauses_recv_in_flight), (3, 1), "{s:?}");
    h.peer_close(peer);
    h.close_all(&[ours, listener]);
    h.assert_quiescent();
}
