//! Heap use, counted on the loop thread by a counting allocator.
//!
//! No heap allocation per operation on the hot path: a closed-loop echo
//! (one 64-byte message in flight) counts the allocations its loop thread
//! makes per round trip, on every driver. Each round trip is two sends, two
//! receives, their completions, two transport runs and two deliveries.
//!
//! The loop and transports allocate nothing per round trip; the bounds
//! below leave room only for what a driver allocates per op: `poll`, and
//! `uring` when it receives multishot over its buffer ring, copy each
//! received message into a buffer of its size (one allocation per receive,
//! two per round trip); single-shot `uring` allocates nothing; `sim` is
//! reported, not bounded (it keeps a text trace of its decisions).
//!
//! Little heap per idle connection: what a connection that made one round
//! trip and went quiet still holds. On `poll` no receive buffer (the driver
//! reads into one buffer for the loop), nor on `uring` with multishot
//! receives (the buffer ring is the loop's); single-shot `uring` and `sim`
//! (on seeds without multishot) hold their 64 KiB receive buffer, and are
//! reported, not bounded.
//!
//! Nothing per ended connection: once connections are released, the heap
//! is back where it was before they were opened.

mod util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};

use futures_channel::oneshot;
use proactor::{BaseProtocol, DriverKind, EventLoop, Handle, Protocol, Server, Transport};
use util::*;

/// Counts the allocations of the current thread, and the bytes it holds
/// (tests run in parallel, each on its own thread).
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static LIVE_BYTES: Cell<i64> = const { Cell::new(0) };
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn live_bytes() -> i64 {
    LIVE_BYTES.with(Cell::get)
}

/// Counts an allocation of `grown` bytes (negative: freed).
fn count(allocation: bool, grown: i64) {
    if allocation {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
    }
    let _ = LIVE_BYTES.try_with(|c| c.set(c.get() + grown));
}

// SAFETY: every call is forwarded unchanged to the system allocator, which
// upholds `GlobalAlloc`'s contract; the counters are thread-local `Cell`s
// with const initialisers and no destructor, so touching them never
// allocates or re-enters the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(true, layout.size() as i64);
        // SAFETY: the caller's layout is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(false, -(layout.size() as i64));
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(true, new_size as i64 - layout.size() as i64);
        // SAFETY: `ptr` came from `System` with `layout`, as the caller promises.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SIZE: usize = 64;
const WARMUP: u64 = 50;
const ROUNDS: u64 = 500;

/// Sends a message, waits for all of it to come back, sends the next;
/// counts allocations from round `WARMUP` to round `WARMUP + ROUNDS`.
struct Pinger {
    transport: Option<Transport>,
    got: usize,
    rounds: u64,
    start: u64,
    done: Option<oneshot::Sender<u64>>,
}
impl BaseProtocol for Pinger {
    fn connection_made(&mut self, t: Transport) {
        t.write(&[7; SIZE]);
        self.transport = Some(t);
    }
}
impl Protocol for Pinger {
    fn data_received(&mut self, data: &[u8]) {
        self.got += data.len();
        if self.got < SIZE {
            return;
        }
        assert_eq!(self.got, SIZE, "one message in flight");
        self.got = 0;
        self.rounds += 1;
        if self.rounds == WARMUP {
            self.start = allocations();
        }
        if self.rounds == WARMUP + ROUNDS {
            if let Some(tx) = self.done.take() {
                let _ = tx.send(allocations() - self.start);
            }
            return;
        }
        if let Some(t) = &self.transport {
            t.write(&[7; SIZE]);
        }
    }
}

#[test]
fn echo_round_trips_allocate_nothing_per_op_in_the_loop() {
    let figures = RefCell::new(Vec::new());
    on_every_driver_shared("echo_round_trips_allocate", |lp| {
        let h = lp.handle();
        let server = h.create_server(localhost(), || Echo(None)).expect("listen");
        let (tx, rx) = oneshot::channel();
        let pinger = Pinger {
            transport: None,
            got: 0,
            rounds: 0,
            start: 0,
            done: Some(tx),
        };
        let client = lp
            .run_until_complete(h.create_connection(server.local_addr(), pinger))
            .expect("loop runs")
            .expect("connect");
        let counted = lp
            .run_until_complete(rx)
            .expect("loop runs")
            .expect("rounds done");
        let per_round_trip = counted as f64 / ROUNDS as f64;
        let kind = lp.handle().driver_kind();
        let multishot = lp.handle().driver_stats().multishot_completions > 0;
        figures.borrow_mut().push((kind, per_round_trip));
        eprintln!(
            "{kind}: {per_round_trip} allocations per echo round trip (multishot receives: {multishot})"
        );
        // Per round trip: the loop and transports allocate nothing; `poll`
        // sizes each received message (2 receives), and so does `uring`
        // when it receives multishot (each arrival is copied out of the
        // buffer ring into a buffer of its size); single-shot `uring`
        // receives into pooled buffers. `sim` is not bounded: it records
        // a readable trace of every scheduling decision (text).
        let bound = match kind {
            DriverKind::Poll => Some(2.0),
            DriverKind::Uring if multishot => Some(2.0),
            DriverKind::Uring => Some(0.5),
            DriverKind::Sim => None,
        };
        if let Some(bound) = bound {
            assert!(
                per_round_trip <= bound,
                "{kind}: {per_round_trip} allocations per round trip (at most {bound})"
            );
        }
        client.close();
        server.close();
    });
    eprintln!("allocations per echo round trip: {:?}", figures.borrow());
}

/// Opens one client connection to `server` that makes one echo round trip
/// and then stays idle; returns once the echo came back.
fn connect_one_round_trip(lp: &EventLoop, h: &Handle, server: &Server) -> Transport {
    let (tx, rx) = oneshot::channel();
    let protocol = OneRoundTrip {
        got: 0,
        done: Some(tx),
    };
    let client = lp
        .run_until_complete(h.create_connection(server.local_addr(), protocol))
        .expect("loop runs")
        .expect("connect");
    lp.run_until_complete(rx)
        .expect("loop runs")
        .expect("echoed");
    client
}

/// Writes one message and waits for its echo, then stays idle.
struct OneRoundTrip {
    got: usize,
    done: Option<oneshot::Sender<()>>,
}
impl BaseProtocol for OneRoundTrip {
    fn connection_made(&mut self, t: Transport) {
        t.write(&[7; SIZE]);
    }
}
impl Protocol for OneRoundTrip {
    fn data_received(&mut self, data: &[u8]) {
        self.got += data.len();
        if self.got >= SIZE {
            if let Some(tx) = self.done.take() {
                let _ = tx.send(());
            }
        }
    }
}

#[test]
fn idle_connections_hold_little_heap() {
    const CONNECTIONS: usize = 500;
    on_every_driver_shared("idle_connections_hold_little_heap", |lp| {
        let h = lp.handle();
        let server = h.create_server(localhost(), || Echo(None)).expect("listen");
        let mut clients = Vec::with_capacity(CONNECTIONS + 50);
        // The loop's tables and pools reach their working size first.
        for _ in 0..50 {
            clients.push(connect_one_round_trip(&lp, &h, &server));
        }
        let before = live_bytes();
        for _ in 0..CONNECTIONS {
            clients.push(connect_one_round_trip(&lp, &h, &server));
        }
        // Both ends of each connection are on this loop.
        let per_connection = (live_bytes() - before) as f64 / (2 * CONNECTIONS) as f64;
        let kind = h.driver_kind();
        let multishot = h.driver_stats().multishot_completions > 0;
        eprintln!(
            "{kind}: {per_connection:.0} heap bytes per idle connection (multishot receives: {multishot})"
        );
        // About 930 B on `poll` and 880 B on multishot `uring` today: the
        // transport (about 550 B), the driver's entry for its receive in
        // flight (and on `poll` the socket's parked-op queues), the loop's
        // handler and resource entries, the protocol, and the amortised
        // spare capacity of those tables. Its queues hold nothing (inline
        // first elements, the send tail back in the pool). A receive buffer
        // per connection would be 64 KiB.
        let bound = match kind {
            DriverKind::Poll => Some(1000.0),
            DriverKind::Uring if multishot => Some(950.0),
            _ => None,
        };
        if let Some(bound) = bound {
            assert!(
                per_connection <= bound,
                "{kind}: {per_connection:.0} heap bytes per idle connection (at most {bound})"
            );
        }
        clients.iter().for_each(Transport::close);
        server.close();
    });
}

/// Connections that ended hold nothing: once every transport released its
/// socket, the loop's thread holds no more heap than before they were
/// opened (the server forgets a connection as it is released, not at its
/// next accept).
#[test]
fn ended_connections_hold_no_heap() {
    const CONNECTIONS: usize = 200;
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(10);
    on_every_driver_shared("ended_connections_hold_no_heap", |lp| {
        let h = lp.handle();
        let server = h.create_server(localhost(), || Echo(None)).expect("listen");
        let round = || {
            let mut clients = Vec::with_capacity(CONNECTIONS);
            for _ in 0..CONNECTIONS {
                clients.push(connect_one_round_trip(&lp, &h, &server));
            }
            clients.iter().for_each(Transport::close);
            drop(clients);
            let h = h.clone();
            lp.run_until_complete(async move {
                let released = || h.table_sizes().transports == 0;
                wait_until(&h, LIMIT, "every transport released", released).await
            })
            .expect("loop runs");
        };
        // The first round brings the loop's tables and pools to their size.
        round();
        assert_eq!(server.active_connections(), 0);
        let before = live_bytes();
        round();
        let per_connection = (live_bytes() - before) as f64 / CONNECTIONS as f64;
        let kind = h.driver_kind();
        eprintln!("{kind}: {per_connection:.0} heap bytes per ended connection");
        // `sim` keeps a text trace of its decisions, which grows. Elsewhere
        // a table may still grow a little (fd numbers depend on the tests
        // running alongside); a transport kept alive would be over 500 B.
        if kind != DriverKind::Sim {
            assert!(
                per_connection <= 64.0,
                "{kind}: {per_connection:.0} heap bytes still held per ended connection"
            );
        }
        server.close();
    });
}
