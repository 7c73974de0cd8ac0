//! Proof that the suite can fail: with a deliberately broken behaviour
//! compiled in (test-only cargo features), the sim sweep must detect it
//! within a bounded number of seeds. CI runs, one feature at a time:
//!
//! ```text
//! cargo test --release --features broken-pause-cancels --test sim_broken
//! cargo test --release --features broken-early-delivery --test sim_broken
//! ```
//!
//! Without those features this file only checks that the same workloads
//! pass on the same seeds.

mod util;

use std::time::Duration;

use proactor::{DriverKind, EventLoop, Handle, Transport};
use util::*;

/// Most seeds a sweep may take to catch a broken behaviour.
const DETECTION_BUDGET: u64 = 200;

/// What one seed of the pause-storm workload saw.
struct Seen {
    sent: usize,
    delivered: usize,
    exact: bool,
    violations: Vec<String>,
}

/// A client streams 256 KiB to a server that pauses in `data_received` and
/// resumes a moment later, the storm the asyncio bug needed.
fn pause_storm(seed: u64) -> Seen {
    let lp = EventLoop::builder()
        .driver(DriverKind::Sim)
        .sim_seed(seed)
        .build()
        .unwrap();
    let h = lp.handle();
    let hh = h.clone();
    lp.run_until_complete(async move {
        let h = hh;
        let rec = std::rc::Rc::new(std::cell::RefCell::new(None));
        let (r2, h2) = (rec.clone(), h.clone());
        // A small receive buffer makes many small receives, so timers often
        // find one in flight.
        let options = proactor::ServerOptions {
            socket: proactor::SocketOptions {
                recv_buffer: Some(4096),
                ..proactor::SocketOptions::default()
            },
            ..proactor::ServerOptions::default()
        };
        let server = h
            .create_server_with(
                localhost(),
                move || {
                    let h3: Handle = h2.clone();
                    let (p, r) = Recorder::with_hooks(Hooks {
                        data_len: Some(Box::new(move |t: &Transport, _| {
                            t.pause_reading();
                            let t = t.clone();
                            h3.call_later(Duration::from_micros(50), move || t.resume_reading());
                        })),
                        ..Hooks::default()
                    });
                    *r2.borrow_mut() = Some(r);
                    proactor::AnyProtocol::from(p)
                },
                options,
            )
            .unwrap();
        let payload = pattern(seed, 0, 256 * 1024);
        let (cp, _c) = Recorder::new();
        let client = h.create_connection(server.local_addr(), cp).await.unwrap();
        for chunk in payload.chunks(4096) {
            client.write(chunk);
        }
        // Timers pause the server while its next receive is in flight.
        fn toggle(
            h: Handle,
            rec: std::rc::Rc<std::cell::RefCell<Option<std::rc::Rc<std::cell::RefCell<Rec>>>>>,
        ) {
            let t = rec
                .borrow()
                .as_ref()
                .and_then(|r| r.borrow().transport.clone());
            if let Some(t) = &t {
                if t.is_closing() {
                    return;
                }
                t.pause_reading();
                let t = t.clone();
                h.call_later(Duration::from_micros(4), move || t.resume_reading());
            }
            let h2 = h.clone();
            h.call_later(Duration::from_micros(9), move || toggle(h2, rec));
        }
        toggle(h.clone(), rec.clone());
        client.close();
        wait_until(
            &h,
            Duration::from_secs(60),
            "server connection_lost",
            || {
                rec.borrow()
                    .as_ref()
                    .is_some_and(|r: &std::rc::Rc<std::cell::RefCell<Rec>>| r.borrow().lost == 1)
            },
        )
        .await;
        let r = rec.borrow().clone().unwrap();
        let r = r.borrow();
        Seen {
            sent: payload.len(),
            delivered: r.data.len(),
            exact: r.data == payload,
            violations: r.violations.clone(),
        }
    })
    .unwrap()
}

fn broken(seen: &Seen) -> bool {
    !seen.exact || !seen.violations.is_empty()
}

/// Sweeps seeds until the workload breaks; returns (seeds tried, the failure).
fn sweep_until_broken() -> Option<(u64, Seen)> {
    for seed in 0..DETECTION_BUDGET {
        let seen = pause_storm(seed);
        if broken(&seen) {
            return Some((seed + 1, seen));
        }
    }
    None
}

#[cfg(any(feature = "broken-pause-cancels", feature = "broken-early-delivery"))]
#[test]
fn sweep_detects_the_broken_behaviour() {
    let (seeds, seen) =
        sweep_until_broken().expect("the sim sweep must catch the broken behaviour");
    println!(
        "detected after {seeds} seed(s): sent {} bytes, delivered {}, lost {}, violations: {:?}",
        seen.sent,
        seen.delivered,
        seen.sent.saturating_sub(seen.delivered),
        seen.violations.first()
    );
    if cfg!(feature = "broken-pause-cancels") {
        assert!(seen.delivered < seen.sent, "the asyncio bug loses bytes");
    }
    if cfg!(feature = "broken-early-delivery") {
        assert!(
            seen.violations
                .iter()
                .any(|v| v.contains("before connection_made")),
            "{:?}",
            seen.violations
        );
    }
}

#[cfg(not(any(feature = "broken-pause-cancels", feature = "broken-early-delivery")))]
#[test]
fn correct_build_passes_the_same_seeds() {
    if let Some((seeds, seen)) = sweep_until_broken() {
        panic!(
            "seed {}: sent {} delivered {} exact {} {:?}",
            seeds - 1,
            seen.sent,
            seen.delivered,
            seen.exact,
            seen.violations
        );
    }
}
