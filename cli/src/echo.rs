//! The echo server: a flow-controlled echo protocol, used by `proactor echo`
//! and as the server side of `proactor race`.

use std::cell::Cell;
use std::io::Write;
use std::rc::Rc;

use proactor::{Address, BaseProtocol, EventLoop, Protocol, Transport};

use crate::cli::EchoArgs;
use crate::tls;
use crate::Failure;

/// Counters shared by every connection of one echo server.
#[derive(Debug, Default)]
pub struct EchoCounters {
    pub connections: Cell<u64>,
    pub echoed: Cell<u64>,
}

/// Writes back everything it receives.
///
/// It pauses reading while its own write buffer is above the high-water mark
/// (asyncio's flow-controlled echo), so a client that stops reading makes the
/// server stop reading too instead of buffering without bound. That also puts
/// the server's receive path through pause/resume (R2) during a race.
#[derive(Debug)]
pub struct EchoProtocol {
    transport: Option<Transport>,
    counters: Rc<EchoCounters>,
}

impl EchoProtocol {
    pub fn new(counters: Rc<EchoCounters>) -> Self {
        EchoProtocol {
            transport: None,
            counters,
        }
    }
}

impl BaseProtocol for EchoProtocol {
    fn connection_made(&mut self, transport: Transport) {
        self.counters
            .connections
            .set(self.counters.connections.get() + 1);
        self.transport = Some(transport);
    }

    fn connection_lost(&mut self, error: Option<std::io::Error>) {
        if let Some(e) = error {
            tracing::debug!(%e, "echo connection lost");
        }
        self.transport = None;
    }

    fn pause_writing(&mut self) {
        if let Some(t) = &self.transport {
            t.pause_reading();
        }
    }

    fn resume_writing(&mut self) {
        if let Some(t) = &self.transport {
            t.resume_reading();
        }
    }
}

impl Protocol for EchoProtocol {
    fn data_received(&mut self, data: &[u8]) {
        if let Some(t) = &self.transport {
            t.write(data);
            self.counters
                .echoed
                .set(self.counters.echoed.get() + data.len() as u64);
        }
    }
}

/// `proactor echo`: serves until killed.
pub fn run(args: &EchoArgs) -> Result<(), Failure> {
    let tls = tls::ServerTls::from_args(&args.tls, args.starttls)?;
    let event_loop = crate::build_loop(args.driver, None)?;
    let h = event_loop.handle();
    let addr: Address = args.listen.clone();
    let counters = Rc::new(EchoCounters::default());
    let server = match &tls {
        Some(tls) => tls.serve(&h, addr.clone(), counters.clone(), args.starttls)?,
        None => {
            let c = counters.clone();
            h.create_server(addr.clone(), move || EchoProtocol::new(c.clone()))
                .map_err(|e| Failure::setup(format!("cannot listen on {addr}: {e}")))?
        }
    };
    println!(
        "proactor echo: listening on {} (driver {}{})",
        server.local_addr(),
        h.driver_kind(),
        match (&tls, args.starttls) {
            (Some(_), true) => ", STARTTLS",
            (Some(_), false) => ", TLS",
            _ => "",
        }
    );
    // Scripts wait for the line above before connecting.
    let _ = std::io::stdout().flush();
    run_forever(&event_loop)
}

fn run_forever(event_loop: &EventLoop) -> Result<(), Failure> {
    event_loop
        .run_forever()
        .map_err(|e| Failure::run(format!("event loop failed: {e}")))
}
