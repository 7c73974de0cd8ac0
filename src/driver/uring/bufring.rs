//! The provided buffer ring (`IORING_REGISTER_PBUF_RING`) that multishot
//! receives take their buffers from.
//!
//! One ring per driver, shared by every connection: the kernel picks a free
//! buffer when bytes arrive, the CQE names it, and `take` copies the bytes
//! out into a `Vec` of exactly their size; a buffer the kernel is done with
//! goes back to the ring at once. So the kernel's buffers never leave the
//! driver (O3 holds without tracking them), and an idle connection holds no
//! buffer at all.
//!
//! Where the kernel has it (6.12), the ring consumes its buffers
//! incrementally (`IOU_PBUF_RING_INC`): an arrival takes only the bytes it
//! needs, from where the last one ended, and the buffer stays the ring's
//! current one (`IORING_CQE_F_BUF_MORE`) until it is full. So the buffers
//! can be large, for a bulk receive to take 64 KiB at once, while small
//! arrivals from many connections fill one buffer after the other, in
//! cache. The ring keeps each buffer's fill level to find an arrival's
//! bytes.
//!
//! Both the ring of entries and the buffers are anonymous mappings: page
//! aligned as the kernel requires, and only the pages the kernel wrote
//! count in the resident set.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::{cqueue, Submitter};

/// `IOU_PBUF_RING_INC` of `<linux/io_uring.h>` (6.12), which the
/// `io-uring` crate does not export.
const IOU_PBUF_RING_INC: u16 = 2;

/// The buffer group id of the ring (the only one this driver registers).
pub(super) const GROUP: u16 = 0;

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous private mapping at an address the kernel
        // picks: no file, no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap at 0"))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly one mapping made by `new`,
        // unmapped once; the owner guarantees the kernel no longer uses it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The registered ring and its buffers.
pub(super) struct BufRing {
    /// `entries` `BufRingEntry`s, shared with the kernel. Its first entry's
    /// last field doubles as the tail the kernel reads.
    ring: Mapping,
    /// `entries * size` bytes of buffers; buffer `bid` starts at `bid * size`.
    bufs: Mapping,
    entries: u16,
    size: usize,
    /// Our copy of the tail: entries published so far (wrapping).
    tail: u16,
    /// Incremental consumption: bytes the kernel filled in each buffer so
    /// far (where its next arrival starts). Empty: each CQE uses up one
    /// whole buffer.
    filled: Box<[u32]>,
}

impl BufRing {
    /// Maps and registers a ring of `entries` (a power of two, at most
    /// 32,768) buffers of `size` bytes each, consumed incrementally if
    /// `incremental`. An error means the kernel has no provided buffer
    /// rings (before 5.19), no incremental ones (before 6.12) or refused
    /// this one.
    pub(super) fn register(
        submitter: &Submitter<'_>,
        entries: u16,
        size: usize,
        incremental: bool,
    ) -> io::Result<BufRing> {
        debug_assert!(entries.is_power_of_two() && size <= u32::MAX as usize);
        let ring_len = usize::from(entries) * std::mem::size_of::<BufRingEntry>();
        let mut this = BufRing {
            ring: Mapping::new(ring_len)?,
            bufs: Mapping::new(usize::from(entries) * size)?,
            entries,
            size,
            tail: 0,
            filled: if incremental {
                vec![0; usize::from(entries)].into_boxed_slice()
            } else {
                Box::default()
            },
        };
        for bid in 0..entries {
            this.push(bid);
        }
        this.publish();
        let flags = if incremental { IOU_PBUF_RING_INC } else { 0 };
        let addr = this.ring.ptr.as_ptr() as u64;
        // SAFETY: the ring mapping is page aligned, holds `entries` entries
        // and lives as long as this `BufRing`, which the driver keeps until
        // the io_uring is closed (a field declared after the ring, and
        // leaked with the ops if the kernel never answered them); the
        // buffers the entries point to live in `bufs`, as long.
        unsafe { submitter.register_buf_ring_with_flags(addr, entries, GROUP, flags)? };
        Ok(this)
    }

    /// Whether the kernel consumes the buffers incrementally.
    pub(super) fn incremental(&self) -> bool {
        !self.filled.is_empty()
    }

    fn entry_ptr(&self, index: u16) -> *mut BufRingEntry {
        let i = usize::from(index & (self.entries - 1));
        // SAFETY: `i < entries`, so the entry lies inside the ring mapping.
        unsafe { self.ring.ptr.as_ptr().cast::<BufRingEntry>().add(i) }
    }

    /// Puts buffer `bid` in the next free entry (seen by the kernel once
    /// published).
    fn push(&mut self, bid: u16) {
        let entry = self.entry_ptr(self.tail);
        // SAFETY: `bid < entries`, so the buffer lies inside `bufs`.
        let addr = unsafe { self.bufs.ptr.as_ptr().add(usize::from(bid) * self.size) };
        // SAFETY: `entry` is inside the ring mapping; the kernel reads only
        // entries before the published tail, and this one is past it. Its
        // `resv` field (the tail, in entry 0) is not written here.
        unsafe {
            (*entry).set_addr(addr as u64);
            (*entry).set_len(self.size as u32);
            (*entry).set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every pushed entry visible to the kernel.
    fn publish(&self) {
        // SAFETY: the ring mapping starts with an entry, whose `resv` field
        // is the ring's tail; it is 2-aligned, as `AtomicU16` requires, and
        // the kernel only reads it.
        let tail =
            unsafe { &*BufRingEntry::tail(self.ring.ptr.as_ptr().cast()).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// Copies out the `n` bytes a CQE with `flags` says the kernel received
    /// into buffer `bid`, into `out` (a spare buffer, cleared first, or
    /// `Vec::new()`), and gives the buffer back to the ring if the kernel is
    /// done with it.
    pub(super) fn take(&mut self, bid: u16, n: usize, flags: u32, mut out: Vec<u8>) -> Vec<u8> {
        out.clear();
        self.append(bid, n, flags, &mut out);
        out
    }

    /// [`BufRing::take`], appending to `out`.
    pub(super) fn append(&mut self, bid: u16, n: usize, flags: u32, out: &mut Vec<u8>) {
        if bid >= self.entries {
            tracing::error!(bid, "uring: CQE names a buffer outside the ring");
            return;
        }
        let Some(&filled) = self.filled.get(usize::from(bid)) else {
            // Each CQE uses up its buffer.
            self.copy_out(bid, 0, n, out);
            self.give_back(bid);
            return;
        };
        let start = filled as usize;
        self.copy_out(bid, start, n, out);
        // An empty arrival (EOF) consumed nothing: the buffer stays the
        // ring's current one, where it is, whatever the flags say.
        if n == 0 {
            return;
        }
        if cqueue::buffer_more(flags) {
            self.filled[usize::from(bid)] = (start + n).min(self.size) as u32;
        } else {
            self.filled[usize::from(bid)] = 0;
            self.give_back(bid);
        }
    }

    /// Gives buffer `bid` back to the ring, whole.
    fn give_back(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }

    /// Appends bytes `start..start + n` of buffer `bid` (`bid < entries`) to `out`.
    fn copy_out(&self, bid: u16, start: usize, n: usize, out: &mut Vec<u8>) {
        let start = start.min(self.size);
        let n = n.min(self.size - start);
        // SAFETY: buffer `bid` lies inside `bufs`, and `start + n <= size`;
        // the kernel wrote those bytes before posting the CQE that named
        // them, and writes none of them again until the buffer is given
        // back to the ring (incrementally consumed: it writes only past
        // them, from `start + n` on).
        let bytes = unsafe {
            std::slice::from_raw_parts(
                self.bufs
                    .ptr
                    .as_ptr()
                    .add(usize::from(bid) * self.size + start),
                n,
            )
        };
        out.extend_from_slice(bytes);
    }
}
