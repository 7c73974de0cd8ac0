//! The STARTTLS line protocol of `echo --starttls` and `race --starttls`.
//!
//! Client: `HELLO proactor` (echoed back), then `STARTTLS`; the server
//! answers `READY` and both sides call `start_tls`. Bytes that arrive after
//! `READY`/`STARTTLS` in the same read belong to the TLS stream and are
//! handed to `start_tls` as unconsumed (T3), never echoed as plaintext.

use std::fmt;
use std::rc::Rc;

use proactor::{AnyProtocol, BaseProtocol, Protocol, TlsOptions, Transport};

use super::echo::{EchoCounters, EchoProtocol};

/// Longest line the plaintext phase accepts; a longer one is an error, so a
/// peer cannot make us buffer without bound before the upgrade.
const MAX_LINE: usize = 64 * 1024;

const HELLO: &[u8] = b"HELLO proactor";

/// Splits the first complete line off `buf`: (line without CR LF, rest).
fn split_line(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nl = buf.iter().position(|&b| b == b'\n')?;
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Some((line, &buf[nl + 1..]))
}

/// Server side: echoes lines until `STARTTLS`, then serves the echo over TLS.
#[derive(Debug)]
pub struct StarttlsEcho {
    transport: Option<Transport>,
    counters: Rc<EchoCounters>,
    options: Option<TlsOptions>,
    buf: Vec<u8>,
}

impl StarttlsEcho {
    pub fn new(counters: Rc<EchoCounters>, options: TlsOptions) -> Self {
        StarttlsEcho {
            transport: None,
            counters,
            options: Some(options),
            buf: Vec::new(),
        }
    }

    fn upgrade(&mut self, t: &Transport, rest: Vec<u8>) {
        let (Some(h), Some(options)) = (t.loop_handle(), self.options.take()) else {
            return;
        };
        t.write(b"READY\r\n");
        let options = options.unconsumed(rest).call_connection_made(true);
        let fut = h.start_tls(t, EchoProtocol::new(self.counters.clone()), options);
        h.spawn(async move {
            if let Err(e) = fut.await {
                tracing::warn!(%e, "STARTTLS upgrade failed");
            }
        });
    }
}

impl BaseProtocol for StarttlsEcho {
    fn connection_made(&mut self, transport: Transport) {
        self.transport = Some(transport);
    }
}

impl Protocol for StarttlsEcho {
    fn data_received(&mut self, data: &[u8]) {
        let Some(t) = self.transport.clone() else {
            return;
        };
        if self.options.is_none() {
            return; // upgrading: the TLS engine owns the stream now
        }
        self.buf.extend_from_slice(data);
        while let Some((line, rest)) = split_line(&self.buf) {
            if line == b"STARTTLS" {
                let rest = rest.to_vec();
                self.buf.clear();
                self.upgrade(&t, rest);
                return;
            }
            let consumed = self.buf.len() - rest.len();
            t.write(&self.buf[..consumed]);
            self.buf.drain(..consumed);
        }
        if self.buf.len() > MAX_LINE {
            tracing::warn!("STARTTLS echo: line longer than {MAX_LINE} bytes; closing");
            t.abort();
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Stage {
    AwaitHello,
    AwaitReady,
    Upgrading,
}

/// Told why a client's connection failed where no future reports it: the
/// plaintext exchange, or the handshake of the upgrade.
pub type OnFailure = Rc<dyn Fn(String)>;

/// Client side: the plaintext exchange, then `app` over TLS.
pub struct StarttlsClient {
    app: Option<AnyProtocol>,
    on_failure: OnFailure,
    options: Option<TlsOptions>,
    transport: Option<Transport>,
    stage: Stage,
    buf: Vec<u8>,
}

impl fmt::Debug for StarttlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StarttlsClient")
            .field("stage", &self.stage)
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl StarttlsClient {
    pub fn new(app: AnyProtocol, options: TlsOptions, on_failure: OnFailure) -> Self {
        StarttlsClient {
            app: Some(app),
            on_failure,
            options: Some(options),
            transport: None,
            stage: Stage::AwaitHello,
            buf: Vec::new(),
        }
    }

    fn fail(&mut self, why: String) {
        (self.on_failure)(why);
        if let Some(t) = &self.transport {
            t.abort();
        }
    }

    fn upgrade(&mut self, t: &Transport, rest: Vec<u8>) {
        let (Some(h), Some(options), Some(app)) =
            (t.loop_handle(), self.options.take(), self.app.take())
        else {
            return;
        };
        self.stage = Stage::Upgrading;
        let fut = h.start_tls(t, app, options.unconsumed(rest));
        let on_failure = self.on_failure.clone();
        h.spawn(async move {
            if let Err(e) = fut.await {
                on_failure(format!("STARTTLS handshake failed: {e}"));
            }
        });
    }
}

impl BaseProtocol for StarttlsClient {
    fn connection_made(&mut self, transport: Transport) {
        let mut hello = HELLO.to_vec();
        hello.extend_from_slice(b"\r\n");
        transport.write(&hello);
        self.transport = Some(transport);
    }

    fn connection_lost(&mut self, error: Option<std::io::Error>) {
        if self.stage != Stage::Upgrading {
            let why = match error {
                Some(e) => format!("connection lost before STARTTLS: {e}"),
                None => "connection closed before STARTTLS".to_string(),
            };
            (self.on_failure)(why);
        }
    }
}

impl Protocol for StarttlsClient {
    fn data_received(&mut self, data: &[u8]) {
        let Some(t) = self.transport.clone() else {
            return;
        };
        if self.stage == Stage::Upgrading {
            return;
        }
        self.buf.extend_from_slice(data);
        while let Some((line, rest)) = split_line(&self.buf) {
            let (line, rest) = (line.to_vec(), rest.to_vec());
            self.buf = rest;
            match (&self.stage, line.as_slice()) {
                (Stage::AwaitHello, l) if l == HELLO => {
                    t.write(b"STARTTLS\r\n");
                    self.stage = Stage::AwaitReady;
                }
                (Stage::AwaitReady, b"READY") => {
                    let rest = std::mem::take(&mut self.buf);
                    self.upgrade(&t, rest);
                    return;
                }
                (_, other) => {
                    let why = format!(
                        "unexpected line from the server: {:?}",
                        String::from_utf8_lossy(other)
                    );
                    self.fail(why);
                    return;
                }
            }
        }
        if self.buf.len() > MAX_LINE {
            self.fail(format!("server line longer than {MAX_LINE} bytes"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_line;

    #[test]
    fn lines_split_on_lf_and_crlf() {
        assert_eq!(
            split_line(b"STARTTLS\r\n\x16\x03"),
            Some((&b"STARTTLS"[..], &b"\x16\x03"[..]))
        );
        assert_eq!(split_line(b"a\nb"), Some((&b"a"[..], &b"b"[..])));
        assert_eq!(split_line(b"partial"), None);
    }
}
