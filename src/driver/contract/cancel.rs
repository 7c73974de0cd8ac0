//! O2: cancellation is a request, not an outcome. An op that completed anyway
//! returns its real result, bytes included; only one that truly did not
//! happen completes with `ECANCELED`.

use std::collections::VecDeque;
use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::harness::DEADLINE;
use super::ops::localhost;
use super::{pattern, recv_bytes, Harness, Peer};
use crate::driver::{is_cancelled, Driver, DriverStats, Op, OpKey, SockOpt, SocketId};

/// A receive and an accept that wait in the kernel are truly cancelled; a
/// second request changes nothing, and a stale key is ignored.
pub(crate) fn cancel_of_a_blocked_op_is_ecanceled(h: &mut Harness) {
    let listener = h.listen(&localhost());
    let (client, server) = h.connect_to(listener);
    let recv = h.submit_recv(server, 64);
    let accept = h.driver.submit(
        Op::Accept {
            listener,
            accepted: None,
        },
        0,
    );
    h.turn(Duration::ZERO);
    assert!(h.take_pending().is_empty(), "completed without a peer");
    h.driver.cancel(recv);
    h.driver.cancel(recv);
    h.driver.cancel(accept);
    let c = h.complete(recv);
    assert!(is_cancelled(c.result.as_ref().unwrap_err()));
    assert!(matches!(c.op, Op::Recv { ref buf, .. } if buf.is_empty() && buf.capacity() >= 64));
    let c = h.complete(accept);
    assert!(is_cancelled(c.result.as_ref().unwrap_err()));
    assert!(matches!(c.op, Op::Accept { accepted: None, .. }));
    h.driver.cancel(recv); // stale
    let s = h.driver.stats();
    assert_eq!((s.cancel_requests, s.cancelled, s.cancel_races), (2, 2, 0));
    // The connection is untouched.
    h.send_all(client, b"still here");
    assert_eq!(h.recv_exact(server, 10), b"still here");
    h.close_all(&[client, server, listener]);
    h.assert_quiescent();
}

/// A connect the kernel keeps in progress (the listener's accept queue is
/// full, so its SYNs are dropped; `sim` models the retransmissions) is
/// truly cancelled: a retry while it is in progress (on `poll` the cancel
/// itself retries it) never mistakes it for connected.
pub(crate) fn cancel_of_a_connect_in_progress_is_ecanceled(h: &mut Harness) {
    let listener = h.driver.listen(&localhost(), 1).unwrap();
    let addr = h.driver.local_addr(listener).unwrap();
    let mut sockets = vec![listener];
    let blocked = loop {
        assert!(sockets.len() < 64, "the accept queue never filled");
        let socket = h.driver.open_stream(&addr).unwrap();
        sockets.push(socket);
        let key = h.driver.submit(
            Op::Connect {
                socket,
                addr: addr.clone(),
            },
            0,
        );
        // On the driver's clock: virtual on sim, whose SYN retries would
        // otherwise run to ETIMEDOUT within a few real milliseconds.
        let start = h.driver.now();
        while !h.has_completion(key) && h.driver.now() - start < Duration::from_millis(200) {
            h.turn(Duration::from_millis(20));
        }
        if !h.has_completion(key) {
            break key;
        }
        h.complete(key).result.expect("connect");
    };
    h.driver.cancel(blocked);
    let err = h.complete(blocked).result.unwrap_err();
    assert!(is_cancelled(&err), "{err}");
    h.close_all(&sockets);
    h.assert_quiescent();
}

/// bpo-33694 on purpose, in three shapes: the data is there before the
/// receive and its cancel are submitted together; the data arrives while the
/// receive waits, before the cancel; no data comes at all. Either the cancel
/// wins (`ECANCELED`, nothing consumed) or the bytes come back; over many
/// rounds both happen, and not one byte is lost.
pub(crate) fn cancel_racing_completion_returns_the_bytes(h: &mut Harness) {
    let listener = h.listen(&localhost());
    let (ours, peer) = h.accept_peer(listener);
    let mut sent = Vec::new();
    let mut received = Vec::new();
    for round in 0..600 {
        let chunk = pattern(1 + round % 97, round);
        let room = 1 + round % 300;
        if round % 3 != 0 {
            // The next shapes need an empty socket: take what a truly
            // cancelled receive left.
            let left = sent.len() - received.len();
            received.extend(h.recv_exact(ours, left));
        }
        let key = match round % 3 {
            0 => {
                h.peer_write(&peer, &chunk);
                sent.extend_from_slice(&chunk);
                h.submit_recv(ours, room)
            }
            1 => {
                let key = h.submit_recv(ours, room);
                h.turn(Duration::ZERO);
                h.peer_write(&peer, &chunk);
                sent.extend_from_slice(&chunk);
                key
            }
            _ => {
                let key = h.submit_recv(ours, room);
                h.turn(Duration::ZERO);
                key
            }
        };
        h.driver.cancel(key);
        match recv_bytes(h.complete(key)) {
            Ok(bytes) => {
                assert!(!bytes.is_empty(), "EOF from a live peer");
                received.extend_from_slice(&bytes);
            }
            Err(e) => assert!(is_cancelled(&e), "unexpected {e}"),
        }
    }
    h.peer_close(peer);
    received.extend(h.recv_to_eof(ours));
    assert!(received == sent, "bytes lost or reordered");
    let s = h.driver.stats();
    eprintln!("{}: {s:?}", h.test);
    assert!(s.cancel_races > 0, "the race never happened: {s:?}");
    assert!(s.cancelled > 0, "no true cancel: {s:?}");
    h.close_all(&[ours, listener]);
    h.assert_quiescent();
}

/// The same against a thread that writes all the time, so data lands at
/// every moment of the cancel.
pub(crate) fn cancel_racing_a_concurrent_writer_loses_nothing(h: &mut Harness) {
    const TOTAL: usize = 2_000_000;
    let listener = h.listen(&localhost());
    let (ours, peer) = h.accept_peer(listener);
    let Peer::Kernel(peer) = peer else {
        h.skip(
            "no thread can write into the simulated network; \
             echo_with_random_cancels_loses_nothing races cancels against \
             the simulator's scheduler instead",
        );
        h.peer_close(peer);
        h.close_all(&[ours, listener]);
        return;
    };
    let writer = std::thread::spawn(move || {
        let data = pattern(TOTAL, 11);
        let mut sent = 0;
        let mut round = 0;
        while sent < TOTAL {
            let n = ((round * 7919) % 3000 + 1).min(TOTAL - sent);
            (&peer).write_all(&data[sent..sent + n]).unwrap();
            sent += n;
            round += 1;
            if round % 64 == 0 {
                std::thread::yield_now();
            }
        }
        peer
    });
    let mut received = Vec::with_capacity(TOTAL);
    let mut round = 0;
    let start = Instant::now();
    while received.len() < TOTAL {
        assert!(start.elapsed() < DEADLINE, "stuck");
        let key = h.submit_recv(ours, 8192);
        if round % 2 == 0 {
            h.driver.cancel(key);
        }
        round += 1;
        match recv_bytes(h.complete(key)) {
            Ok(bytes) => {
                assert!(!bytes.is_empty(), "unexpected EOF");
                received.extend(bytes);
            }
            Err(e) => assert!(is_cancelled(&e), "{e}"),
        }
    }
    drop(writer.join().unwrap());
    assert!(received == pattern(TOTAL, 11), "bytes lost or reordered");
    eprintln!("{}: {:?}", h.test, h.driver.stats());
    h.close_all(&[ours, listener]);
    h.assert_quiescent();
}

/// Every op of an echo (connect, accept, vectored sends with offsets,
/// receives, half-closes) with cancels requested at random: what completed
/// anyway is used, what was truly cancelled is redone, and every byte comes
/// back.
pub(crate) fn echo_with_random_cancels_loses_nothing(h: &mut Harness) {
    let outcome = echo_with_cancels(&mut *h.driver, 7, 100_000, 0.2);
    assert_eq!(outcome.received, 100_000);
    h.assert_quiescent();
}

/// What [`echo_with_cancels`] observed.
#[derive(Debug)]
pub(crate) struct EchoOutcome {
    pub(crate) stats: DriverStats,
    pub(crate) received: usize,
    /// Bytes that reached the server through a completion whose receive had
    /// been asked to cancel (the bpo-33694 bytes).
    pub(crate) raced_bytes: usize,
}

/// Which op a completion of the echo belongs to.
const ACCEPT: usize = 1;
const CONNECT: usize = 2;
const CLIENT_SEND: usize = 3;
const CLIENT_RECV: usize = 4;
const CLIENT_SHUTDOWN: usize = 5;
const SERVER_RECV: usize = 6;
const SERVER_SEND: usize = 7;
const SERVER_SHUTDOWN: usize = 8;

/// An echo client and server over `d`: the client sends `len` bytes (in
/// vectored sends with offsets) then half-closes, the server echoes and
/// half-closes after EOF, the client checks every byte. The ops in flight
/// are cancelled at random with probability `cancel_prob` per turn; truly
/// cancelled ones are redone, raced ones deliver their result. `seed` drives
/// the workload's own choices.
pub(crate) fn echo_with_cancels(
    d: &mut dyn Driver,
    seed: u64,
    len: usize,
    cancel_prob: f64,
) -> EchoOutcome {
    let data: Vec<u8> = {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0xdead_beef);
        (0..len).map(|_| rng.random()).collect()
    };
    let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(7));
    let listener = d.listen(&localhost(), 16).unwrap();
    let addr = d.local_addr(listener).unwrap();
    let client = d.open_stream(&addr).unwrap();
    d.set_option(client, SockOpt::NoDelay(true)).unwrap();
    d.submit(
        Op::Accept {
            listener,
            accepted: None,
        },
        ACCEPT,
    );
    d.submit(
        Op::Connect {
            socket: client,
            addr: addr.clone(),
        },
        CONNECT,
    );

    let mut server: Option<SocketId> = None;
    let mut client_sent = 0usize;
    let mut client_sending = false;
    let mut sends: Vec<(OpKey, bool)> = Vec::new();
    let mut client_shut = false;
    let mut client_recv: Option<(OpKey, bool)> = None;
    let mut received: Vec<u8> = Vec::with_capacity(len);
    let mut client_eof = false;
    let mut server_recv: Option<(OpKey, bool)> = None;
    let mut echo_queue: VecDeque<u8> = VecDeque::new();
    let mut server_sending = false;
    let mut server_eof = false;
    let mut server_shut = false;
    let mut raced_bytes = 0usize;
    let mut out = Vec::new();

    let recv_op = |rng: &mut SmallRng, socket: SocketId| Op::Recv {
        socket,
        buf: Vec::with_capacity(rng.random_range(1..=9000)),
    };

    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < DEADLINE,
            "echo did not finish\n{}",
            d.trace().unwrap_or_default()
        );
        // Client (once connected): one send in flight until all is sent.
        if !client_sending && client_sent < len && client_recv.is_some() {
            let prefix = rng.random_range(0..=client_sent.min(100));
            let a = rng.random_range(0..=(len - client_sent).min(20_000));
            let b = rng.random_range(0..=(len - client_sent - a).min(20_000));
            let start = client_sent - prefix;
            let bufs = vec![
                Bytes::copy_from_slice(&data[start..client_sent + a]),
                Bytes::copy_from_slice(&data[client_sent + a..client_sent + a + b]),
            ];
            let key = d.submit(
                Op::Send {
                    socket: client,
                    bufs,
                    offset: prefix,
                },
                CLIENT_SEND,
            );
            sends.push((key, false));
            client_sending = true;
        }
        if !client_sending && client_sent == len && !client_shut && client_recv.is_some() {
            d.submit(
                Op::Shutdown {
                    socket: client,
                    how: Shutdown::Write,
                },
                CLIENT_SHUTDOWN,
            );
            client_shut = true;
        }
        // Server: echo what arrived, one send in flight.
        if let Some(s) = server {
            if !server_sending && !echo_queue.is_empty() {
                let n = echo_queue.len().min(rng.random_range(1..=40_000));
                let chunk: Vec<u8> = echo_queue.iter().take(n).copied().collect();
                let key = d.submit(
                    Op::Send {
                        socket: s,
                        bufs: vec![Bytes::from(chunk)],
                        offset: 0,
                    },
                    SERVER_SEND,
                );
                sends.push((key, false));
                server_sending = true;
            }
            if server_eof && echo_queue.is_empty() && !server_sending && !server_shut {
                d.submit(
                    Op::Shutdown {
                        socket: s,
                        how: Shutdown::Write,
                    },
                    SERVER_SHUTDOWN,
                );
                server_shut = true;
            }
        }
        // Random cancels of the receives and sends in flight.
        for (key, asked) in [&mut client_recv, &mut server_recv]
            .into_iter()
            .flatten()
            .chain(sends.iter_mut())
        {
            if !*asked && rng.random_bool(cancel_prob) {
                d.cancel(*key);
                *asked = true;
            }
        }
        if client_eof && server_shut && d.in_flight() == 0 {
            break;
        }

        d.wait(Some(Duration::from_millis(1)), &mut out).unwrap();
        for c in out.drain(..) {
            match c.user {
                ACCEPT => {
                    c.result.unwrap();
                    let Op::Accept {
                        accepted: Some((s, peer)),
                        ..
                    } = c.op
                    else {
                        panic!("accept without socket");
                    };
                    assert_eq!(peer, d.local_addr(client).unwrap());
                    assert_eq!(d.peer_addr(s).unwrap(), peer);
                    server = Some(s);
                    server_recv = Some((d.submit(recv_op(&mut rng, s), SERVER_RECV), false));
                }
                CONNECT => {
                    c.result.unwrap();
                    assert_eq!(d.peer_addr(client).unwrap(), addr);
                    client_recv = Some((d.submit(recv_op(&mut rng, client), CLIENT_RECV), false));
                }
                CLIENT_SEND | SERVER_SEND => {
                    let pos = sends.iter().position(|(k, _)| *k == c.key).unwrap();
                    let (_, asked) = sends.remove(pos);
                    let n = match c.result {
                        Err(e) if is_cancelled(&e) => {
                            assert!(asked, "ECANCELED without a cancel");
                            0
                        }
                        r => r.unwrap(),
                    };
                    if c.user == CLIENT_SEND {
                        client_sent += n;
                        client_sending = false;
                    } else {
                        echo_queue.drain(..n);
                        server_sending = false;
                    }
                }
                CLIENT_SHUTDOWN | SERVER_SHUTDOWN => {
                    c.result.unwrap();
                }
                CLIENT_RECV | SERVER_RECV => {
                    let is_client = c.user == CLIENT_RECV;
                    let slot = if is_client {
                        &mut client_recv
                    } else {
                        &mut server_recv
                    };
                    let (key, asked) = slot.take().expect("recv in flight");
                    assert_eq!(key, c.key);
                    let Op::Recv { socket, buf } = c.op else {
                        panic!("not a recv");
                    };
                    match c.result {
                        Err(e) if is_cancelled(&e) => {
                            assert!(asked, "ECANCELED without a cancel");
                            assert!(buf.is_empty());
                        }
                        Err(e) => panic!("recv failed: {e}"),
                        Ok(0) if is_client => client_eof = true,
                        Ok(0) => server_eof = true,
                        Ok(n) => {
                            assert_eq!(buf.len(), n);
                            if asked {
                                raced_bytes += n;
                            }
                            if is_client {
                                received.extend_from_slice(&buf);
                            } else {
                                echo_queue.extend(buf.iter().copied());
                            }
                        }
                    }
                    let eof = if is_client { client_eof } else { server_eof };
                    if !eof {
                        let op = recv_op(&mut rng, socket);
                        let (slot, user) = if is_client {
                            (&mut client_recv, CLIENT_RECV)
                        } else {
                            (&mut server_recv, SERVER_RECV)
                        };
                        *slot = Some((d.submit(op, user), false));
                    }
                }
                other => panic!("unknown user {other}"),
            }
        }
    }
    assert!(
        received == data,
        "echoed bytes differ (got {} of {len})\n{}",
        received.len(),
        d.trace().unwrap_or_default()
    );
    d.close(client);
    d.close(server.unwrap());
    d.close(listener);
    let stats = d.stats();
    assert_eq!(d.in_flight(), 0);
    assert_eq!(stats.submitted, stats.completed, "O1 at quiescence");
    EchoOutcome {
        stats,
        received: received.len(),
        raced_bytes,
    }
}
