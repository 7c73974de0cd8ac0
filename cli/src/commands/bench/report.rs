//! The report: one table per cell (median over rounds, range, ratio to the
//! cell's baseline, latency, CPU), the idle-memory table, the issue's
//! targets with PASS/FAIL, and the same as one JSON object.

use serde_json::{json, Value};

use super::plan::{Cell, Plan, ServerKind};
use super::stats::{Measured, Summary};
use super::{machine_line, tlsconf, Outcome};

/// Median and range of one server's figure in cell `ci`.
pub fn figure(out: &Outcome, ci: usize, kind: ServerKind) -> Option<Summary> {
    let runs = out.runs.get(&(ci, kind))?;
    Summary::of(&runs.iter().map(|m| m.value).collect::<Vec<_>>())
}

/// Median of one field over the rounds (NaN when unknown).
fn median_of(out: &Outcome, ci: usize, kind: ServerKind, f: fn(&Measured) -> f64) -> f64 {
    out.runs
        .get(&(ci, kind))
        .and_then(|r| Summary::of(&r.iter().map(f).collect::<Vec<_>>()))
        .map_or(f64::NAN, |s| s.median)
}

/// `figure / baseline figure` (medians), if both were measured.
pub fn ratio(out: &Outcome, ci: usize, kind: ServerKind, base: ServerKind) -> Option<f64> {
    let a = figure(out, ci, kind)?.median;
    let b = figure(out, ci, base)?.median;
    (b > 0.0).then(|| a / b)
}

/// Figures as printed: round trips/s in thousands, bulk in MB/s.
fn fmt_value(cell: Cell, v: f64) -> String {
    if cell.is_bulk() {
        format!("{:.0}", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn pct(v: f64) -> String {
    if v.is_finite() {
        format!("{:.0}%", v * 100.0)
    } else {
        "-".into()
    }
}

fn us(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0}")
    } else {
        "-".into()
    }
}

/// The 1-minute load average: anything but this bench running skews it.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Above this share of a CPU busy before the run, the report says its
/// figures are noise.
const BUSY: f64 = 0.1;

pub fn header(plan: &Plan, out: &mut Outcome, estimate_s: f64) {
    println!("machine: {}", machine_line());
    let cpus = [out.server_cpu, out.client_cpu];
    let busy = super::sys::cpu_busy(&cpus, std::time::Duration::from_millis(500));
    println!(
        "before the run: CPU {} {} busy, CPU {} {} busy; load average {}",
        cpus[0],
        pct(busy[0]),
        cpus[1],
        pct(busy[1]),
        load_average()
    );
    if busy.iter().any(|&b| b > BUSY) {
        println!("WARNING: other work is running on these CPUs: every figure below is noise");
    }
    out.busy_before = busy;
    let same = if out.server_cpu == out.client_cpu {
        " (the same CPU: figures are not comparable with a 2-CPU run)"
    } else {
        ""
    };
    println!(
        "pinning: each server in its own process on CPU {}, the load client on CPU {}{same}",
        out.server_cpu, out.client_cpu
    );
    println!(
        "{} round(s), interleaved; per run {:.2} s warm-up + {:.2} s measured; closed loop, one message in flight per connection{}",
        plan.rounds,
        plan.warmup.as_secs_f64(),
        plan.duration.as_secs_f64(),
        if plan.quick { "; --quick (smoke run)" } else { "" }
    );
    println!("expected to take about {:.0} s", estimate_s);
}

pub fn print(plan: &Plan, out: &Outcome) {
    for (ci, &cell) in plan.cells.iter().enumerate() {
        print_cell(plan, out, ci, cell);
    }
    if !out.idle.is_empty() {
        println!();
        println!("idle memory: VmRSS of a fresh server process before and after its idle connections (one 64 B round trip each)");
        println!(
            "{:<20} {:>7} {:>11} {:>11} {:>10} {:>9}",
            "server", "conns", "before KiB", "after KiB", "B / conn", "x tokio-ct"
        );
        let base = out.idle.iter().find(|i| i.kind == ServerKind::TokioCt);
        for i in &out.idle {
            let r = base.map_or(f64::NAN, |b| i.per_connection() / b.per_connection());
            println!(
                "{:<20} {:>7} {:>11} {:>11} {:>10.0} {:>9}",
                i.kind.name(),
                i.connections,
                i.before / 1024,
                i.after / 1024,
                i.per_connection(),
                if r.is_finite() {
                    format!("{r:.2}x")
                } else {
                    "-".into()
                }
            );
        }
    }
    println!();
    println!("targets (issue 10; proactor-uring, medians):");
    for t in super::targets::targets(plan, out) {
        println!("  {:<7} {:<26} {}", t.verdict(), t.name, t.detail);
    }
    for (k, why) in &out.skipped {
        println!("skipped {}: {why}", k.name());
    }
    for f in &out.failures {
        println!("FAILED {f}");
    }
    println!(
        "total {:.0} s; load average after the run: {}",
        out.seconds,
        load_average()
    );
}

fn print_cell(plan: &Plan, out: &Outcome, ci: usize, cell: Cell) {
    let base = cell.baseline();
    println!();
    let tls = if cell.is_tls() {
        format!(
            ", TLS 1.3 {} on both ends",
            out.suite.as_deref().unwrap_or(tlsconf::SUITE)
        )
    } else {
        String::new()
    };
    println!(
        "{} ({}, ratio to {}{tls})",
        cell.label(),
        cell.unit(),
        base.name()
    );
    let extra = if cell == Cell::Bulk {
        "of loopback"
    } else {
        ""
    };
    println!(
        "{:<20} {:>9} {:>19} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>10} {:>11}",
        "server",
        "median",
        "min - max",
        "ratio",
        "p50 us",
        "p99 us",
        "srv cpu",
        "cli cpu",
        "bound",
        if cell.is_bulk() { "" } else { "srv us/rt" },
        extra
    );
    let loopback = figure(out, ci, ServerKind::Loopback).map(|s| s.median);
    for &kind in plan.servers.iter().filter(|&&k| cell.runs(k)) {
        let Some(s) = figure(out, ci, kind) else {
            continue;
        };
        let r = ratio(out, ci, kind, base).map_or("-".into(), |r| format!("{r:.2}x"));
        let of_loopback = match (cell, loopback) {
            (Cell::Bulk, Some(l)) if l > 0.0 => pct(s.median / l),
            _ => String::new(),
        };
        let (srv, cli) = (
            median_of(out, ci, kind, |m| m.server_cpu),
            median_of(out, ci, kind, |m| m.client_cpu),
        );
        // Server CPU per round trip: the server's efficiency even where the
        // client limited the rate (same as CPU ms per 1,000 round trips).
        let per_rt = if cell.is_bulk() {
            String::new()
        } else {
            let v = median_of(out, ci, kind, Measured::server_us_per_unit);
            if v.is_finite() {
                format!("{v:.2}")
            } else {
                "-".into()
            }
        };
        println!(
            "{:<20} {:>9} {:>19} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>10} {:>11}",
            kind.name(),
            fmt_value(cell, s.median),
            format!("{} - {}", fmt_value(cell, s.min), fmt_value(cell, s.max)),
            r,
            us(median_of(out, ci, kind, |m| m.p50_us)),
            us(median_of(out, ci, kind, |m| m.p99_us)),
            pct(srv),
            pct(cli),
            bound(srv, cli),
            per_rt,
            of_loopback
        );
    }
    if cell == Cell::Bulk {
        if let Some(s) = Summary::of(&out.one_way) {
            println!(
                "(loopback one way, raw blocking pair without echo: {:.0} MB/s, range {:.0} - {:.0})",
                s.median / 1e6,
                s.min / 1e6,
                s.max / 1e6
            );
        }
    }
}

/// Which side ran out of CPU (90% or more of its core): the server (the
/// figure measures it), the client (the figure is the client's ceiling, not
/// the server's), both, or neither (wake-up latency, or other work on the
/// CPUs).
fn bound(server_cpu: f64, client_cpu: f64) -> &'static str {
    match (server_cpu >= 0.9, client_cpu >= 0.9) {
        (true, true) => "both",
        (true, false) => "server",
        (false, true) => "client",
        (false, false) if server_cpu.is_nan() => "-",
        (false, false) => "neither",
    }
}

/// The whole run as one JSON object.
pub fn json(plan: &Plan, out: &Outcome) -> Value {
    let mut rows = Vec::new();
    for (ci, &cell) in plan.cells.iter().enumerate() {
        for &kind in &plan.servers {
            let Some(runs) = out.runs.get(&(ci, kind)) else {
                continue;
            };
            let Some(s) = figure(out, ci, kind) else {
                continue;
            };
            let num = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
            let (connections, size) = match cell {
                Cell::Echo { connections, size } | Cell::TlsEcho { connections, size } => {
                    (connections, size)
                }
                Cell::Bulk | Cell::TlsBulk => (1, super::load::bulk::WRITE),
            };
            rows.push(json!({
                "cell": cell.label(),
                "tls": cell.is_tls(),
                "bulk": cell.is_bulk(),
                "connections": connections,
                "size": size,
                "server": kind.name(),
                "unit": if cell.is_bulk() { "bytes/s" } else { "round_trips/s" },
                "median": s.median, "min": s.min, "max": s.max,
                "rounds": runs.iter().map(|m| m.value).collect::<Vec<_>>(),
                "baseline": cell.baseline().name(),
                "ratio": ratio(out, ci, kind, cell.baseline()).map_or(Value::Null, |r| json!(r)),
                "p50_us": num(median_of(out, ci, kind, |m| m.p50_us)),
                "p99_us": num(median_of(out, ci, kind, |m| m.p99_us)),
                "server_cpu": num(median_of(out, ci, kind, |m| m.server_cpu)),
                "client_cpu": num(median_of(out, ci, kind, |m| m.client_cpu)),
                "server_us_per_round_trip": if cell.is_bulk() {
                    Value::Null
                } else {
                    num(median_of(out, ci, kind, Measured::server_us_per_unit))
                },
                "wall_s": num(median_of(out, ci, kind, |m| m.wall_s)),
            }));
        }
    }
    let idle: Vec<Value> = out
        .idle
        .iter()
        .map(|i| {
            json!({
                "server": i.kind.name(), "connections": i.connections,
                "rss_before": i.before, "rss_after": i.after,
                "bytes_per_connection": i.per_connection(),
            })
        })
        .collect();
    let targets: Vec<Value> = super::targets::targets(plan, out)
        .iter()
        .map(|t| json!({"target": t.name, "pass": t.pass, "detail": t.detail}))
        .collect();
    let one_way = Summary::of(&out.one_way).map_or(Value::Null, |s| json!(s.median));
    json!({
        "machine": machine_line(),
        "server_cpu": out.server_cpu,
        "client_cpu": out.client_cpu,
        "quick": plan.quick,
        "rounds": plan.rounds,
        "warmup_s": plan.warmup.as_secs_f64(),
        "duration_s": plan.duration.as_secs_f64(),
        "tls_suite": out.suite,
        "cpu_busy_before": out.busy_before.iter().map(|&b| if b.is_finite() { json!(b) } else { Value::Null }).collect::<Vec<_>>(),
        "loopback_one_way_bytes_per_s": one_way,
        "rows": rows,
        "idle": idle,
        "targets": targets,
        "skipped": out.skipped.iter().map(|(k, w)| json!({"server": k.name(), "reason": w})).collect::<Vec<_>>(),
        "failures": out.failures,
        "seconds": out.seconds,
    })
}
