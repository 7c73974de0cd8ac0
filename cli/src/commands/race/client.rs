//! The race client: sends a seeded pattern with write back-pressure, toggles
//! `pause_reading`/`resume_reading` on a loop timer, and verifies the echo.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;
use indicatif::ProgressBar;
use proactor::{BaseProtocol, Handle, Protocol, TimerHandle, Transport};

use crate::pattern::{Mismatch, Pattern, StreamHash, Verifier};

/// What one client did, for the report.
#[derive(Debug, Clone, Default)]
pub struct ClientReport {
    /// Bytes handed to the transport.
    pub sent: u64,
    /// Bytes that came back.
    pub received: u64,
    /// Bytes that came back equal to what was sent, in order.
    pub verified: u64,
    /// Completed pause → resume cycles of the client's reading.
    pub pause_cycles: u64,
    /// Of those, cycles that ended with echoed bytes held by the transport:
    /// a receive completed while reading was paused (the bpo-33694 window)
    /// and its bytes waited for `resume_reading`.
    pub held_at_resume: u64,
    /// Bytes handed to `data_received` while reading was paused (R3): any
    /// is a failure.
    pub received_while_paused: u64,
    /// `pause_writing` calls the client honoured.
    pub write_pauses: u64,
    pub send_hash: u64,
    pub recv_hash: u64,
    pub mismatch: Option<Mismatch>,
    pub error: Option<String>,
    /// Negotiated TLS version and cipher suite, on a TLS transport.
    pub tls: Option<String>,
}

/// The workload of one client.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub packets: u64,
    pub size: usize,
    pub seed: u64,
    /// Toggle reading this often; `None`: never pause.
    pub pause_every: Option<Duration>,
}

impl Plan {
    pub fn total(&self) -> u64 {
        self.packets * self.size as u64
    }
}

/// State shared by the protocol, its pause timer and the code that waits for
/// the client to finish. Transport methods never call back into the protocol
/// (they only queue events, L4), so borrowing this while calling them is safe.
#[derive(Debug)]
pub struct Client {
    plan: Plan,
    pattern: Pattern,
    next_packet: u64,
    transport: Option<Transport>,
    write_paused: bool,
    reading_paused: bool,
    send_hash: StreamHash,
    verifier: Verifier,
    timer: Option<TimerHandle>,
    done: Option<oneshot::Sender<()>>,
    finished: bool,
    progress: Option<ProgressBar>,
    report: ClientReport,
}

pub type Shared = Rc<RefCell<Client>>;

impl Client {
    /// A client and the receiver that fires when it has finished, whatever
    /// the outcome.
    pub fn new(plan: Plan, progress: Option<ProgressBar>) -> (Shared, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let pattern = Pattern::new(plan.seed);
        let c = Client {
            plan,
            pattern: pattern.clone(),
            next_packet: 0,
            transport: None,
            write_paused: false,
            reading_paused: false,
            send_hash: StreamHash::default(),
            verifier: Verifier::new(pattern),
            timer: None,
            done: Some(tx),
            finished: false,
            progress,
            report: ClientReport::default(),
        };
        (Rc::new(RefCell::new(c)), rx)
    }

    /// The protocol to hand to `create_connection`.
    pub fn protocol(shared: &Shared) -> RaceProtocol {
        RaceProtocol(shared.clone())
    }

    pub fn report(&self) -> ClientReport {
        let mut r = self.report.clone();
        r.verified = self.verifier.verified();
        r.send_hash = self.send_hash.finish();
        r.recv_hash = self.verifier.hash();
        r
    }

    /// Records a failure that happened outside the protocol (connect error).
    pub fn fail(&mut self, error: String) {
        self.error(error);
        self.finish();
    }

    fn error(&mut self, error: String) {
        self.report.error.get_or_insert(error);
    }

    /// Queues packets until the write buffer passes the high-water mark.
    ///
    /// Checking the buffer size here, not only waiting for `pause_writing`,
    /// matters: `pause_writing` is delivered after the current callback
    /// returns (L4), so a loop that only watched for it would queue every
    /// packet at once.
    fn pump_writes(&mut self) {
        let Some(t) = self.transport.clone() else {
            return;
        };
        let (_low, high) = t.get_write_buffer_limits();
        while !self.write_paused && self.next_packet < self.plan.packets && !t.is_closing() {
            let offset = self.next_packet * self.plan.size as u64;
            let chunk = self.pattern.chunk(offset, self.plan.size);
            self.send_hash.update(&chunk);
            t.write_bytes(Bytes::from(chunk));
            self.next_packet += 1;
            self.report.sent += self.plan.size as u64;
            if t.get_write_buffer_size() > high {
                break;
            }
        }
    }

    /// Ends the client once: stops the timer and wakes whoever waits.
    fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        if let Some(t) = self.timer.take() {
            t.cancel();
        }
        self.transport = None;
        if let Some(tx) = self.done.take() {
            let _ = tx.send(());
        }
    }
}

/// Arms the next pause/resume toggle. The timer holds only a weak reference,
/// so a finished client is freed even if a toggle is still queued.
fn arm_toggle(shared: &Shared, h: &Handle) {
    let Some(every) = shared.borrow().plan.pause_every else {
        return;
    };
    let weak: Weak<RefCell<Client>> = Rc::downgrade(shared);
    let h2 = h.clone();
    let timer = h.call_later(every, move || {
        if let Some(shared) = weak.upgrade() {
            toggle(&shared, &h2);
        }
    });
    shared.borrow_mut().timer = Some(timer);
}

fn toggle(shared: &Shared, h: &Handle) {
    {
        let mut c = shared.borrow_mut();
        if c.finished {
            return;
        }
        let Some(t) = c.transport.clone() else {
            return;
        };
        if c.reading_paused {
            if t.ledger().held > 0 {
                c.report.held_at_resume += 1;
            }
            t.resume_reading();
            c.reading_paused = false;
            c.report.pause_cycles += 1;
        } else {
            t.pause_reading();
            c.reading_paused = true;
        }
    }
    arm_toggle(shared, h);
}

/// The [`Protocol`] face of a [`Client`].
#[derive(Debug)]
pub struct RaceProtocol(Shared);

impl BaseProtocol for RaceProtocol {
    fn connection_made(&mut self, transport: Transport) {
        let handle = transport.loop_handle();
        {
            let mut c = self.0.borrow_mut();
            c.report.tls = transport
                .tls_info()
                .map(|i| format!("{} {}", i.version, i.cipher_suite));
            c.transport = Some(transport);
            c.pump_writes();
        }
        if let Some(h) = handle {
            arm_toggle(&self.0, &h);
        }
    }

    fn connection_lost(&mut self, error: Option<std::io::Error>) {
        let mut c = self.0.borrow_mut();
        let total = c.plan.total();
        let verified = c.verifier.verified();
        if let Some(e) = error {
            c.error(format!("connection lost: {e}"));
        } else if verified < total {
            c.error(format!(
                "connection closed after {verified} of {total} bytes were verified"
            ));
        }
        c.finish();
    }

    fn eof_received(&mut self) -> bool {
        let mut c = self.0.borrow_mut();
        let (total, verified) = (c.plan.total(), c.verifier.verified());
        if verified < total {
            c.error(format!(
                "server sent EOF after {verified} of {total} bytes were verified"
            ));
        }
        false
    }

    fn pause_writing(&mut self) {
        let mut c = self.0.borrow_mut();
        c.write_paused = true;
        c.report.write_pauses += 1;
    }

    fn resume_writing(&mut self) {
        let mut c = self.0.borrow_mut();
        c.write_paused = false;
        c.pump_writes();
    }
}

impl Protocol for RaceProtocol {
    fn data_received(&mut self, data: &[u8]) {
        let mut c = self.0.borrow_mut();
        c.report.received += data.len() as u64;
        if let Some(pb) = &c.progress {
            pb.inc(data.len() as u64);
        }
        if c.reading_paused {
            // R3: once `pause_reading` has returned, nothing may reach the
            // protocol until `resume_reading`.
            c.report.received_while_paused += data.len() as u64;
            let n = data.len();
            c.error(format!(
                "{n} bytes reached the client while its reading was paused (R3)"
            ));
        }
        if c.report.mismatch.is_some() || c.finished {
            return;
        }
        let total = c.plan.total();
        if c.verifier.verified() + data.len() as u64 > total {
            let extra = c.verifier.verified() + data.len() as u64 - total;
            c.error(format!(
                "the echo returned {extra} bytes more than were sent"
            ));
        }
        if let Err(m) = c.verifier.check(data) {
            c.report.mismatch = Some(m);
            c.error(format!(
                "echo differs at byte {}: expected {:#04x}, got {:#04x}",
                m.offset, m.expected, m.got
            ));
            if let Some(t) = &c.transport {
                t.abort();
            }
            return;
        }
        if c.verifier.verified() == total {
            if let Some(t) = c.timer.take() {
                t.cancel();
            }
            if let Some(t) = &c.transport {
                t.close();
            }
        }
    }
}
