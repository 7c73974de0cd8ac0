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
