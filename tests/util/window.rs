//! What every sim sweep reports and asserts about the bpo-33694 window: how
//! often a pause of reading met the transport's receive in flight, and met
//! it completed but not reaped ([`DriverStats::pauses_recv_in_flight`],
//! [`DriverStats::pauses_recv_ready`]), per 1,000 seeds; and that every ten
//! consecutive seeds hit the window at least once, so a change that stops
//! exercising it fails loudly. Also the sum of what the simulator injected
//! ([`SimStats`]).

use proactor::{DriverStats, SimStats};

/// The window counters of a sweep, seed by seed.
pub struct WindowCheck {
    name: &'static str,
    /// `(seed, read pauses, with the receive in flight, with it ready)`.
    seeds: Vec<(u64, u64, u64, u64)>,
}

impl WindowCheck {
    pub fn new(name: &'static str) -> WindowCheck {
        WindowCheck {
            name,
            seeds: Vec::new(),
        }
    }

    pub fn add(&mut self, seed: u64, s: &DriverStats) {
        self.seeds.push((
            seed,
            s.read_pauses,
            s.pauses_recv_in_flight,
            s.pauses_recv_ready,
        ));
    }

    /// (read pauses, in flight, ready) over every seed.
    pub fn totals(&self) -> (u64, u64, u64) {
        self.seeds
            .iter()
            .fold((0, 0, 0), |(a, b, c), s| (a + s.1, b + s.2, c + s.3))
    }

    pub fn report(&self) {
        let (p, f, r) = self.totals();
        let n = self.seeds.len().max(1) as f64;
        let per = |x: u64| x as f64 * 1000.0 / n;
        println!(
            "  {} window: {p} read pauses, {f} with the receive in flight, {r} with its completion ready but not reaped; per 1,000 seeds: {:.0} in flight, {:.0} ready; {} of {} seeds hit the ready window",
            self.name,
            per(f),
            per(r),
            self.seeds.iter().filter(|s| s.3 > 0).count(),
            self.seeds.len()
        );
    }

    /// Every run of ten consecutive seeds (in sweep order, whole runs only)
    /// has a seed whose pauses met a receive completed but not reaped.
    pub fn assert_every_ten_seeds(&self) {
        for run in self.seeds.chunks_exact(10) {
            let (first, last) = (run[0].0, run[9].0);
            assert!(
                run.iter().any(|s| s.2 > 0),
                "{}: seeds {first}..={last}: no pause met a receive in flight",
                self.name
            );
            assert!(
                run.iter().any(|s| s.3 > 0),
                "{}: seeds {first}..={last}: no pause met a receive's completion ready but not \
                 reaped (the bpo-33694 window): the sweep stopped exercising it",
                self.name
            );
        }
    }
}

/// The sum of [`SimStats`] over a sweep.
#[derive(Default)]
pub struct SimTotals(pub SimStats);

impl SimTotals {
    pub fn add(&mut self, s: &SimStats) {
        let t = &mut self.0;
        t.reaps_reordered += s.reaps_reordered;
        t.reaps_held_back += s.reaps_held_back;
        t.interrupted_waits += s.interrupted_waits;
        t.empty_polls += s.empty_polls;
        t.partial_cancels += s.partial_cancels;
        t.send_resets += s.send_resets;
        t.resets += s.resets;
        t.syn_retransmits += s.syn_retransmits;
        t.connect_timeouts += s.connect_timeouts;
        t.accept_resource_errors += s.accept_resource_errors;
        t.accept_enobufs += s.accept_enobufs;
        t.sends_to_closed_peer += s.sends_to_closed_peer;
        t.unix_epipes += s.unix_epipes;
        t.unix_sndbuf_stalls += s.unix_sndbuf_stalls;
        t.unix_connect_eagain += s.unix_connect_eagain;
        t.multishot_enobufs += s.multishot_enobufs;
        t.multishot_ends += s.multishot_ends;
    }

    fn fields(&self) -> [(&'static str, u64); 17] {
        let t = &self.0;
        [
            ("reaps_reordered", t.reaps_reordered),
            ("reaps_held_back", t.reaps_held_back),
            ("interrupted_waits", t.interrupted_waits),
            ("empty_polls", t.empty_polls),
            ("partial_cancels", t.partial_cancels),
            ("send_resets", t.send_resets),
            ("resets", t.resets),
            ("syn_retransmits", t.syn_retransmits),
            ("connect_timeouts", t.connect_timeouts),
            ("accept_resource_errors", t.accept_resource_errors),
            ("accept_enobufs", t.accept_enobufs),
            ("sends_to_closed_peer", t.sends_to_closed_peer),
            ("unix_epipes", t.unix_epipes),
            ("unix_sndbuf_stalls", t.unix_sndbuf_stalls),
            ("unix_connect_eagain", t.unix_connect_eagain),
            ("multishot_enobufs", t.multishot_enobufs),
            ("multishot_ends", t.multishot_ends),
        ]
    }

    pub fn report(&self) {
        let fields: Vec<String> = self
            .fields()
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        println!("  sim injected: {}", fields.join(", "));
    }

    /// Each named behaviour happened at least once.
    pub fn assert_exercised(&self, names: &[&str]) {
        for name in names {
            let (_, n) = self
                .fields()
                .into_iter()
                .find(|(f, _)| f == name)
                .unwrap_or_else(|| panic!("no sim counter {name}"));
            assert!(n > 0, "the sweep never exercised {name}: {:?}", self.0);
        }
    }
}
