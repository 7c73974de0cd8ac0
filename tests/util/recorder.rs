//! A protocol that records everything it is told, checks the callback-order
//! invariants, and runs optional hooks so tests can call transport methods
//! from inside any callback.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io;
use std::rc::Rc;

use proactor::{BaseProtocol, Protocol, Transport};

/// What a [`Recorder`] saw.
#[derive(Default)]
pub struct Rec {
    pub transport: Option<Transport>,
    pub data: Vec<u8>,
    pub made: u32,
    pub eof: u32,
    pub lost: u32,
    pub lost_error: Option<String>,
    pub lost_kind: Option<io::ErrorKind>,
    pub pauses: u32,
    pub resumes: u32,
    pub write_paused: bool,
    pub data_calls: u64,
    /// Contract violations seen (R4, W2, R3).
    pub violations: Vec<String>,
    /// The last events, for failure messages.
    pub trace: VecDeque<String>,
}

impl Rec {
    fn event(&mut self, e: String) {
        if self.trace.len() == 64 {
            self.trace.pop_front();
        }
        self.trace.push_back(e);
    }

    fn violation(&mut self, what: &str) {
        let msg = format!("{what} (after: {:?})", self.trace);
        self.violations.push(msg);
    }

    /// Panics with the trace if any invariant was violated.
    pub fn assert_ok(&self) {
        assert!(
            self.violations.is_empty(),
            "protocol invariant violated:\n{}",
            self.violations.join("\n")
        );
    }

    /// Panics unless the connection ended exactly once, cleanly.
    pub fn assert_closed_cleanly(&self) {
        self.assert_ok();
        assert_eq!(self.lost, 1, "connection_lost exactly once");
        assert!(
            self.lost_error.is_none(),
            "unexpected error: {:?}",
            self.lost_error
        );
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "made={} data={}B/{} calls eof={} lost={} ({:?}) pauses={} resumes={}",
            self.made,
            self.data.len(),
            self.data_calls,
            self.eof,
            self.lost,
            self.lost_error,
            self.pauses,
            self.resumes
        );
        s
    }
}

type Hook<A> = Option<Box<dyn FnMut(&Transport, A)>>;
type DataHook = Option<Box<dyn FnMut(&Transport, &[u8])>>;
type EofHook = Option<Box<dyn FnMut(&Transport) -> bool>>;

/// Optional callbacks run after the recorder has recorded an event.
#[derive(Default)]
pub struct Hooks {
    pub made: Hook<()>,
    pub data: DataHook,
    pub data_len: Hook<usize>,
    pub eof: EofHook,
    pub lost: Hook<()>,
    pub pause_writing: Hook<()>,
    pub resume_writing: Hook<()>,
}

/// The recording, checking protocol.
pub struct Recorder {
    pub rec: Rc<RefCell<Rec>>,
    pub hooks: Hooks,
    transport: Option<Transport>,
}

impl Recorder {
    pub fn new() -> (Recorder, Rc<RefCell<Rec>>) {
        Recorder::with_hooks(Hooks::default())
    }

    pub fn with_hooks(hooks: Hooks) -> (Recorder, Rc<RefCell<Rec>>) {
        let rec = Rc::new(RefCell::new(Rec::default()));
        (
            Recorder {
                rec: rec.clone(),
                hooks,
                transport: None,
            },
            rec,
        )
    }

    /// A recorder that continues an existing record (for set_protocol).
    pub fn continuing(rec: Rc<RefCell<Rec>>, transport: Transport, hooks: Hooks) -> Recorder {
        Recorder {
            rec,
            hooks,
            transport: Some(transport),
        }
    }

    fn alive(&self, what: &str) {
        let mut r = self.rec.borrow_mut();
        if r.made == 0 {
            r.violation(&format!("R4: {what} before connection_made"));
        }
        if r.lost > 0 {
            r.violation(&format!("R4: {what} after connection_lost"));
        }
    }
}

impl BaseProtocol for Recorder {
    fn connection_made(&mut self, transport: Transport) {
        {
            let mut r = self.rec.borrow_mut();
            r.made += 1;
            if r.made > 1 {
                r.violation("R4: connection_made twice");
            }
            r.event("made".into());
            r.transport = Some(transport.clone());
        }
        self.transport = Some(transport.clone());
        if let Some(h) = &mut self.hooks.made {
            h(&transport, ());
        }
    }

    fn connection_lost(&mut self, error: Option<io::Error>) {
        {
            let mut r = self.rec.borrow_mut();
            if r.made == 0 {
                r.violation("R4: connection_lost before connection_made");
            }
            r.lost += 1;
            if r.lost > 1 {
                r.violation("R4: connection_lost twice");
            }
            r.event(format!("lost({error:?})"));
            // The byte ledger (R1) must balance when the connection ends.
            if let Some(t) = &self.transport {
                let l = t.ledger();
                if !l.balanced() || l.held != 0 {
                    r.violation(&format!(
                        "R1: byte ledger unbalanced at connection_lost: {l:?}"
                    ));
                }
            }
            r.lost_kind = error.as_ref().map(|e| e.kind());
            r.lost_error = error.map(|e| e.to_string());
        }
        if let (Some(h), Some(t)) = (&mut self.hooks.lost, &self.transport) {
            h(t, ());
        }
    }

    fn eof_received(&mut self) -> bool {
        self.alive("eof_received");
        {
            let mut r = self.rec.borrow_mut();
            r.eof += 1;
            if r.eof > 1 {
                r.violation("R4: eof_received twice");
            }
            r.event("eof".into());
        }
        match (&mut self.hooks.eof, &self.transport) {
            (Some(h), Some(t)) => h(t),
            _ => false,
        }
    }

    fn pause_writing(&mut self) {
        self.alive("pause_writing");
        {
            let mut r = self.rec.borrow_mut();
            if r.write_paused {
                r.violation("W2: pause_writing twice without resume_writing");
            }
            r.write_paused = true;
            r.pauses += 1;
            r.event("pause_writing".into());
        }
        if let (Some(h), Some(t)) = (&mut self.hooks.pause_writing, &self.transport) {
            h(t, ());
        }
    }

    fn resume_writing(&mut self) {
        self.alive("resume_writing");
        {
            let mut r = self.rec.borrow_mut();
            if !r.write_paused {
                r.violation("W2: resume_writing without pause_writing");
            }
            r.write_paused = false;
            r.resumes += 1;
            r.event("resume_writing".into());
        }
        if let (Some(h), Some(t)) = (&mut self.hooks.resume_writing, &self.transport) {
            h(t, ());
        }
    }
}

impl Protocol for Recorder {
    fn data_received(&mut self, data: &[u8]) {
        self.alive("data_received");
        {
            let mut r = self.rec.borrow_mut();
            if r.eof > 0 {
                r.violation("R4: data_received after eof_received");
            }
            if data.is_empty() {
                r.violation("R1: empty data_received");
            }
            if let Some(t) = &self.transport {
                if !t.is_reading() && !t.is_closing() {
                    r.violation("R3: data_received while reading is paused");
                }
            }
            r.data.extend_from_slice(data);
            r.data_calls += 1;
            let n = data.len();
            r.event(format!("data({n})"));
        }
        if let Some(t) = self.transport.clone() {
            if let Some(h) = &mut self.hooks.data_len {
                h(&t, data.len());
            }
            if let Some(h) = &mut self.hooks.data {
                h(&t, data);
            }
        }
    }
}
