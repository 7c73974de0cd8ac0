//! The seeded byte stream the race client sends, and the checks it runs on
//! the echo.
//!
//! Byte `i` of the stream depends only on the seed and `i`, so the verifier
//! can recompute what it expects at any offset without keeping a copy of what
//! was sent: a lost, duplicated or reordered chunk shows up as a mismatch at
//! the first offset where the streams diverge. A running hash over each side
//! gives a second, order-sensitive fingerprint that the report prints.

use std::rc::Rc;

/// Words in a pattern's block: a prime, so that no packet size lines a
/// shift of the stream up with the block.
const BLOCK_WORDS: u64 = 8191;

/// The stream: 8-byte little-endian words. Word `i` is word `i % 8191` of
/// a block of SplitMix64 outputs keyed by the seed, XORed with a SplitMix64
/// output keyed by the seed and `i / 8191`: every byte depends on the seed
/// and on its offset, and filling is a copy and an XOR over a 64 KiB block
/// that stays in cache (the race fills and checks every byte it sends:
/// the stream must not be the bottleneck of the loop it measures).
#[derive(Clone, Debug)]
pub struct Pattern {
    seed: u64,
    block: Rc<[u64]>,
}

/// SplitMix64's finaliser of `seed` and `index`: every bit of both affects
/// every output bit.
fn splitmix(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        let block = (0..BLOCK_WORDS).map(|i| splitmix(seed, i)).collect();
        Pattern { seed, block }
    }

    /// The key of the block-sized period `period` of the stream.
    fn period_key(&self, period: u64) -> u64 {
        splitmix(!self.seed, period)
    }

    fn word(&self, index: u64) -> [u8; 8] {
        let key = self.period_key(index / BLOCK_WORDS);
        (self.block[(index % BLOCK_WORDS) as usize] ^ key).to_le_bytes()
    }

    /// Fills `out` with the stream's bytes starting at `offset`: the bytes
    /// up to the next word boundary, then whole words, a period at a time,
    /// then the rest.
    pub fn fill(&self, offset: u64, out: &mut [u8]) {
        let skip = (offset % 8) as usize;
        let head = if skip == 0 {
            0
        } else {
            (8 - skip).min(out.len())
        };
        let (first, mut body) = out.split_at_mut(head);
        if head > 0 {
            first.copy_from_slice(&self.word(offset / 8)[skip..skip + head]);
        }
        let mut index = (offset + head as u64) / 8;
        while body.len() >= 8 {
            let at = (index % BLOCK_WORDS) as usize;
            let n = (body.len() / 8).min(self.block.len() - at);
            let key = self.period_key(index / BLOCK_WORDS);
            let (words, rest) = body.split_at_mut(n * 8);
            for (w, b) in words.chunks_exact_mut(8).zip(&self.block[at..at + n]) {
                w.copy_from_slice(&(b ^ key).to_le_bytes());
            }
            body = rest;
            index += n as u64;
        }
        if !body.is_empty() {
            let n = body.len();
            body.copy_from_slice(&self.word(index)[..n]);
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
        let equal = data == &self.scratch[..];
        if let Some(i) = (!equal)
            .then(|| data.iter().zip(&self.scratch).position(|(a, b)| a != b))
            .flatten()
        {
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
/// Four lanes take the words of each 32-byte block in turn, so the
/// multiplications of a block do not wait for each other.
#[derive(Clone, Debug, Default)]
pub struct StreamHash {
    lanes: [u64; LANES],
    partial: [u8; BLOCK],
    partial_len: usize,
    len: u64,
}

const LANES: usize = 4;
/// Bytes the lanes take at once: a word each.
const BLOCK: usize = 8 * LANES;

impl StreamHash {
    const PRIME: u64 = 0x0000_0100_0000_01B3;

    fn mix(state: u64, word: u64) -> u64 {
        (state ^ word).wrapping_mul(Self::PRIME).rotate_left(29)
    }

    fn mix_block(&mut self, block: &[u8]) {
        for (lane, w) in self.lanes.iter_mut().zip(block.chunks_exact(8)) {
            let mut b = [0; 8];
            b.copy_from_slice(w);
            *lane = Self::mix(*lane, u64::from_le_bytes(b));
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.partial_len > 0 {
            let n = (BLOCK - self.partial_len).min(data.len());
            self.partial[self.partial_len..self.partial_len + n].copy_from_slice(&data[..n]);
            self.partial_len += n;
            data = &data[n..];
            if self.partial_len < BLOCK {
                return;
            }
            let block = self.partial;
            self.mix_block(&block);
            self.partial_len = 0;
        }
        let mut blocks = data.chunks_exact(BLOCK);
        for b in &mut blocks {
            self.mix_block(b);
        }
        let rest = blocks.remainder();
        self.partial[..rest.len()].copy_from_slice(rest);
        self.partial_len = rest.len();
    }

    pub fn finish(&self) -> u64 {
        let mut h = self.clone();
        let mut last = [0; BLOCK];
        last[..h.partial_len].copy_from_slice(&h.partial[..h.partial_len]);
        h.mix_block(&last);
        h.lanes
            .iter()
            .fold(h.len, |state, &lane| Self::mix(state, lane))
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
            for len in [0, 1, 3, 7, 8, 9, 15, 16, 17, 30, 80] {
                assert_eq!(
                    p.chunk(start as u64, len),
                    whole[start..start + len],
                    "{start} + {len}"
                );
            }
        }
        let bytes: Vec<u8> = (0..100).flat_map(|i| p.word(i)).collect();
        assert_eq!(whole, bytes[..100], "byte i is byte i % 8 of word i / 8");
    }

    #[test]
    fn fill_crosses_periods_word_by_word() {
        let p = Pattern::new(9);
        let period = BLOCK_WORDS * 8;
        for start in [period - 13, 2 * period - 8, 3 * period - 1] {
            let got = p.chunk(start, 40);
            let words: Vec<u8> = (start / 8..start / 8 + 7).flat_map(|i| p.word(i)).collect();
            let skip = (start % 8) as usize;
            assert_eq!(got, words[skip..skip + 40], "from {start}");
        }
    }

    #[test]
    fn shifted_streams_differ() {
        // A stream shifted by whole blocks, or by whole packets of the
        // default race, differs from the stream: a loss of that many bytes
        // still fails verification.
        let p = Pattern::new(5);
        let at = p.chunk(100 * 8, 4096);
        for shift in [BLOCK_WORDS * 8, 2 * BLOCK_WORDS * 8, 16_384, 8] {
            assert_ne!(p.chunk(100 * 8 + shift, 4096), at, "shift {shift}");
        }
        assert_ne!(Pattern::new(6).chunk(800, 4096), at, "another seed");
    }

    #[test]
    fn verifier_finds_first_divergence() {
        let p = Pattern::new(1);
        let mut v = Verifier::new(p.clone());
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
