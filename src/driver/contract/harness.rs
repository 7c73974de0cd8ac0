//! What the contract cases run on: one driver behind `Box<dyn Driver>`, the
//! completions it returned that no case claimed yet, and a [`Peer`].

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use socket2::Socket;

use crate::address::Address;
use crate::driver::{Completion, Driver, DriverKind, Op, OpKey, SockOpt, SocketId};

/// Longest (real) time a case waits for one completion.
pub(crate) const DEADLINE: Duration = Duration::from_secs(20);

/// One wait of a case that is waiting for something.
const TURN: Duration = Duration::from_millis(100);

/// A driver under test.
pub(crate) struct Harness {
    pub(crate) driver: Box<dyn Driver>,
    /// Completions returned by `wait` and not claimed yet.
    pending: Vec<Completion>,
    /// The test's full name (`driver::contract::<backend>::<case>`).
    pub(crate) test: &'static str,
}

/// The far end of a connection, driven by the case itself. On the kernel
/// backends it is a std socket, so its bytes land while the driver is not
/// looking (between two waits, as a real peer's do); on `sim`, whose network
/// only moves inside `wait`, it is another socket of the same simulator.
#[derive(Debug)]
pub(crate) enum Peer {
    /// A blocking socket outside the driver.
    Kernel(Socket),
    /// A socket of the simulator under test.
    Sim(SocketId),
}

impl Harness {
    pub(crate) fn new(driver: Box<dyn Driver>, test: &'static str) -> Harness {
        Harness {
            driver,
            pending: Vec::new(),
            test,
        }
    }

    pub(crate) fn kind(&self) -> DriverKind {
        self.driver.kind()
    }

    /// The sim's recent trace (empty on the kernel backends).
    pub(crate) fn trace(&self) -> String {
        self.driver.trace().unwrap_or_default()
    }

    /// Prints why this case does not run on this backend.
    pub(crate) fn skip(&self, why: &str) {
        eprintln!("{}: SKIPPED on {}: {why}", self.test, self.kind());
    }

    /// One `wait` of up to `timeout`, keeping what it returns.
    pub(crate) fn turn(&mut self, timeout: Duration) {
        self.driver
            .wait(Some(timeout), &mut self.pending)
            .expect("wait");
    }

    /// Takes every completion returned so far and not claimed.
    pub(crate) fn take_pending(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.pending)
    }

    /// Whether the completion of `key` was returned (and not claimed yet).
    pub(crate) fn has_completion(&self, key: OpKey) -> bool {
        self.pending.iter().any(|c| c.key == key)
    }

    /// Waits for the one completion of `key`.
    pub(crate) fn complete(&mut self, key: OpKey) -> Completion {
        self.complete_all(&[key]).pop().expect("one completion")
    }

    /// Waits for the completions of all `keys`; returns them in the order
    /// the driver returned them.
    pub(crate) fn complete_all(&mut self, keys: &[OpKey]) -> Vec<Completion> {
        let start = Instant::now();
        while let Some(missing) = keys.iter().find(|k| !self.has_completion(**k)) {
            assert!(
                start.elapsed() < DEADLINE,
                "{}: no completion for {missing:?}\n{}",
                self.test,
                self.trace()
            );
            self.turn(TURN);
        }
        let (mine, others): (Vec<_>, Vec<_>) = self
            .take_pending()
            .into_iter()
            .partition(|c| keys.contains(&c.key));
        self.pending = others;
        mine
    }

    /// Submits a receive of at most `room` bytes.
    pub(crate) fn submit_recv(&mut self, socket: SocketId, room: usize) -> OpKey {
        self.driver.submit(
            Op::Recv {
                socket,
                buf: Vec::with_capacity(room),
            },
            0,
        )
    }

    /// Submits `op` and waits for its completion.
    pub(crate) fn run(&mut self, op: Op) -> Completion {
        let key = self.driver.submit(op, 0);
        self.complete(key)
    }

    /// O1 once nothing is in flight: every submitted op completed exactly
    /// once, was claimed, and every cancel request was settled.
    pub(crate) fn assert_quiescent(&self) {
        assert!(
            self.pending.is_empty(),
            "{}: unclaimed completions {:?}",
            self.test,
            self.pending
        );
        assert_eq!(self.driver.in_flight(), 0, "{}", self.test);
        let s = self.driver.stats();
        assert_eq!(s.submitted, s.completed, "{}: O1: {s:?}", self.test);
        assert_eq!(
            s.cancel_requests,
            s.cancel_races + s.cancelled,
            "{}: {s:?}",
            self.test
        );
    }

    pub(crate) fn close_all(&mut self, sockets: &[SocketId]) {
        for &s in sockets {
            self.driver.close(s);
        }
    }

    // ----- connections through the driver -----

    pub(crate) fn listen(&mut self, addr: &Address) -> SocketId {
        self.driver.listen(addr, 128).expect("listen")
    }

    /// Connects a new socket to `listener` and accepts it: (client, server).
    pub(crate) fn connect_to(&mut self, listener: SocketId) -> (SocketId, SocketId) {
        let addr = self.driver.local_addr(listener).expect("local_addr");
        let client = self.driver.open_stream(&addr).expect("open_stream");
        let connect = self.driver.submit(
            Op::Connect {
                socket: client,
                addr,
            },
            0,
        );
        let accept = self.driver.submit(
            Op::Accept {
                listener,
                accepted: None,
            },
            0,
        );
        self.complete(connect).result.expect("connect");
        (client, accepted(self.complete(accept)).0)
    }

    /// Sends all of `bufs` (after `offset`), resubmitting what a short send left.
    pub(crate) fn send_bufs(&mut self, socket: SocketId, mut bufs: Vec<Bytes>, mut offset: usize) {
        while bufs.iter().map(|b| b.len()).sum::<usize>() > offset {
            let sent = self
                .run(Op::Send {
                    socket,
                    bufs: bufs.clone(),
                    offset,
                })
                .result
                .expect("send");
            assert!(sent > 0, "{}: a send moved nothing", self.test);
            advance(&mut bufs, &mut offset, sent);
        }
    }

    pub(crate) fn send_all(&mut self, socket: SocketId, data: &[u8]) {
        self.send_bufs(socket, vec![Bytes::copy_from_slice(data)], 0);
    }

    /// One receive of at most `room` bytes.
    pub(crate) fn recv(&mut self, socket: SocketId, room: usize) -> io::Result<Vec<u8>> {
        let key = self.submit_recv(socket, room);
        recv_bytes(self.complete(key))
    }

    pub(crate) fn recv_exact(&mut self, socket: SocketId, len: usize) -> Vec<u8> {
        let mut got = Vec::with_capacity(len);
        while got.len() < len {
            let chunk = self.recv(socket, len - got.len()).expect("recv");
            assert!(!chunk.is_empty(), "{}: unexpected EOF", self.test);
            got.extend_from_slice(&chunk);
        }
        got
    }

    /// Receives until EOF.
    pub(crate) fn recv_to_eof(&mut self, socket: SocketId) -> Vec<u8> {
        let mut got = Vec::new();
        loop {
            let chunk = self.recv(socket, 64 << 10).expect("recv");
            if chunk.is_empty() {
                return got;
            }
            got.extend_from_slice(&chunk);
        }
    }

    // ----- the peer -----

    /// Connects a [`Peer`] to `listener` and accepts it: (our socket, peer).
    pub(crate) fn accept_peer(&mut self, listener: SocketId) -> (SocketId, Peer) {
        if self.kind() == DriverKind::Sim {
            let (client, server) = self.connect_to(listener);
            return (server, Peer::Sim(client));
        }
        let peer = match self.driver.local_addr(listener).expect("local_addr") {
            Address::Inet(a) => Socket::from(std::net::TcpStream::connect(a).expect("connect")),
            Address::Unix(p) => Socket::from(UnixStream::connect(p).expect("connect")),
        };
        let ours = accepted(self.run(Op::Accept {
            listener,
            accepted: None,
        }))
        .0;
        (ours, Peer::Kernel(peer))
    }

    /// The peer writes all of `data`.
    pub(crate) fn peer_write(&mut self, peer: &Peer, data: &[u8]) {
        match peer {
            Peer::Kernel(s) => (&*s).write_all(data).expect("peer write"),
            Peer::Sim(s) => self.send_all(*s, data),
        }
    }

    /// The peer reads until EOF (at most [`DEADLINE`]).
    pub(crate) fn peer_read_to_eof(&mut self, peer: &Peer) -> Vec<u8> {
        match peer {
            Peer::Kernel(s) => {
                s.set_read_timeout(Some(DEADLINE)).expect("timeout");
                let mut got = Vec::new();
                (&*s).read_to_end(&mut got).expect("peer read");
                got
            }
            Peer::Sim(s) => self.recv_to_eof(*s),
        }
    }

    pub(crate) fn peer_set_option(&mut self, peer: &Peer, opt: SockOpt) {
        match (peer, opt) {
            (Peer::Kernel(s), SockOpt::RecvBuffer(n)) => s.set_recv_buffer_size(n),
            (Peer::Kernel(s), SockOpt::Linger(l)) => s.set_linger(l),
            (Peer::Kernel(_), other) => unimplemented!("peer option {other:?}"),
            (Peer::Sim(s), opt) => self.driver.set_option(*s, opt),
        }
        .expect("peer option");
    }

    /// The peer closes its socket (with a reset if its linger is zero).
    pub(crate) fn peer_close(&mut self, peer: Peer) {
        match peer {
            Peer::Kernel(s) => drop(s),
            Peer::Sim(s) => self.driver.close(s),
        }
    }
}

/// The socket and peer address of a successful accept.
pub(crate) fn accepted(c: Completion) -> (SocketId, Address) {
    c.result.expect("accept");
    match c.op {
        Op::Accept {
            accepted: Some(a), ..
        } => a,
        other => panic!("accept without a socket: {other:?}"),
    }
}

/// The bytes of a receive's completion (its result checked against its buffer).
pub(crate) fn recv_bytes(c: Completion) -> io::Result<Vec<u8>> {
    let n = c.result?;
    match c.op {
        Op::Recv { buf, .. } => {
            assert_eq!(buf.len(), n, "the result is what the buffer grew by");
            Ok(buf)
        }
        other => panic!("not a recv: {other:?}"),
    }
}

/// Drops the first `n` bytes (after `offset`) of `bufs`.
pub(crate) fn advance(bufs: &mut Vec<Bytes>, offset: &mut usize, n: usize) {
    let mut n = n + *offset;
    while let Some(first) = bufs.first() {
        if n < first.len() {
            break;
        }
        n -= first.len();
        bufs.remove(0);
    }
    *offset = n;
}

/// `len` recognisable bytes; different `seed`s give different bytes.
pub(crate) fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed * 7) % 251) as u8)
        .collect()
}
