//! The plainest echo server protocol, shared by the tests (through `util`)
//! and the criterion benches (`#[path]`), so there is one copy of it.

use proactor::{BaseProtocol, Protocol, Transport};

/// Writes back what it receives, closes on EOF (the default
/// `eof_received`).
pub struct Echo(pub Option<Transport>);

impl BaseProtocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        self.0 = Some(t);
    }
}

impl Protocol for Echo {
    fn data_received(&mut self, data: &[u8]) {
        if let Some(t) = &self.0 {
            t.write(data);
        }
    }
}
