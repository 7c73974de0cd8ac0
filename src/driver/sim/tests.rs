//! What only `sim` promises: the same seed gives the same trace, seeds
//! differ, virtual time, calm mode, faults. The contract every backend
//! keeps is tested in `driver::contract`.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::driver::contract::echo_with_cancels;

const ACCEPT: usize = 1;
const CONNECT: usize = 2;
const C_SEND: usize = 3;

pub(super) fn localhost0() -> Address {
    Address::Inet(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
}

/// What an echo run observed, with the run's trace.
#[derive(Debug)]
struct EchoOutcome {
    stats: DriverStats,
    hash: u64,
    trace: String,
    received: usize,
    raced_bytes: usize,
}

/// The contract's echo with random cancels, on a sim driver.
fn echo(d: &mut SimDriver, seed: u64, len: usize, cancel_prob: f64) -> EchoOutcome {
    let o = echo_with_cancels(d, seed, len, cancel_prob);
    EchoOutcome {
        stats: o.stats,
        hash: d.full_trace_hash(),
        trace: d.trace().unwrap_or_default(),
        received: o.received,
        raced_bytes: o.raced_bytes,
    }
}

fn sim_echo(config: SimConfig, len: usize, cancel_prob: f64) -> EchoOutcome {
    let seed = config.seed;
    let mut d = SimDriver::new(config);
    let o = echo(&mut d, seed, len, cancel_prob);
    assert_eq!(d.open_sockets(), 0, "seed {seed}: sockets leaked");
    o
}

#[test]
fn echo_is_byte_exact_over_seeds() {
    for seed in 0..16 {
        // Larger than a direction's buffer (256 KiB), so sends stall and resume.
        let o = sim_echo(SimConfig::with_seed(seed), 300_000, 0.0);
        assert_eq!(o.received, 300_000);
        assert_eq!(o.stats.cancel_requests, 0);
    }
}

#[test]
fn calm_mode_echoes_too() {
    for seed in 0..4 {
        let o = sim_echo(SimConfig::calm(seed), 100_000, 0.2);
        assert_eq!(o.received, 100_000);
        assert_eq!(o.stats.cancel_races, 0, "calm mode has no races");
    }
}

#[test]
fn small_buffers_stall_senders_without_loss() {
    for seed in 0..8 {
        let config = SimConfig {
            send_buffer: 1,
            recv_buffer: 100,
            ..SimConfig::with_seed(seed)
        };
        let o = sim_echo(config, 20_000, 0.1);
        assert_eq!(o.received, 20_000);
    }
}

#[test]
fn same_seed_gives_identical_trace() {
    for seed in [0, 7, 12345] {
        let a = sim_echo(SimConfig::with_seed(seed), 50_000, 0.3);
        let b = sim_echo(SimConfig::with_seed(seed), 50_000, 0.3);
        assert_eq!(a.hash, b.hash, "seed {seed}");
        assert_eq!(a.trace, b.trace, "seed {seed}");
        assert_eq!(a.stats, b.stats, "seed {seed}");
        assert_eq!(fault_scenario(seed), fault_scenario(seed));
    }
}

#[test]
fn different_seeds_give_different_traces() {
    let mut hashes = BTreeSet::new();
    for seed in 0..10 {
        // Same workload (the harness's own choices use a fixed seed).
        let mut d = SimDriver::new(SimConfig::with_seed(seed));
        echo(&mut d, 99, 30_000, 0.2);
        hashes.insert(d.full_trace_hash());
    }
    assert!(hashes.len() >= 9, "only {} distinct traces", hashes.len());
}

#[test]
fn cancel_races_never_lose_bytes() {
    let mut total = DriverStats::default();
    let mut raced_bytes = 0;
    for seed in 0..200 {
        let o = sim_echo(SimConfig::with_seed(seed), 20_000, 0.3);
        assert_eq!(o.received, 20_000, "seed {seed}");
        let s = o.stats;
        // Every cancel (one per op, while in flight) settles exactly once.
        assert_eq!(
            s.cancel_races + s.cancelled,
            s.cancel_requests,
            "seed {seed}: {s:?}"
        );
        total.cancel_requests += s.cancel_requests;
        total.cancel_races += s.cancel_races;
        total.cancelled += s.cancelled;
        total.short_reads += s.short_reads;
        total.short_writes += s.short_writes;
        raced_bytes += o.raced_bytes;
    }
    eprintln!("200 seeds: {total:?}, raced bytes {raced_bytes}");
    assert!(total.cancel_races >= 200, "{total:?}");
    assert!(total.cancelled >= 200, "{total:?}");
    assert!(raced_bytes > 0, "no raced completion carried bytes");
    assert!(total.short_reads > 0 && total.short_writes > 0, "{total:?}");
}

#[test]
fn cancel_of_reaped_late_completion_keeps_result() {
    // Hold-back makes completions "produced but not reaped"; a cancel then
    // finds them done. Force it and check the result stands.
    let config = SimConfig {
        holdback_prob: 1.0,
        defer_prob: 0.0,
        connect_latency_steps: 1,
        ..SimConfig::with_seed(3)
    };
    let mut d = SimDriver::new(config);
    let listener = d.listen(&localhost0(), 4).unwrap();
    let addr = d.local_addr(listener).unwrap();
    let c1 = d.open_stream(&addr).unwrap();
    let c2 = d.open_stream(&addr).unwrap();
    let k1 = d.submit(
        Op::Connect {
            socket: c1,
            addr: addr.clone(),
        },
        1,
    );
    let k2 = d.submit(
        Op::Connect {
            socket: c2,
            addr: addr.clone(),
        },
        2,
    );
    let mut out = Vec::new();
    let mut got = Vec::new();
    while got.len() < 2 {
        out.clear();
        d.wait(Some(Duration::ZERO), &mut out).unwrap();
        if !out.is_empty() && got.is_empty() && out.len() < 2 {
            // One is reaped, the other is produced but held: cancel both.
            d.cancel(k1);
            d.cancel(k2);
        }
        got.append(&mut out);
    }
    for c in &got {
        assert!(
            c.result.is_ok(),
            "connect result must stand: {:?}",
            c.result
        );
    }
    let s = d.stats();
    assert_eq!(s.cancel_races, 1, "{s:?}\n{}", d.trace().unwrap());
    assert_eq!(s.cancelled, 0);
}

#[test]
fn short_reads_and_writes_happen() {
    let o = sim_echo(SimConfig::with_seed(5), 200_000, 0.0);
    assert!(o.stats.short_reads > 0, "{:?}", o.stats);
    assert!(o.stats.short_writes > 0, "{:?}", o.stats);
    assert!(o.trace.contains("(short)"));
}

#[test]
fn idle_timeout_advances_virtual_clock_at_once() {
    let mut d = SimDriver::new(SimConfig::with_seed(1));
    let t0 = d.now();
    let real = Instant::now();
    let mut out = Vec::new();
    d.wait(Some(Duration::from_secs(60)), &mut out).unwrap();
    assert!(out.is_empty());
    assert!(real.elapsed() < Duration::from_secs(1));
    let dt = d.now() - t0;
    assert!(dt >= Duration::from_secs(60), "timer early: {dt:?}");
    assert!(
        dt <= Duration::from_secs(60) + Duration::from_millis(2),
        "{dt:?}"
    );
    // Zero timeout: returns, never goes backwards.
    let t1 = d.now();
    d.wait(Some(Duration::ZERO), &mut out).unwrap();
    assert!(d.now() >= t1);
    // A blocked accept does not stop the clock from jumping.
    let listener = d.listen(&localhost0(), 1).unwrap();
    d.submit(
        Op::Accept {
            listener,
            accepted: None,
        },
        1,
    );
    let t2 = d.now();
    d.wait(Some(Duration::from_secs(5)), &mut out).unwrap();
    assert!(out.is_empty());
    assert!(d.now() - t2 >= Duration::from_secs(5));
    assert_eq!(d.in_flight(), 1);
    // A remote wake that came before the wait ends it without moving the clock.
    d.remote_waker().wake();
    let t3 = d.now();
    d.wait(Some(Duration::from_secs(10)), &mut out).unwrap();
    assert_eq!(d.now(), t3, "a pending wake must not sleep");
}

pub(super) fn run_until_one(d: &mut SimDriver) -> Completion {
    run_until_n(d, 1).pop().unwrap()
}

pub(super) fn run_until_n(d: &mut SimDriver, n: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    // Long enough for a connect to time out (127 s of SYNs) in 1000 waits.
    for _ in 0..1000 {
        d.wait(Some(Duration::from_secs(1)), &mut out).unwrap();
        assert!(out.len() <= n, "more completions than ops");
        if out.len() == n {
            return out;
        }
    }
    panic!("no completion\n{}", d.trace().unwrap());
}

/// Connects a pair; returns (listener, client, server).
pub(super) fn pair(d: &mut SimDriver) -> (SocketId, SocketId, SocketId) {
    let listener = d.listen(&localhost0(), 8).unwrap();
    let addr = d.local_addr(listener).unwrap();
    let client = d.open_stream(&addr).unwrap();
    d.submit(
        Op::Connect {
            socket: client,
            addr,
        },
        CONNECT,
    );
    d.submit(
        Op::Accept {
            listener,
            accepted: None,
        },
        ACCEPT,
    );
    let mut server = None;
    let mut out = Vec::new();
    let mut n = 0;
    while n < 2 {
        out.clear();
        d.wait(Some(Duration::from_millis(1)), &mut out).unwrap();
        for c in out.drain(..) {
            n += 1;
            c.result.unwrap();
            if let Op::Accept { accepted, .. } = c.op {
                server = Some(accepted.unwrap().0);
            }
        }
    }
    (listener, client, server.unwrap())
}

pub(super) fn send_all(d: &mut SimDriver, s: SocketId, data: &[u8]) -> io::Result<()> {
    let mut sent = 0;
    while sent < data.len() {
        d.submit(
            Op::Send {
                socket: s,
                bufs: vec![Bytes::copy_from_slice(&data[sent..])],
                offset: 0,
            },
            C_SEND,
        );
        sent += run_until_one(d).result?;
    }
    Ok(())
}

#[test]
fn addresses_and_ports_are_deterministic() {
    let mut d = SimDriver::new(SimConfig::with_seed(0));
    let a = d.listen(&localhost0(), 1).unwrap();
    let b = d.listen(&localhost0(), 1).unwrap();
    let pa = d.local_addr(a).unwrap().as_inet().unwrap().port();
    let pb = d.local_addr(b).unwrap().as_inet().unwrap().port();
    assert_eq!((pa, pb), (40000, 40001));
    let taken = d.local_addr(a).unwrap();
    let e = d.listen(&taken, 1).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE));
    let any = Address::Inet(SocketAddr::from((Ipv4Addr::UNSPECIFIED, pa)));
    assert_eq!(
        d.listen(&any, 1).unwrap_err().raw_os_error(),
        Some(libc::EADDRINUSE)
    );
    // Unix sockets.
    let path = Address::Unix(PathBuf::from("/tmp/sim.sock"));
    let u = d.listen(&path, 1).unwrap();
    assert_eq!(d.local_addr(u).unwrap(), path);
    assert_eq!(
        d.listen(&path, 1).unwrap_err().raw_os_error(),
        Some(libc::EADDRINUSE)
    );
    let c = d.open_stream(&path).unwrap();
    d.submit(
        Op::Connect {
            socket: c,
            addr: path.clone(),
        },
        1,
    );
    run_until_one(&mut d).result.unwrap();
    assert_eq!(d.peer_addr(c).unwrap(), path);
    assert_eq!(d.local_addr(c).unwrap(), Address::Unix(PathBuf::new()));
    d.submit(
        Op::Accept {
            listener: u,
            accepted: None,
        },
        2,
    );
    let acc = run_until_one(&mut d);
    let Op::Accept {
        accepted: Some((s, peer)),
        ..
    } = acc.op
    else {
        panic!()
    };
    assert_eq!(peer, Address::Unix(PathBuf::new()));
    assert_eq!(d.local_addr(s).unwrap(), path);
    // Unconnected socket has no peer.
    let lone = d.open_stream(&path).unwrap();
    assert_eq!(
        d.peer_addr(lone).unwrap_err().raw_os_error(),
        Some(libc::ENOTCONN)
    );
    // Client ports come from 50000 upward.
    let mut d2 = SimDriver::new(SimConfig::with_seed(9));
    let (_l, client, server) = pair(&mut d2);
    let ca = d2.local_addr(client).unwrap().as_inet().unwrap();
    assert_eq!(ca.port(), 50000);
    assert_eq!(d2.peer_addr(server).unwrap().as_inet().unwrap(), ca);
}

/// What a faulty run saw: (resets, refused connects, accept errnos, trace hash).
fn fault_scenario(seed: u64) -> (u32, u32, BTreeSet<i32>, u64) {
    let mut resets = 0;
    let mut refused = 0;
    let mut accept_errors = BTreeSet::new();
    let config = SimConfig {
        reset_prob: 0.05,
        accept_error_prob: 0.3,
        connect_refuse_prob: 0.2,
        ..SimConfig::with_faults(seed)
    };
    let mut d = SimDriver::new(config);
    let listener = d.listen(&localhost0(), 64).unwrap();
    let addr = d.local_addr(listener).unwrap();
    // A few connects; accept them all, noting errors.
    let mut clients = Vec::new();
    for i in 0..4 {
        let c = d.open_stream(&addr).unwrap();
        d.submit(
            Op::Connect {
                socket: c,
                addr: addr.clone(),
            },
            100 + i,
        );
        clients.push(c);
    }
    let mut connected = Vec::new();
    for c in run_until_n(&mut d, 4) {
        match c.result {
            Ok(_) => connected.push(clients[c.user - 100]),
            Err(e) => {
                // Refused, or every SYN dropped.
                let errno = e.raw_os_error();
                assert!(
                    matches!(errno, Some(libc::ECONNREFUSED | libc::ETIMEDOUT)),
                    "{e}"
                );
                refused += 1;
            }
        }
    }
    for _ in 0..connected.len() {
        d.submit(
            Op::Accept {
                listener,
                accepted: None,
            },
            ACCEPT,
        );
        let c = run_until_one(&mut d);
        if let Err(e) = c.result {
            accept_errors.insert(e.raw_os_error().unwrap());
        }
    }
    // Stream data until something breaks.
    if let Some(&client) = connected.first() {
        for _ in 0..50 {
            if let Err(e) = send_all(&mut d, client, &[7u8; 3000]) {
                if e.raw_os_error() == Some(libc::ECONNRESET) {
                    resets += 1;
                }
                break;
            }
        }
    }
    assert_eq!(d.in_flight(), 0);
    let stats = d.stats();
    assert_eq!(stats.submitted, stats.completed);
    (resets, refused, accept_errors, d.full_trace_hash())
}

#[test]
fn faults_produce_resets_and_accept_errors() {
    let mut resets = 0;
    let mut accept_errors = BTreeSet::new();
    let mut refused = 0;
    for seed in 0..60 {
        let (r, f, a, _) = fault_scenario(seed);
        resets += r;
        refused += f;
        accept_errors.extend(a);
    }
    assert!(resets > 0, "no ECONNRESET");
    assert!(refused > 0, "no refused connect");
    assert!(
        accept_errors.contains(&libc::EMFILE) && accept_errors.contains(&libc::ECONNABORTED),
        "{accept_errors:?}"
    );
}

#[test]
fn seed_from_env_falls_back() {
    // PROACTOR_SIM_SEED is not set in the test environment.
    if std::env::var_os(SEED_ENV).is_none() {
        assert_eq!(SimConfig::seed_from_env(42), 42);
    }
}

#[test]
fn faults_off_by_default() {
    let c = SimConfig::default();
    assert!(c.races && !c.faults);
    assert_eq!(c.seed, 0);
}

#[test]
fn trace_is_bounded_and_readable() {
    let mut d = SimDriver::new(SimConfig::with_seed(21));
    echo(&mut d, 21, 50_000, 0.3);
    let t = d.trace().unwrap();
    assert!(t.starts_with("sim seed=21"));
    let lines: Vec<&str> = t.lines().collect();
    eprintln!("{}", lines[lines.len() - 12..].join("\n"));
    assert!(t.lines().count() <= 201);
    assert!(d.trace_len() > 200);
    assert!(t.contains("complete "));
    assert_eq!(d.kind(), DriverKind::Sim);
}
