//! The seeded byte stream the race client sends, and the checks it runs on
//! the echo.
//!
//! Byte `i` of the stream depends only on the seed and `i`, so the verifier
//! can recompute what it expects at any offset without keeping a copy of what
//! was sent: a lost, duplicated or reordered chunk shows up as a mismatch at
//! the first offset where the streams diverge. A running hash over each side
//! gives a second, order-sensitive fingerprint that the report prints.

/// The stream: 8-byte words of SplitMix64 keyed by seed and word index.
#[derive(Clone, Copy, Debug)]
pub struct Pattern {
    seed: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Pattern { seed }
    }

    fn word(&self, index: u64) -> [u8; 8] {
        // SplitMix64 finaliser: cheap, and every bit of `index` and `seed`
        // affects every output byte.
        let mut z = self
            .seed
            .wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)).to_le_bytes()
    }

    /// Fills `out` with the stream's bytes starting at `offset`.
    pub fn fill(&self, offset: u64, out: &mut [u8]) {
        let mut pos = 0;
        let mut at = offset;
        while pos < out.len() {
            let word = self.word(at / 8);
            let skip = (at % 8) as usize;
            let n = (8 - skip).min(out.len() - pos);
            out[pos..pos + n].copy_from_slice(&word[skip..skip + n]);
            pos += n;
            at += n as u64;
        }
    }

    /// `len` bytes of the stream from `offset`.
    pub fn chunk(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.fill(offset, &mut v);
        v
    }
}

/// Checks incoming bytes against the pattern, in order.
#[derive(Debug)]
pub struct Verifier {
    pattern: Pattern,
    /// Bytes checked and found equal (the verified prefix of the stream).
    verified: u64,
    scratch: Vec<u8>,
    hash: StreamHash,
}

/// Where the echo first differed from what was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub offset: u64,
    pub expected: u8,
    pub got: u8,
}

impl Verifier {
    pub fn new(pattern: Pattern) -> Self {
        Verifier {
            pattern,
            verified: 0,
            scratch: Vec::new(),
            hash: StreamHash::default(),
        }
    }

    /// Checks the next bytes of the stream. On the first mismatch the
    /// verified count stops there and the caller should end the connection.
    pub fn check(&mut self, data: &[u8]) -> Result<(), Mismatch> {
        self.scratch.resize(data.len(), 0);
        self.pattern.fill(self.verified, &mut self.scratch);
        if let Some(i) = data.iter().zip(&self.scratch).position(|(a, b)| a != b) {
            self.hash.update(&data[..i]);
            self.verified += i as u64;
            return Err(Mismatch {
                offset: self.verified,
                expected: self.scratch[i],
                got: data[i],
            });
        }
        self.hash.update(data);
        self.verified += data.len() as u64;
        Ok(())
    }

    pub fn verified(&self) -> u64 {
        self.verified
    }

    pub fn hash(&self) -> u64 {
        self.hash.finish()
    }
}

/// An order-sensitive 64-bit running hash of a byte stream, independent of
/// how the stream is split into chunks. Not cryptographic: it fingerprints
/// the stream for the report, the pattern check is what proves correctness.
#[derive(Clone, Debug, Default)]
pub struct StreamHash {
    state: u64,
    partial: [u8; 8],
    partial_len: usize,
    len: u64,
}

impl StreamHash {
    const PRIME: u64 = 0x0000_0100_0000_01B3;

    fn mix(&mut self, word: u64) {
        self.state = (self.state ^ word)
            .wrapping_mul(Self::PRIME)
            .rotate_left(29);
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.partial_len > 0 {
            let n = (8 - self.partial_len).min(data.len());
            self.partial[self.partial_len..self.partial_len + n].copy_from_slice(&data[..n]);
            self.partial_len += n;
            data = &data[n..];
            if self.partial_len < 8 {
                return;
            }
            self.mix(u64::from_le_bytes(self.partial));
            self.partial_len = 0;
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            let mut b = [0; 8];
            b.copy_from_slice(w);
            self.mix(u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        self.partial[..rest.len()].copy_from_slice(rest);
        self.partial_len = rest.len();
    }

    pub fn finish(&self) -> u64 {
        let mut h = self.clone();
        let mut last = [0; 8];
        last[..h.partial_len].copy_from_slice(&h.partial[..h.partial_len]);
        h.mix(u64::from_le_bytes(last));
        h.mix(h.len);
        h.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_is_offset_consistent() {
        let p = Pattern::new(7);
        let whole = p.chunk(0, 100);
        for start in 0..20 {
            assert_eq!(p.chunk(start as u64, 30), whole[start..start + 30]);
        }
    }

    #[test]
    fn verifier_finds_first_divergence() {
        let p = Pattern::new(1);
        let mut v = Verifier::new(p);
        v.check(&p.chunk(0, 10)).unwrap();
        // Skip 5 bytes: a loss shows up as a mismatch right where it happened
        // (unless the skipped bytes happen to match, which they do not here).
        let m = v.check(&p.chunk(15, 10)).unwrap_err();
        assert_eq!(m.offset, 10);
        assert!(v.verified() >= 10);
    }

    #[test]
    fn hash_ignores_chunking_but_not_order() {
        let data = Pattern::new(3).chunk(0, 1000);
        let mut a = StreamHash::default();
        a.update(&data);
        let mut b = StreamHash::default();
        for c in data.chunks(7) {
            b.update(c);
        }
        assert_eq!(a.finish(), b.finish());
        let mut swapped = data.clone();
        swapped.swap(10, 900);
        let mut c = StreamHash::default();
        c.update(&swapped);
        assert_ne!(a.finish(), c.finish());
    }
}
