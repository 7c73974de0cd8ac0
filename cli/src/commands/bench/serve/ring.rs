//! The bare io_uring echo: the floor a framework on io_uring must reach.
//! One ring with proactor's set-up flags (SINGLE_ISSUER, DEFER_TASKRUN,
//! COOP_TASKRUN), one Accept re-armed after each connection, and per
//! connection exactly one operation in flight: Recv into its 64 KiB buffer,
//! then Send until all of it went, then Recv again. No multishot, no
//! registered buffers or files: nothing a framework could not also do.

use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd};

use io_uring::{opcode, squeue, types::Fd, IoUring};

use super::BUF;

const ACCEPT: u64 = u64::MAX;
const RECV: u64 = 0;
const SEND: u64 = 1;

struct Conn {
    stream: TcpStream,
    /// `len` is what the last Recv brought; capacity is [`BUF`].
    buf: Vec<u8>,
    sent: usize,
}

fn recv(slot: usize, c: &mut Conn) -> squeue::Entry {
    let spare = c.buf.spare_capacity_mut();
    opcode::Recv::new(
        Fd(c.stream.as_raw_fd()),
        spare.as_mut_ptr().cast(),
        spare.len() as u32,
    )
    .build()
    .user_data(((slot as u64) << 1) | RECV)
}

fn send(slot: usize, c: &Conn) -> squeue::Entry {
    let rest = &c.buf[c.sent..];
    opcode::Send::new(Fd(c.stream.as_raw_fd()), rest.as_ptr(), rest.len() as u32)
        .build()
        .user_data(((slot as u64) << 1) | SEND)
}

/// Queues `e`, submitting first when the submission queue is full.
///
/// # Safety
/// The memory `e` points to stays valid until its completion is reaped.
unsafe fn push(ring: &mut IoUring, e: &squeue::Entry) -> Result<(), String> {
    // SAFETY: the caller keeps `e`'s memory valid (this function's contract).
    while unsafe { ring.submission().push(e) }.is_err() {
        ring.submit().map_err(|e| format!("submit: {e}"))?;
    }
    Ok(())
}

pub fn serve() -> Result<(), String> {
    let listener = super::listener()?;
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_cqsize(16_384)
        .build(4096);
    let mut ring = ring.map_err(|e| format!("io_uring: {e}"))?;
    let accept = opcode::Accept::new(
        Fd(listener.as_raw_fd()),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    )
    .build()
    .user_data(ACCEPT);
    // A connection is dropped only when its one operation in flight has
    // completed; moving a `Conn` (when `conns` grows) does not move the heap
    // buffer its operation points to.
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    // SAFETY: Accept points to no memory (null address arguments).
    unsafe { push(&mut ring, &accept) }?;
    super::ready(listener.local_addr().map_err(|e| e.to_string())?);
    let mut batch: Vec<(u64, i32)> = Vec::with_capacity(4096);
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(format!("io_uring wait: {e}")),
        }
        batch.clear();
        batch.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for &(ud, res) in &batch {
            if ud == ACCEPT {
                if res >= 0 {
                    // SAFETY: a successful Accept returns a new descriptor we own.
                    let stream = unsafe { TcpStream::from_raw_fd(res) };
                    let _ = stream.set_nodelay(true);
                    let c = Conn {
                        stream,
                        buf: Vec::with_capacity(BUF),
                        sent: 0,
                    };
                    let slot = free.pop().unwrap_or_else(|| {
                        conns.push(None);
                        conns.len() - 1
                    });
                    let c = conns[slot].insert(c);
                    // SAFETY: the connection stays in its slot until this completes.
                    unsafe { push(&mut ring, &recv(slot, c)) }?;
                }
                // SAFETY: as above, Accept points to no memory.
                unsafe { push(&mut ring, &accept) }?;
                continue;
            }
            let slot = (ud >> 1) as usize;
            let Some(c) = conns.get_mut(slot).and_then(|c| c.as_mut()) else {
                continue;
            };
            if res <= 0 {
                conns[slot] = None;
                free.push(slot);
                continue;
            }
            let n = res as usize;
            let next = if ud & 1 == RECV {
                // SAFETY: the kernel wrote `n` bytes into the spare capacity.
                unsafe { c.buf.set_len(n) };
                c.sent = 0;
                send(slot, c)
            } else {
                c.sent += n;
                if c.sent < c.buf.len() {
                    send(slot, c)
                } else {
                    c.buf.clear();
                    recv(slot, c)
                }
            };
            // SAFETY: the connection stays in its slot until this completes.
            unsafe { push(&mut ring, &next) }?;
        }
    }
}
