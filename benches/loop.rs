//! Micro-benchmarks of the loop: `call_soon` throughput, and a 1 KiB echo
//! round trip over loopback TCP on each driver (server and client on one
//! loop). Drivers that cannot start here are skipped with a message.

use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

#[path = "../tests/util/echo.rs"]
mod echo;
use echo::Echo;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_channel::mpsc;
use futures_util::StreamExt;
use proactor::{BaseProtocol, DriverKind, EventLoop, Protocol};

const DRIVERS: [DriverKind; 3] = [DriverKind::Uring, DriverKind::Poll, DriverKind::Sim];

fn build(kind: DriverKind) -> Option<EventLoop> {
    match EventLoop::builder().driver(kind).build() {
        Ok(lp) => Some(lp),
        Err(e) => {
            eprintln!("skipping the {kind} driver: {e}");
            None
        }
    }
}

fn call_soon(c: &mut Criterion) {
    const BATCH: u64 = 1000;
    let mut g = c.benchmark_group("call_soon");
    g.throughput(Throughput::Elements(BATCH));
    for kind in DRIVERS {
        let Some(lp) = build(kind) else { continue };
        let h = lp.handle();
        let counter = Rc::new(Cell::new(0u64));
        g.bench_function(kind.name(), |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    let c = counter.clone();
                    h.call_soon(move || c.set(c.get() + 1));
                }
                // Callbacks queued before the task run before it (FIFO, L1).
                lp.run_until_complete(async {}).expect("loop runs");
            })
        });
    }
    g.finish();
}

/// Forwards the size of each received chunk to the benchmark.
struct Sink(mpsc::UnboundedSender<usize>);
impl BaseProtocol for Sink {}
impl Protocol for Sink {
    fn data_received(&mut self, data: &[u8]) {
        let _ = self.0.unbounded_send(data.len());
    }
}

fn echo_round_trip(c: &mut Criterion) {
    const SIZE: usize = 1024;
    let mut g = c.benchmark_group("echo_round_trip_1k");
    g.throughput(Throughput::Bytes(SIZE as u64));
    for kind in DRIVERS {
        let Some(lp) = build(kind) else { continue };
        let h = lp.handle();
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let server = h.create_server(any, || Echo(None)).expect("listen");
        let (tx, rx) = mpsc::unbounded();
        let client = lp
            .run_until_complete(h.create_connection(server.local_addr(), Sink(tx)))
            .expect("loop runs")
            .expect("connect");
        let mut rx = Some(rx);
        let msg = vec![7u8; SIZE];
        g.bench_function(kind.name(), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    client.write(&msg);
                    // The receiver moves into the future and comes back out.
                    let mut r = rx.take().expect("receiver is returned each round");
                    rx = Some(
                        lp.run_until_complete(async move {
                            let mut got = 0;
                            while got < SIZE {
                                got += r.next().await.unwrap_or(SIZE);
                            }
                            r
                        })
                        .expect("loop runs"),
                    );
                }
                start.elapsed()
            })
        });
        client.close();
        server.close();
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = call_soon, echo_round_trip
}
criterion_main!(benches);
