//! Real peers: OpenSSL's `s_client`/`s_server`, Python's `ssl`, `asyncio`
//! `start_tls` and `smtplib`. Each runs on uring and poll; sim is skipped
//! (its network is in-memory: external processes cannot reach it). A test
//! whose peer is not installed says so and passes.
mod tls_support;
mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use proactor::{BaseProtocol, Protocol, Transport};
use tls_support::*;

const SIM_SKIP: &str = "external processes cannot reach the simulated network";
const LIMIT: Duration = Duration::from_secs(30);

/// Result of a peer run in a thread.
type Out = Arc<Mutex<Option<Result<String, String>>>>;

fn in_thread(f: impl FnOnce() -> Result<String, String> + Send + 'static) -> Out {
    let out: Out = Arc::default();
    let o = out.clone();
    thread::spawn(move || {
        let r = f();
        *o.lock().unwrap() = Some(r);
    });
    out
}

fn done(out: &Out) -> bool {
    out.lock().unwrap().is_some()
}

fn take(out: &Out) -> String {
    match out.lock().unwrap().take().unwrap() {
        Ok(s) => s,
        Err(e) => panic!("peer failed: {e}"),
    }
}

fn python(script: &str, args: &[String]) -> Result<String, String> {
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!(
            "python exited {}: {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
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
                let out = in_thread(move || {
                    let mut child = Command::new("openssl")
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
                        .arg(ca)
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .map_err(|e| e.to_string())?;
                    let mut stdin = child.stdin.take().unwrap();
                    stdin.write_all(b"hello over openssl\nbye\n").unwrap();
                    let mut s = String::new();
                    child.stdout.take().unwrap().read_to_string(&mut s).unwrap();
                    let mut err = String::new();
                    child
                        .stderr
                        .take()
                        .unwrap()
                        .read_to_string(&mut err)
                        .unwrap();
                    let status = child.wait().unwrap();
                    if !status.success() || err.contains("unexpected eof") {
                        return Err(format!("s_client {status}: {err}"));
                    }
                    Ok(s)
                });
                until(&h, LIMIT, "s_client done", || done(&out)).await;
                assert_eq!(take(&out), "hello over openssl\nbye\n");
                server.close();
            })
            .unwrap();
        },
    );
}

/// Starts `openssl s_server -rev` on a free port; returns it and the port.
fn s_server() -> (Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (c, k) = cert_files();
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-rev"])
        .arg("-accept")
        .arg(port.to_string())
        .arg("-cert")
        .arg(c)
        .arg("-key")
        .arg(k)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        // Listening once the port cannot be bound (no probe connection).
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    (child, port)
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
            let (mut child, port) = s_server();
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
            let _ = child.kill();
            let _ = child.wait();
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
                let out = in_thread(move || python(PY_CLIENT, &[port.to_string(), ca]));
                until(&h, LIMIT, "python done", || done(&out)).await;
                let s = take(&out);
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
            let mut child = Command::new("python3")
                .arg("-c")
                .arg(PY_SERVER)
                .arg(c)
                .arg(k)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdout = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            let port: u16 = line.trim().parse().unwrap();
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
            })
            .unwrap();
            let mut rest = String::new();
            stdout.read_to_string(&mut rest).unwrap();
            assert!(child.wait().unwrap().success());
            assert_eq!(rest.trim(), format!("echoed {}", 1 << 20));
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
            let out = in_thread(move || python(PY_ASYNCIO_STARTTLS, &[port.to_string(), ca]));
            until(&h, LIMIT, "python done", || done(&out)).await;
            assert_eq!(take(&out).trim(), "TLSv1.3");
            let u = up.borrow();
            assert!(u.result.as_ref().unwrap().is_ok());
            assert_eq!(u.secured.borrow().data, b"secret line\n");
            drop(u);
            server.close();
        })
        .unwrap();
    });
}

/// The SMTP example, started on `driver`; returns it and its port.
fn smtp_example(driver: &str) -> Option<(Child, u16)> {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("examples").join("smtp_starttls"))
        .unwrap();
    // `cargo test --test tls_peers` does not build examples: build it now
    // (a no-op when up to date), in the profile this test was built in.
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .and_then(|d| d.file_name());
    let profile = match profile_dir.and_then(|p| p.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(p) => p.to_string(),
    };
    let st = Command::new(env!("CARGO"))
        .args(["build", "--example", "smtp_starttls", "--profile", &profile])
        .status()
        .ok()?;
    assert!(st.success(), "building the example failed");
    let mut child = Command::new(&path)
        .args(["--listen", "127.0.0.1:0"])
        .env("PROACTOR_DRIVER", driver)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).ok()?;
    let Some(port) = line.trim().rsplit(':').next().and_then(|p| p.parse().ok()) else {
        let _ = child.kill();
        let _ = child.wait();
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        eprintln!("skipping smtp example on {driver}: it did not start ({err})");
        return None;
    };
    // Keep reading its output into the child's stdout slot for the test.
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
        let _ = tx.send(rest);
    });
    SMTP_OUT.with(|o| *o.borrow_mut() = Some(rx));
    Some((child, port))
}

thread_local! {
    static SMTP_OUT: std::cell::RefCell<Option<std::sync::mpsc::Receiver<String>>> = Default::default();
}

fn stop_example(mut child: Child) -> String {
    let _ = child.kill();
    let _ = child.wait();
    SMTP_OUT
        .with(|o| o.borrow_mut().take())
        .and_then(|rx| rx.recv_timeout(Duration::from_secs(5)).ok())
        .unwrap_or_default()
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

#[test]
fn python_smtplib_starttls_through_the_example() {
    if !have("python3", "--version") {
        return;
    }
    for driver in ["uring", "poll"] {
        let Some((child, port)) = smtp_example(driver) else {
            continue;
        };
        let r = python(PY_SMTPLIB, &[port.to_string()]);
        let out = stop_example(child);
        assert_eq!(r.unwrap().trim(), "sent");
        assert!(
            out.contains("from <alice@example.com> to <bob@example.com>")
                && out.contains("over TLS")
                // smtplib doubles the leading dot; the example undoes it.
                && out.contains("\n.dotted line")
                && !out.contains(".."),
            "example output:\n{out}"
        );
    }
}

#[test]
fn openssl_s_client_starttls_smtp_against_the_example() {
    if !have("openssl", "version") {
        return;
    }
    for driver in ["uring", "poll"] {
        let Some((child, port)) = smtp_example(driver) else {
            continue;
        };
        let mut c = Command::new("openssl")
            .args(["s_client", "-quiet", "-starttls", "smtp", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(b"EHLO peer\r\nMAIL FROM:<o@example.com>\r\nRCPT TO:<p@example.com>\r\nDATA\r\nvia openssl\r\n.\r\nQUIT\r\n")
            .unwrap();
        let o = c.wait_with_output().unwrap();
        let out = stop_example(child);
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            stdout.contains("221 bye"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !stdout.contains("STARTTLS"),
            "STARTTLS is not offered again over TLS"
        );
        assert!(
            out.contains("via openssl") && out.contains("over TLS"),
            "{out}"
        );
    }
}
