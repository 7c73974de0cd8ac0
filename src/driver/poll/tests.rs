//! What only `poll` promises; the contract is in `driver::contract`.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;

use super::PollDriver;
use crate::driver::contract::{recv_bytes, Harness, Peer};
use crate::driver::is_cancelled;

fn harness(test: &'static str) -> Harness {
    Harness::new(Box::new(PollDriver::new().unwrap()), test)
}

/// An op cancelled before its first attempt never reaches the kernel:
/// `ECANCELED` even though data is there, and the data stays.
#[test]
fn cancel_before_the_attempt_is_ecanceled_and_leaves_the_data() {
    let mut h = harness("cancel_before_the_attempt");
    let listener = h.listen(&"127.0.0.1:0".parse().unwrap());
    let (ours, peer) = h.accept_peer(listener);
    h.peer_write(&peer, b"hello");
    let key = h.submit_recv(ours, 64);
    h.driver.cancel(key);
    assert!(is_cancelled(&recv_bytes(h.complete(key)).unwrap_err()));
    assert_eq!(h.recv_exact(ours, 5), b"hello");
    let s = h.driver.stats();
    assert_eq!((s.cancel_requests, s.cancelled), (1, 1), "{s:?}");
    h.peer_close(peer);
    h.close_all(&[ours, listener]);
    h.assert_quiescent();
}

/// Ops parked on one socket run in submission order (one queue per
/// direction), also when one in the middle is cancelled.
#[test]
fn parked_ops_complete_in_submission_order() {
    let mut h = harness("parked_ops_complete_in_submission_order");
    let listener = h.listen(&"127.0.0.1:0".parse().unwrap());
    let (client, server) = h.connect_to(listener);
    let keys: Vec<_> = (0..5).map(|_| h.submit_recv(server, 4)).collect();
    h.turn(Duration::ZERO);
    h.driver.cancel(keys[2]);
    h.send_bufs(
        client,
        vec![Bytes::from_static(b"abcd"), Bytes::from_static(b"efgh")],
        0,
    );
    h.driver.close(client);
    let mut done = h.complete_all(&keys);
    let order: Vec<_> = done
        .iter()
        .map(|c| c.key)
        .filter(|k| *k != keys[2])
        .collect();
    let uncancelled: Vec<_> = keys.iter().copied().filter(|k| *k != keys[2]).collect();
    assert_eq!(order, uncancelled, "completions out of submission order");
    done.sort_by_key(|c| keys.iter().position(|k| *k == c.key));
    let results: Vec<_> = done
        .into_iter()
        .map(|c| recv_bytes(c).map_err(|e| is_cancelled(&e)))
        .collect();
    assert_eq!(
        results,
        [
            Ok(b"abcd".to_vec()),
            Ok(b"efgh".to_vec()),
            Err(true),
            Ok(Vec::new()),
            Ok(Vec::new()),
        ]
    );
    h.close_all(&[server, listener]);
    h.assert_quiescent();
}

/// The peer writes `data` and then does `after` to its socket, all before
/// the driver's next `epoll_wait` (the bytes and what follows them arrive
/// as one edge); our receive is parked on the registered socket first.
/// Returns what two receives of 64 bytes got: the first is short (it stops
/// where the kernel does), and the second must not wait for an edge that
/// already came (`Queues::read_drained`).
fn short_receive_then_more(
    test: &'static str,
    data: &[u8],
    after: impl FnOnce(&socket2::Socket),
) -> (Vec<u8>, Vec<u8>) {
    let mut h = harness(test);
    let listener = h.listen(&"127.0.0.1:0".parse().unwrap());
    let (ours, peer) = h.accept_peer(listener);
    let first = h.submit_recv(ours, 64);
    h.turn(Duration::ZERO); // attempted: EAGAIN, parked, registered
    assert!(!h.has_completion(first), "{test}: nothing was sent yet");
    let Peer::Kernel(s) = &peer else {
        unreachable!("poll peers are kernel sockets")
    };
    (&*s).write_all(data).expect("peer write");
    after(s);
    // Loopback delivers within the write; the pause only makes sure.
    std::thread::sleep(Duration::from_millis(20));
    let a = recv_bytes(h.complete(first)).expect("first receive");
    let second = h.submit_recv(ours, 64);
    let b = recv_bytes(h.complete(second)).expect("second receive");
    h.peer_close(peer);
    h.close_all(&[ours, listener]);
    h.assert_quiescent();
    (a, b)
}

/// A FIN queued behind the bytes of a short receive: the next receive
/// reads the EOF (the edge reported EPOLLRDHUP with the bytes).
#[test]
fn eof_behind_a_short_receive_is_read() {
    let (a, b) = short_receive_then_more("eof_behind_a_short_receive", b"hello", |s| {
        s.shutdown(std::net::Shutdown::Write)
            .expect("peer shutdown")
    });
    assert_eq!((a, b), (b"hello".to_vec(), Vec::new()));
}

/// TCP urgent data stops a receive at its mark, short, with bytes behind
/// it: the next receive gets them (the edge reported EPOLLPRI).
#[test]
fn bytes_behind_an_urgent_mark_are_read() {
    let (a, b) = short_receive_then_more("bytes_behind_an_urgent_mark", b"ab", |s| {
        s.send_out_of_band(b"c").expect("peer urgent byte");
        (&*s).write_all(b"de").expect("peer write");
    });
    // The urgent byte is out of band (no SO_OOBINLINE): not in the stream.
    assert_eq!((a, b), (b"ab".to_vec(), b"de".to_vec()));
}
