//! The simulator's decision trace: a bounded ring of readable lines plus a
//! hash over every line ever written, so two runs compare cheaply.

use std::collections::VecDeque;
use std::fmt::{self, Write as _};

/// FNV-1a 64-bit offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Recent trace lines and a running hash of all of them.
pub(super) struct Trace {
    lines: VecDeque<String>,
    capacity: usize,
    total: u64,
    hash: u64,
}

impl fmt::Debug for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trace")
            .field("total", &self.total)
            .field("hash", &format_args!("{:016x}", self.hash))
            .field("last", &self.lines.back())
            .finish()
    }
}

impl Trace {
    pub(super) fn new(capacity: usize) -> Trace {
        Trace {
            lines: VecDeque::with_capacity(capacity.min(4096)),
            capacity,
            total: 0,
            hash: FNV_OFFSET,
        }
    }

    /// Appends one line (formatted by the caller, without a newline).
    pub(super) fn push(&mut self, line: String) {
        for &b in line.as_bytes().iter().chain(b"\n") {
            self.hash ^= u64::from(b);
            self.hash = self.hash.wrapping_mul(FNV_PRIME);
        }
        self.total += 1;
        if self.capacity == 0 {
            return;
        }
        if self.lines.len() == self.capacity {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    #[cfg(test)]
    /// Hash of every line written so far (not only the retained ones).
    pub(super) fn hash(&self) -> u64 {
        self.hash
    }

    #[cfg(test)]
    /// Number of lines written so far.
    pub(super) fn total(&self) -> u64 {
        self.total
    }

    /// The retained lines, oldest first, under a one-line header.
    pub(super) fn render(&self, seed: u64) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "sim seed={seed} lines={} hash={:016x} (last {} shown)",
            self.total,
            self.hash,
            self.lines.len()
        );
        for line in &self.lines {
            s.push_str(line);
            s.push('\n');
        }
        s
    }
}
