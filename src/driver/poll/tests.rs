//! What only `poll` promises; the contract is in `driver::contract`.

use std::time::Duration;

use bytes::Bytes;

use super::PollDriver;
use crate::driver::contract::{recv_bytes, Harness};
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
