//! O1 and the results of ops: every op completes exactly once, with the same
//! result on every backend.

use std::net::Shutdown;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::harness::{accepted, DEADLINE};
use super::{pattern, recv_bytes, Harness};
use crate::address::Address;
use crate::driver::{is_cancelled, Op, OpKey, SockOpt, SocketId};

pub(crate) fn localhost() -> Address {
    "127.0.0.1:0".parse().expect("address")
}

/// A listener, a client connected to it and the accepted server socket, with
/// the addresses every backend must report for them.
fn connected_pair(h: &mut Harness, addr: &Address) -> (SocketId, SocketId, SocketId) {
    let listener = h.listen(addr);
    let bound = h.driver.local_addr(listener).unwrap();
    let client = h.driver.open_stream(&bound).unwrap();
    let connect = h.driver.submit(
        Op::Connect {
            socket: client,
            addr: bound.clone(),
        },
        1,
    );
    let accept = h.driver.submit(
        Op::Accept {
            listener,
            accepted: None,
        },
        2,
    );
    assert_eq!(h.complete(connect).result.unwrap(), 0);
    let (server, peer) = accepted(h.complete(accept));
    let d = &h.driver;
    assert_eq!(d.peer_addr(client).unwrap(), bound);
    match &bound {
        Address::Inet(_) => {
            assert_eq!(peer, d.local_addr(client).unwrap(), "accepted peer address");
            assert_eq!(d.peer_addr(server).unwrap(), peer);
            assert_eq!(d.local_addr(server).unwrap(), bound);
        }
        Address::Unix(_) => {
            // A client socket is unnamed: an empty path.
            let unnamed = Address::Unix(Default::default());
            assert_eq!(peer, unnamed);
            assert_eq!(d.local_addr(client).unwrap(), unnamed);
            assert_eq!(d.local_addr(server).unwrap(), bound);
        }
    }
    // TCP_NODELAY on a Unix socket is ignored, not an error.
    h.driver
        .set_option(client, SockOpt::NoDelay(true))
        .expect("nodelay");
    (listener, client, server)
}

/// Both directions at several sizes, a vectored send with an offset, then a
/// half-close: the server reads EOF and still answers, and the client's
/// sends fail with `EPIPE`.
fn echo(h: &mut Harness, client: SocketId, server: SocketId) {
    h.send_bufs(
        client,
        vec![
            Bytes::from_static(b"XXhello "),
            Bytes::from_static(b""),
            Bytes::from_static(b"world"),
        ],
        2,
    );
    assert_eq!(h.recv_exact(server, 11), b"hello world");
    for (round, len) in [1usize, 100, 4096, 16384, 7].into_iter().enumerate() {
        let msg = pattern(len, round);
        h.send_all(client, &msg);
        assert_eq!(h.recv_exact(server, len), msg);
        h.send_all(server, &msg);
        assert_eq!(h.recv_exact(client, len), msg);
    }
    let shut = h.run(Op::Shutdown {
        socket: client,
        how: Shutdown::Write,
    });
    assert_eq!(shut.result.unwrap(), 0);
    assert!(h.recv(server, 16).unwrap().is_empty(), "EOF expected");
    h.send_all(server, b"bye");
    assert_eq!(h.recv_exact(client, 3), b"bye");
    let late = h.run(Op::Send {
        socket: client,
        bufs: vec![Bytes::from_static(b"late")],
        offset: 0,
    });
    assert_eq!(late.result.unwrap_err().raw_os_error(), Some(libc::EPIPE));
}

fn echo_over(h: &mut Harness, addr: &Address) {
    let (listener, client, server) = connected_pair(h, addr);
    echo(h, client, server);
    h.close_all(&[client, server, listener]);
    h.assert_quiescent();
}

pub(crate) fn echo_over_ipv4(h: &mut Harness) {
    echo_over(h, &localhost());
}

pub(crate) fn echo_over_ipv6(h: &mut Harness) {
    let addr: Address = "[::1]:0".parse().unwrap();
    if h.kind() != crate::DriverKind::Sim && std::net::TcpListener::bind("[::1]:0").is_err() {
        h.skip("no IPv6 loopback on this machine");
        return;
    }
    echo_over(h, &addr);
}

/// A fresh socket path in the temporary directory.
pub(crate) fn socket_path(h: &Harness) -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "proactor-contract-{}-{}-{}.sock",
        h.kind(),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&path);
    path
}

/// Over a Unix socket; closing the listener unlinks its path (the driver
/// does, no longer `net::Server`), so the path can be listened on again.
pub(crate) fn echo_over_unix_and_close_unlinks_the_path(h: &mut Harness) {
    let path = socket_path(h);
    let addr = Address::Unix(path.clone());
    echo_over(h, &addr);
    assert!(
        !path.exists(),
        "closing the listener left {}",
        path.display()
    );
    let again = h.listen(&addr);
    assert_eq!(h.driver.local_addr(again).unwrap(), addr);
    h.driver.close(again);
    assert!(!path.exists());
}

/// Many ops parked on the same sockets, some cancelled, then the peers send
/// and close: every submit yields exactly one completion, and the bytes come
/// out in the order the completions do.
pub(crate) fn one_completion_per_op(h: &mut Harness) {
    const PAIRS: usize = 20;
    const RECVS: usize = 5;
    let listener = h.listen(&localhost());
    let pairs: Vec<_> = (0..PAIRS).map(|_| h.connect_to(listener)).collect();
    let mut recvs: Vec<Vec<OpKey>> = Vec::new();
    for &(_, server) in &pairs {
        let keys = (0..RECVS).map(|_| h.submit_recv(server, 4)).collect();
        recvs.push(keys);
    }
    h.turn(Duration::ZERO);
    assert!(
        h.take_pending().is_empty(),
        "a receive completed without data"
    );
    // Cancel the third receive of each pair, parked behind the first two.
    for keys in &recvs {
        h.driver.cancel(keys[2]);
    }
    for &(client, _) in &pairs {
        h.send_bufs(
            client,
            vec![Bytes::from_static(b"abcd"), Bytes::from_static(b"efgh")],
            0,
        );
        h.driver.close(client);
    }
    for (keys, &(_, server)) in recvs.iter().zip(&pairs) {
        let mut bytes = Vec::new();
        for c in h.complete_all(keys) {
            let cancel_requested = c.key == keys[2];
            match recv_bytes(c) {
                Ok(b) => bytes.extend(b),
                Err(e) => assert!(cancel_requested && is_cancelled(&e), "{e}"),
            }
        }
        // What short receives left (`sim` splits reads at random).
        bytes.extend(h.recv_to_eof(server));
        assert_eq!(bytes, b"abcdefgh", "bytes lost, duplicated or reordered");
    }
    for &(_, server) in &pairs {
        h.driver.close(server);
    }
    h.driver.close(listener);
    h.assert_quiescent();
    let s = h.driver.stats();
    assert_eq!(s.cancel_requests, PAIRS as u64, "{s:?}");
}

/// Ops whose arguments are wrong, or that need no I/O, complete with the
/// same result on every backend. (They used to differ: `Send` without
/// buffers and an offset was `Ok(0)` on `poll` and `EINVAL` on `uring`; an
/// offset beyond the first buffer sent later buffers' bytes on `sim`; `poll`
/// reported `InvalidInput` without an errno.)
pub(crate) fn invalid_arguments_complete_with_the_same_errors(h: &mut Harness) {
    let listener = h.listen(&localhost());
    let (client, server) = h.connect_to(listener);
    let bound = h.driver.local_addr(listener).unwrap();
    let unconnected = h.driver.open_stream(&bound).unwrap();
    let send = |socket, bufs: &[&'static [u8]], offset| Op::Send {
        socket,
        bufs: bufs.iter().map(|b| Bytes::from_static(b)).collect(),
        offset,
    };
    let cases: Vec<(&str, Op, Result<usize, i32>)> = vec![
        (
            "recv without spare capacity",
            // Full, not empty: `Vec::new()` asks a driver that
            // `provides_recv_buffers` for a buffer (see `Op::Recv`).
            Op::Recv {
                socket: server,
                buf: vec![0; 8],
            },
            Err(libc::EINVAL),
        ),
        (
            "send offset beyond the first buffer",
            send(client, &[b"ab", b"cd"], 3),
            Err(libc::EINVAL),
        ),
        (
            "send offset without buffers",
            send(client, &[], 1),
            Err(libc::EINVAL),
        ),
        ("send without buffers", send(client, &[], 0), Ok(0)),
        ("send of empty buffers", send(client, &[b"", b""], 0), Ok(0)),
        (
            "send with everything skipped",
            send(client, &[b"ab"], 2),
            Ok(0),
        ),
        (
            "accept on a connected socket",
            Op::Accept {
                listener: client,
                accepted: None,
            },
            Err(libc::EINVAL),
        ),
        (
            "shutdown of an unconnected socket",
            Op::Shutdown {
                socket: unconnected,
                how: Shutdown::Both,
            },
            Err(libc::ENOTCONN),
        ),
        (
            "connect of a connected socket",
            Op::Connect {
                socket: client,
                addr: bound.clone(),
            },
            Err(libc::EISCONN),
        ),
        (
            "connect to another address family",
            Op::Connect {
                socket: unconnected,
                addr: Address::Unix("/nonexistent/proactor.sock".into()),
            },
            Err(libc::EAFNOSUPPORT),
        ),
    ];
    let mut expected = Vec::new();
    for (what, op, result) in cases {
        let key = h.driver.submit(op, 0);
        expected.push((key, what, result));
    }
    // A cancel does not change a result decided without I/O.
    h.driver.cancel(expected[0].0);
    let keys: Vec<OpKey> = expected.iter().map(|e| e.0).collect();
    let done = h.complete_all(&keys);
    assert_eq!(done.len(), keys.len());
    for (key, what, want) in expected {
        let c = done.iter().find(|c| c.key == key).unwrap();
        let got = c.result.as_ref().map(|n| *n).map_err(|e| e.raw_os_error());
        assert_eq!(got, want.map_err(Some), "{what}");
    }
    assert_eq!(h.driver.stats().cancel_races, 1);
    drop(done);
    // Nothing was sent: the server's next bytes are these.
    h.send_all(client, b"ok");
    assert_eq!(h.recv_exact(server, 2), b"ok");
    h.close_all(&[client, server, unconnected, listener]);
    h.assert_quiescent();
}

/// Connecting where nobody listens any more is refused: `ECONNREFUSED`
/// over TCP, `ENOENT` for a Unix path (the listener's close unlinked it;
/// `sim` said `ECONNREFUSED`).
pub(crate) fn connect_to_a_closed_listener_is_refused(h: &mut Harness) {
    let unix = Address::Unix(socket_path(h));
    for (addr, errno) in [(localhost(), libc::ECONNREFUSED), (unix, libc::ENOENT)] {
        let listener = h.listen(&addr);
        let addr = h.driver.local_addr(listener).unwrap();
        h.driver.close(listener);
        let socket = h.driver.open_stream(&addr).unwrap();
        let err = h.run(Op::Connect { socket, addr }).result.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(errno), "{err}");
        h.driver.close(socket);
    }
    h.assert_quiescent();
}

/// With a 4 KiB send buffer, a large send is short; sends and receives
/// going on together move every byte, in order.
pub(crate) fn short_writes_and_reads_lose_nothing(h: &mut Harness) {
    let listener = h.listen(&localhost());
    let (client, server) = h.connect_to(listener);
    h.driver
        .set_option(client, SockOpt::SendBuffer(4096))
        .unwrap();
    let data = pattern(400_000, 3);
    let mut bufs: Vec<Bytes> = data.chunks(65536).map(Bytes::copy_from_slice).collect();
    let mut offset = 0;
    // Nobody reads yet: the first send fills the pipe and is short.
    let first = h
        .run(Op::Send {
            socket: client,
            bufs: bufs.clone(),
            offset,
        })
        .result
        .unwrap();
    assert!(
        first > 0 && first < data.len(),
        "first send not short: {first}"
    );
    assert_eq!(h.driver.stats().short_writes, 1);
    super::harness::advance(&mut bufs, &mut offset, first);
    let mut received = Vec::with_capacity(data.len());
    let (mut send, mut recv): (Option<OpKey>, Option<OpKey>) = (None, None);
    let start = Instant::now();
    while received.len() < data.len() {
        assert!(start.elapsed() < DEADLINE, "stuck\n{}", h.trace());
        if send.is_none() && !bufs.is_empty() {
            send = Some(h.driver.submit(
                Op::Send {
                    socket: client,
                    bufs: bufs.clone(),
                    offset,
                },
                1,
            ));
        }
        if recv.is_none() {
            recv = Some(h.submit_recv(server, 16384));
        }
        h.turn(Duration::from_millis(100));
        for c in h.take_pending() {
            if Some(c.key) == send {
                send = None;
                let n = c.result.unwrap();
                super::harness::advance(&mut bufs, &mut offset, n);
            } else if Some(c.key) == recv {
                recv = None;
                let got = recv_bytes(c).unwrap();
                assert!(!got.is_empty(), "unexpected EOF");
                received.extend_from_slice(&got);
            } else {
                panic!("stray completion {c:?}");
            }
        }
    }
    assert!(received == data, "bytes lost or reordered");
    assert!(send.is_none() && bufs.is_empty());
    let s = h.driver.stats();
    assert!(s.short_writes > 1, "{s:?}");
    assert!(s.short_reads > 0, "{s:?}");
    if let Some(key) = recv {
        h.driver.cancel(key);
        assert!(is_cancelled(&h.complete(key).result.unwrap_err()));
    }
    h.close_all(&[client, server, listener]);
    h.assert_quiescent();
}

/// The peer writes and closes: the bytes, then EOF (again and again); our
/// sends then fail with `EPIPE` (or `ECONNRESET`, once the peer's kernel
/// answered one with a reset), never with `SIGPIPE`.
pub(crate) fn peer_close_gives_eof_after_the_data(h: &mut Harness) {
    let listener = h.listen(&localhost());
    let (ours, peer) = h.accept_peer(listener);
    h.peer_write(&peer, b"hello world");
    h.peer_close(peer);
    assert_eq!(h.recv_to_eof(ours), b"hello world");
    assert!(h.recv(ours, 16).unwrap().is_empty(), "EOF again");
    let start = Instant::now();
    let err = loop {
        assert!(
            start.elapsed() < DEADLINE,
            "sends to a closed peer never failed"
        );
        match h
            .run(Op::Send {
                socket: ours,
                bufs: vec![Bytes::from_static(b"x")],
                offset: 0,
            })
            .result
        {
            Ok(n) => assert_eq!(n, 1),
            Err(e) => break e,
        }
        h.turn(Duration::from_millis(1));
    };
    assert!(
        matches!(err.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)),
        "{err}"
    );
    h.close_all(&[ours, listener]);
    h.assert_quiescent();
}

/// The peer resets (`SO_LINGER` 0) while our receive waits: it fails with
/// `ECONNRESET`, and a send after it fails without `SIGPIPE`.
pub(crate) fn peer_reset_gives_econnreset_and_no_sigpipe(h: &mut Harness) {
    let listener = h.listen(&localhost());
    let (ours, peer) = h.accept_peer(listener);
    let recv = h.submit_recv(ours, 64);
    h.turn(Duration::ZERO);
    assert!(h.take_pending().is_empty());
    h.peer_set_option(&peer, SockOpt::Linger(Some(Duration::ZERO)));
    h.peer_close(peer);
    let err = recv_bytes(h.complete(recv)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECONNRESET), "{err}");
    let err = h
        .run(Op::Send {
            socket: ours,
            bufs: vec![Bytes::from_static(b"x")],
            offset: 0,
        })
        .result
        .unwrap_err();
    assert!(
        matches!(err.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)),
        "{err}"
    );
    h.close_all(&[ours, listener]);
    h.assert_quiescent();
}

/// A receive submitted with `Vec::new()` gets its buffer from the driver:
/// nothing held while it waits (it parks with the empty `Vec`), a buffer
/// of the received size for a small read, at most twice the read for a
/// large one, an empty buffer for EOF, and an untouched empty `Vec` when
/// cancelled. Runs on the drivers that provide receive buffers (`poll`).
pub(crate) fn provided_receive_buffers_hold_only_what_was_read(h: &mut Harness) {
    if !h.driver.provides_recv_buffers() {
        h.skip("this driver does not provide receive buffers");
        return;
    }
    let listener = h.listen(&"127.0.0.1:0".parse().unwrap());
    let (ours, peer) = h.accept_peer(listener);
    let provided = |socket| Op::Recv {
        socket,
        buf: Vec::new(),
    };

    // Parked on an idle socket, then cancelled: ECANCELED, no buffer.
    let key = h.driver.submit(provided(ours), 0);
    h.turn(Duration::ZERO);
    assert!(!h.has_completion(key), "nothing to read: the receive parks");
    h.driver.cancel(key);
    let c = h.complete(key);
    assert!(matches!(&c.op, Op::Recv { buf, .. } if buf.capacity() == 0));
    assert!(is_cancelled(&c.result.unwrap_err()));

    // Parked, then woken by a small write: exactly the bytes read.
    let key = h.driver.submit(provided(ours), 0);
    h.turn(Duration::ZERO);
    assert!(!h.has_completion(key));
    h.peer_write(&peer, b"hello");
    let buf = recv_bytes(h.complete(key)).unwrap();
    assert_eq!((&buf[..], buf.capacity()), (&b"hello"[..], 5));

    // A large write (above half the driver-wide buffer): every byte, in
    // order; no buffer more than twice its bytes.
    // (Small enough for the socket buffers: the peer writes blocking.)
    let data = pattern(48 * 1024, 7);
    h.peer_write(&peer, &data);
    let mut got = Vec::new();
    while got.len() < data.len() {
        let key = h.driver.submit(provided(ours), 0);
        let buf = recv_bytes(h.complete(key)).unwrap();
        assert!(!buf.is_empty(), "unexpected EOF");
        assert!(
            buf.capacity() <= 2 * buf.len(),
            "{} for {}",
            buf.capacity(),
            buf.len()
        );
        got.extend_from_slice(&buf);
    }
    assert!(got == data, "bytes lost or reordered");

    // EOF: a result of 0 and an empty buffer.
    h.peer_close(peer);
    let key = h.driver.submit(provided(ours), 0);
    assert_eq!(recv_bytes(h.complete(key)).unwrap(), b"");
    h.close_all(&[ours, listener]);
    h.assert_quiescent();
}
