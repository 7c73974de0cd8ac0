//! compio's echo server: its io_uring driver, a task per connection, owned
//! 64 KiB buffers passed to the kernel.

use compio::buf::BufResult;
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::net::{TcpListener, TcpStream};

use super::BUF;

pub fn serve() -> Result<(), String> {
    let std_listener = super::listener()?;
    let rt = compio::runtime::Runtime::new()
        .map_err(|e| format!("compio: cannot build a runtime: {e}"))?;
    rt.block_on(async move {
        let listener = TcpListener::from_std(std_listener).map_err(|e| e.to_string())?;
        super::ready(listener.local_addr().map_err(|e| e.to_string())?);
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            compio::runtime::spawn(echo(s)).detach();
        }
    })
}

async fn echo(mut s: TcpStream) {
    let mut buf: Vec<u8> = Vec::with_capacity(BUF);
    loop {
        // compio reads into the spare capacity, after `len`.
        buf.clear();
        let BufResult(res, b) = s.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let BufResult(res, b) = s.write_all(buf).await;
        buf = b;
        if res.is_err() {
            return;
        }
    }
}
