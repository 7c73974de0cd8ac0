//! Proof that the TLS tests can fail: with `broken-scheduled-handshake`
//! (bpo-33674: the handshake is scheduled with `call_soon` instead of
//! started, and bytes the raw transport delivers before it runs pass
//! through to the application unencrypted), a sim sweep of TLS connections
//! must catch it within a bounded number of seeds:
//!
//! ```text
//! cargo test --features broken-scheduled-handshake --test tls_broken
//! ```
//!
//! Without the feature, the same seeds must all pass.
mod tls_support;
mod util;

use std::rc::Rc;
use std::time::Duration;

use proactor::{DriverKind, EventLoop};
use tls_support::*;

const DETECTION_BUDGET: u64 = 100;

/// One STARTTLS upgrade on the sim driver. The client pipelines: it sends
/// `STARTTLS` and its ClientHello at once, so whether the hello arrives in
/// the same read as the command (and must be handed to the engine as
/// unconsumed bytes) or in a later read depends on the seed. Err describes
/// what went wrong.
fn pipelined_starttls(seed: u64) -> Result<(), String> {
    let lp = EventLoop::builder()
        .driver(DriverKind::Sim)
        .sim_seed(seed)
        .build()
        .unwrap();
    let h = lp.handle();
    lp.run_until_complete(async move {
        let up: UpgradeRef = Rc::default();
        let (hh, u2) = (h.clone(), up.clone());
        let server = h
            .create_server(localhost(), move || {
                let mut s = StarttlsLine::new(&hh, &u2);
                s.handshake_timeout = Duration::from_secs(3);
                s
            })
            .unwrap();
        let (peer, pst) = ManualPeer::client();
        pst.borrow_mut().hold_hello = true;
        pst.borrow_mut().skip_plain = b"READY\r\n".len();
        let raw = h
            .create_connection(server.local_addr(), peer)
            .await
            .unwrap();
        raw.write(b"STARTTLS\r\n");
        let hello = pst.borrow_mut().take_output();
        raw.write(&hello);
        until(&h, Duration::from_secs(30), "upgrade result", || {
            up.borrow().result.is_some()
        })
        .await;
        let result = up.borrow_mut().result.take().unwrap();
        let outcome = match result {
            Err(e) => Err(format!("handshake failed: {e}")),
            Ok(_) => {
                pst.borrow_mut().write(b"secret\n");
                until(&h, Duration::from_secs(30), "echo over TLS", || {
                    !pst.borrow().plaintext.is_empty()
                })
                .await;
                if pst.borrow().plaintext == b"secret\n" {
                    Ok(())
                } else {
                    Err("echo mismatch".into())
                }
            }
        };
        raw.abort();
        server.close();
        outcome
    })
    .unwrap()
}

#[cfg(feature = "broken-scheduled-handshake")]
#[test]
fn sweep_detects_scheduled_handshake() {
    for seed in 0..DETECTION_BUDGET {
        if let Err(e) = pipelined_starttls(seed) {
            println!(
                "broken-scheduled-handshake detected after {} seed(s): {e}",
                seed + 1
            );
            return;
        }
    }
    panic!("the sweep did not catch the scheduled handshake in {DETECTION_BUDGET} seeds");
}

#[cfg(not(feature = "broken-scheduled-handshake"))]
#[test]
fn correct_build_passes_the_same_seeds() {
    for seed in 0..DETECTION_BUDGET {
        if let Err(e) = pipelined_starttls(seed) {
            panic!("seed {seed}: {e}; replay with PROACTOR_SIM_SEED={seed}");
        }
    }
}
