//! `proactor bench`: closed-loop echo throughput and latency of proactor (on
//! uring and poll) next to a tokio echo server, in one run, with one client.

mod client;
mod servers;

use std::time::Duration;

use serde_json::json;

use crate::args::BenchArgs;
use crate::failure::Failure;

#[derive(Debug)]
struct Row {
    server: String,
    connections: usize,
    size: usize,
    rt_per_s: f64,
    mb_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

pub fn run(args: &BenchArgs) -> Result<(), Failure> {
    let secs = |what: &str, v: f64| {
        if v.is_finite() && (0.0..=3600.0).contains(&v) {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(Failure::setup(format!(
                "{what} must be between 0 and 3600 seconds"
            )))
        }
    };
    let duration = secs("--duration", args.duration)?;
    let warmup = secs("--warmup", args.warmup)?;
    if duration.is_zero() {
        return Err(Failure::setup("--duration must be positive"));
    }
    if args.connections.iter().any(|&c| c == 0 || c > 10_000) {
        return Err(Failure::setup("--connections must be between 1 and 10000"));
    }
    println!("{}", machine_line());
    println!(
        "closed loop, 1 message in flight per connection, {:.1} s warm-up + {:.1} s per cell; MB/s = payload echoed per second",
        warmup.as_secs_f64(),
        duration.as_secs_f64()
    );
    println!(
        "{:<16} {:>5} {:>7} {:>12} {:>10} {:>9} {:>9}",
        "server", "conns", "size", "round trips/s", "MB/s", "p50 us", "p99 us"
    );
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for name in &args.servers {
        let server = match servers::start(name.trim()) {
            Ok(s) => s,
            Err(e) => {
                println!("{:<16} skipped: {e}", name.trim());
                skipped.push(json!({"server": name.trim(), "reason": e}));
                continue;
            }
        };
        for &connections in &args.connections {
            for &size in &args.sizes {
                let sample = client::run(server.addr, connections, size, warmup, duration)
                    .map_err(|e| Failure::run(format!("{}: {e}", server.name)))?;
                let row = Row {
                    server: server.name.clone(),
                    connections,
                    size,
                    rt_per_s: sample.round_trips_per_s(),
                    mb_per_s: sample.round_trips_per_s() * size as f64 / 1e6,
                    p50_us: sample.percentile_us(0.50),
                    p99_us: sample.percentile_us(0.99),
                };
                println!(
                    "{:<16} {:>5} {:>7} {:>12.0} {:>10.1} {:>9.1} {:>9.1}",
                    row.server,
                    row.connections,
                    row.size,
                    row.rt_per_s,
                    row.mb_per_s,
                    row.p50_us,
                    row.p99_us
                );
                rows.push(row);
            }
        }
    }
    if args.json {
        let rows: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "server": r.server, "connections": r.connections, "size": r.size,
                    "round_trips_per_s": r.rt_per_s, "mb_per_s": r.mb_per_s,
                    "p50_us": r.p50_us, "p99_us": r.p99_us,
                })
            })
            .collect();
        println!(
            "{}",
            json!({"machine": machine_line(), "rows": rows, "skipped": skipped})
        );
    }
    Ok(())
}

/// CPU, core count and kernel, so a table is never read without its machine.
fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown kernel".into());
    format!("machine: {cpu}, {cores} CPUs, Linux {kernel}")
}
