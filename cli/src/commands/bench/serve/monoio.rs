//! monoio's echo server: its io_uring driver, a task per connection, owned
//! 64 KiB buffers passed to the kernel (its rent API).

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

use super::BUF;

pub fn serve() -> Result<(), String> {
    let std_listener = super::listener()?;
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .build()
        .map_err(|e| format!("monoio: cannot build a runtime: {e}"))?;
    rt.block_on(async move {
        let listener = TcpListener::from_std(std_listener).map_err(|e| e.to_string())?;
        super::ready(listener.local_addr().map_err(|e| e.to_string())?);
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            monoio::spawn(echo(s));
        }
    })
}

async fn echo(mut s: TcpStream) {
    let mut buf: Vec<u8> = Vec::with_capacity(BUF);
    loop {
        buf.clear();
        let (res, b) = s.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let (res, b) = s.write_all(buf).await;
        buf = b;
        if res.is_err() {
            return;
        }
    }
}
