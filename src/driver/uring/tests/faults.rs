//! A kernel that refuses or fails: `io_uring_enter` answering EBUSY or
//! EAGAIN with the SQ full, failing outright, or posting more completions in
//! one turn than the CQ holds, on every ring setup. Every op still
//! completes exactly once, and nothing blocks or panics.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::{assert_quiescent, cancel_all, driver, pair, recv_bytes, recv_op, run_all};
use crate::driver::uring::ring::Fault;
use crate::driver::uring::UringDriver;
use crate::driver::{Driver, OpKey, SocketId};

thread_local! {
    /// `build_ring` skips this many of its setups (to test each one).
    pub(in crate::driver::uring) static SKIP_SETUPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A driver on the `skip`-th setup `build_ring` would try (and the ones
/// after it, if the kernel refuses that one).
fn driver_on_setup(entries: u32, skip: usize) -> Option<UringDriver> {
    SKIP_SETUPS.set(skip);
    let d = driver(entries);
    SKIP_SETUPS.set(0);
    d
}

/// Receives on fresh socket pairs, submitted (not yet in the kernel), that
/// no data reaches until the test writes to `peers`.
#[derive(Default)]
struct Idle {
    keys: Vec<OpKey>,
    sockets: Vec<SocketId>,
    peers: Vec<UnixStream>,
}

impl Idle {
    /// Adds `n` receives, with users from `first_user` on.
    fn add(&mut self, d: &mut UringDriver, n: usize, first_user: usize) {
        for user in first_user..first_user + n {
            let (socket, peer) = pair();
            self.keys.push(d.submit(recv_op(socket, 16), user));
            self.sockets.push(socket);
            self.peers.push(peer);
        }
    }

    fn close(self, d: &mut UringDriver) {
        for socket in self.sockets {
            d.close(socket);
        }
    }
}

/// A ring of 8 SQ entries with its waker read in the kernel, and idle
/// receives queued to fill its SQ (not submitted yet); `None` where the
/// kernel refuses io_uring.
fn with_full_sq() -> Option<(UringDriver, Idle)> {
    let mut d = driver(8)?;
    let sq = d.ring.params().sq_entries() as usize;
    d.wait(Some(Duration::ZERO), &mut Vec::new()).unwrap();
    let mut idle = Idle::default();
    idle.add(&mut d, sq, 0);
    Some((d, idle))
}

/// Plays `script` to the next `io_uring_enter`s, then lets them through.
fn script(d: &mut UringDriver, script: Vec<Box<dyn FnMut() -> Fault>>) {
    let mut steps = script.into_iter();
    d.fault = Some(Box::new(move || match steps.next() {
        Some(mut step) => step(),
        None => Fault::Pass,
    }));
}

/// 6a. The SQ is full and `io_uring_enter` answers EBUSY; making room reaps
/// the waker's CQE, re-arms the waker, meets EBUSY again while more
/// completions arrive. Every op still completes exactly once.
#[test]
fn busy_enter_while_rearming_the_waker_loses_no_completion() {
    let Some(mut d) = driver(8) else { return };
    let sq = d.ring.params().sq_entries() as usize;
    let mut out = Vec::new();
    d.wait(Some(Duration::ZERO), &mut out).unwrap(); // the waker read is in the kernel
    let (a, pa) = pair();
    let (b, pb) = pair();
    let ka = d.submit(recv_op(a, 16), 1);
    let kb = d.submit(recv_op(b, 16), 2);
    d.wait(Some(Duration::ZERO), &mut out).unwrap(); // both are in the kernel
    assert!(out.is_empty());
    // Idle receives fill the SQ (not submitted yet).
    let mut idle = Idle {
        keys: vec![ka, kb],
        sockets: vec![a, b],
        ..Idle::default()
    };
    idle.add(&mut d, sq, 100);
    d.remote_waker().wake();
    let mut writers = Some((pa, pb));
    let mut kept = Vec::new();
    script(
        &mut d,
        vec![
            Box::new(|| Fault::FlushThenFail(libc::EBUSY)),
            Box::new(move || {
                // Data for a and b arrives while the driver is making room.
                let (mut pa, mut pb) = writers.take().unwrap();
                pa.write_all(b"a").unwrap();
                pb.write_all(b"b").unwrap();
                kept.push((pa, pb));
                Fault::FlushThenFail(libc::EBUSY)
            }),
            Box::new(|| Fault::Pass),
            // (Keeps the old code's submit_and_wait(1) from blocking for ever.)
            Box::new(|| Fault::Fail(libc::EINTR)),
        ],
    );
    idle.add(&mut d, 1, 50);
    let done = run_all(&mut d, &[ka, kb], Duration::from_secs(2));
    for c in done {
        assert_eq!(recv_bytes(c).unwrap().len(), 1);
    }
    idle.keys.retain(|k| *k != ka && *k != kb);
    cancel_all(&mut d, &idle.keys);
    idle.close(&mut d);
}

/// 6b. `submit` while the SQ is full and the kernel answers EBUSY (or
/// EAGAIN), with nothing about to complete: it never blocks the loop
/// thread; neither does a `wait` without a timeout while the kernel keeps
/// refusing; once it accepts again, everything is submitted.
#[test]
fn busy_enter_never_blocks_submit() {
    for errno in [libc::EBUSY, libc::EAGAIN] {
        let Some((mut d, mut idle)) = with_full_sq() else {
            return;
        };
        let mut out = Vec::new();
        // Failsafe: if submit blocks waiting for a completion, one
        // arrives after 3 s and the elapsed time fails the test instead
        // of a hang.
        let mut failsafe = idle.peers[0].try_clone().unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            if done_rx.recv_timeout(Duration::from_secs(3)).is_err() {
                let _ = failsafe.write_all(b"!");
            }
        });
        script(&mut d, vec![Box::new(move || Fault::Fail(errno))]);
        let (x, mut px) = pair();
        let start = Instant::now();
        let kx = d.submit(recv_op(x, 16), 99);
        let elapsed = start.elapsed();
        let _ = done_tx.send(());
        t.join().unwrap();
        idle.sockets.push(x);
        assert!(
            elapsed < Duration::from_secs(1),
            "submit blocked the loop for {elapsed:?} (the kernel said errno {errno})"
        );
        // The kernel refuses five more times: waits without a timeout
        // still return.
        script(
            &mut d,
            (0..5)
                .map(|_| Box::new(move || Fault::Fail(errno)) as Box<dyn FnMut() -> Fault>)
                .collect(),
        );
        let start = Instant::now();
        for _ in 0..3 {
            d.wait(None, &mut out).unwrap();
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed < Duration::from_secs(1),
            "wait(None) blocked {elapsed:?} while the kernel refused SQEs"
        );
        // Then it accepts: the op queued meanwhile reaches the kernel.
        px.write_all(b"x").unwrap();
        let c = run_all(&mut d, &[kx], Duration::from_secs(5))
            .pop()
            .unwrap();
        assert_eq!(recv_bytes(c).unwrap(), b"x");
        cancel_all(&mut d, &idle.keys);
        idle.close(&mut d);
    }
}

/// 6c. A failing `io_uring_enter` (here EBADR: the kernel dropped a
/// completion; then ENXIO) is an error returned from `wait`, never a
/// panic, and the driver goes on.
#[test]
fn enter_failures_are_errors_not_panics() {
    for errno in [libc::EBADR, libc::ENXIO] {
        let Some((mut d, mut idle)) = with_full_sq() else {
            return;
        };
        let mut out = Vec::new();
        script(&mut d, vec![Box::new(move || Fault::Fail(errno))]);
        idle.add(&mut d, 1, 1000);
        script(&mut d, vec![Box::new(move || Fault::Fail(errno))]);
        let err = d
            .wait(Some(Duration::ZERO), &mut out)
            .expect_err("the failure is reported by wait");
        assert_eq!(err.raw_os_error(), Some(errno), "{err}");
        // The driver goes on: data arrives, cancels complete.
        idle.peers[0].write_all(b"z").unwrap();
        let c = run_all(&mut d, &idle.keys[..1], Duration::from_secs(5))
            .pop()
            .unwrap();
        assert_eq!(recv_bytes(c).unwrap(), b"z");
        cancel_all(&mut d, &idle.keys[1..]);
        idle.close(&mut d);
    }
}

/// Raises the soft descriptor limit to at least `n` (up to the hard limit).
fn want_fds(n: u64) -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_cur < n {
            lim.rlim_cur = n.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur >= n
}

/// 6c. More completions in one turn than the CQ holds: 5,000 connections
/// made readable at once, on a ring of 256 SQ entries (its CQ holds
/// 2,048; the loop's default ring of 1,024 holds 8,192), on every ring
/// setup. One `wait` returns every one of them (an overflowed CQ is
/// flushed, deferred task work run, in the same turn); none is lost (O1).
#[test]
fn more_completions_in_one_turn_than_the_cq_holds() {
    const N: usize = 5000;
    if !want_fds(2 * N as u64 + 256) {
        eprintln!("SKIPPED: needs {} descriptors", 2 * N + 256);
        return;
    }
    // Every ring setup the kernel accepts: with DEFER_TASKRUN the kernel
    // posts completions in small batches as it is entered; without it,
    // all 5,000 are posted at once, overflowing the CQ.
    let mut setups = Vec::new();
    for skip in 0..4 {
        let Some(d) = driver_on_setup(256, skip) else {
            return;
        };
        if !setups.contains(&d.setup) {
            setups.push(d.setup);
            readable_at_once(d, N);
        }
    }
}

fn readable_at_once(mut d: UringDriver, n: usize) {
    let setup = d.setup;
    let cq = d.ring.params().cq_entries() as usize;
    assert!(n > cq, "the test must overflow the CQ ({cq} entries)");
    let mut idle = Idle::default();
    idle.add(&mut d, n, 0);
    let mut out = Vec::new();
    for _ in 0..4 {
        d.wait(Some(Duration::ZERO), &mut out).unwrap();
    }
    assert!(out.is_empty());
    for p in &mut idle.peers {
        p.write_all(b"r").unwrap();
    }
    d.wait(Some(Duration::from_secs(5)), &mut out).unwrap();
    let first = out.len();
    println!("{setup}: CQ {cq} entries, {n} completions ready, first wait returned {first}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < n && Instant::now() < deadline {
        d.wait(Some(Duration::from_millis(100)), &mut out).unwrap();
    }
    let total = out.len();
    println!("after more waits: {total} of {n}");
    assert_eq!(total, n, "O1: completions lost");
    assert_eq!(
        first, n,
        "{setup}: one turn returned {first} of {n} (CQ holds {cq})"
    );
    for c in out {
        assert_eq!(recv_bytes(c).unwrap(), b"r");
    }
    assert_quiescent(&d);
    idle.close(&mut d);
}
