//! One test per kernel behaviour the simulator models on purpose, each
//! forced on (probability 1) where it is random: the reap order a
//! completion ring allows, `EINTR`, empty zero-timeout polls, IOCP's
//! "aborted after N bytes", a send cut by a reset, SYN retransmission and
//! `ETIMEDOUT`, Unix sockets' own rules, `ENOBUFS` from accept, and the
//! stall that fails with the trace.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::tests::{localhost0, pair, run_until_n, run_until_one, send_all};
use super::*;
use crate::driver::{is_cancelled, FAR_FUTURE};

/// Faults on, every fault probability 0: a test turns on the one it needs.
fn no_faults(seed: u64) -> SimConfig {
    SimConfig {
        reset_prob: 0.0,
        half_close_prob: 0.0,
        send_reset_prob: 0.0,
        accept_error_prob: 0.0,
        connect_refuse_prob: 0.0,
        connect_timeout_prob: 0.0,
        ..SimConfig::with_faults(seed)
    }
}

fn send(d: &mut SimDriver, socket: SocketId, data: &[u8], user: usize) -> OpKey {
    d.submit(
        Op::Send {
            socket,
            bufs: vec![Bytes::copy_from_slice(data)],
            offset: 0,
        },
        user,
    )
}

fn recv(d: &mut SimDriver, socket: SocketId, room: usize, user: usize) -> OpKey {
    d.submit(
        Op::Recv {
            socket,
            buf: Vec::with_capacity(room),
        },
        user,
    )
}

/// Receives until `len` bytes came, or an error or EOF ends the stream.
fn recv_upto(d: &mut SimDriver, socket: SocketId, len: usize) -> (Vec<u8>, Option<io::Error>) {
    let mut got = Vec::new();
    while got.len() < len {
        recv(d, socket, len - got.len(), 0);
        let c = run_until_one(d);
        match (c.result, c.op) {
            (Ok(0), _) => return (got, None),
            (Ok(_), Op::Recv { buf, .. }) => got.extend(buf),
            (Err(e), _) => return (got, Some(e)),
            (Ok(_), other) => panic!("not a recv: {other:?}"),
        }
    }
    (got, None)
}

/// A connected Unix pair: (listener, client, server).
fn unix_pair(d: &mut SimDriver, path: &str) -> (SocketId, SocketId, SocketId) {
    let addr = Address::Unix(PathBuf::from(path));
    let listener = d.listen(&addr, 8).unwrap();
    let client = d.open_stream(&addr).unwrap();
    d.submit(
        Op::Connect {
            socket: client,
            addr,
        },
        1,
    );
    run_until_one(d).result.unwrap();
    d.submit(
        Op::Accept {
            listener,
            accepted: None,
        },
        2,
    );
    let Op::Accept {
        accepted: Some((server, _)),
        ..
    } = run_until_one(d).op
    else {
        panic!("no accept")
    };
    (listener, client, server)
}

/// Completions of one socket and kind are reaped in the order they were
/// produced (one-byte sends: the peer's bytes tell that order), while
/// sockets interleave: over seeds, waits hold back and reorder.
#[test]
fn reaps_interleave_sockets_and_keep_each_sockets_order() {
    let mut injected = SimStats::default();
    for seed in 0..40 {
        let config = SimConfig {
            holdback_prob: 0.5,
            reap_shuffle_prob: 1.0,
            ..SimConfig::with_seed(seed)
        };
        let mut d = SimDriver::new(config);
        let conns: Vec<_> = (0..3).map(|_| pair(&mut d)).collect();
        let mut users = BTreeMap::new();
        for (i, &(_, client, server)) in conns.iter().enumerate() {
            for b in 0..8u8 {
                let user = 100 * (i + 1) + usize::from(b);
                send(&mut d, client, &[b], user);
                users.insert(user, i);
            }
            // Receives on the other side, so kinds and sockets mix.
            recv(&mut d, server, 4, 1000 + i);
        }
        let done = run_until_n(&mut d, 3 * 8 + 3);
        for (i, &(_, _, server)) in conns.iter().enumerate() {
            // The sends of connection i, in reap order, as bytes.
            let reaped: Vec<u8> = done
                .iter()
                .filter(|c| users.get(&c.user) == Some(&i))
                .map(|c| (c.user % 100) as u8)
                .collect();
            let mut first = done
                .iter()
                .find(|c| c.user == 1000 + i)
                .map(|c| match &c.op {
                    Op::Recv { buf, .. } => buf.clone(),
                    _ => unreachable!(),
                })
                .unwrap();
            let (rest, err) = recv_upto(&mut d, server, 8 - first.len());
            assert!(err.is_none());
            first.extend(rest);
            assert_eq!(
                reaped, first,
                "seed {seed}: sends of one socket reaped out of their order"
            );
        }
        let s = d.injected();
        injected.reaps_reordered += s.reaps_reordered;
        injected.reaps_held_back += s.reaps_held_back;
    }
    assert!(injected.reaps_reordered > 20, "{injected:?}");
    assert!(injected.reaps_held_back > 5, "{injected:?}");
}

/// A signal ends a wait early with nothing, its clock short of the
/// timeout; with no timeout at all it ends the wait too.
#[test]
fn eintr_ends_a_wait_early_with_nothing() {
    let mut d = SimDriver::new(SimConfig {
        eintr_prob: 1.0,
        ..SimConfig::with_seed(4)
    });
    let (_l, _client, server) = pair(&mut d);
    recv(&mut d, server, 16, 1);
    let mut out = Vec::new();
    let t0 = d.now();
    d.wait(Some(Duration::from_secs(1)), &mut out).unwrap();
    assert!(out.is_empty());
    assert!(d.now() - t0 < Duration::from_secs(1), "not early");
    d.wait(None, &mut out).unwrap();
    assert!(out.is_empty());
    assert_eq!(d.injected().interrupted_waits, 2);
    assert!(d.trace().unwrap().contains("EINTR"));
}

/// A zero-timeout wait may return nothing although a receive has its
/// bytes, but only a few times in a row.
#[test]
fn a_zero_timeout_wait_may_return_nothing() {
    let mut d = SimDriver::new(SimConfig {
        empty_poll_prob: 1.0,
        ..SimConfig::with_seed(5)
    });
    let (_l, client, server) = pair(&mut d);
    send_all(&mut d, client, b"ready").unwrap();
    recv(&mut d, server, 16, 9);
    let mut out = Vec::new();
    let mut empty = 0;
    while out.is_empty() {
        d.wait(Some(Duration::ZERO), &mut out).unwrap();
        empty += u32::from(out.is_empty());
        assert!(empty <= config::MAX_EMPTY_POLLS, "never posted");
    }
    assert_eq!(empty, config::MAX_EMPTY_POLLS);
    assert_eq!(d.injected().empty_polls, u64::from(config::MAX_EMPTY_POLLS));
    assert_eq!(out[0].user, 9);
}

/// A cancel that lands mid-send completes "aborted after N bytes": the
/// partial success `Ok(N)`, N short of the offer, and exactly those N bytes
/// reach the peer; nothing more, nothing lost.
#[test]
fn a_cancel_mid_send_completes_aborted_after_n_bytes() {
    let mut partial = 0;
    for seed in 0..20 {
        let mut d = SimDriver::new(SimConfig {
            cancel_race_prob: 0.0,
            partial_cancel_prob: 1.0,
            ..SimConfig::with_seed(seed)
        });
        let (_l, client, server) = pair(&mut d);
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let key = send(&mut d, client, &data, 7);
        d.cancel(key);
        let c = run_until_one(&mut d);
        let n = c.result.unwrap();
        assert!(n >= 1 && n < data.len(), "seed {seed}: n={n}");
        let (got, err) = recv_upto(&mut d, server, n);
        assert!(err.is_none());
        assert_eq!(got, data[..n], "seed {seed}");
        // Nothing beyond the N bytes arrives.
        let probe = recv(&mut d, server, 16, 8);
        d.cancel(probe);
        let c = run_until_one(&mut d);
        assert!(
            is_cancelled(c.result.as_ref().unwrap_err()),
            "{:?}",
            c.result
        );
        let s = d.stats();
        assert_eq!((s.cancel_partial, s.cancel_races), (1, 1), "{s:?}");
        partial += d.injected().partial_cancels;
    }
    assert_eq!(partial, 20);
}

/// A send partly accepted, then the connection reset: the send reports
/// what it accepted, the peer reads a prefix of that and then
/// `ECONNRESET`, the sender's next op fails with `ECONNRESET`.
#[test]
fn a_send_cut_by_a_reset_loses_the_unsent_and_both_sides_see_the_reset() {
    for seed in 0..20 {
        let mut d = SimDriver::new(SimConfig {
            send_reset_prob: 1.0,
            ..no_faults(seed)
        });
        let (_l, client, server) = pair(&mut d);
        let data = vec![0xabu8; 5000];
        send(&mut d, client, &data, 1);
        let accepted = run_until_one(&mut d).result.unwrap();
        assert!(accepted >= 1 && accepted <= data.len());
        let (got, err) = recv_upto(&mut d, server, data.len());
        assert!(
            got.len() <= accepted,
            "seed {seed}: more than accepted arrived"
        );
        assert_eq!(err.map(|e| e.raw_os_error()), Some(Some(libc::ECONNRESET)));
        send(&mut d, client, b"more", 2);
        let err = run_until_one(&mut d).result.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNRESET), "seed {seed}");
        assert_eq!(d.injected().send_resets, 1);
    }
}

/// A TCP connect whose SYNs are all dropped retransmits after 1, 3, 7, 15,
/// 31 and 63 s and fails with `ETIMEDOUT` at 127 s of virtual time, with
/// the loop's wait following the kernel's timer (no timeout of its own).
#[test]
fn a_connect_whose_syns_are_dropped_times_out_after_127_s() {
    let mut d = SimDriver::new(SimConfig {
        connect_timeout_prob: 1.0,
        ..no_faults(6)
    });
    let listener = d.listen(&localhost0(), 8).unwrap();
    let addr = d.local_addr(listener).unwrap();
    let client = d.open_stream(&addr).unwrap();
    let t0 = d.now();
    d.submit(
        Op::Connect {
            socket: client,
            addr,
        },
        1,
    );
    let mut out = Vec::new();
    while out.is_empty() {
        d.wait(None, &mut out).unwrap();
    }
    let err = out.pop().unwrap().result.unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT));
    let took = d.now() - t0;
    assert!(
        took >= Duration::from_secs(127) && took < Duration::from_secs(128),
        "{took:?}"
    );
    let s = d.injected();
    assert_eq!((s.syn_retransmits, s.connect_timeouts), (6, 1), "{s:?}");
}

/// A full accept queue: a TCP connect stays in progress, retransmitting
/// its SYN, and connects at the first retransmission after an accept made
/// room; a Unix connect fails at once with `EAGAIN`.
#[test]
fn a_full_backlog_keeps_tcp_connects_in_progress_and_refuses_unix_with_eagain() {
    let mut d = SimDriver::new(SimConfig::with_seed(7));
    let listener = d.listen(&localhost0(), 1).unwrap();
    let addr = d.local_addr(listener).unwrap();
    let first = d.open_stream(&addr).unwrap();
    d.submit(
        Op::Connect {
            socket: first,
            addr: addr.clone(),
        },
        1,
    );
    run_until_one(&mut d).result.unwrap();
    let second = d.open_stream(&addr).unwrap();
    let t0 = d.now();
    d.submit(
        Op::Connect {
            socket: second,
            addr: addr.clone(),
        },
        2,
    );
    let mut out = Vec::new();
    d.wait(Some(Duration::from_millis(500)), &mut out).unwrap();
    assert!(out.is_empty(), "connected into a full backlog");
    d.submit(
        Op::Accept {
            listener,
            accepted: None,
        },
        3,
    );
    let done = run_until_n(&mut d, 2);
    let connect = done.iter().find(|c| c.user == 2).unwrap();
    connect.result.as_ref().unwrap();
    let took = d.now() - t0;
    assert!(
        took >= Duration::from_secs(1),
        "before the retransmission: {took:?}"
    );
    assert!(
        d.injected().syn_retransmits == 0,
        "answered at the first retry"
    );

    let path = Address::Unix(PathBuf::from("/tmp/sim-backlog.sock"));
    let ul = d.listen(&path, 1).unwrap();
    for (user, errno) in [(10, None), (11, Some(libc::EAGAIN))] {
        let c = d.open_stream(&path).unwrap();
        d.submit(
            Op::Connect {
                socket: c,
                addr: path.clone(),
            },
            user,
        );
        let r = run_until_one(&mut d).result;
        assert_eq!(r.err().and_then(|e| e.raw_os_error()), errno);
    }
    assert_eq!(d.injected().unix_connect_eagain, 1);
    let _ = ul;
}

/// Unix sockets have their own rules: a direction holds only the sender's
/// `SO_SNDBUF` (TCP: send plus receive buffer), and a send to a closed
/// peer fails at once with `EPIPE`, where TCP accepts it, loses it, and
/// fails the next one.
#[test]
fn unix_sockets_differ_from_tcp_in_buffering_and_closed_peers() {
    let mut d = SimDriver::new(SimConfig::calm(8));
    let (_ul, uc, us) = unix_pair(&mut d, "/tmp/sim-unix-rules.sock");
    let (_tl, tc, ts) = pair(&mut d);
    for (client, server, held) in [(uc, us, 1000), (tc, ts, 1000 + 4000)] {
        d.set_option(client, SockOpt::SendBuffer(1000)).unwrap();
        d.set_option(server, SockOpt::RecvBuffer(4000)).unwrap();
        let mut accepted = 0;
        let mut out = Vec::new();
        loop {
            send(&mut d, client, &[1u8; 700], 1);
            out.clear();
            d.wait(Some(Duration::from_millis(5)), &mut out).unwrap();
            match out.pop() {
                Some(c) => accepted += c.result.unwrap(),
                None => break,
            }
        }
        assert_eq!(accepted, held, "a direction holds {held} bytes");
        // The blocked send completes once the reader makes room; read all.
        let (mut read, mut send_done) = (0, false);
        while !send_done || read < accepted {
            recv(&mut d, server, 1 << 20, 2);
            out.clear();
            while !out.iter().any(|c: &Completion| c.user == 2) {
                d.wait(Some(Duration::from_millis(5)), &mut out).unwrap();
            }
            for c in out.drain(..) {
                let n = c.result.unwrap();
                if c.user == 1 {
                    (accepted, send_done) = (accepted + n, true);
                } else {
                    read += n;
                }
            }
        }
        assert!(accepted > held);
    }
    assert!(d.injected().unix_sndbuf_stalls >= 1);

    // Closed peers.
    d.close(us);
    send(&mut d, uc, b"x", 1);
    let e = run_until_one(&mut d).result.unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPIPE), "unix: at once");
    d.close(ts);
    send(&mut d, tc, b"lost", 1);
    assert_eq!(run_until_one(&mut d).result.unwrap(), 4, "tcp: accepted");
    send(&mut d, tc, b"y", 1);
    let e = run_until_one(&mut d).result.unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EPIPE),
        "tcp: the reset comes back"
    );
    let s = d.injected();
    assert_eq!((s.unix_epipes, s.sends_to_closed_peer), (1, 1), "{s:?}");
}

/// Accept errors for lack of resources (`EMFILE`, `ENOBUFS`, `ENOMEM`)
/// keep the connection queued: the next accept returns it.
#[test]
fn accept_resource_errors_include_enobufs_and_keep_the_connection() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..40 {
        let mut d = SimDriver::new(SimConfig {
            accept_error_prob: 1.0,
            ..no_faults(seed)
        });
        let path = Address::Unix(PathBuf::from(format!("/tmp/sim-accept-{seed}.sock")));
        let listener = d.listen(&path, 4).unwrap();
        let client = d.open_stream(&path).unwrap();
        d.submit(
            Op::Connect {
                socket: client,
                addr: path.clone(),
            },
            1,
        );
        run_until_one(&mut d).result.unwrap();
        d.submit(
            Op::Accept {
                listener,
                accepted: None,
            },
            2,
        );
        let errno = run_until_one(&mut d).result.unwrap_err().raw_os_error();
        seen.insert(errno.unwrap());
        // Unix listeners never see ECONNABORTED.
        assert!(matches!(
            errno,
            Some(libc::EMFILE | libc::ENOBUFS | libc::ENOMEM)
        ));
    }
    assert!(seen.contains(&libc::ENOBUFS), "{seen:?}");
}

/// The bpo-33694 window as the counters see it: a pause while the receive
/// is in flight with its bytes already there counts as "ready".
#[test]
fn a_pause_with_the_bytes_there_counts_as_ready() {
    let mut d = SimDriver::new(SimConfig::calm(9));
    let (_l, client, server) = pair(&mut d);
    let key = recv(&mut d, server, 16, 1);
    let mut out = Vec::new();
    d.wait(Some(Duration::ZERO), &mut out).unwrap();
    d.count_read_pause(Some(key));
    send(&mut d, client, b"here", 2);
    // Calm mode: the step that completes the send found no bytes for the
    // receive; it completes at the next step, so now it is "ready".
    let mut out = Vec::new();
    d.wait(Some(Duration::ZERO), &mut out).unwrap();
    assert_eq!(out.iter().map(|c| c.user).collect::<Vec<_>>(), [2]);
    d.count_read_pause(Some(key));
    let s = d.stats();
    assert_eq!(
        (s.pauses_recv_in_flight, s.pauses_recv_ready),
        (2, 1),
        "{s:?}"
    );
    assert!(d.trace().unwrap().contains("bytes there, completing"));
    assert_eq!(run_until_one(&mut d).user, 1, "the receive still completes");
}

/// Nothing can ever progress (an idle connection, no timer, or only a
/// "never" timer's timeout): the wait fails with the trace after the stall
/// timeout, instead of blocking for ever; a remote wake within it is fine.
#[test]
fn a_wait_with_nothing_that_can_progress_fails_with_its_trace() {
    let config = SimConfig {
        stall_timeout: Duration::from_millis(50),
        eintr_prob: 0.0,
        ..SimConfig::with_seed(10)
    };
    let mut d = SimDriver::new(config);
    let (_l, _client, server) = pair(&mut d);
    recv(&mut d, server, 16, 1);
    let mut out = Vec::new();
    for timeout in [None, Some(FAR_FUTURE - Duration::from_secs(1))] {
        let start = Instant::now();
        let err = d.wait(timeout, &mut out).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        let msg = err.to_string();
        assert!(
            msg.contains("stalled") && msg.contains("sim seed=10"),
            "{msg}"
        );
    }
    // A legitimate far timer (a day) is progress: the clock jumps there.
    let t0 = d.now();
    d.wait(Some(Duration::from_secs(86_400)), &mut out).unwrap();
    assert!(d.now() - t0 >= Duration::from_secs(86_400));
    // Another thread's wake within the stall timeout ends the wait.
    let waker = d.remote_waker();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(10));
        waker.wake();
    });
    d.wait(None, &mut out).unwrap();
    t.join().unwrap();
    assert!(out.is_empty());
}
