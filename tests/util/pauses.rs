//! Pauses of reading from every source an application has: inside
//! `data_received`, from timers, from tasks, and from another connection's
//! callback. Each pause is counted with its source, and with what the
//! driver's window counters said of it (the receive in flight, or its
//! completion ready but not reaped: the bpo-33694 window), so a sweep can
//! say which sources reach the window. Used by the sim sweeps.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use proactor::{Handle, Transport};
use rand::rngs::SmallRng;
use rand::Rng;

use super::sleep;

/// The seeded choices of one workload, shared by its callbacks.
pub type SharedRng = Rc<RefCell<SmallRng>>;

/// Who paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// The transport's own protocol, inside `data_received`.
    DataReceived,
    /// A `call_later` callback.
    Timer,
    /// A spawned task (or the sweep's main future).
    Task,
    /// Another connection's `data_received` or `resume_writing`.
    OtherConnection,
}

/// Pauses per source: `[pauses, with the receive in flight, with its
/// completion ready]`, and pauses of TLS transports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PauseCounts {
    pub by_source: BTreeMap<Source, [u64; 3]>,
    pub tls: u64,
    pub plain: u64,
}

impl PauseCounts {
    pub fn add(&mut self, other: &PauseCounts) {
        for (s, c) in &other.by_source {
            let e = self.by_source.entry(*s).or_default();
            for i in 0..3 {
                e[i] += c[i];
            }
        }
        self.tls += other.tls;
        self.plain += other.plain;
    }
}

/// The live transports pauses may hit, and the counts.
pub struct Board {
    h: Handle,
    rng: SharedRng,
    /// `(id, transport, is TLS)`.
    live: RefCell<Vec<(usize, Transport, bool)>>,
    next_id: Cell<usize>,
    pub counts: RefCell<PauseCounts>,
    stop: Cell<bool>,
    /// Storm rounds left (timers and task together): a seed idling through
    /// a 127 s connect timeout must not pause idle transports for ever.
    rounds: Cell<u32>,
    /// Pauses whose resume (a timer, or the storm task after its nap) has
    /// not run yet.
    resumes_due: Rc<Cell<u32>>,
}

/// Storm rounds per seed.
const ROUNDS: u32 = 4000;

impl Board {
    pub fn new(h: &Handle, rng: &SharedRng) -> Rc<Board> {
        Rc::new(Board {
            h: h.clone(),
            rng: rng.clone(),
            live: RefCell::default(),
            next_id: Cell::new(0),
            counts: RefCell::default(),
            stop: Cell::new(false),
            rounds: Cell::new(ROUNDS),
            resumes_due: Rc::default(),
        })
    }

    /// An application transport (plain or TLS) pauses may now hit; returns
    /// its id on the board.
    pub fn add(&self, t: &Transport, tls: bool) -> usize {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        self.live.borrow_mut().push((id, t.clone(), tls));
        id
    }

    /// Ends the timer and task storms.
    pub fn stop(&self) {
        self.stop.set(true);
    }

    /// How many pauses still wait for their resume. A workload checks its
    /// connections only at zero: a TLS application paused when its raw
    /// transport went away hears `connection_lost` after the held
    /// plaintext, so only once it is resumed.
    pub fn resumes_due(&self) -> u32 {
        self.resumes_due.get()
    }

    /// Whether the storms go on (and takes one round).
    fn storming(&self) -> bool {
        let left = self.rounds.get();
        self.rounds.set(left.saturating_sub(1));
        !self.stop.get() && left > 0
    }

    /// Pauses `t` if it is reading; counts it. Returns whether it paused.
    pub fn pause(&self, t: &Transport, tls: bool, source: Source) -> bool {
        if !t.is_reading() {
            return false;
        }
        let before = self.h.driver_stats();
        t.pause_reading();
        let after = self.h.driver_stats();
        let mut c = self.counts.borrow_mut();
        let e = c.by_source.entry(source).or_default();
        e[0] += 1;
        e[1] += after.pauses_recv_in_flight - before.pauses_recv_in_flight;
        e[2] += after.pauses_recv_ready - before.pauses_recv_ready;
        if tls {
            c.tls += 1;
        } else {
            c.plain += 1;
        }
        true
    }

    /// Pauses `t` and has a timer resume it within `max_us` microseconds.
    pub fn pause_briefly(&self, t: &Transport, tls: bool, source: Source, max_us: u64) {
        if self.pause(t, tls, source) {
            let delay = Duration::from_micros(self.rng.borrow_mut().random_range(0..max_us));
            let t = t.clone();
            let due = self.resumes_due.clone();
            due.set(due.get() + 1);
            self.h.call_later(delay, move || {
                due.set(due.get() - 1);
                t.resume_reading();
            });
        }
    }

    /// Takes the transport `id` off the board (a raw transport that TLS
    /// now runs: pausing it is TLS's business).
    pub fn remove(&self, id: usize) {
        self.live.borrow_mut().retain(|(i, _, _)| *i != id);
    }

    /// A random live transport (dropping those that ended).
    fn pick(&self) -> Option<(usize, Transport, bool)> {
        let mut live = self.live.borrow_mut();
        live.retain(|(_, t, _)| !t.is_closing());
        if live.is_empty() {
            return None;
        }
        let i = self.rng.borrow_mut().random_range(0..live.len());
        Some(live[i].clone())
    }

    /// From the callback of connection `me` (its board id): pause another
    /// live transport or, now and then, every other one (a receive whose
    /// bytes came in the same reap as `me`'s is then paused "ready").
    pub fn pause_another(&self, me: Option<usize>) {
        if self.rng.borrow_mut().random_bool(0.3) {
            self.pause_others(me);
        } else if let Some((id, t, tls)) = self.pick() {
            if Some(id) != me {
                self.pause_briefly(&t, tls, Source::OtherConnection, 1500);
            }
        }
    }

    /// From the callback of connection `me`: pause every other live one.
    /// From `resume_writing` this is the flow control of a proxy (one side
    /// can take more, so the other is throttled), and it runs in the turn
    /// that reaped `me`'s send: its peer's receive then often has the bytes.
    pub fn pause_others(&self, me: Option<usize>) {
        let others: Vec<_> = self
            .live
            .borrow()
            .iter()
            .filter(|(id, t, _)| Some(*id) != me && !t.is_closing())
            .map(|(_, t, tls)| (t.clone(), *tls))
            .collect();
        for (t, tls) in others {
            self.pause_briefly(&t, tls, Source::OtherConnection, 1500);
        }
    }

    /// Small write water marks on `t` now and then: many more
    /// `pause_writing`/`resume_writing` edges, each a send completion.
    pub fn maybe_small_water_marks(&self, t: &Transport) {
        let mut r = self.rng.borrow_mut();
        if r.random_bool(0.8) {
            let high = r.random_range(256..16_384);
            t.set_write_buffer_limits(Some(high), Some(high / 4))
                .unwrap();
        }
    }

    /// A chain of timers, each pausing a random live transport.
    pub fn start_timers(self: &Rc<Self>) {
        let board = self.clone();
        let delay = Duration::from_micros(self.rng.borrow_mut().random_range(20..800));
        self.h.call_later(delay, move || {
            if !board.storming() {
                return;
            }
            if let Some((_, t, tls)) = board.pick() {
                board.pause_briefly(&t, tls, Source::Timer, 2000);
            }
            board.start_timers();
        });
    }

    /// A task that pauses a random live transport, sleeps, resumes it.
    pub fn start_task(self: &Rc<Self>) {
        let board = self.clone();
        self.h.spawn(async move {
            while board.storming() {
                let (nap, hold) = {
                    let mut r = board.rng.borrow_mut();
                    (r.random_range(20..900), r.random_range(0..1500))
                };
                sleep(&board.h, Duration::from_micros(nap)).await;
                let Some((_, t, tls)) = board.pick() else {
                    continue;
                };
                if board.pause(&t, tls, Source::Task) {
                    let due = &board.resumes_due;
                    due.set(due.get() + 1);
                    sleep(&board.h, Duration::from_micros(hold)).await;
                    due.set(due.get() - 1);
                    t.resume_reading();
                }
            }
        });
    }
}
