//! Write-side water marks (W2), shared by plain and TLS transports.

use std::io;

/// Default high-water mark for plain transports (asyncio's).
pub const DEFAULT_HIGH_WATER: usize = 64 * 1024;
/// Default low-water mark: a quarter of the high one.
pub const DEFAULT_LOW_WATER: usize = DEFAULT_HIGH_WATER / 4;

/// The water marks and whether the protocol should currently be paused.
///
/// Invariant: `low <= high`. Pause is wanted when the buffered size rises
/// strictly above `high`; resume when it falls to `low` or below.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteFlow {
    pub(crate) high: usize,
    pub(crate) low: usize,
    /// Whether the protocol should be paused (delivery tells it, in order).
    pub(crate) paused: bool,
}

impl WriteFlow {
    pub(crate) fn new(high: usize, low: usize) -> Self {
        WriteFlow {
            high,
            low,
            paused: false,
        }
    }

    /// Recomputes `paused` after the buffered size changed to `size`.
    pub(crate) fn update(&mut self, size: usize) {
        if !self.paused && size > self.high {
            self.paused = true;
        } else if self.paused && size <= self.low {
            self.paused = false;
        }
    }

    /// asyncio's `set_write_buffer_limits` rules; re-checks pause at once.
    pub(crate) fn set_limits(
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
        self.high = high;
        self.low = low;
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
        assert!(!f.paused, "exactly high does not pause");
        f.update(101);
        assert!(f.paused);
        f.update(26);
        assert!(f.paused, "above low stays paused");
        f.update(25);
        assert!(!f.paused);
    }

    #[test]
    fn w2_limit_rules_follow_asyncio() {
        let mut f = WriteFlow::new(DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER);
        f.set_limits(None, Some(10), DEFAULT_HIGH_WATER, 0).unwrap();
        assert_eq!((f.low, f.high), (10, 40));
        f.set_limits(Some(80), None, DEFAULT_HIGH_WATER, 0).unwrap();
        assert_eq!((f.low, f.high), (20, 80));
        assert!(f
            .set_limits(Some(1), Some(2), DEFAULT_HIGH_WATER, 0)
            .is_err());
        f.set_limits(Some(4), Some(0), DEFAULT_HIGH_WATER, 5)
            .unwrap();
        assert!(f.paused, "setting limits re-checks at once");
    }
}
