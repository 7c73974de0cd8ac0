//! Micro-benchmarks of the hot paths, through the public API, so that a
//! regression shows without a full `proactor bench` run:
//! - `timers`: `call_at` insert and fire (1000 deadlines out of order), and
//!   insert then cancel (1000 `call_later`s);
//! - `dispatch_64`: completion dispatch, 64 connections on one loop each
//!   echoing 64 bytes per iteration (256 completions);
//! - `write_queue`: 1000 small writes queued on one transport, and 16 writes
//!   of 64 KiB through the high-water mark, until the peer has them all;
//! - `delivery_1m`: 1 MiB delivered to a `Protocol` and to a
//!   `BufferedProtocol`.
//!
//! Each runs on `uring` (skipped where io_uring is refused), `poll`, and a
//! calm `sim` (no races: deterministic, no kernel), which shows the loop's
//! own cost best.

use std::cell::{Cell, RefCell};
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

#[path = "../tests/util/echo.rs"]
mod echo;
use echo::Echo;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_channel::oneshot;
use proactor::{
    AnyProtocol, BaseProtocol, BufferedProtocol, DriverKind, EventLoop, Protocol, SimConfig,
    Transport,
};

const DRIVERS: [DriverKind; 3] = [DriverKind::Uring, DriverKind::Poll, DriverKind::Sim];

fn build(kind: DriverKind) -> Option<EventLoop> {
    let b = EventLoop::builder().driver(kind);
    let b = if kind == DriverKind::Sim {
        b.sim_config(SimConfig {
            races: false,
            ..SimConfig::with_seed(1)
        })
    } else {
        b
    };
    match b.build() {
        Ok(lp) => Some(lp),
        Err(e) => {
            eprintln!("skipping the {kind} driver: {e}");
            None
        }
    }
}

/// Counts bytes received on every connection that shares it and fires a
/// oneshot once `target` is reached.
#[derive(Default)]
struct Gate {
    count: Cell<usize>,
    target: Cell<usize>,
    tx: RefCell<Option<oneshot::Sender<()>>>,
}

impl Gate {
    /// Waits for `more` bytes beyond what is counted so far.
    fn arm(&self, more: usize) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.target.set(self.count.get() + more);
        *self.tx.borrow_mut() = Some(tx);
        rx
    }

    fn add(&self, n: usize) {
        self.count.set(self.count.get() + n);
        if self.count.get() >= self.target.get() {
            if let Some(tx) = self.tx.borrow_mut().take() {
                let _ = tx.send(());
            }
        }
    }
}

/// Counts what it receives into a shared gate.
struct Sink(Rc<Gate>);
impl BaseProtocol for Sink {}
impl Protocol for Sink {
    fn data_received(&mut self, data: &[u8]) {
        self.0.add(data.len());
    }
}

/// The same, through its own 64 KiB buffer.
struct BufferedSink(Rc<Gate>, Vec<u8>);
impl BaseProtocol for BufferedSink {}
impl BufferedProtocol for BufferedSink {
    fn get_buffer(&mut self, _size_hint: usize) -> &mut [u8] {
        &mut self.1
    }
    fn buffer_updated(&mut self, nbytes: usize) {
        self.0.add(nbytes);
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// `n` client transports connected to an echo server (or a sink when
/// `echo` is false) on `lp`.
fn connect(
    lp: &EventLoop,
    n: usize,
    echo: bool,
    client: impl Fn() -> AnyProtocol,
) -> (proactor::Server, Vec<Transport>, Rc<Gate>) {
    let h = lp.handle();
    let server_gate = Rc::new(Gate::default());
    let g = server_gate.clone();
    let server = if echo {
        h.create_server(loopback(), || Echo(None))
    } else {
        h.create_server(loopback(), move || Sink(g.clone()))
    }
    .expect("listen");
    let clients = (0..n)
        .map(|_| {
            lp.run_until_complete(h.create_connection(server.local_addr(), client()))
                .expect("loop runs")
                .expect("connect")
        })
        .collect();
    (server, clients, server_gate)
}

fn timers(c: &mut Criterion) {
    const N: u32 = 1000;
    let mut g = c.benchmark_group("timers");
    g.throughput(Throughput::Elements(N as u64));
    let Some(lp) = build(DriverKind::Poll) else {
        return;
    };
    let h = lp.handle();
    let fired = Rc::new(Cell::new(0u32));
    g.bench_function("insert_fire_1000", |b| {
        b.iter(|| {
            let now = h.now();
            for i in 0..N {
                // Deadlines in the past, inserted out of order (7919 is prime).
                let back = Duration::from_micros(u64::from((i * 7919) % N) + 1);
                let f = fired.clone();
                h.call_at(now - back, move || f.set(f.get() + 1));
            }
            // Fires last: the latest deadline, scheduled last.
            let (tx, rx) = oneshot::channel();
            h.call_at(now, move || {
                let _ = tx.send(());
            });
            lp.run_until_complete(rx)
                .expect("loop runs")
                .expect("fired");
        })
    });
    g.bench_function("insert_cancel_1000", |b| {
        b.iter(|| {
            let handles: Vec<_> = (0..N)
                .map(|i| {
                    h.call_later(
                        Duration::from_secs(60) + Duration::from_micros(i.into()),
                        || {},
                    )
                })
                .collect();
            // Earliest first, as per-operation timeouts mostly are.
            for t in &handles {
                t.cancel();
            }
        })
    });
    g.finish();
}

fn dispatch(c: &mut Criterion) {
    const CONNS: usize = 64;
    const SIZE: usize = 64;
    let mut g = c.benchmark_group("dispatch_64");
    // Per iteration: a send and a receive on each side of each connection.
    g.throughput(Throughput::Elements((CONNS * 4) as u64));
    for kind in DRIVERS {
        let Some(lp) = build(kind) else { continue };
        let gate = Rc::new(Gate::default());
        let gc = gate.clone();
        let (server, clients, _) = connect(&lp, CONNS, true, move || Sink(gc.clone()).into());
        let msg = [5u8; SIZE];
        g.bench_function(kind.name(), |b| {
            b.iter(|| {
                let rx = gate.arm(CONNS * SIZE);
                for t in &clients {
                    t.write(&msg);
                }
                lp.run_until_complete(rx)
                    .expect("loop runs")
                    .expect("echoed");
            })
        });
        clients.iter().for_each(Transport::close);
        server.close();
    }
    g.finish();
}

fn write_queue(c: &mut Criterion) {
    let mut g = c.benchmark_group("write_queue");
    for (name, writes, size) in [("1000x64", 1000usize, 64usize), ("16x64K", 16, 64 * 1024)] {
        g.throughput(Throughput::Bytes((writes * size) as u64));
        for kind in DRIVERS {
            let Some(lp) = build(kind) else { continue };
            let (server, clients, gate) = connect(&lp, 1, false, || Echo(None).into());
            let msg = vec![9u8; size];
            g.bench_function(BenchmarkId::new(name, kind.name()), |b| {
                b.iter(|| {
                    let rx = gate.arm(writes * size);
                    for _ in 0..writes {
                        clients[0].write(&msg);
                    }
                    lp.run_until_complete(rx)
                        .expect("loop runs")
                        .expect("received");
                })
            });
            clients[0].close();
            server.close();
        }
    }
    g.finish();
}

fn delivery(c: &mut Criterion) {
    const TOTAL: usize = 1 << 20;
    const CHUNK: usize = 16 * 1024;
    let mut g = c.benchmark_group("delivery_1m");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    for (name, buffered) in [("protocol", false), ("buffered", true)] {
        for kind in DRIVERS {
            let Some(lp) = build(kind) else { continue };
            let h = lp.handle();
            let gate = Rc::new(Gate::default());
            let gs = gate.clone();
            let server = h
                .create_server(loopback(), move || -> AnyProtocol {
                    if buffered {
                        AnyProtocol::buffered(BufferedSink(gs.clone(), vec![0; 64 * 1024]))
                    } else {
                        Sink(gs.clone()).into()
                    }
                })
                .expect("listen");
            let client = lp
                .run_until_complete(h.create_connection(server.local_addr(), Echo(None)))
                .expect("loop runs")
                .expect("connect");
            let chunk = vec![3u8; CHUNK];
            g.bench_function(BenchmarkId::new(name, kind.name()), |b| {
                b.iter(|| {
                    let rx = gate.arm(TOTAL);
                    for _ in 0..TOTAL / CHUNK {
                        client.write(&chunk);
                    }
                    lp.run_until_complete(rx)
                        .expect("loop runs")
                        .expect("delivered");
                })
            });
            client.close();
            server.close();
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = timers, dispatch, write_queue, delivery
}
criterion_main!(benches);
