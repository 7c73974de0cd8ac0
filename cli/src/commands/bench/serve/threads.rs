//! The blocking `std::net` echo: one thread per connection (default stack),
//! blocking reads into a 64 KiB buffer and `write_all`.

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsRawFd;

use super::BUF;

pub fn serve() -> Result<(), String> {
    let listener = super::listener()?;
    super::ready(listener.local_addr().map_err(|e| e.to_string())?);
    loop {
        let Ok((s, _)) = listener.accept() else {
            continue;
        };
        let _ = s.set_nodelay(true);
        if let Err(e) = std::thread::Builder::new().spawn(move || echo(s)) {
            tracing::warn!(%e, "std-threads: cannot start a connection thread");
        }
    }
}

fn echo(mut s: TcpStream) {
    // Not zeroed, like every other server's: pages are touched only as data
    // lands in them.
    let mut buf: Vec<u8> = Vec::with_capacity(BUF);
    loop {
        let spare = buf.spare_capacity_mut();
        // SAFETY: `spare` is writable memory of `spare.len()` bytes owned by
        // `buf`; read(2) writes at most that many bytes into it.
        let n = unsafe { libc::read(s.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
        if n <= 0 {
            return;
        }
        // SAFETY: read(2) initialised the first `n` bytes (n ≤ capacity).
        unsafe { buf.set_len(n as usize) };
        if s.write_all(&buf).is_err() {
            return;
        }
        buf.clear();
    }
}
