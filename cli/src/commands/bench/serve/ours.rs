//! proactor's echo servers: the flow-controlled `EchoProtocol` of `proactor
//! echo` on a loop of the given driver, plain or over TLS
//! (`create_tls_server`).

use std::rc::Rc;
use std::sync::Arc;

use proactor::{DriverKind, EventLoop, TlsOptions};

use crate::protocols::{EchoCounters, EchoProtocol};

pub fn serve(kind: DriverKind, tls: Option<Arc<rustls::ServerConfig>>) -> Result<(), String> {
    let event_loop = EventLoop::builder()
        .driver(kind)
        .build()
        .map_err(|e| format!("the {kind} driver is unavailable: {e}"))?;
    let h = event_loop.handle();
    let counters = Rc::new(EchoCounters::default());
    let factory = move || EchoProtocol::new(counters.clone());
    let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
    let server = match tls {
        None => h.create_server(addr, factory),
        Some(config) => h.create_tls_server(addr, factory, TlsOptions::server(config)),
    }
    .map_err(|e| format!("cannot listen: {e}"))?;
    let addr = server
        .local_addr()
        .as_inet()
        .ok_or("the server has no IP address")?;
    super::ready(addr);
    event_loop
        .run_forever()
        .map_err(|e| format!("the loop stopped: {e}"))
}
