//! The targets, judged on the medians of this run:
//! - uring echo at 64 and 256 connections, 64 B and 1 KiB: ≥ 1.3x tokio
//!   current-thread and ≥ the bare io_uring ring;
//! - bulk ≥ 90% of loopback (the raw blocking echo pair);
//! - TLS echo and bulk ≥ tokio-rustls;
//! - idle ≤ 1 KiB of RSS per connection at 10,000 connections.

use super::plan::{Cell, Plan, ServerKind};
use super::report::ratio;
use super::Outcome;

/// One target: what, how it came out, and whether it was met (`None`: not
/// measured in this run).
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub detail: String,
    pub pass: Option<bool>,
}

impl Target {
    pub fn verdict(&self) -> &'static str {
        match self.pass {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "n/a",
        }
    }
}

/// The echo cells the targets name.
pub const ECHO_TARGETS: [(usize, usize); 4] = [(64, 64), (64, 1024), (256, 64), (256, 1024)];
/// Idle connections the memory target is stated at.
pub const IDLE_TARGET_CONNECTIONS: usize = 10_000;

fn index(plan: &Plan, cell: Cell) -> Option<usize> {
    plan.cells.iter().position(|&c| c == cell)
}

/// `name`'s ratio to `base` in `cell` against `goal`.
fn ratio_target(
    plan: &Plan,
    out: &Outcome,
    cell: Cell,
    kind: ServerKind,
    base: ServerKind,
    goal: f64,
) -> Target {
    let name = format!("{} vs {}", cell.label(), base.name());
    let r = index(plan, cell).and_then(|ci| ratio(out, ci, kind, base));
    match r {
        Some(r) => Target {
            name,
            detail: format!("{r:.2}x (goal >= {goal:.2}x)"),
            pass: Some(r >= goal),
        },
        None => Target {
            name,
            detail: format!("not measured in this run (goal >= {goal:.2}x)"),
            pass: None,
        },
    }
}

pub fn targets(plan: &Plan, out: &Outcome) -> Vec<Target> {
    use ServerKind::*;
    let mut v = Vec::new();
    for (connections, size) in ECHO_TARGETS {
        let cell = Cell::Echo { connections, size };
        v.push(ratio_target(plan, out, cell, ProactorUring, TokioCt, 1.3));
        v.push(ratio_target(plan, out, cell, ProactorUring, BareRing, 1.0));
    }
    let mut bulk = ratio_target(plan, out, Cell::Bulk, ProactorUring, Loopback, 0.9);
    if let Some(ci) = index(plan, Cell::Bulk) {
        if let Some(r) = ratio(out, ci, ProactorUring, Loopback) {
            bulk.detail = format!("{:.0}% of loopback (goal >= 90%)", r * 100.0);
            let uring = super::report::figure(out, ci, ProactorUring);
            let one_way = super::stats::Summary::of(&out.one_way);
            if let (Some(u), Some(w)) = (uring, one_way) {
                bulk.detail += &format!(
                    "; {:.0}% of the one-way rate, for context",
                    u.median / w.median * 100.0
                );
            }
        }
    }
    v.push(bulk);
    let (c, s) = super::plan::TLS_ECHO;
    let tls_echo = Cell::TlsEcho {
        connections: c,
        size: s,
    };
    v.push(ratio_target(
        plan,
        out,
        tls_echo,
        ProactorUringTls,
        TokioRustls,
        1.0,
    ));
    v.push(ratio_target(
        plan,
        out,
        Cell::TlsBulk,
        ProactorUringTls,
        TokioRustls,
        1.0,
    ));
    let name = "idle RSS per connection".to_string();
    v.push(match out.idle.iter().find(|i| i.kind == ProactorUring) {
        Some(i) => {
            let b = i.per_connection();
            let at = if i.connections == IDLE_TARGET_CONNECTIONS {
                String::new()
            } else {
                format!("; indicative only: the target is stated at {IDLE_TARGET_CONNECTIONS}")
            };
            Target {
                name,
                detail: format!(
                    "{b:.0} B at {} connections (goal <= 1024 B){at}",
                    i.connections
                ),
                pass: (i.connections == IDLE_TARGET_CONNECTIONS).then_some(b <= 1024.0),
            }
        }
        None => Target {
            name,
            detail: "not measured in this run (goal <= 1024 B)".into(),
            pass: None,
        },
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use crate::commands::bench::stats::Measured;
    use clap::Parser;

    fn plan(args: &[&str]) -> Plan {
        let argv = ["proactor", "bench"].iter().chain(args).copied();
        match Cli::try_parse_from(argv).expect("parses").command {
            Some(Command::Bench(a)) => Plan::from_args(&a).expect("a plan"),
            other => panic!("not a bench: {other:?}"),
        }
    }

    fn run(value: f64) -> Measured {
        Measured {
            value,
            p50_us: 1.0,
            p99_us: 2.0,
            server_cpu: 1.0,
            client_cpu: 1.0,
            wall_s: 1.0,
        }
    }

    #[test]
    fn quick_runs_the_diagonal_bulk_tls_and_idle_at_1000() {
        let p = plan(&["--quick"]);
        let echo: Vec<_> = p
            .cells
            .iter()
            .filter(|c| matches!(c, Cell::Echo { .. }))
            .collect();
        assert_eq!(
            echo,
            [
                &Cell::Echo {
                    connections: 64,
                    size: 64
                },
                &Cell::Echo {
                    connections: 256,
                    size: 1024
                }
            ]
        );
        assert!(p.cells.contains(&Cell::Bulk) && p.cells.contains(&Cell::TlsBulk));
        assert_eq!((p.rounds, p.idle_connections), (1, 1000));
        let full = plan(&[]);
        assert_eq!(full.cells.len(), 12 + 3);
        assert_eq!((full.rounds, full.idle_connections), (3, 10_000));
    }

    #[test]
    fn targets_judge_the_medians() {
        let p = plan(&[
            "--only",
            "echo,bulk",
            "--connections",
            "64",
            "--sizes",
            "64",
        ]);
        let mut out = Outcome::default();
        let echo = p
            .cells
            .iter()
            .position(|c| matches!(c, Cell::Echo { .. }))
            .unwrap();
        let bulk = p.cells.iter().position(|&c| c == Cell::Bulk).unwrap();
        use ServerKind::*;
        for (k, v) in [
            (ProactorUring, [1.5, 1.4, 9.0]),
            (TokioCt, [1.0; 3]),
            (BareRing, [1.45; 3]),
        ] {
            out.runs
                .insert((echo, k), v.iter().map(|&x| run(x)).collect());
        }
        out.runs.insert((bulk, ProactorUring), vec![run(0.95)]);
        out.runs.insert((bulk, Loopback), vec![run(1.0)]);
        let t = targets(&p, &out);
        let get = |name: &str| t.iter().find(|t| t.name == name).unwrap().pass;
        assert_eq!(get("echo 64c x 64 vs tokio-ct"), Some(true));
        assert_eq!(get("echo 64c x 64 vs bare-ring"), Some(true));
        assert_eq!(get("echo 64c x 1K vs tokio-ct"), None);
        assert_eq!(get("bulk 64K writes vs loopback"), Some(true));
        assert_eq!(get("idle RSS per connection"), None);
    }
}
