//! The race verdict: a human-readable summary and, with `--json`, one JSON
//! object on the last line of stdout.
//!
//! Timing fields (`seconds`, `throughput_mb_s`, and the "wall time" line) are
//! the only ones that may differ between two replays of the same sim seed.

use proactor::{DriverKind, DriverStats};
use serde_json::{json, Value};

use super::workload::Outcome;
use crate::args::RaceArgs;
use crate::pattern::StreamHash;

/// At most this many error messages are kept for the report.
const MAX_ERRORS: usize = 10;

/// Sim sweep figures.
#[derive(Debug, Default, Clone)]
pub struct SimSummary {
    pub seeds: u64,
    /// The first seed of the sweep (`PROACTOR_SIM_SEED_BASE`, default 0).
    pub first_seed: u64,
    /// The seed replayed through PROACTOR_SIM_SEED, if any.
    pub replayed_seed: Option<u64>,
    pub failed_seeds: Vec<u64>,
    pub cancel_races: u64,
    pub short_reads: u64,
    pub short_writes: u64,
}

/// How often reading was paused, and how often that pause met the receive
/// in flight or its completion ready but not yet reaped (the bpo-33694
/// window), from the driver's [`DriverStats`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Window {
    pub read_pauses: u64,
    pub pauses_recv_in_flight: u64,
    pub pauses_recv_ready: u64,
}

/// Totals over every client of every run.
#[derive(Debug, Clone)]
pub struct RaceReport {
    pub driver: DriverKind,
    pub mode: &'static str,
    pub security: &'static str,
    pub connections: u64,
    pub packets: u64,
    pub size: usize,
    pub pause_every_ms: f64,
    /// What the plan asked for, over every client (and seed).
    pub bytes_planned: u64,
    pub bytes_sent: u64,
    pub bytes_echoed: u64,
    pub bytes_verified: u64,
    pub server_echoed: Option<u64>,
    pub pause_cycles: u64,
    /// Pause cycles that ended with echoed bytes held by the transport.
    pub held_at_resume: u64,
    /// Bytes delivered while a client's reading was paused (R3: must be 0).
    pub received_while_paused: u64,
    pub write_pauses: u64,
    /// The driver's bpo-33694 window counters, over every run.
    pub window: Window,
    pub seconds: f64,
    /// Fingerprints of everything sent and received, in client order.
    sent_hash: StreamHash,
    recv_hash: StreamHash,
    pub sim: Option<SimSummary>,
    pub errors: Vec<String>,
    pub errors_total: u64,
    /// What the first TLS client negotiated.
    pub tls: Option<String>,
}

impl Window {
    fn add(&mut self, stats: &DriverStats) {
        self.read_pauses += stats.read_pauses;
        self.pauses_recv_in_flight += stats.pauses_recv_in_flight;
        self.pauses_recv_ready += stats.pauses_recv_ready;
    }
}

impl RaceReport {
    pub fn new(driver: DriverKind, args: &RaceArgs, security: &'static str) -> Self {
        RaceReport {
            driver,
            mode: if args.connect.is_some() {
                "connect"
            } else {
                "loopback"
            },
            security,
            connections: args.connections,
            packets: args.packets,
            size: args.size,
            pause_every_ms: args.pause_every.as_secs_f64() * 1e3,
            bytes_planned: 0,
            bytes_sent: 0,
            bytes_echoed: 0,
            bytes_verified: 0,
            server_echoed: None,
            pause_cycles: 0,
            held_at_resume: 0,
            received_while_paused: 0,
            write_pauses: 0,
            window: Window::default(),
            seconds: 0.0,
            sent_hash: StreamHash::default(),
            recv_hash: StreamHash::default(),
            sim: None,
            errors: Vec::new(),
            errors_total: 0,
            tls: None,
        }
    }

    /// Adds one run; `label` prefixes its errors (e.g. the sim seed).
    pub fn add(&mut self, o: &Outcome, planned_per_client: u64, label: Option<&str>) {
        self.driver = o.driver;
        self.seconds += o.seconds;
        self.window.add(&o.stats);
        for c in &o.clients {
            self.bytes_planned += planned_per_client;
            self.bytes_sent += c.sent;
            self.bytes_echoed += c.received;
            self.bytes_verified += c.verified;
            self.pause_cycles += c.pause_cycles;
            self.held_at_resume += c.held_at_resume;
            self.received_while_paused += c.received_while_paused;
            self.write_pauses += c.write_pauses;
            self.sent_hash.update(&c.send_hash.to_le_bytes());
            if self.tls.is_none() {
                self.tls.clone_from(&c.tls);
            }
            self.recv_hash.update(&c.recv_hash.to_le_bytes());
        }
        if let Some(e) = o.server_echoed {
            *self.server_echoed.get_or_insert(0) += e;
        }
        for e in o.errors() {
            self.errors_total += 1;
            if self.errors.len() < MAX_ERRORS {
                self.errors.push(match label {
                    Some(l) => format!("{l}: {e}"),
                    None => e,
                });
            }
        }
    }

    /// Records a failure of the run as a whole (not of one client).
    pub fn fail(&mut self, why: String) {
        self.errors_total += 1;
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(why);
        }
    }

    /// Bytes sent that never came back verified.
    pub fn bytes_lost(&self) -> u64 {
        self.bytes_sent.saturating_sub(self.bytes_verified)
    }

    pub fn passed(&self) -> bool {
        self.errors_total == 0
            && self.received_while_paused == 0
            && self.bytes_lost() == 0
            && self.bytes_verified == self.bytes_planned
            && self.sim.as_ref().is_none_or(|s| s.failed_seeds.is_empty())
    }

    /// Verified payload per second (one direction; the same bytes also
    /// travelled back), in MB/s (10^6 bytes).
    pub fn throughput_mb_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes_verified as f64 / self.seconds / 1e6
        } else {
            0.0
        }
    }

    pub fn print_human(&self) {
        println!(
            "proactor race: driver {}, {} {}, {} connection(s) x {} packets x {} bytes, pause every {} ms",
            self.driver,
            self.mode,
            self.security,
            self.connections,
            self.packets,
            self.size,
            self.pause_every_ms
        );
        if let Some(s) = &self.sim {
            match s.replayed_seed {
                Some(seed) => println!("  sim seed    {seed} (replay)"),
                None => println!(
                    "  sim seeds   {} ({}..{})",
                    s.seeds,
                    s.first_seed,
                    s.first_seed + s.seeds
                ),
            }
            println!(
                "  sim races   {} cancel-after-complete, {} short reads, {} short writes",
                s.cancel_races, s.short_reads, s.short_writes
            );
        }
        if let Some(tls) = &self.tls {
            println!("  tls         {tls}");
        }
        println!("  sent        {} bytes", self.bytes_sent);
        match self.server_echoed {
            Some(e) => println!(
                "  echoed      {} bytes received back ({e} written by the server)",
                self.bytes_echoed
            ),
            None => println!("  echoed      {} bytes received back", self.bytes_echoed),
        }
        println!(
            "  verified    {} bytes (sent hash {:016x}, echo hash {:016x})",
            self.bytes_verified,
            self.sent_hash.finish(),
            self.recv_hash.finish()
        );
        println!("  lost        {} bytes", self.bytes_lost());
        println!(
            "  pauses      {} pause/resume cycles of reading ({} with echoed bytes held at resume), {} write pauses",
            self.pause_cycles, self.held_at_resume, self.write_pauses
        );
        println!(
            "  paused      {} bytes reached a client while its reading was paused",
            self.received_while_paused
        );
        println!(
            "  window      {} read pauses: {} with the receive in flight, {} with its completion ready, not reaped",
            self.window.read_pauses, self.window.pauses_recv_in_flight, self.window.pauses_recv_ready
        );
        println!(
            "  wall time   {:.3} s, throughput {:.1} MB/s",
            self.seconds,
            self.throughput_mb_s()
        );
        if self.pause_cycles == 0 && self.pause_every_ms > 0.0 && self.passed() {
            println!(
                "  note        the run ended before the first pause; --pause-every 1 (ms) toggles more often"
            );
        }
        for e in &self.errors {
            println!("  error       {e}");
        }
        if self.errors_total > self.errors.len() as u64 {
            println!(
                "  error       ... and {} more",
                self.errors_total - self.errors.len() as u64
            );
        }
        if let Some(s) = self.sim.as_ref().filter(|s| !s.failed_seeds.is_empty()) {
            println!("  failed seeds {:?}", s.failed_seeds);
        }
        println!("{}", if self.passed() { "PASS" } else { "FAIL" });
    }

    pub fn json(&self) -> Value {
        let mut v = json!({
            "driver": self.driver.name(),
            "mode": self.mode,
            "security": self.security,
            "connections": self.connections,
            "packets": self.packets,
            "size": self.size,
            "pause_every_ms": self.pause_every_ms,
            "bytes_planned": self.bytes_planned,
            "bytes_sent": self.bytes_sent,
            "bytes_echoed": self.bytes_echoed,
            "bytes_verified": self.bytes_verified,
            "bytes_lost": self.bytes_lost(),
            "server_echoed": self.server_echoed,
            "pause_cycles": self.pause_cycles,
            "held_at_resume": self.held_at_resume,
            "received_while_paused": self.received_while_paused,
            "write_pauses": self.write_pauses,
            "read_pauses": self.window.read_pauses,
            "pauses_recv_in_flight": self.window.pauses_recv_in_flight,
            "pauses_recv_ready": self.window.pauses_recv_ready,
            "sent_hash": format!("{:016x}", self.sent_hash.finish()),
            "echo_hash": format!("{:016x}", self.recv_hash.finish()),
            "seconds": self.seconds,
            "throughput_mb_s": self.throughput_mb_s(),
            "errors": self.errors,
            "errors_total": self.errors_total,
            "ok": self.passed(),
            "tls": self.tls,
        });
        if let (Some(s), Some(map)) = (&self.sim, v.as_object_mut()) {
            map.insert("seeds".into(), json!(s.seeds));
            map.insert("first_seed".into(), json!(s.first_seed));
            map.insert("seed".into(), json!(s.replayed_seed));
            map.insert("failed_seeds".into(), json!(s.failed_seeds));
            map.insert("cancel_races".into(), json!(s.cancel_races));
            map.insert("short_reads".into(), json!(s.short_reads));
            map.insert("short_writes".into(), json!(s.short_writes));
        }
        v
    }
}
