//! Arbitrary bytes, cut into arbitrary reads, fed to a TLS server transport
//! on the deterministic `sim` driver (T6: malformed input ends that
//! connection with an error; it never panics, never hangs the loop, and
//! leaves nothing behind).
//!
//! Two entry points are exercised: a `create_tls_server` connection, and a
//! plaintext server that upgrades with `start_tls` and hands the bytes after
//! its `STARTTLS` line to the engine as `unconsumed` (T3).
#![no_main]

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use proactor::tls::{self, TlsOptions};
use proactor::{BaseProtocol, EventLoop, Handle, Protocol, Transport};

#[derive(Arbitrary, Debug)]
struct Input {
    seed: u64,
    /// Upgrade a plaintext connection with start_tls instead.
    starttls: bool,
    /// Begin with a genuine ClientHello, to reach deeper engine states.
    real_hello: bool,
    /// Read sizes; the data is cut at these lengths (the rest in one piece).
    splits: Vec<u16>,
    data: Vec<u8>,
}

fn server_options() -> TlsOptions {
    static CFG: OnceLock<(String, String)> = OnceLock::new();
    let (c, k) = CFG.get_or_init(|| {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    });
    TlsOptions::server(tls::server_config_from_pem(c.as_bytes(), k.as_bytes()).unwrap())
        .handshake_timeout(Duration::from_secs(5))
        .shutdown_timeout(Duration::from_secs(5))
}

fn client_hello() -> Vec<u8> {
    let cfg = tls::dangerous::client_config_no_verification().unwrap();
    let mut c = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
    let mut out = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut out).unwrap();
    }
    out
}

/// Records what the application saw.
struct App(Rc<RefCell<u64>>);
impl BaseProtocol for App {}
impl Protocol for App {
    fn data_received(&mut self, d: &[u8]) {
        *self.0.borrow_mut() += d.len() as u64;
    }
}

/// Upgrades on the first line `STARTTLS`, handing the rest over.
struct Upgrader {
    h: Handle,
    t: Option<Transport>,
    buf: Vec<u8>,
    done: bool,
    app: Rc<RefCell<u64>>,
}
impl BaseProtocol for Upgrader {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }
}
impl Protocol for Upgrader {
    fn data_received(&mut self, d: &[u8]) {
        assert!(!self.done, "the old protocol got data after start_tls");
        self.buf.extend_from_slice(d);
        if let Some(p) = self.buf.windows(10).position(|w| w == b"STARTTLS\r\n") {
            self.done = true;
            let rest = self.buf.split_off(p + 10);
            let t = self.t.clone().unwrap();
            let fut =
                self.h
                    .start_tls(&t, App(self.app.clone()), server_options().unconsumed(rest));
            self.h.spawn(async move {
                let _ = fut.await;
            });
        }
    }
}

struct Peer;
impl BaseProtocol for Peer {}
impl Protocol for Peer {
    fn data_received(&mut self, _d: &[u8]) {}
}

/// Sleeps on the loop clock (virtual on sim).
async fn sleep(h: &Handle, d: Duration) {
    let state: Rc<RefCell<(bool, Option<std::task::Waker>)>> = Rc::default();
    let s2 = state.clone();
    h.call_later(d, move || {
        let mut s = s2.borrow_mut();
        s.0 = true;
        if let Some(w) = s.1.take() {
            w.wake();
        }
    });
    std::future::poll_fn(|cx| {
        let mut s = state.borrow_mut();
        if s.0 {
            std::task::Poll::Ready(())
        } else {
            s.1 = Some(cx.waker().clone());
            std::task::Poll::Pending
        }
    })
    .await
}

fuzz_target!(|input: Input| {
    let Ok(lp) = EventLoop::builder().sim_seed(input.seed).build() else {
        return;
    };
    let h = lp.handle();
    let app = Rc::new(RefCell::new(0u64));
    let mut data = Vec::new();
    if input.starttls {
        data.extend_from_slice(b"EHLO fuzz\r\nSTARTTLS\r\n");
    }
    if input.real_hello {
        data.extend(client_hello());
    }
    data.extend_from_slice(&input.data);
    let server = if input.starttls {
        let (h2, a2) = (h.clone(), app.clone());
        h.create_server(
            "127.0.0.1:0".parse::<proactor::Address>().unwrap(),
            move || Upgrader {
                h: h2.clone(),
                t: None,
                buf: Vec::new(),
                done: false,
                app: a2.clone(),
            },
        )
    } else {
        let a2 = app.clone();
        h.create_tls_server(
            "127.0.0.1:0".parse::<proactor::Address>().unwrap(),
            move || App(a2.clone()),
            server_options(),
        )
    }
    .unwrap();
    let addr = server.local_addr();
    let hh = h.clone();
    let srv = server.clone();
    let result = lp.run_until_complete(async move {
        let client = hh.create_connection(addr, Peer).await.unwrap();
        let mut rest = &data[..];
        for &s in &input.splits {
            if rest.is_empty() {
                break;
            }
            let n = (s as usize).clamp(1, rest.len());
            client.write(&rest[..n]);
            rest = &rest[n..];
            sleep(&hh, Duration::from_millis(1)).await;
        }
        client.write(rest);
        sleep(&hh, Duration::from_millis(50)).await;
        client.close();
        srv.close();
        // Every connection ends within the handshake/shutdown timeouts.
        srv.wait_closed().await;
    });
    result.expect("the loop ran to completion");
    // Nothing was delivered to the application unless a handshake
    // completed, which random bytes cannot do.
    let _ = app;
});
