//! What only `uring` promises, beyond the contract every backend keeps
//! (`driver::contract`): more ops than the SQ holds, the drop's reaping,
//! fallbacks for older kernels, lingering closes in the kernel, too many
//! ops for `user_data`; `faults` covers a kernel that refuses or fails.

pub(super) mod faults;
mod multishot;

use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;

use super::*;
use crate::driver::contract::{self, Harness};

/// A driver with `entries` SQ entries, or `None` (the reason printed) where
/// the kernel refuses io_uring.
fn driver(entries: u32) -> Option<UringDriver> {
    contract::uring_or_skip("driver::uring::tests", entries)
}

macro_rules! driver_or_skip {
    () => {
        match driver(64) {
            Some(d) => d,
            None => return,
        }
    };
}

/// Waits until the completion of `key` arrives; other completions are kept in `others`.
fn wait_for(d: &mut UringDriver, key: OpKey, others: &mut Vec<Completion>) -> Completion {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(i) = others.iter().position(|c| c.key == key) {
            return others.remove(i);
        }
        assert!(Instant::now() < deadline, "no completion for {key:?}");
        d.wait(Some(Duration::from_secs(1)), others).unwrap();
    }
}

fn run(d: &mut UringDriver, key: OpKey) -> Completion {
    let mut others = Vec::new();
    let c = wait_for(d, key, &mut others);
    assert!(others.is_empty(), "unexpected completions: {others:?}");
    c
}

pub(super) fn assert_quiescent(d: &UringDriver) {
    let s = d.stats();
    assert_eq!(d.in_flight(), 0);
    assert_eq!(
        s.submitted, s.completed,
        "O1: one completion per submit: {s:?}"
    );
    assert_eq!(s.cancel_requests, s.cancel_races + s.cancelled, "{s:?}");
}

pub(super) fn pair() -> (SocketId, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    (SocketId(a.into_raw_fd()), b)
}

pub(super) fn recv_op(socket: SocketId, cap: usize) -> Op {
    Op::Recv {
        socket,
        buf: Vec::with_capacity(cap),
    }
}

pub(super) fn recv_bytes(c: Completion) -> io::Result<Vec<u8>> {
    let n = c.result?;
    match c.op {
        Op::Recv { buf, .. } => {
            assert_eq!(buf.len(), n);
            Ok(buf)
        }
        other => panic!("not a recv: {other:?}"),
    }
}

#[test]
fn many_ops_beyond_ring_size() {
    // More ops than SQ entries: submit must flush the SQ and go on.
    let mut d = driver_or_skip!();
    let mut socks = Vec::new();
    let mut keys = Vec::new();
    for _ in 0..300 {
        let (a, b) = pair();
        keys.push(d.submit(recv_op(a, 16), a.0 as usize));
        socks.push((a, b));
    }
    for (_, b) in &mut socks {
        b.write_all(b"ping").unwrap();
    }
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < keys.len() {
        assert!(Instant::now() < deadline);
        d.wait(Some(Duration::from_secs(1)), &mut out).unwrap();
    }
    for c in out {
        assert_eq!(recv_bytes(c).unwrap(), b"ping");
    }
    for (a, mut b) in socks {
        let mut buf = [0u8; 1];
        d.close(a);
        assert_eq!(b.read(&mut buf).unwrap(), 0);
    }
    assert_quiescent(&d);
}

#[test]
fn shutdown_reaps_every_op_and_leaks_nothing() {
    let mut d = driver_or_skip!();
    let (a, mut b) = pair();
    let (c, _e) = pair();
    d.submit(recv_op(a, 1 << 16), 0);
    let mut out = Vec::new();
    d.wait(Some(Duration::ZERO), &mut out).unwrap();
    // Data arrives after the op is in the kernel but before the cancel:
    // shutdown must still wait for (and free) that completion.
    b.write_all(b"late").unwrap();
    d.submit(recv_op(c, 1 << 16), 1);
    assert_eq!(d.quiesce(Duration::from_secs(1)), 0);
    assert_eq!(d.in_flight(), 0);
    assert!(d.waker_buf.is_null());
    drop(d);
    socket::close(a);
    socket::close(c);
}

/// Kernels without EXT_ARG (< 5.11) wait with a Timeout op; kernels
/// without IORING_OP_SHUTDOWN (< 5.11) shut down synchronously.
#[test]
fn fallbacks_for_older_kernels() {
    let mut d = driver_or_skip!();
    d.ext_arg = false;
    d.shutdown_supported = false;
    let mut out = Vec::new();
    let start = Instant::now();
    d.wait(Some(Duration::ZERO), &mut out).unwrap();
    d.wait(Some(Duration::from_millis(60)), &mut out).unwrap();
    let e = start.elapsed();
    assert!(
        e >= Duration::from_millis(55) && e < Duration::from_secs(2),
        "{e:?}"
    );
    assert!(out.is_empty());
    let waker = d.remote_waker();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        waker.wake();
    });
    d.wait(None, &mut out).unwrap();
    t.join().unwrap();
    assert_quiescent(&d);
    let mut h = Harness::new(Box::new(d), "fallbacks_for_older_kernels");
    contract::ops::echo_over_ipv4(&mut h);
}

/// A socket with `SO_LINGER` > 0 is closed by an `IORING_OP_CLOSE` that
/// completes in the kernel (the contract's
/// `close_with_a_linger_never_blocks_the_loop` checks the rest).
#[test]
fn a_lingering_close_runs_in_the_kernel() {
    let mut d = driver_or_skip!();
    let (a, _b) = pair();
    d.set_option(a, SockOpt::Linger(Some(Duration::from_secs(1))))
        .unwrap();
    d.close(a);
    assert_eq!(d.closes_in_flight, 1);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.internal_in_flight() > 0 {
        assert!(Instant::now() < deadline, "the close never completed");
        d.wait(Some(Duration::from_millis(50)), &mut out).unwrap();
    }
    assert!(out.is_empty());
    assert_quiescent(&d);
}

/// Kernels without `IORING_OP_CLOSE` (< 5.6) clear the linger before
/// close(2), as `poll` does: the contract case holds all the same.
#[test]
fn a_lingering_close_without_ioring_op_close_never_blocks() {
    let mut d = driver_or_skip!();
    d.close_supported = false;
    let mut h = Harness::new(Box::new(d), "a_lingering_close_without_ioring_op_close");
    contract::lifecycle::close_with_a_linger_never_blocks_the_loop(&mut h);
}

/// Waits until every key in `keys` completed; returns their completions.
pub(super) fn run_all(d: &mut UringDriver, keys: &[OpKey], limit: Duration) -> Vec<Completion> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    while !keys
        .iter()
        .all(|k| out.iter().any(|c: &Completion| c.key == *k))
    {
        let missing: Vec<_> = keys
            .iter()
            .filter(|k| !out.iter().any(|c: &Completion| c.key == **k))
            .collect();
        assert!(
            Instant::now() < deadline,
            "O1: no completion after {limit:?} for {missing:?} (completions lost)"
        );
        let _ = d.wait(Some(Duration::from_millis(50)), &mut out);
    }
    assert_eq!(
        out.len(),
        keys.len(),
        "stray or duplicate completions: {out:?}"
    );
    out
}

/// Cancels every key and waits for the completions, then checks O1.
pub(super) fn cancel_all(d: &mut UringDriver, keys: &[OpKey]) {
    for &k in keys {
        d.cancel(k);
    }
    run_all(d, keys, Duration::from_secs(5));
    assert_quiescent(d);
}

/// 6e. An op index beyond what `user_data` can carry completes with an
/// error (O1) instead of panicking.
#[test]
fn too_many_ops_in_flight_complete_with_an_error() {
    let mut d = driver_or_skip!();
    d.max_index = 2;
    let (a, _pa) = pair();
    let k1 = d.submit(recv_op(a, 16), 1);
    let k2 = d.submit(recv_op(a, 16), 2);
    let k3 = d.submit(recv_op(a, 16), 3);
    let c = run(&mut d, k3);
    assert_eq!(c.result.unwrap_err().raw_os_error(), Some(libc::ENOBUFS));
    cancel_all(&mut d, &[k1, k2]);
    d.close(a);
}

/// 6d. Kernels without EXT_ARG wait with a Timeout op: it must end with
/// the wait, not linger as one kernel timer per wait.
#[test]
fn fallback_timeouts_do_not_pile_up() {
    let mut d = driver_or_skip!();
    d.ext_arg = false;
    let waker = d.remote_waker();
    let mut out = Vec::new();
    for _ in 0..100 {
        waker.wake();
        d.wait(Some(Duration::from_secs(30)), &mut out).unwrap();
    }
    d.wait(Some(Duration::ZERO), &mut out).unwrap();
    assert!(out.is_empty());
    assert!(
        d.fallback_timeouts <= 1,
        "{} kernel timers still pending after 100 woken waits",
        d.fallback_timeouts
    );
}
