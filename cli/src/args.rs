//! Command-line arguments. Values are parsed by clap through `FromStr`, so a
//! bad driver name, address or number is reported with the flag it came from.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use proactor::{Address, DriverKind};

/// A completion-based event loop (io_uring, epoll, simulator): data-loss
/// torture run, echo server and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "proactor", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Echo client and server exchange packets while the client pauses and
    /// resumes reading; every byte is verified (the default command).
    Race(RaceArgs),
    /// Serve an echo on HOST:PORT or unix:PATH until killed.
    Echo(EchoArgs),
    /// Echo, bulk, TLS and idle-memory figures of proactor (uring, poll)
    /// next to tokio, a bare io_uring ring, std threads, monoio, compio and
    /// tokio-rustls, each server pinned apart from the load client.
    Bench(BenchArgs),
    /// One server of `bench`, in its own process (used by `bench`).
    #[command(hide = true)]
    BenchServer(BenchServerArgs),
}

#[derive(Debug, Args, Clone)]
pub struct RaceArgs {
    /// Driver: uring, poll or sim. Default: PROACTOR_DRIVER, else uring with a
    /// fallback to poll where io_uring is refused.
    #[arg(long)]
    pub driver: Option<DriverKind>,
    /// Packets each client sends (each is echoed back).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub packets: u64,
    /// Bytes per packet.
    #[arg(long, default_value_t = 16 * 1024, value_parser = parse_size)]
    pub size: usize,
    /// Time between the client's pause_reading / resume_reading toggles, on
    /// the loop's clock: milliseconds, or with a unit (250us, 5ms, 1s); 0
    /// never pauses.
    #[arg(long, default_value = "100", value_parser = parse_interval, value_name = "MS")]
    pub pause_every: Duration,
    /// Concurrent clients, each with its own pattern and verification.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub connections: u64,
    /// Print one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
    /// sim only: run the workload once per seed B..B+N, B being
    /// PROACTOR_SIM_SEED_BASE (default 0) (PROACTOR_SIM_SEEDS is the default
    /// N; PROACTOR_SIM_SEED=S replays the single seed S).
    #[arg(long)]
    pub seeds: Option<u64>,
    /// Run only the client, against an echo server at HOST:PORT or unix:PATH.
    #[arg(long, value_name = "HOST:PORT")]
    pub connect: Option<Address>,
    /// Give up (and fail) after this many seconds of wall time.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Seed of the byte pattern (client i uses seed + i).
    #[arg(long, default_value_t = 0x5EED)]
    pub pattern_seed: u64,
    /// Run the workload over TLS from the first byte.
    #[arg(long, conflicts_with = "starttls")]
    pub tls: bool,
    /// Exchange a plaintext line, send STARTTLS, wait for READY, upgrade
    /// both sides, then run the workload over TLS.
    #[arg(long)]
    pub starttls: bool,
    #[command(flatten)]
    pub tls_files: TlsArgs,
}

#[derive(Debug, Args, Clone)]
pub struct EchoArgs {
    /// Where to listen: HOST:PORT or unix:PATH.
    #[arg(long, default_value = "127.0.0.1:7878", value_name = "HOST:PORT")]
    pub listen: Address,
    /// Driver: uring, poll or sim.
    #[arg(long)]
    pub driver: Option<DriverKind>,
    /// Echo lines in plaintext until the line STARTTLS, answer READY and
    /// upgrade to TLS (needs --tls-cert and --tls-key).
    #[arg(long)]
    pub starttls: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Certificate files. On `echo`, a certificate and key make the server speak
/// TLS; on `race`, they replace the throwaway self-signed certificate.
#[derive(Debug, Args, Clone, Default)]
pub struct TlsArgs {
    /// PEM certificate chain.
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// PEM root certificates the client trusts (default: webpki roots, or
    /// the throwaway certificate when race generates one).
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Do not verify the server's certificate (tests only).
    #[arg(long)]
    pub insecure: bool,
}

impl TlsArgs {
    pub fn any(&self) -> bool {
        self.tls_cert.is_some() || self.tls_key.is_some() || self.tls_ca.is_some() || self.insecure
    }
}

#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    /// CI smoke run (under a minute): echo at 64 x 64 B and 256 x 1 KiB, bulk,
    /// TLS, idle memory at 1,000 connections; one round, short windows.
    #[arg(long)]
    pub quick: bool,
    /// Servers to run (default: all): proactor-uring, proactor-uring-single (multishot receives off, or the NAME=VALUE,... list in PROACTOR_BENCH_VARIANT_ENV), proactor-poll,
    /// tokio-ct, tokio-mt, bare-ring, std-threads, monoio, compio,
    /// proactor-uring-tls, proactor-poll-tls, tokio-rustls, loopback.
    #[arg(long, value_delimiter = ',')]
    pub servers: Option<Vec<String>>,
    /// Parts to run (default: all): echo, bulk, tls, idle.
    #[arg(long, value_delimiter = ',', value_parser = ["echo", "bulk", "tls", "idle"])]
    pub only: Vec<String>,
    /// Echo connection counts [default: 1,64,256,1000].
    #[arg(long, value_delimiter = ',')]
    pub connections: Option<Vec<usize>>,
    /// Echo message sizes in bytes [default: 64,1K,16K].
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub sizes: Option<Vec<usize>>,
    /// Rounds; each figure is the median over them [default: 3, --quick 1].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Seconds measured per run [default: 1, --quick 0.4].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds of warm-up before each measurement [default: 0.2, --quick 0.1].
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Idle connections of the memory figure, 0 to skip [default: 10000,
    /// --quick 1000].
    #[arg(long)]
    pub idle: Option<usize>,
    /// Print one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
    /// Write a bar chart (SVG) of the figures to FILE.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

/// `proactor bench-server`: one server of `proactor bench`, in its own
/// process (started by the bench, not by hand).
#[derive(Debug, Args, Clone)]
pub struct BenchServerArgs {
    /// Which server (a name from `bench --servers`).
    #[arg(long)]
    pub kind: String,
    /// Pin the process to this CPU.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// PEM certificate of the TLS servers.
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the TLS servers.
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
}

/// A byte count, with an optional K/M suffix (binary units): `16K`, `1M`.
fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1024),
        Some((i, 'm' | 'M')) => (&t[..i], 1024 * 1024),
        _ => (t, 1),
    };
    let n: usize = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 64, 16K, 1M)"))?;
    let n = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if n == 0 || n > 256 * 1024 * 1024 {
        return Err(format!("{s:?} must be between 1 byte and 256M"));
    }
    Ok(n)
}

/// A duration in milliseconds (`100`, `0.5`) or with a unit (`250us`, `5ms`, `1s`).
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t, 1e-3)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (examples: 100, 250us, 5ms, 1s)"))?;
    let secs = v * scale;
    if !secs.is_finite() || !(0.0..=3600.0).contains(&secs) {
        return Err(format!("{s:?} must be between 0 and 3600 s"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("16K"), Ok(16384));
        assert_eq!(parse_size("64"), Ok(64));
        assert!(parse_size("0").is_err());
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn intervals_parse() {
        assert_eq!(parse_interval("100"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_interval("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("0"), Ok(Duration::ZERO));
        assert!(parse_interval("-1").is_err());
        assert!(parse_interval("soon").is_err());
    }
}
