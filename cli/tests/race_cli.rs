//! The `proactor` binary as users and CI run it: `race` on every driver of
//! the tests' matrix (uring where io_uring works, poll, sim) must print
//! `PASS` and `lost 0 bytes`, end with status 0 and a JSON verdict that says
//! nothing was lost and nothing arrived while paused; bad arguments end with
//! status 2. (The race's own checks run in-process in
//! `src/commands/race/tests.rs`.)
//!
//! Building this test makes `cargo test` build the binary itself, with the
//! features of the test build, so CI runs the races with that binary instead
//! of building the library a second time for `cargo build`.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use proactor::DriverKind;

#[path = "../../tests/matrix/mod.rs"]
mod matrix;

/// Wall time one run of the binary may take.
const LIMIT: Duration = Duration::from_secs(120);

/// Runs the binary with `args`; fails if it runs longer than [`LIMIT`].
fn proactor(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_proactor"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the proactor binary");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let stderr = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        let _ = tx.send(s);
    });
    let Ok(stdout) = rx.recv_timeout(LIMIT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("proactor {args:?} ran for more than {LIMIT:?}");
    };
    let status = child.wait().expect("wait for proactor");
    Output {
        status,
        stdout,
        stderr: stderr.join().unwrap_or_default(),
    }
}

#[test]
fn race_passes_on_every_driver() {
    let mut ran = Vec::new();
    for kind in [DriverKind::Uring, DriverKind::Poll, DriverKind::Sim] {
        if !matrix::driver_expected(kind, None) {
            continue;
        }
        let mut args = vec![
            "race",
            "--driver",
            kind.name(),
            "--packets",
            "128",
            "--connections",
            "2",
            "--pause-every",
            "1",
            "--timeout",
            "60",
            "--json",
        ];
        if kind == DriverKind::Sim {
            args.extend(["--seeds", "2"]);
        }
        let o = proactor(&args);
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success(),
            "proactor {args:?}: {}\n{stdout}\n{stderr}",
            o.status
        );
        assert!(
            stdout.contains("\nPASS\n") && stdout.contains("lost        0 bytes"),
            "{stdout}"
        );
        let json: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap_or_default())
                .unwrap_or_else(|e| panic!("the last line is not JSON ({e}): {stdout}"));
        assert_eq!(json["driver"], kind.name(), "{json}");
        assert_eq!(json["ok"], true, "{json}");
        assert_eq!(json["bytes_lost"], 0, "{json}");
        assert_eq!(json["received_while_paused"], 0, "{json}");
        assert_eq!(json["bytes_verified"], json["bytes_planned"], "{json}");
        ran.push(kind.name());
    }
    eprintln!("race ran on {ran:?}");
}

#[test]
fn bad_arguments_exit_2() {
    let o = proactor(&["race", "--seeds", "3", "--driver", "poll"]);
    assert_eq!(o.status.code(), Some(2), "--seeds needs sim: {o:?}");
    let o = proactor(&["race", "--packets", "0"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}
