//! The flow-controlled echo protocol of `proactor echo`, of the server side
//! of `proactor race`, and of the proactor servers of `proactor bench`.

use std::cell::Cell;
use std::rc::Rc;

use proactor::{BaseProtocol, Protocol, Transport};

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
