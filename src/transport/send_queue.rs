//! The one queue of written bytes: what a transport was given by `write()`
//! and has not passed on yet, in order (W1).
//!
//! A plain transport passes bytes on to the kernel (a vectored send), a TLS
//! transport to its engine (plaintext to encrypt). Both take slices from the
//! front with [`SendQueue::front_chunks`] or [`SendQueue::front_slices`] and
//! then [`SendQueue::advance`] over as many bytes as went out.
//!
//! An idle connection's queue owns no memory: the first chunk is kept
//! inline, and a drained queue gives its tail (the buffer small writes are
//! copied into) to a pool of the thread, the loop's, where the next write
//! of any connection takes it back; so a closed-loop exchange allocates
//! nothing per write, and holding ten thousand quiet connections holds no
//! write buffer at all.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::io::IoSlice;

use bytes::{Bytes, BytesMut};

use crate::inline_deque::InlineDeque;

/// Writes smaller than this are copied into the tail, so that many small
/// writes go out as one slice.
const COALESCE_BELOW: usize = 16 * 1024;

/// Most tails the pool of one thread keeps.
const TAIL_POOL_MAX: usize = 64;

/// A tail whose buffer grew beyond this (a burst of small writes while a
/// send was in flight) is not kept once sealed: its buffer goes with the
/// sealed chunk and is freed after the send, so neither a connection nor
/// the pool holds more than this per tail.
const TAIL_KEEP_MAX_BYTES: usize = 64 * 1024;

thread_local! {
    /// Tails of drained queues, for the next small write on this thread.
    /// Their buffers may still be shared with a send in flight; by the time
    /// a write takes one back, that send has usually completed.
    static TAILS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A tail for a small write of `n` bytes: a pooled one whose buffer is free
/// again (no allocation), else a new empty one.
fn take_tail(n: usize) -> BytesMut {
    if let Some(mut tail) = TAILS
        .try_with(|pool| pool.borrow_mut().pop())
        .ok()
        .flatten()
    {
        if tail.try_reclaim(n) && tail.capacity() <= TAIL_KEEP_MAX_BYTES {
            return tail;
        }
    }
    BytesMut::new()
}

/// Gives an empty tail to the pool (dropped if the pool is full).
fn give_tail(tail: BytesMut) {
    debug_assert!(tail.is_empty());
    let _ = TAILS.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < TAIL_POOL_MAX {
            pool.push(tail);
        }
    });
}

/// Bytes written and not yet passed on, oldest first.
#[derive(Debug, Default)]
pub(crate) struct SendQueue {
    /// Sealed chunks, in write order.
    /// Invariant: no chunk is empty.
    chunks: InlineDeque<Bytes>,
    /// Bytes of `chunks[0]` already passed on.
    /// Invariant: zero if `chunks` is empty, else `< chunks[0].len()`.
    front_sent: usize,
    /// Small writes copied together, to be sealed into `chunks` before
    /// anything is taken from the front. Its bytes come after every chunk.
    /// `None` while the queue is drained (its buffer went to the pool).
    tail: Option<BytesMut>,
    /// Bytes not passed on: the chunks (minus `front_sent`) and the tail.
    /// Invariant: `len == Σ chunks[i].len() - front_sent + tail.len()`.
    len: usize,
    /// Bytes passed on since the transport started (see [`SendQueue::passed_on`]).
    passed_on: u64,
}

impl SendQueue {
    /// Bytes written and not yet passed on.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends a copy of `data`; small writes are coalesced in the tail.
    pub(crate) fn push_copy(&mut self, data: &[u8]) {
        if data.len() < COALESCE_BELOW {
            self.tail
                .get_or_insert_with(|| take_tail(data.len()))
                .extend_from_slice(data);
            self.len += data.len();
        } else {
            self.push(Bytes::copy_from_slice(data));
        }
    }

    /// Appends `data` without copying it.
    pub(crate) fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        self.seal();
        self.len += data.len();
        self.chunks.push_back(data);
    }

    /// Moves the tail into the chunks, so that the front slices cover it.
    pub(crate) fn seal(&mut self) {
        if let Some(tail) = self.tail.as_mut().filter(|t| !t.is_empty()) {
            // Before the split, the capacity covers every byte the buffer
            // grew to since the last seal.
            let grown = tail.capacity() > TAIL_KEEP_MAX_BYTES;
            self.chunks.push_back(tail.split().freeze());
            if grown {
                self.tail = None;
            }
        }
    }

    /// Appends up to `max_chunks` sealed chunks from the front to `out`, and
    /// returns how many bytes of the first one went out already (for a send
    /// op that owns its buffers; `out` is a reused `Vec`).
    pub(crate) fn front_chunks(&self, max_chunks: usize, out: &mut Vec<Bytes>) -> usize {
        self.chunks.clone_front_into(max_chunks, out);
        self.front_sent
    }

    /// Up to `max_slices` slices from the front of the sealed chunks,
    /// `max_bytes` at most in all.
    pub(crate) fn front_slices(&self, max_slices: usize, max_bytes: usize) -> Vec<IoSlice<'_>> {
        let mut slices = Vec::with_capacity(max_slices.min(self.chunks.len()));
        let mut total = 0;
        for (i, chunk) in self.chunks.iter().take(max_slices).enumerate() {
            let start = if i == 0 { self.front_sent } else { 0 };
            let take = (chunk.len() - start).min(max_bytes - total);
            if take == 0 {
                break;
            }
            slices.push(IoSlice::new(&chunk[start..start + take]));
            total += take;
        }
        slices
    }

    /// Every byte passed on so far: advanced over, or reported gone after
    /// the queue was cleared ([`SendQueue::passed_on_after_clear`]).
    pub(crate) fn passed_on(&self) -> u64 {
        self.passed_on
    }

    /// `n` bytes of a send that was in flight when the queue was cleared
    /// (an abort) went out anyway: counted as passed on.
    pub(crate) fn passed_on_after_clear(&mut self, n: usize) {
        self.passed_on += n as u64;
    }

    /// Takes `n` bytes off the front: they were passed on.
    ///
    /// # Panics
    /// If `n` is more than the sealed chunks hold (a bug in the caller).
    pub(crate) fn advance(&mut self, mut n: usize) {
        self.len -= n;
        self.passed_on += n as u64;
        while n > 0 {
            let front = self.chunks.front().expect("advanced past the queue");
            let left = front.len() - self.front_sent;
            if n >= left {
                n -= left;
                self.chunks.pop_front();
                self.front_sent = 0;
            } else {
                self.front_sent += n;
                n = 0;
            }
        }
        if self.len == 0 {
            // Drained: the tail is empty (its bytes were sealed and sent).
            if let Some(tail) = self.tail.take() {
                give_tail(tail);
            }
        }
    }

    /// Drops everything; returns how many bytes were dropped.
    pub(crate) fn clear(&mut self) -> usize {
        let dropped = self.len;
        self.chunks.clear();
        self.tail = None;
        self.front_sent = 0;
        self.len = 0;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut SendQueue, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        q.seal();
        while q.len() > 0 {
            let slices = q.front_slices(3, step);
            let n: usize = slices.iter().map(|s| s.len()).sum();
            for s in &slices {
                out.extend_from_slice(s);
            }
            drop(slices);
            q.advance(n);
        }
        out
    }

    #[test]
    fn bytes_come_out_in_order_whatever_the_step() {
        for step in [1, 2, 7, 100, COALESCE_BELOW * 3] {
            let mut q = SendQueue::default();
            q.push_copy(b"ab");
            q.push(Bytes::from_static(b"cde"));
            q.push_copy(b"f");
            q.push_copy(&[b'g'; COALESCE_BELOW]);
            q.push(Bytes::new());
            q.push_copy(b"h");
            assert_eq!(q.len(), 7 + COALESCE_BELOW);
            let mut want = b"abcdef".to_vec();
            want.extend_from_slice(&[b'g'; COALESCE_BELOW]);
            want.push(b'h');
            assert_eq!(drain(&mut q, step), want, "step {step}");
            assert_eq!(q.len(), 0);
        }
    }

    /// `front_chunks` into a new `Vec`.
    fn front(q: &SendQueue, max_chunks: usize) -> (Vec<Bytes>, usize) {
        let mut chunks = Vec::new();
        let offset = q.front_chunks(max_chunks, &mut chunks);
        (chunks, offset)
    }

    #[test]
    fn a_drained_queue_owns_no_buffer() {
        let mut q = SendQueue::default();
        q.push_copy(b"ping");
        q.push(Bytes::from(vec![1; COALESCE_BELOW]));
        q.push_copy(b"pong");
        let (chunks, _) = front(&q, 64);
        drop(chunks);
        q.advance(4 + COALESCE_BELOW);
        assert!(q.tail.is_some(), "the tail holds bytes not passed on");
        q.seal();
        q.advance(4);
        assert_eq!((q.len(), q.chunks.len()), (0, 0));
        assert!(q.tail.is_none(), "the drained tail went to the pool");
        // The next small write takes a tail back and goes out as before.
        q.push_copy(b"again");
        assert_eq!(drain(&mut q, 100), b"again");
        assert!(q.tail.is_none());
    }

    #[test]
    fn a_tail_grown_by_a_burst_is_not_kept() {
        let mut q = SendQueue::default();
        for _ in 0..(2 * TAIL_KEEP_MAX_BYTES / 1000) {
            q.push_copy(&[1; 1000]);
        }
        q.seal();
        assert!(q.tail.is_none(), "its buffer went with the sealed chunk");
        q.push_copy(b"x");
        assert!(q.tail.as_ref().unwrap().capacity() <= TAIL_KEEP_MAX_BYTES);
        assert_eq!(
            drain(&mut q, 1 << 20).len(),
            2 * TAIL_KEEP_MAX_BYTES / 1000 * 1000 + 1
        );
    }

    #[test]
    fn small_writes_coalesce_into_one_chunk() {
        let mut q = SendQueue::default();
        for _ in 0..100 {
            q.push_copy(b"xy");
        }
        q.seal();
        let (chunks, offset) = front(&q, 64);
        assert_eq!((chunks.len(), offset), (1, 0));
        assert_eq!(chunks[0].len(), 200);
    }

    #[test]
    fn partial_advance_keeps_the_front_offset() {
        let mut q = SendQueue::default();
        q.push(Bytes::from_static(b"hello"));
        q.push(Bytes::from_static(b"world"));
        q.advance(3);
        let (chunks, offset) = front(&q, 64);
        assert_eq!((chunks.len(), offset, q.len()), (2, 3, 7));
        let slices = q.front_slices(64, 4);
        assert_eq!(
            slices.iter().map(|s| &s[..]).collect::<Vec<_>>(),
            [&b"lo"[..], b"wo"]
        );
        drop(slices);
        q.advance(2);
        assert_eq!(front(&q, 64).1, 0, "offset resets with the chunk");
        assert_eq!(q.clear(), 5);
        assert_eq!(q.len(), 0);
    }
}
