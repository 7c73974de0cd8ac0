//! `proactor bench`: proactor (uring, poll) next to tokio (current-thread
//! and multi-thread), a bare io_uring echo ring, blocking std threads,
//! monoio, compio and tokio-rustls, measured by one load client.
//!
//! Each server runs in its own process (`proactor bench-server`, see
//! [`serve()`]) pinned to one CPU; the load client (`load`: its own
//! io_uring, or tokio-rustls for TLS) runs on this thread, pinned to
//! another. Rounds are interleaved (for each round, for each cell, for each
//! server), and every figure is the median over the rounds with its range.
//! The idle-memory figure opens many connections to a fresh server process
//! and reads its `VmRSS` before and after.

mod child;
mod load;
mod plan;
mod plot;
mod report;
mod serve;
mod stats;
mod sys;
mod targets;
mod tlsconf;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::args::BenchArgs;
use crate::failure::Failure;
use child::ServerProcess;
use plan::{Cell, Plan, ServerKind};
use stats::Measured;

pub use serve::run as serve;

/// Everything a run measured, for the report.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Per (index of the cell in the plan, server): one entry per round.
    pub runs: HashMap<(usize, ServerKind), Vec<Measured>>,
    /// One-way loopback bytes per second, one per round.
    pub one_way: Vec<f64>,
    pub idle: Vec<Idle>,
    pub skipped: Vec<(ServerKind, String)>,
    pub failures: Vec<String>,
    /// The cipher suite the TLS handshakes agreed on.
    pub suite: Option<String>,
    pub server_cpu: usize,
    pub client_cpu: usize,
    /// Share of each of the two CPUs busy just before the run.
    pub busy_before: Vec<f64>,
    pub seconds: f64,
}

/// Resident memory of one server before and after its idle connections.
#[derive(Debug, Clone)]
pub struct Idle {
    pub kind: ServerKind,
    pub connections: usize,
    pub before: u64,
    pub after: u64,
}

impl Idle {
    pub fn per_connection(&self) -> f64 {
        (self.after as f64 - self.before as f64) / self.connections.max(1) as f64
    }
}

pub fn run(args: &BenchArgs) -> Result<(), Failure> {
    let plan = Plan::from_args(args)?;
    let started = Instant::now();
    let nofile = sys::raise_nofile();
    let (server_cpu, client_cpu) = sys::cpu_pair();
    sys::pin_current_thread(client_cpu)
        .map_err(|e| Failure::setup(format!("cannot pin the client to CPU {client_cpu}: {e}")))?;
    if plan.idle_connections + 64 > nofile as usize {
        return Err(Failure::setup(format!(
            "--idle {} needs more descriptors than RLIMIT_NOFILE allows ({nofile})",
            plan.idle_connections
        )));
    }
    // The plain load client is an io_uring: where the kernel refuses it,
    // say so with the "unavailable" status so that CI can tell.
    if plan.cells.iter().any(|c| !c.is_tls()) {
        if let Err(e) = io_uring::IoUring::new(8) {
            return Err(Failure::unavailable(format!(
                "the load client needs io_uring, which this kernel refuses: {e} (--only tls,idle runs without it)"
            )));
        }
    }
    let mut out = Outcome {
        server_cpu,
        client_cpu,
        ..Outcome::default()
    };
    report::header(&plan, &mut out, estimate_seconds(&plan));
    for &kind in &plan.servers {
        if let Some(why) = kind.unavailable() {
            out.skipped.push((kind, why.to_string()));
        }
    }
    let material = if plan.cells.iter().any(|c| c.is_tls()) {
        Some(tlsconf::Material::generate().map_err(|e| Failure::setup(format!("TLS: {e}")))?)
    } else {
        None
    };
    let client_tls = match &material {
        Some(m) => Some(
            tlsconf::client_config(m.cert_pem.as_bytes())
                .map_err(|e| Failure::setup(format!("TLS: {e}")))?,
        ),
        None => None,
    };
    let mut servers = start_servers(&plan, server_cpu, material.as_ref(), &mut out);
    let total: usize = (0..plan.cells.len())
        .map(|i| plan.servers_for(plan.cells[i], 0).len())
        .sum::<usize>()
        * plan.rounds;
    let bar = crate::progress::bar(total as u64, "bench");
    for round in 0..plan.rounds {
        for (ci, &cell) in plan.cells.iter().enumerate() {
            for kind in plan.servers_for(cell, round) {
                if let Some(b) = &bar {
                    b.set_message(format!("{} {}", cell.label(), kind.name()));
                    b.inc(1);
                }
                if kind != ServerKind::Loopback && !servers.contains_key(&kind) {
                    continue;
                }
                let ctx = Ctx {
                    plan: &plan,
                    servers: &servers,
                    client_tls: client_tls.as_ref(),
                    server_cpu,
                };
                let t0 = Instant::now();
                match run_one(&ctx, cell, kind, &mut out) {
                    Ok(mut m) => {
                        m.wall_s = t0.elapsed().as_secs_f64();
                        out.runs.entry((ci, kind)).or_default().push(m)
                    }
                    Err(e) => {
                        let e = format!("{} in {}: {e}", kind.name(), cell.label());
                        eprintln!("bench: {e}; that server is left out from here on");
                        out.failures.push(e);
                        servers.remove(&kind);
                    }
                }
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    drop(servers);
    if plan.idle_connections > 0 {
        measure_idle(&plan, server_cpu, &mut out);
    }
    out.seconds = started.elapsed().as_secs_f64();
    report::print(&plan, &out);
    if let Some(path) = &args.plot {
        plot::write(path, &plan, &out).map_err(|e| Failure::setup(format!("--plot: {e}")))?;
        println!("chart written to {}", path.display());
    }
    if args.json {
        println!("{}", report::json(&plan, &out));
    }
    match out.failures.len() {
        0 => Ok(()),
        n => Err(Failure::run(format!(
            "{n} server run(s) failed (see above)"
        ))),
    }
}

/// A rough duration of the run: each run costs its windows plus about
/// 0.15 s of set-up (0.5 s for 1,000 connections), idle about 2.5 s per
/// server at 10,000 connections.
fn estimate_seconds(plan: &Plan) -> f64 {
    let window = (plan.warmup + plan.duration).as_secs_f64();
    let per_round: f64 = plan
        .cells
        .iter()
        .map(|&c| {
            let setup = match c {
                Cell::Echo { connections, .. } if connections >= 1000 => 0.5,
                _ => 0.15,
            };
            let n = plan.servers_for(c, 0).len() as f64;
            // The bulk cell also measures one-way loopback once.
            let extra = if c == Cell::Bulk { window } else { 0.0 };
            n * (window + setup) + extra
        })
        .sum();
    let plain = plan
        .servers
        .iter()
        .filter(|k| !k.is_tls() && **k != ServerKind::Loopback)
        .count() as f64;
    let idle = match plan.idle_connections {
        0 => 0.0,
        n => plain * (1.0 + 1.5 * n as f64 / 10_000.0),
    };
    per_round * plan.rounds as f64 + idle
}

/// Starts one process per server the plan runs; the ones that cannot start
/// here are reported as skipped.
fn start_servers(
    plan: &Plan,
    cpu: usize,
    material: Option<&tlsconf::Material>,
    out: &mut Outcome,
) -> HashMap<ServerKind, ServerProcess> {
    let mut servers = HashMap::new();
    for &kind in &plan.servers {
        if kind == ServerKind::Loopback || !plan.cells.iter().any(|c| c.runs(kind)) {
            continue;
        }
        if kind.unavailable().is_some() {
            continue;
        }
        match ServerProcess::start(kind, cpu, material) {
            Ok(p) => {
                servers.insert(kind, p);
            }
            Err(e) => out.skipped.push((kind, e)),
        }
    }
    servers
}

struct Ctx<'a> {
    plan: &'a Plan,
    servers: &'a HashMap<ServerKind, ServerProcess>,
    client_tls: Option<&'a Arc<rustls::ClientConfig>>,
    server_cpu: usize,
}

fn run_one(
    ctx: &Ctx<'_>,
    cell: Cell,
    kind: ServerKind,
    out: &mut Outcome,
) -> Result<Measured, String> {
    let (warmup, duration) = (ctx.plan.warmup, ctx.plan.duration);
    if kind == ServerKind::Loopback {
        let echo = load::loopback::RawEcho::start(ctx.server_cpu)?;
        let m = load::bulk::run(echo.addr, warmup, duration, &|| f64::NAN)?;
        drop(echo);
        out.one_way
            .push(load::loopback::one_way(ctx.server_cpu, warmup, duration)?);
        return Ok(m);
    }
    let p = ctx.servers.get(&kind).ok_or("not running")?;
    let cpu = || p.cpu_seconds();
    let tls = || ctx.client_tls.ok_or_else(|| "no TLS client".to_string());
    let tls_run = |r: load::tls::TlsMeasured, out: &mut Outcome| {
        if r.suite != tlsconf::SUITE {
            return Err(format!(
                "negotiated {} instead of {}",
                r.suite,
                tlsconf::SUITE
            ));
        }
        out.suite = Some(r.suite);
        Ok(r.measured)
    };
    match cell {
        Cell::Echo { connections, size } => {
            load::echo::run(p.addr, connections, size, warmup, duration, &cpu)
        }
        Cell::Bulk => load::bulk::run(p.addr, warmup, duration, &cpu),
        Cell::TlsEcho { connections, size } => {
            let r = load::tls::echo(p.addr, tls()?, connections, size, warmup, duration, &cpu)?;
            tls_run(r, out)
        }
        Cell::TlsBulk => tls_run(
            load::tls::bulk(p.addr, tls()?, warmup, duration, &cpu)?,
            out,
        ),
    }
}

/// For every plain server: a fresh process, one connection to warm it up,
/// `VmRSS`; then the idle connections (one round trip each), a pause,
/// `VmRSS` again.
fn measure_idle(plan: &Plan, cpu: usize, out: &mut Outcome) {
    let n = plan.idle_connections;
    for &kind in &plan.servers {
        if kind.is_tls() || kind == ServerKind::Loopback || kind.unavailable().is_some() {
            continue;
        }
        if out.skipped.iter().any(|(k, _)| *k == kind) {
            continue;
        }
        let measured = (|| -> Result<Idle, String> {
            let p = ServerProcess::start(kind, cpu, None)?;
            drop(load::idle::open(p.addr, 1)?);
            std::thread::sleep(Duration::from_millis(200));
            let before = p.rss()?;
            let conns = load::idle::open(p.addr, n)?;
            std::thread::sleep(Duration::from_millis(500));
            let after = p.rss()?;
            drop(conns);
            Ok(Idle {
                kind,
                connections: n,
                before,
                after,
            })
        })();
        match measured {
            Ok(idle) => out.idle.push(idle),
            Err(e) => {
                let e = format!("{} idle at {n} connections: {e}", kind.name());
                eprintln!("bench: {e}");
                out.failures.push(e);
            }
        }
    }
}

/// CPU, core count and kernel, so a table is never read without its machine.
pub fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    // Counted from cpuinfo: this thread is already pinned to one CPU.
    let cores = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown kernel".into());
    format!("{cpu}, {cores} CPUs, Linux {kernel}")
}
