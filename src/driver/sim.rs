//! Placeholder: the `sim` driver is being written.
#![allow(dead_code, unused_variables)]

use super::*;

/// The `sim` driver.
#[derive(Debug)]
pub struct SimDriver;

/// Knobs of the simulated network and scheduler.
#[derive(Clone, Debug, Default)]
pub struct SimConfig {
    /// Seed of every scheduling decision.
    pub seed: u64,
}
impl SimDriver {
    /// Placeholder.
    pub fn new(config: SimConfig) -> SimDriver {
        SimDriver
    }
}
impl Driver for SimDriver {
    fn kind(&self) -> DriverKind {
        unimplemented!()
    }
    fn now(&self) -> Instant {
        unimplemented!()
    }
    fn submit(&mut self, op: Op, user: usize) -> OpKey {
        unimplemented!()
    }
    fn cancel(&mut self, key: OpKey) {
        unimplemented!()
    }
    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        unimplemented!()
    }
    fn remote_waker(&self) -> Arc<dyn RemoteWaker> {
        unimplemented!()
    }
    fn in_flight(&self) -> usize {
        unimplemented!()
    }
    fn stats(&self) -> DriverStats {
        unimplemented!()
    }
    fn listen(&mut self, addr: &Address, backlog: u32) -> io::Result<SocketId> {
        unimplemented!()
    }
    fn open_stream(&mut self, addr: &Address) -> io::Result<SocketId> {
        unimplemented!()
    }
    fn close(&mut self, socket: SocketId) {
        unimplemented!()
    }
    fn local_addr(&self, socket: SocketId) -> io::Result<Address> {
        unimplemented!()
    }
    fn peer_addr(&self, socket: SocketId) -> io::Result<Address> {
        unimplemented!()
    }
    fn set_option(&mut self, socket: SocketId, opt: SockOpt) -> io::Result<()> {
        unimplemented!()
    }
}
