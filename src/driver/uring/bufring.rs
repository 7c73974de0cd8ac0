//! The provided buffer ring (`IORING_REGISTER_PBUF_RING`) that multishot
//! receives take their buffers from.
//!
//! One ring per driver, shared by every connection: the kernel picks a free
//! buffer when bytes arrive, the CQE names it, and `take` copies the bytes
//! out into a `Vec` of exactly their size and gives the buffer back to the
//! ring at once. So the kernel's buffers never leave the driver (O3 holds
//! without tracking them), and an idle connection holds no buffer at all.
//!
//! Both the ring of entries and the buffers are anonymous mappings: page
//! aligned as the kernel requires, and only the pages the kernel wrote
//! count in the resident set.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

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
}

impl BufRing {
    /// Maps and registers a ring of `entries` (a power of two, at most
    /// 32,768) buffers of `size` bytes each. An error means the kernel has
    /// no provided buffer rings (before 5.19) or refused this one: the
    /// driver then receives single-shot.
    pub(super) fn register(
        submitter: &Submitter<'_>,
        entries: u16,
        size: usize,
    ) -> io::Result<BufRing> {
        debug_assert!(entries.is_power_of_two() && size <= u32::MAX as usize);
        let ring_len = usize::from(entries) * std::mem::size_of::<BufRingEntry>();
        let mut this = BufRing {
            ring: Mapping::new(ring_len)?,
            bufs: Mapping::new(usize::from(entries) * size)?,
            entries,
            size,
            tail: 0,
        };
        for bid in 0..entries {
            this.push(bid);
        }
        this.publish();
        let addr = this.ring.ptr.as_ptr() as u64;
        // SAFETY: the ring mapping is page aligned, holds `entries` entries
        // and lives as long as this `BufRing`, which the driver keeps until
        // the io_uring is closed (a field declared after the ring, and
        // leaked with the ops if the kernel never answered them); the
        // buffers the entries point to live in `bufs`, as long.
        unsafe { submitter.register_buf_ring_with_flags(addr, entries, GROUP, 0)? };
        Ok(this)
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

    /// Copies the `n` bytes the kernel received into buffer `bid` out, and
    /// gives the buffer back to the ring.
    /// `out` is a spare buffer to copy into (cleared first), or `Vec::new()`.
    pub(super) fn take(&mut self, bid: u16, n: usize, out: Vec<u8>) -> Vec<u8> {
        let out = self.read(bid, n, out);
        self.give_back(bid);
        out
    }

    /// Gives buffer `bid` back to the ring without reading it.
    pub(super) fn give_back(&mut self, bid: u16) {
        if bid < self.entries {
            self.push(bid);
            self.publish();
        }
    }

    fn read(&self, bid: u16, n: usize, mut out: Vec<u8>) -> Vec<u8> {
        out.clear();
        if bid >= self.entries {
            tracing::error!(bid, "uring: CQE names a buffer outside the ring");
            return out;
        }
        let n = n.min(self.size);
        // SAFETY: buffer `bid` lies inside `bufs`; the kernel wrote its
        // first `n` bytes (n <= size) and will not touch it again until it
        // is given back to the ring, after this copy.
        let bytes = unsafe {
            std::slice::from_raw_parts(self.bufs.ptr.as_ptr().add(usize::from(bid) * self.size), n)
        };
        out.extend_from_slice(bytes);
        out
    }
}
