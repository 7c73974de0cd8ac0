//! The seeded randomness behind every simulator decision.
//!
//! One seed is split into independent streams per subsystem (scheduling,
//! I/O sizes, cancellation, faults, clock), as TigerBeetle does, so turning a
//! knob in one subsystem perturbs the others as little as possible.

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// One deterministic stream of choices.
#[derive(Debug)]
pub(super) struct Stream(SmallRng);

impl Stream {
    fn new(seed: u64, salt: u64) -> Stream {
        Stream(SmallRng::seed_from_u64(splitmix(seed ^ salt)))
    }

    /// True with probability `p` (clamped to `0..=1`; consumes nothing when
    /// `p` is 0 or 1, so disabled knobs do not shift the stream).
    pub(super) fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 || p.is_nan() {
            false
        } else if p >= 1.0 {
            true
        } else {
            self.0.random_bool(p)
        }
    }

    /// A value in `lo..=hi` (returns `lo` without consuming when `lo >= hi`).
    pub(super) fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if lo >= hi {
            lo
        } else {
            self.0.random_range(lo..=hi)
        }
    }

    /// A length in `1..=max` for a short transfer of at most `max` bytes.
    pub(super) fn split(&mut self, max: usize) -> usize {
        if max <= 1 {
            max
        } else {
            // Favour small pieces now and then: they are the ones that find bugs.
            if self.0.random_bool(0.25) {
                self.0.random_range(1..=max.min(16))
            } else {
                self.0.random_range(1..=max)
            }
        }
    }

    /// Shuffles `items` in place.
    pub(super) fn shuffle<T>(&mut self, items: &mut [T]) {
        items.shuffle(&mut self.0);
    }

    /// Picks an index below `n` (`n` > 0).
    pub(super) fn index(&mut self, n: usize) -> usize {
        if n <= 1 {
            0
        } else {
            self.0.random_range(0..n)
        }
    }
}

/// The per-subsystem streams derived from one seed.
#[derive(Debug)]
pub(super) struct Rngs {
    /// Completion order, deferrals and latencies.
    pub(super) sched: Stream,
    /// Short read and write sizes.
    pub(super) io: Stream,
    /// Cancel-versus-complete coin flips.
    pub(super) cancel: Stream,
    /// Fault injection.
    pub(super) fault: Stream,
    /// Timer jitter and per-step time.
    pub(super) clock: Stream,
    /// The kernel behaviours modelled since: reap order, interrupted and
    /// empty waits, cancels that land mid-transfer.
    pub(super) kernel: Stream,
    /// Multishot receives: whether they are offered, buffer ring choices.
    pub(super) multishot: Stream,
}

impl Rngs {
    pub(super) fn new(seed: u64) -> Rngs {
        Rngs {
            sched: Stream::new(seed, 0x5c4e_d000_0000_0001),
            io: Stream::new(seed, 0x10_0000_0000_0002),
            cancel: Stream::new(seed, 0xca9c_e100_0000_0003),
            fault: Stream::new(seed, 0xfa01_7000_0000_0004),
            clock: Stream::new(seed, 0xc10c_c000_0000_0005),
            kernel: Stream::new(seed, 0x4e41_e100_0000_0006),
            multishot: Stream::new(seed, 0x3017_1500_0000_0007),
        }
    }
}

/// SplitMix64 finaliser: spreads nearby seeds far apart.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
