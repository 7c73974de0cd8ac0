//! Write-side water marks (W2), shared by plain and TLS transports.

use std::io;

/// Default high-water mark for plain transports (asyncio's).
pub const DEFAULT_HIGH_WATER: usize = 64 * 1024;
/// Default low-water mark: a quarter of the high one.
pub const DEFAULT_LOW_WATER: usize = DEFAULT_HIGH_WATER / 4;

/// The water marks, and every pause/resume edge the buffered size made.
///
/// Invariant: `low_water <= high_water`. Pause is wanted when the buffered
/// size rises strictly above `high_water`; resume when it falls to
/// `low_water` or below.
///
/// Flow control is recorded as *edges*, not as a level: the buffered size
/// can rise above the high mark and fall back to the low one between two dispatches of
/// the transport (a write, then the completion of an earlier send, in one
/// loop turn). A level would read "not paused" at both dispatches and the
/// protocol would hear nothing, although the transport went over its mark
/// — a producer that stops at the mark (the TLS write pump) then waits for
/// a `resume_writing` that never comes. So every crossing is counted, and
/// [`Delivery`](super::Delivery) tells the protocol each one, in order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteFlow {
    /// Pause is due above this many buffered bytes.
    pub(crate) high_water: usize,
    /// Resume is due at or below this many.
    pub(crate) low_water: usize,
    /// Edges so far. They alternate, starting with a pause, so an odd count
    /// means "paused": edge `n` (1-based) is a pause when `n` is odd.
    edges: WriteEdges,
}

/// How many pause/resume edges a write side has made since it was created
/// (see [`WriteFlow`]): odd means paused.
pub(crate) type WriteEdges = u64;

/// Whether edge number `n` (1-based) is a pause (else a resume).
pub(crate) fn is_pause_edge(n: WriteEdges) -> bool {
    n % 2 == 1
}

impl WriteFlow {
    pub(crate) fn new(high_water: usize, low_water: usize) -> Self {
        WriteFlow {
            high_water,
            low_water,
            edges: 0,
        }
    }

    /// Whether the buffered size went over the high mark and is not yet back
    /// to the low one.
    pub(crate) fn paused(&self) -> bool {
        is_pause_edge(self.edges)
    }

    /// Edges recorded so far.
    pub(crate) fn edges(&self) -> WriteEdges {
        self.edges
    }

    /// Records the edge, if any, made by the buffered size changing to `size`.
    /// Call it after every change of the size, so no crossing goes unseen.
    pub(crate) fn update(&mut self, size: usize) {
        let crossed = if self.paused() {
            size <= self.low_water
        } else {
            size > self.high_water
        };
        if crossed {
            self.edges = self.edges.wrapping_add(1);
        }
    }

    /// Sets the water marks by asyncio's `set_write_buffer_limits` rules;
    /// re-checks pause at once.
    pub(crate) fn set_water_marks(
        &mut self,
        high: Option<usize>,
        low: Option<usize>,
        default_high: usize,
        size: usize,
    ) -> io::Result<()> {
        let (high, low) = match (high, low) {
            (None, None) => (default_high, default_high / 4),
            (Some(h), None) => (h, h / 4),
            (None, Some(l)) => (l.saturating_mul(4), l),
            (Some(h), Some(l)) => (h, l),
        };
        if high < low {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("high ({high}) must be >= low ({low})"),
            ));
        }
        self.high_water = high;
        self.low_water = low;
        self.update(size);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w2_pause_above_high_resume_at_low() {
        let mut f = WriteFlow::new(100, 25);
        f.update(100);
        assert!(!f.paused(), "exactly high does not pause");
        f.update(101);
        assert!(f.paused());
        f.update(26);
        assert!(f.paused(), "above low stays paused");
        f.update(25);
        assert!(!f.paused());
        assert_eq!(f.edges(), 2);
    }

    #[test]
    fn w2_every_crossing_is_an_edge() {
        let mut f = WriteFlow::new(100, 25);
        // Up and down twice without anyone looking at the level in between.
        for size in [101, 0, 200, 10] {
            f.update(size);
        }
        assert_eq!(f.edges(), 4, "pause, resume, pause, resume");
        assert!(!f.paused());
        assert!(is_pause_edge(1) && !is_pause_edge(2) && is_pause_edge(3));
        // Staying on one side of a mark records nothing.
        f.update(20);
        f.update(100);
        assert_eq!(f.edges(), 4);
    }

    #[test]
    fn w2_water_mark_rules_follow_asyncio() {
        let mut f = WriteFlow::new(DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER);
        f.set_water_marks(None, Some(10), DEFAULT_HIGH_WATER, 0)
            .unwrap();
        assert_eq!((f.low_water, f.high_water), (10, 40));
        f.set_water_marks(Some(80), None, DEFAULT_HIGH_WATER, 0)
            .unwrap();
        assert_eq!((f.low_water, f.high_water), (20, 80));
        assert!(f
            .set_water_marks(Some(1), Some(2), DEFAULT_HIGH_WATER, 0)
            .is_err());
        f.set_water_marks(Some(4), Some(0), DEFAULT_HIGH_WATER, 5)
            .unwrap();
        assert!(f.paused(), "setting water marks re-checks at once");
    }
}
