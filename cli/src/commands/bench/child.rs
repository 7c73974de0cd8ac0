//! A server under test in its own process: this binary's hidden
//! `bench-server` command, pinned to the server's CPU. Its CPU time and
//! resident memory are read from `/proc`; dropping it closes its standard
//! input, which ends it (killed if it lingers).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::plan::ServerKind;
use super::sys;
use super::tlsconf::Material;

/// The environment of the `proactor-uring-single` server instead of
/// `PROACTOR_URING_MULTISHOT=0`: `NAME=VALUE[,NAME=VALUE...]`.
pub const VARIANT_ENV: &str = "PROACTOR_BENCH_VARIANT_ENV";

/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug)]
pub struct ServerProcess {
    pub kind: ServerKind,
    pub addr: SocketAddr,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl ServerProcess {
    pub fn start(
        kind: ServerKind,
        cpu: usize,
        tls: Option<&Material>,
    ) -> Result<ServerProcess, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "bench-server",
            "--kind",
            kind.name(),
            "--cpu",
            &cpu.to_string(),
        ]);
        if kind == ServerKind::ProactorUringSingle {
            match std::env::var(VARIANT_ENV) {
                // Any of the driver's switches, measured against
                // `proactor-uring` in the same run.
                Ok(vars) if !vars.trim().is_empty() => {
                    for var in vars.split(',') {
                        let (name, value) = var
                            .split_once('=')
                            .ok_or_else(|| format!("{VARIANT_ENV}: {var:?} is not NAME=VALUE"))?;
                        cmd.env(name.trim(), value.trim());
                    }
                }
                _ => {
                    cmd.env(proactor::URING_MULTISHOT_ENV, "0");
                }
            }
        }
        if kind.is_tls() {
            let m = tls.ok_or("no TLS certificate for a TLS server")?;
            cmd.arg("--tls-cert").arg(m.cert_path());
            cmd.arg("--tls-key").arg(m.key_path());
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", kind.name()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut process = ServerProcess {
            kind,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            stdin,
        };
        let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
        match line.trim().strip_prefix("listening ").map(str::parse) {
            Some(Ok(addr)) => {
                process.addr = addr;
                Ok(process)
            }
            _ => {
                let status = process.stop();
                Err(format!("did not start ({status})"))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds the server has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        sys::process_cpu_seconds(self.pid())
    }

    /// Resident memory in bytes.
    pub fn rss(&self) -> Result<u64, String> {
        sys::vm_rss(self.pid()).map_err(|e| format!("{}: VmRSS: {e}", self.kind.name()))
    }

    /// Ends the process; describes how it ended.
    fn stop(&mut self) -> String {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.to_string(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => break,
            }
        }
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => format!("killed, {status}"),
            Err(e) => format!("killed, {e}"),
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
