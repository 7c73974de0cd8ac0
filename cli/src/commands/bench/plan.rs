//! What a bench run measures: the servers, the cells, the rounds and the
//! durations, from the flags (`--quick` changes the defaults).

use std::time::Duration;

use crate::args::BenchArgs;
use crate::failure::Failure;

/// Every server the bench knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerKind {
    ProactorUring,
    /// proactor on uring with multishot receives turned off (single-shot
    /// receives into per-connection buffers), to measure them side by side.
    ProactorUringSingle,
    ProactorPoll,
    TokioCt,
    TokioMt,
    BareRing,
    StdThreads,
    Monoio,
    Compio,
    ProactorUringTls,
    ProactorPollTls,
    TokioRustls,
    /// The raw blocking pair inside the bench process (bulk only).
    Loopback,
}

use ServerKind::*;

impl ServerKind {
    pub const ALL: [ServerKind; 13] = [
        ProactorUring,
        ProactorUringSingle,
        ProactorPoll,
        TokioCt,
        TokioMt,
        BareRing,
        StdThreads,
        Monoio,
        Compio,
        ProactorUringTls,
        ProactorPollTls,
        TokioRustls,
        Loopback,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ProactorUring => "proactor-uring",
            ProactorUringSingle => "proactor-uring-single",
            ProactorPoll => "proactor-poll",
            TokioCt => "tokio-ct",
            TokioMt => "tokio-mt",
            BareRing => "bare-ring",
            StdThreads => "std-threads",
            Monoio => "monoio",
            Compio => "compio",
            ProactorUringTls => "proactor-uring-tls",
            ProactorPollTls => "proactor-poll-tls",
            TokioRustls => "tokio-rustls",
            Loopback => "loopback",
        }
    }

    pub fn from_name(name: &str) -> Option<ServerKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn is_tls(self) -> bool {
        matches!(self, ProactorUringTls | ProactorPollTls | TokioRustls)
    }

    /// Why this build cannot run it, if it cannot.
    pub fn unavailable(self) -> Option<&'static str> {
        match self {
            Monoio if !cfg!(feature = "monoio") => Some("built without the `monoio` feature"),
            Compio if !cfg!(feature = "compio") => Some("built without the `compio` feature"),
            _ => None,
        }
    }
}

/// One cell of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// Closed-loop echo, one message in flight per connection.
    Echo {
        connections: usize,
        size: usize,
    },
    /// One connection, 64 KiB writes, echoed.
    Bulk,
    TlsEcho {
        connections: usize,
        size: usize,
    },
    TlsBulk,
}

impl Cell {
    pub fn is_tls(self) -> bool {
        matches!(self, Cell::TlsEcho { .. } | Cell::TlsBulk)
    }

    pub fn is_bulk(self) -> bool {
        matches!(self, Cell::Bulk | Cell::TlsBulk)
    }

    pub fn label(self) -> String {
        match self {
            Cell::Echo { connections, size } => format!("echo {connections}c x {}", bytes(size)),
            Cell::Bulk => "bulk 64K writes".into(),
            Cell::TlsEcho { connections, size } => {
                format!("tls echo {connections}c x {}", bytes(size))
            }
            Cell::TlsBulk => "tls bulk 64K writes".into(),
        }
    }

    /// Unit of the figure.
    pub fn unit(self) -> &'static str {
        if self.is_bulk() {
            "MB/s"
        } else {
            "round trips/s"
        }
    }

    /// The server every figure of the cell is divided by.
    pub fn baseline(self) -> ServerKind {
        if self.is_tls() {
            TokioRustls
        } else {
            TokioCt
        }
    }

    pub fn runs(self, kind: ServerKind) -> bool {
        match self {
            Cell::Echo { .. } => !kind.is_tls() && kind != Loopback,
            Cell::Bulk => !kind.is_tls(),
            Cell::TlsEcho { .. } | Cell::TlsBulk => kind.is_tls(),
        }
    }
}

/// `64`, `1K`, `16K`.
pub fn bytes(n: usize) -> String {
    if n >= 1024 && n % 1024 == 0 {
        format!("{}K", n / 1024)
    } else {
        format!("{n}")
    }
}

/// A whole run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    pub rounds: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub servers: Vec<ServerKind>,
    pub cells: Vec<Cell>,
    /// Connections of the idle-memory figure (0: not measured).
    pub idle_connections: usize,
}

/// Connections and size of the TLS echo cell.
pub const TLS_ECHO: (usize, usize) = (64, 1024);

impl Plan {
    pub fn from_args(a: &BenchArgs) -> Result<Plan, Failure> {
        let q = a.quick;
        let secs = |what: &str, v: Option<f64>, quick: f64, full: f64| {
            let v = v.unwrap_or(if q { quick } else { full });
            if v.is_finite() && (0.0..=3600.0).contains(&v) {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(Failure::setup(format!(
                    "{what} must be between 0 and 3600 s"
                )))
            }
        };
        let warmup = secs("--warmup", a.warmup, 0.1, 0.2)?;
        let duration = secs("--duration", a.duration, 0.4, 1.0)?;
        if duration.is_zero() {
            return Err(Failure::setup("--duration must be positive"));
        }
        let rounds = a.rounds.unwrap_or(if q { 1 } else { 3 });
        if rounds == 0 || rounds > 100 {
            return Err(Failure::setup("--rounds must be between 1 and 100"));
        }
        let servers = match &a.servers {
            None => ServerKind::ALL.to_vec(),
            Some(names) => names
                .iter()
                .map(|n| {
                    ServerKind::from_name(n.trim()).ok_or_else(|| {
                        let all: Vec<_> = ServerKind::ALL.iter().map(|k| k.name()).collect();
                        Failure::setup(format!("unknown server {n:?} (one of {})", all.join(", ")))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let connections = a.connections.clone().unwrap_or_else(|| {
            if q {
                vec![64, 256]
            } else {
                vec![1, 64, 256, 1000]
            }
        });
        if connections.iter().any(|&c| c == 0 || c > 4096) {
            return Err(Failure::setup("--connections must be between 1 and 4096"));
        }
        let sizes = a.sizes.clone().unwrap_or_else(|| {
            if q {
                vec![64, 1024]
            } else {
                vec![64, 1024, 16 * 1024]
            }
        });
        let parts = &a.only;
        let wants = |p: &str| parts.is_empty() || parts.iter().any(|x| x == p);
        let mut cells = Vec::new();
        if wants("echo") {
            for (i, &connections) in connections.iter().enumerate() {
                for (j, &size) in sizes.iter().enumerate() {
                    // --quick: the diagonal (64 x 64 B, 256 x 1 KiB) only.
                    if !q || a.connections.is_some() || a.sizes.is_some() || i == j {
                        cells.push(Cell::Echo { connections, size });
                    }
                }
            }
        }
        if wants("bulk") {
            cells.push(Cell::Bulk);
        }
        if wants("tls") {
            let (connections, size) = TLS_ECHO;
            cells.push(Cell::TlsEcho { connections, size });
            cells.push(Cell::TlsBulk);
        }
        let idle_connections = if wants("idle") {
            a.idle.unwrap_or(if q { 1000 } else { 10_000 })
        } else {
            0
        };
        if idle_connections > 10_000 {
            return Err(Failure::setup("--idle must be at most 10000"));
        }
        Ok(Plan {
            quick: q,
            rounds,
            warmup,
            duration,
            servers,
            cells,
            idle_connections,
        })
    }

    /// The servers of `cell`, rotated by `round` so no server always goes first.
    pub fn servers_for(&self, cell: Cell, round: usize) -> Vec<ServerKind> {
        let mut v: Vec<ServerKind> = self
            .servers
            .iter()
            .copied()
            .filter(|&k| cell.runs(k))
            .collect();
        if !v.is_empty() {
            let n = v.len();
            v.rotate_left(round % n);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in ServerKind::ALL {
            assert_eq!(ServerKind::from_name(k.name()), Some(k));
        }
    }

    #[test]
    fn cells_pick_their_servers() {
        assert!(Cell::Bulk.runs(Loopback));
        assert!(!Cell::Echo {
            connections: 1,
            size: 64
        }
        .runs(Loopback));
        assert!(Cell::TlsBulk.runs(TokioRustls));
        assert!(!Cell::TlsBulk.runs(TokioCt));
        assert_eq!(Cell::TlsBulk.baseline(), TokioRustls);
        assert_eq!(bytes(16384), "16K");
    }
}
