//! Real peers: OpenSSL's `s_client`/`s_server`, Python's `ssl`, `asyncio`
//! `start_tls` and `smtplib`. Each runs on uring and poll; sim is skipped
//! (its network is in-memory: external processes cannot reach it).
//!
//! A test whose peer is not installed says so (on stderr, past the test
//! harness's capture) and passes, except with `PROACTOR_REQUIRE_PEERS=1`
//! (CI sets it): there a missing peer fails the test.
//!
//! No peer can hold the suite: every read of a peer's output and every wait
//! for its exit has a time limit ([`PEER_LIMIT`]), after which the peer is
//! killed and the test fails with what the peer said.
mod tls_support;
mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use proactor::{BaseProtocol, Protocol, Transport};
use tls_support::*;

const SIM_SKIP: &str = "external processes cannot reach the simulated network";
/// Loop time a test waits for a peer's traffic.
const LIMIT: Duration = Duration::from_secs(30);
/// Wall time a peer may take for one line of output or to exit.
const PEER_LIMIT: Duration = Duration::from_secs(30);

/// An external peer whose stdout and stderr are read by threads, so that
/// every read of its output and every wait for its exit has a time limit.
/// Dropping it kills the process (if still running) and reaps it.
struct Peer {
    name: String,
    pid: u32,
    stdin: Option<ChildStdin>,
    /// Lines of stdout, newline included; `None` at EOF.
    lines: Receiver<Option<String>>,
    stdout_done: bool,
    stderr: Arc<Mutex<String>>,
    exit: Receiver<std::io::Result<ExitStatus>>,
    status: Option<ExitStatus>,
}

impl Peer {
    /// Starts `cmd` with its three standard streams piped. A peer that
    /// cannot start fails the test (its presence was checked by `have`).
    fn spawn(name: &str, cmd: &mut Command) -> Peer {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let pid = child.id();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr_pipe = child.stderr.take().expect("piped stderr");
        let (line_tx, lines) = mpsc::channel();
        thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut line = String::new();
                match r.read_line(&mut line) {
                    Ok(n) if n > 0 => {
                        if line_tx.send(Some(line)).is_err() {
                            return;
                        }
                    }
                    _ => {
                        let _ = line_tx.send(None);
                        return;
                    }
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = stderr.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                err.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (exit_tx, exit) = mpsc::channel();
        thread::spawn(move || {
            let _ = exit_tx.send(child.wait());
        });
        Peer {
            name: name.to_string(),
            pid,
            stdin,
            lines,
            stdout_done: false,
            stderr,
            exit,
            status: None,
        }
    }

    fn write_stdin(&mut self, data: &[u8]) {
        let name = &self.name;
        self.stdin
            .as_mut()
            .unwrap_or_else(|| panic!("{name}: stdin is closed"))
            .write_all(data)
            .unwrap_or_else(|e| panic!("{name}: writing its stdin: {e}"));
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next line of stdout (newline included), waiting at most `limit`.
    fn line(&mut self, limit: Duration) -> Result<String, String> {
        let what = match self.lines.recv_timeout(limit) {
            Ok(Some(line)) => return Ok(line),
            Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                self.stdout_done = true;
                "closed its stdout".to_string()
            }
            Err(RecvTimeoutError::Timeout) => format!("printed no line within {limit:?}"),
        };
        Err(format!("{} {what}; stderr: {}", self.name, self.stderr()))
    }

    /// Whether the process has exited (never blocks).
    fn exited(&mut self) -> bool {
        if self.status.is_none() {
            if let Ok(r) = self.exit.try_recv() {
                self.status = Some(r.expect("wait for the peer"));
            }
        }
        self.status.is_some()
    }

    /// Waits at most `limit` for the process to exit, killing it past that,
    /// and returns its status, the rest of its stdout, and its stderr.
    fn finish(mut self, limit: Duration) -> Result<(ExitStatus, String, String), String> {
        let deadline = Instant::now() + limit;
        if self.status.is_none() {
            match self.exit.recv_timeout(limit) {
                Ok(r) => self.status = Some(r.expect("wait for the peer")),
                Err(_) => {
                    self.kill();
                    return Err(format!(
                        "{} did not exit within {limit:?} and was killed; stderr: {}",
                        self.name,
                        self.stderr()
                    ));
                }
            }
        }
        let mut rest = String::new();
        while !self.stdout_done {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(Some(line)) => rest.push_str(&line),
                Ok(None) | Err(RecvTimeoutError::Disconnected) => self.stdout_done = true,
                // A grandchild holding the pipe open: what was read is all.
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        let status = self.status.expect("exited");
        Ok((status, rest, self.stderr()))
    }

    /// Kills the process if it still runs, and reaps it.
    fn kill(&mut self) {
        self.stdin = None;
        if self.status.is_some() {
            return;
        }
        // SAFETY: kill(2) touches no memory of ours. The waiter thread has
        // not reaped the process (no status yet), so `pid` is still this
        // child, alive or a zombie, never a reused pid.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
        }
        if let Ok(r) = self.exit.recv_timeout(PEER_LIMIT) {
            self.status = r.ok();
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a Python script with `args`.
fn python(script: &str, args: &[String]) -> Peer {
    Peer::spawn(
        "python3",
        Command::new("python3").arg("-c").arg(script).args(args),
    )
}

/// Waits, without blocking the loop, until `peer` has exited; then its
/// stdout, which must end with status 0.
async fn peer_output(h: &proactor::Handle, mut peer: Peer) -> String {
    let name = peer.name.clone();
    until(h, LIMIT, &format!("{name} exits"), || peer.exited()).await;
    let (status, out, err) = peer.finish(PEER_LIMIT).unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{name} exited {status}: {out}{err}");
    out
}

/// Echoes; closes on a line `bye`.
struct EchoBye(Option<Transport>, Vec<u8>);

impl BaseProtocol for EchoBye {
    fn connection_made(&mut self, t: Transport) {
        self.0 = Some(t);
    }
}

impl Protocol for EchoBye {
    fn data_received(&mut self, d: &[u8]) {
        let t = self.0.as_ref().unwrap();
        t.write(d);
        self.1.extend_from_slice(d);
        if self.1.ends_with(b"bye\n") {
            t.close();
        }
    }
}

#[test]
fn openssl_s_client_against_our_server() {
    if !have("openssl", "version") {
        return;
    }
    drivers(
        "openssl_s_client_against_our_server",
        Some(SIM_SKIP),
        |lp| {
            let h = lp.handle();
            lp.run_until_complete(async move {
                let server = h
                    .create_tls_server(localhost(), || EchoBye(None, Vec::new()), server_options())
                    .unwrap();
                let port = server.local_addr().as_inet().unwrap().port();
                let ca = cert_files().0.clone();
                let mut s_client = Peer::spawn(
                    "openssl s_client",
                    Command::new("openssl")
                        .args([
                            "s_client",
                            "-quiet",
                            "-verify_return_error",
                            "-servername",
                            "localhost",
                        ])
                        .arg("-connect")
                        .arg(format!("127.0.0.1:{port}"))
                        .arg("-CAfile")
                        .arg(ca),
                );
                s_client.write_stdin(b"hello over openssl\nbye\n");
                let err = s_client.stderr.clone();
                let out = peer_output(&h, s_client).await;
                let err = err.lock().unwrap().clone();
                assert!(!err.contains("unexpected eof"), "s_client: {err}");
                assert_eq!(out, "hello over openssl\nbye\n");
                server.close();
            })
            .unwrap();
        },
    );
}

/// Starts `openssl s_server -rev` on a free port (`-accept 127.0.0.1:0`);
/// returns it once it says where it listens.
fn s_server() -> (Peer, u16) {
    let (c, k) = cert_files();
    let mut peer = Peer::spawn(
        "openssl s_server",
        Command::new("openssl")
            .args(["s_server", "-rev", "-accept", "127.0.0.1:0"])
            .arg("-cert")
            .arg(c)
            .arg("-key")
            .arg(k),
    );
    loop {
        let line = peer.line(PEER_LIMIT).unwrap_or_else(|e| panic!("{e}"));
        // "ACCEPT 127.0.0.1:PORT" once it listens.
        if let Some(addr) = line.trim().strip_prefix("ACCEPT ") {
            let port = addr
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("s_server: no port in {line:?}"));
            return (peer, port);
        }
    }
}

#[test]
fn our_client_against_openssl_s_server() {
    if !have("openssl", "version") {
        return;
    }
    drivers(
        "our_client_against_openssl_s_server",
        Some(SIM_SKIP),
        |lp| {
            let (s_server, port) = s_server();
            let h = lp.handle();
            lp.run_until_complete(async move {
                let seen = shared();
                let addr: proactor::Address = format!("127.0.0.1:{port}").parse().unwrap();
                let t = h
                    .create_tls_connection(addr, Sink::new(&seen), client_options())
                    .await
                    .unwrap();
                t.write(b"hello openssl\n");
                until(&h, LIMIT, "reversed echo", || {
                    seen.borrow().data.ends_with(b"\n")
                })
                .await;
                assert_eq!(seen.borrow().data, b"lssnepo olleh\n");
                t.close();
                until(&h, LIMIT, "closed", || seen.borrow().lost == 1).await;
            })
            .unwrap();
            // s_server serves until killed: dropping it kills it.
            drop(s_server);
        },
    );
}

const PY_CLIENT: &str = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20) as raw:
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        payload = bytes(range(256)) * 4096 + b"bye\n"
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        assert got == payload, (len(got), len(payload))
        # The server closes after `bye`: its close_notify arrives as a clean EOF.
        assert s.recv(1) == b""
        print(s.version(), len(got))
"#;

#[test]
fn python_ssl_client_against_our_server() {
    if !have("python3", "--version") {
        return;
    }
    drivers(
        "python_ssl_client_against_our_server",
        Some(SIM_SKIP),
        |lp| {
            let h = lp.handle();
            lp.run_until_complete(async move {
                let server = h
                    .create_tls_server(localhost(), || EchoBye(None, Vec::new()), server_options())
                    .unwrap();
                let port = server.local_addr().as_inet().unwrap().port();
                let ca = cert_files().0.display().to_string();
                let client = python(PY_CLIENT, &[port.to_string(), ca]);
                let s = peer_output(&h, client).await;
                assert!(s.starts_with("TLSv1.3 1048580"), "{s}");
                server.close();
            })
            .unwrap();
        },
    );
}

const PY_SERVER: &str = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(1)
ls.settimeout(20)
print(ls.getsockname()[1], flush=True)
conn, _ = ls.accept()
conn.settimeout(20)
with ctx.wrap_socket(conn, server_side=True) as s:
    total = 0
    while True:
        d = s.recv(65536)
        if not d:
            break   # our close_notify
        total += len(d)
        s.sendall(d)
    s.unwrap()      # answer with ours
print("echoed", total, flush=True)
"#;

#[test]
fn our_client_against_python_ssl_server() {
    if !have("python3", "--version") {
        return;
    }
    drivers(
        "our_client_against_python_ssl_server",
        Some(SIM_SKIP),
        |lp| {
            let (c, k) = cert_files();
            let mut server = python(
                PY_SERVER,
                &[c.display().to_string(), k.display().to_string()],
            );
            let line = server.line(PEER_LIMIT).unwrap_or_else(|e| panic!("{e}"));
            let port: u16 = line
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("python server: no port in {line:?}"));
            let h = lp.handle();
            lp.run_until_complete(async move {
                let seen = shared();
                let addr: proactor::Address = format!("127.0.0.1:{port}").parse().unwrap();
                let t = h
                    .create_tls_connection(addr, Sink::new(&seen), client_options())
                    .await
                    .unwrap();
                let data = pattern(11, 1 << 20);
                t.write(&data);
                until(&h, LIMIT, "echo", || seen.borrow().data.len() >= data.len()).await;
                assert!(seen.borrow().data == data);
                t.close();
                until(&h, LIMIT, "closed", || seen.borrow().lost == 1).await;
                assert!(seen.borrow().error.is_none(), "{:?}", seen.borrow().error);
                let out = peer_output(&h, server).await;
                assert_eq!(out.trim(), format!("echoed {}", 1 << 20));
            })
            .unwrap();
        },
    );
}

const PY_ASYNCIO_STARTTLS: &str = r#"
import asyncio, ssl, sys
async def main():
    ctx = ssl.create_default_context(cafile=sys.argv[2])
    r, w = await asyncio.open_connection("127.0.0.1", int(sys.argv[1]))
    w.write(b"plain line\n")
    assert await r.readline() == b"plain line\n"
    w.write(b"STARTTLS\n")
    assert await r.readline() == b"READY\r\n"
    await w.start_tls(ctx, server_hostname="localhost")
    w.write(b"secret line\n")
    assert await r.readline() == b"secret line\n"
    print(w.get_extra_info("ssl_object").version())
    w.close()
    await w.wait_closed()
asyncio.run(asyncio.wait_for(main(), 20))
"#;

#[test]
fn python_asyncio_start_tls_against_starttls_echo() {
    if !have("python3", "--version") {
        return;
    }
    drivers("python_asyncio_start_tls", Some(SIM_SKIP), |lp| {
        let h = lp.handle();
        lp.run_until_complete(async move {
            let up: UpgradeRef = Default::default();
            let (hh, u2) = (h.clone(), up.clone());
            let server = h
                .create_server(localhost(), move || StarttlsLine::new(&hh, &u2))
                .unwrap();
            let port = server.local_addr().as_inet().unwrap().port();
            let ca = cert_files().0.display().to_string();
            let client = python(PY_ASYNCIO_STARTTLS, &[port.to_string(), ca]);
            assert_eq!(peer_output(&h, client).await.trim(), "TLSv1.3");
            let u = up.borrow();
            assert!(u.result.as_ref().unwrap().is_ok());
            assert_eq!(u.plain_lines, vec![b"plain line\n".to_vec()]);
            assert_eq!(u.secured.borrow().data, b"secret line\n");
            drop(u);
            server.close();
        })
        .unwrap();
    });
}

/// The `smtp_starttls` example's path, built if needed.
///
/// `cargo test` builds the examples with the tests; `cargo test --test
/// tls_peers` does not, so this builds it (a no-op when it is up to date),
/// in the profile this test was built in. The variables cargo sets for a
/// test (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...) are removed first: build
/// scripts that watch them (ring's) would otherwise rebuild their crate and
/// everything above it, here and again in the next top-level `cargo`.
fn smtp_example_path() -> &'static std::path::Path {
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let target_profile = exe.parent().and_then(|d| d.parent()).unwrap();
        let profile = match target_profile.file_name().and_then(|p| p.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(p) => p.to_string(),
        };
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--example", "smtp_starttls", "--profile", &profile]);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            let set_for_tests = [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|p| key.starts_with(p))
                || [
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                    "OUT_DIR",
                ]
                .contains(&key.as_ref());
            if set_for_tests {
                build.env_remove(key.as_ref());
            }
        }
        // A build can wait for cargo's lock on the target directory: bounded.
        let (status, out, err) = Peer::spawn("cargo build --example smtp_starttls", &mut build)
            .finish(Duration::from_secs(600))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            status.success(),
            "building the smtp_starttls example failed: {out}{err}"
        );
        target_profile.join("examples").join("smtp_starttls")
    })
}

/// The SMTP example, started on `driver`, and its port.
fn smtp_example(driver: &str) -> (Peer, u16) {
    let mut example = Peer::spawn(
        &format!("smtp_starttls example on {driver}"),
        Command::new(smtp_example_path())
            .args(["--listen", "127.0.0.1:0"])
            .env("PROACTOR_DRIVER", driver),
    );
    // "listening on 127.0.0.1:PORT"
    let line = example.line(PEER_LIMIT).unwrap_or_else(|e| panic!("{e}"));
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the example did not say where it listens: {line:?}"));
    (example, port)
}

/// Stops the example and returns what it printed after its first line.
fn stop_example(mut example: Peer) -> String {
    example.kill();
    match example.finish(PEER_LIMIT) {
        Ok((_, out, err)) => format!("{out}{err}"),
        Err(e) => panic!("{e}"),
    }
}

const PY_SMTPLIB: &str = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE   # the example's certificate is throwaway
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20) as s:
    s.ehlo()
    assert s.has_extn("starttls") and s.has_extn("8bitmime")
    s.starttls(context=ctx)
    s.ehlo()
    assert not s.has_extn("starttls")
    s.sendmail("alice@example.com", ["bob@example.com"],
               "Subject: proactor\r\n\r\nfirst line\r\n.dotted line\r\n")
print("sent")
"#;

/// The example is a separate process on the driver the matrix names (the
/// loop the matrix builds is only used to tell which).
#[test]
fn python_smtplib_starttls_through_the_example() {
    if !have("python3", "--version") {
        return;
    }
    drivers("python_smtplib_starttls", Some(SIM_SKIP), |lp| {
        let driver = lp.handle().driver_kind().name();
        let (example, port) = smtp_example(driver);
        let sent = python(PY_SMTPLIB, &[port.to_string()]).finish(PEER_LIMIT);
        let out = stop_example(example);
        let (status, stdout, stderr) = sent.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            status.success(),
            "smtplib exited {status}: {stdout}{stderr}"
        );
        assert_eq!(stdout.trim(), "sent");
        assert!(
            out.contains("from <alice@example.com> to <bob@example.com>")
                && out.contains("over TLS")
                // smtplib doubles the leading dot; the example undoes it.
                && out.contains("\n.dotted line")
                && !out.contains(".."),
            "example output on {driver}:\n{out}"
        );
    });
}

#[test]
fn openssl_s_client_starttls_smtp_against_the_example() {
    if !have("openssl", "version") {
        return;
    }
    drivers("openssl_s_client_starttls_smtp", Some(SIM_SKIP), |lp| {
        let driver = lp.handle().driver_kind().name();
        let (example, port) = smtp_example(driver);
        let mut s_client = Peer::spawn(
            "openssl s_client -starttls smtp",
            Command::new("openssl")
                .args(["s_client", "-quiet", "-starttls", "smtp", "-connect"])
                .arg(format!("127.0.0.1:{port}")),
        );
        s_client.write_stdin(
            b"EHLO peer\r\nMAIL FROM:<o@example.com>\r\nRCPT TO:<p@example.com>\r\nDATA\r\nvia openssl\r\n.\r\nQUIT\r\n",
        );
        let done = s_client.finish(PEER_LIMIT);
        let out = stop_example(example);
        let (_, stdout, stderr) = done.unwrap_or_else(|e| panic!("{e}"));
        assert!(stdout.contains("221 bye"), "{stdout}\n{stderr}");
        assert!(
            !stdout.contains("STARTTLS"),
            "STARTTLS is not offered again over TLS"
        );
        assert!(
            out.contains("via openssl") && out.contains("over TLS"),
            "example output on {driver}:\n{out}"
        );
    });
}
