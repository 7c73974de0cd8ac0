//! A small SMTP server that upgrades to TLS with STARTTLS (RFC 3207), and
//! prints every message it receives. It shows the proactor API end to end:
//! a plain `Protocol`, `Handle::start_tls` on the live connection, the bytes
//! after `STARTTLS` handed to the TLS engine (never treated as commands), and
//! the same protocol state carried over to the secured transport.
//!
//! ```text
//! cargo run --example smtp_starttls -- --listen 127.0.0.1:2525
//! openssl s_client -starttls smtp -connect 127.0.0.1:2525
//! python3 -c 'import smtplib; s = smtplib.SMTP("127.0.0.1", 2525); s.starttls(); ...'
//! ```
//!
//! Without `--cert`/`--key` it makes a throwaway self-signed certificate
//! for `localhost` and `127.0.0.1`.

use std::cell::RefCell;
use std::io::Write as _;
use std::rc::Rc;

use proactor::tls::{self, TlsOptions};
use proactor::{Address, BaseProtocol, EventLoop, Handle, Protocol, Transport};

/// `--listen`: port 0 picks a free port (the real one is printed);
/// `--cert`/`--key`: the certificate chain and its key (self-signed when absent).
const USAGE: &str = "usage: smtp_starttls [--listen 127.0.0.1:2525] [--cert PEM --key PEM]";

#[derive(Debug)]
struct Args {
    listen: String,
    cert: Option<String>,
    key: Option<String>,
}

impl Args {
    fn parse() -> std::io::Result<Args> {
        let usage = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
        let mut args = Args {
            listen: "127.0.0.1:2525".to_string(),
            cert: None,
            key: None,
        };
        let mut words = std::env::args().skip(1);
        while let Some(flag) = words.next() {
            let slot = match flag.as_str() {
                "--listen" => &mut args.listen,
                "--cert" => args.cert.insert(String::new()),
                "--key" => args.key.insert(String::new()),
                _ => return Err(usage(format!("unknown argument {flag:?}; {USAGE}"))),
            };
            *slot = words
                .next()
                .ok_or_else(|| usage(format!("{flag} needs a value")))?;
        }
        if args.cert.is_some() != args.key.is_some() {
            return Err(usage("--cert and --key go together".to_string()));
        }
        Ok(args)
    }
}

fn main() -> std::io::Result<()> {
    let args = Args::parse()?;
    let server_config = match (&args.cert, &args.key) {
        (Some(c), Some(k)) => tls::server_config_from_pem_files(c, k)?,
        _ => {
            let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            let ck = rcgen::generate_simple_self_signed(names).map_err(std::io::Error::other)?;
            let (cert, key) = (ck.cert.pem(), ck.signing_key.serialize_pem());
            tls::server_config_from_pem(cert.as_bytes(), key.as_bytes())?
        }
    };
    let tls_options = TlsOptions::server(server_config);

    let event_loop = EventLoop::new()?;
    let h = event_loop.handle();
    let addr: Address = args.listen.parse()?;
    let hh = h.clone();
    let server = h.create_server(addr, move || Smtp::new(&hh, &tls_options))?;
    println!("listening on {}", server.local_addr());
    std::io::stdout().flush()?;
    event_loop.run_forever()
}

/// Where the conversation is.
#[derive(Debug, PartialEq)]
enum Mode {
    /// Reading commands.
    Command,
    /// Reading message lines after `DATA`, up to a line with a single dot.
    Data,
    /// `STARTTLS` accepted: the old protocol must not read anything more.
    Upgrading,
}

/// One SMTP session. It outlives the protocol objects: the plain protocol
/// and, after STARTTLS, the one on the TLS transport share it.
struct Session {
    transport: Transport,
    secure: bool,
    mode: Mode,
    /// Bytes received and not yet parsed into complete lines.
    pending: Vec<u8>,
    from: Option<String>,
    to: Vec<String>,
    body: Vec<u8>,
}

impl Session {
    fn reply(&self, line: &str) {
        self.transport.write(line.as_bytes());
        self.transport.write(b"\r\n");
    }

    /// RFC 3207: after STARTTLS, forget everything learned before it.
    fn reset(&mut self) {
        self.from = None;
        self.to.clear();
        self.body.clear();
    }
}

/// The protocol: one per transport, all of a connection sharing a `Session`.
struct Smtp {
    handle: Handle,
    tls: TlsOptions,
    session: Option<Rc<RefCell<Session>>>,
}

impl Smtp {
    fn new(handle: &Handle, tls: &TlsOptions) -> Smtp {
        Smtp {
            handle: handle.clone(),
            tls: tls.clone(),
            session: None,
        }
    }

    /// Handles one command line (without CRLF). Returns `false` to stop
    /// reading lines (after STARTTLS or QUIT).
    fn command(&mut self, s: &Rc<RefCell<Session>>, line: &str) -> bool {
        let mut session = s.borrow_mut();
        let upper = line.to_ascii_uppercase();
        let verb = upper.split_whitespace().next().unwrap_or("");
        match verb {
            "EHLO" => {
                let name = line.get(5..).unwrap_or("").trim();
                session.reply(&format!("250-proactor greets {name}"));
                if !session.secure {
                    session.reply("250-STARTTLS");
                }
                session.reply("250 8BITMIME");
            }
            "HELO" => session.reply("250 proactor"),
            "STARTTLS" if session.secure => session.reply("503 already under TLS"),
            "STARTTLS" => {
                session.reply("220 ready to start TLS");
                session.mode = Mode::Upgrading;
                // Whatever followed STARTTLS in the same read belongs to the
                // TLS stream (a pipelined ClientHello): hand it to the engine.
                // Plaintext injected there fails the handshake (CVE-2011-0411).
                let unconsumed = std::mem::take(&mut session.pending);
                let raw = session.transport.clone();
                drop(session);
                self.upgrade(s, &raw, unconsumed);
                return false;
            }
            "MAIL" if upper.starts_with("MAIL FROM:") => {
                session.reset();
                session.from = Some(line[10..].trim().to_string());
                session.reply("250 OK");
            }
            "RCPT" if upper.starts_with("RCPT TO:") && session.from.is_some() => {
                let to = line[8..].trim().to_string();
                session.to.push(to);
                session.reply("250 OK");
            }
            "DATA" if !session.to.is_empty() => {
                session.mode = Mode::Data;
                session.reply("354 end data with <CR><LF>.<CR><LF>");
            }
            "RSET" => {
                session.reset();
                session.reply("250 OK");
            }
            "NOOP" => session.reply("250 OK"),
            "QUIT" => {
                session.reply("221 bye");
                session.transport.close();
                return false;
            }
            "MAIL" | "RCPT" | "DATA" => session.reply("503 bad sequence of commands"),
            _ => session.reply("500 command not recognized"),
        }
        true
    }

    /// Handles one line of message data (without CRLF).
    fn data_line(&mut self, s: &Rc<RefCell<Session>>, line: &[u8]) {
        let mut session = s.borrow_mut();
        if line == b"." {
            print_message(&session);
            session.reset();
            session.mode = Mode::Command;
            session.reply("250 OK: message accepted");
            return;
        }
        // Dot-unstuffing (RFC 5321 4.5.2): a leading dot was doubled.
        let line = line.strip_prefix(b".").unwrap_or(line);
        session.body.extend_from_slice(line);
        session.body.extend_from_slice(b"\r\n");
    }

    fn upgrade(&self, s: &Rc<RefCell<Session>>, raw: &Transport, unconsumed: Vec<u8>) {
        let next = Smtp {
            handle: self.handle.clone(),
            tls: self.tls.clone(),
            session: Some(s.clone()),
        };
        let options = self.tls.clone().unconsumed(unconsumed);
        // The handshake starts right here; the future resolves when it is done.
        let handshake = self.handle.start_tls(raw, next, options);
        let s = s.clone();
        self.handle.spawn(async move {
            match handshake.await {
                Ok(secured) => {
                    // Nothing reaches the new protocol before this runs, so
                    // every reply from now on goes over TLS.
                    let mut session = s.borrow_mut();
                    session.transport = secured;
                    session.secure = true;
                    session.mode = Mode::Command;
                    session.reset();
                }
                Err(e) => eprintln!("STARTTLS failed: {e}"),
            }
        });
    }
}

impl BaseProtocol for Smtp {
    fn connection_made(&mut self, transport: Transport) {
        // Only the plain protocol hears this; start_tls does not repeat it.
        let session = Session {
            transport,
            secure: false,
            mode: Mode::Command,
            pending: Vec::new(),
            from: None,
            to: Vec::new(),
            body: Vec::new(),
        };
        session.reply("220 proactor ESMTP");
        self.session = Some(Rc::new(RefCell::new(session)));
    }
}

impl Protocol for Smtp {
    fn data_received(&mut self, data: &[u8]) {
        let Some(s) = self.session.clone() else {
            return;
        };
        s.borrow_mut().pending.extend_from_slice(data);
        loop {
            let line = {
                let mut session = s.borrow_mut();
                if session.mode == Mode::Upgrading {
                    return;
                }
                let Some(end) = session.pending.windows(2).position(|w| w == b"\r\n") else {
                    return;
                };
                let line: Vec<u8> = session.pending.drain(..end + 2).take(end).collect();
                line
            };
            let in_data = s.borrow().mode == Mode::Data;
            if in_data {
                self.data_line(&s, &line);
            } else if !self.command(&s, &String::from_utf8_lossy(&line)) {
                return;
            }
        }
    }
}

fn print_message(session: &Session) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "--- message from {} to {} ({} bytes, {}) ---",
        session.from.as_deref().unwrap_or("?"),
        session.to.join(", "),
        session.body.len(),
        if session.secure {
            "over TLS"
        } else {
            "in plaintext"
        },
    );
    let _ = out.write_all(&session.body);
    let _ = writeln!(out, "--- end of message ---");
    let _ = out.flush();
}
