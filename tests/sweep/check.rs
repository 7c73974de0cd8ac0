//! The sweep's invariants, per connection, with each server connection
//! matched to its own client (by address on TCP, by accept order on Unix):
//!
//! - every protocol passed the checker (R1–R4, W2, L4) and heard
//!   `connection_lost` once if it heard `connection_made`;
//! - each side received a prefix of exactly its own peer's stream (the
//!   server: its client's payload; the client: the server's echo of it),
//!   never more than the peer's kernel accepted (`Ledger::sent`);
//! - a clean EOF means everything the peer sent arrived: a side that got
//!   less was reset or cut, and must have seen an error, unless it ended
//!   the connection itself;
//! - STARTTLS: the plaintext phase got exactly the plaintext, the TLS phase
//!   the rest, and nothing of the TLS stream reached the application as
//!   plaintext;
//! - without faults: no connect fails, and a client that closes after its
//!   echo, or half-closes, got everything back, without an error.

use proactor::Transport;

use super::peers::{Client, Security, ServerConn, SharedRec};
use super::Totals;

fn sent(t: &Option<Transport>) -> Option<usize> {
    t.as_ref().map(|t| t.ledger().sent as usize)
}

/// `rec` received a prefix of `stream` (its peer sent `stream`, of which
/// the peer's kernel accepted `sent` bytes, when known): never more than
/// was sent, everything on a clean EOF, and an error when it got less,
/// unless it ended the connection itself (`ended_itself`).
///
/// A TLS protocol whose handshake never completed hears nothing at all
/// (T6): fine only if the peer cut the connection itself (`peer_cut`) or
/// faults did.
#[allow(clippy::too_many_arguments)]
fn check_stream(
    who: &str,
    rec: &SharedRec,
    stream: &[u8],
    sent: Option<usize>,
    ended_itself: bool,
    peer_cut: bool,
    faults: bool,
    totals: &mut Totals,
) {
    let r = rec.borrow();
    r.assert_ok();
    if r.made == 0 {
        assert!(r.data.is_empty() && r.lost == 0, "{who}: {}", r.summary());
        assert!(
            peer_cut || faults,
            "{who}: never started, and its peer did not cut the connection"
        );
        return;
    }
    assert_eq!(
        r.lost,
        1,
        "{who}: connection_lost exactly once: {}",
        r.summary()
    );
    assert!(
        r.data.len() <= stream.len() && r.data == stream[..r.data.len()],
        "{who}: received {} bytes that are not a prefix of its peer's {}-byte stream",
        r.data.len(),
        stream.len()
    );
    let Some(sent) = sent else {
        return;
    };
    assert!(
        r.data.len() <= sent,
        "{who}: received {} bytes, its peer's kernel accepted {sent}",
        r.data.len()
    );
    if r.eof > 0 {
        assert_eq!(
            r.data.len(),
            sent,
            "{who}: a clean EOF after {} of the {sent} bytes its peer sent: {}",
            r.data.len(),
            r.summary()
        );
        totals.exact_ends += 1;
    }
    if r.data.len() < sent && !ended_itself {
        assert!(
            r.lost_error.is_some(),
            "{who}: got {} of {sent} bytes and ended without an error: {}",
            r.data.len(),
            r.summary()
        );
    }
}

pub fn check(
    clients: &[Client],
    conns: &[ServerConn],
    unix: bool,
    faults: bool,
    totals: &mut Totals,
) -> Vec<String> {
    let mut events = Vec::new();
    let mut matched = vec![false; conns.len()];
    for (i, c) in clients.iter().enumerate() {
        totals.conns[c.security as usize] += 1;
        let server = if unix {
            c.server.get()
        } else {
            let local = c.raw.borrow().as_ref().and_then(Transport::local_addr);
            local.and_then(|a| conns.iter().position(|s| s.peer().as_ref() == Some(&a)))
        };
        let s = server.map(|j| {
            assert!(
                !matched[j],
                "client {i}: two clients matched one server connection"
            );
            matched[j] = true;
            assert_eq!(conns[j].security, c.security, "client {i}: wrong server");
            &conns[j]
        });
        check_pair(i, c, s, faults, totals);
        events.push(format!(
            "client {i} {:?} {:?}: {}",
            c.security,
            c.ending,
            c.app.borrow().summary()
        ));
    }
    for (j, s) in conns.iter().enumerate() {
        if matched[j] {
            continue;
        }
        // A server connection without its client: one whose client failed
        // its TLS handshake (its protocol heard nothing, or lost with an
        // error before any data).
        let r = s.first.borrow();
        r.assert_ok();
        assert!(
            s.security == Security::Tls
                && r.data.is_empty()
                && (r.made == 0 || r.lost_error.is_some()),
            "server connection {j} ({:?}) matches no client: {}",
            s.security,
            r.summary()
        );
    }
    events
}

fn check_pair(i: usize, c: &Client, s: Option<&ServerConn>, faults: bool, totals: &mut Totals) {
    let failed = c.failed.borrow().clone();
    if let Some(why) = &failed {
        totals.connect_failures += 1;
        assert!(faults, "client {i}: failed without faults: {why}");
    }
    let plain = c.plain;
    let ct = c.transport.borrow().clone();
    if let Some(pre) = &c.pre {
        // The echo of the plaintext phase: exactly the plaintext once the
        // client upgraded (it upgrades only then).
        let p = pre.borrow();
        p.assert_ok();
        assert!(p.data.len() <= plain && p.data == c.payload[..p.data.len()]);
        if c.app.borrow().made > 0 {
            assert_eq!(p.data.len(), plain, "client {i}: upgraded early");
        }
    }
    if let Some(t) = &ct {
        assert!(t.ledger().balanced(), "client {i}: {:?}", t.ledger());
    }
    let Some(s) = s else {
        // A TLS server connection is known by its address only once its
        // handshake completed: one the client cut before that is not.
        let cut = c.cut_short.get() || c.ending == super::Ending::Abort;
        assert!(
            faults || failed.is_some() || (cut && c.security == Security::Tls),
            "client {i} ({:?}) has no server connection",
            c.security
        );
        return;
    };
    let client_cut = c.cut_short.get() || c.ending == super::Ending::Abort;
    if let Some(why) = &*s.failed.borrow() {
        // A client that completed its handshake and aborted at once may cut
        // the server's before it completes (the server's ends with the
        // client's Finished).
        assert!(faults || client_cut, "server of client {i}: {why}");
    }
    let app_s = s.app.borrow().clone();
    if let Some((held, unconsumed)) = s.upgrade.get() {
        totals.upgrades += 1;
        totals.upgrades_holding_data += u64::from(held > 0);
        totals.upgrades_with_unconsumed += u64::from(unconsumed > 0);
    }
    if c.security == Security::StartTls {
        let f = s.first.borrow();
        f.assert_ok();
        // What the plaintext protocol got: the plaintext, then (if any)
        // the start of the TLS stream, which it never echoed.
        let n = f.data.len().min(plain);
        assert!(f.data[..n] == c.payload[..n], "server {i}: plaintext phase");
        if app_s.as_ref().is_some_and(|a| a.borrow().made > 0) {
            assert!(f.data.len() >= plain, "server {i}: upgraded early");
        }
    }
    let stream = &c.payload[plain..];
    let Some(app_s) = app_s else {
        return;
    };
    // The server's application received the client's stream.
    let st = app_s.borrow().transport.clone();
    let server_cut = s.cut.get();
    check_stream(
        &format!("server of client {i} ({:?})", c.security),
        &app_s,
        stream,
        sent(&ct),
        server_cut,
        client_cut,
        faults,
        totals,
    );
    // The client received the server's echo of what the server received.
    let echo = app_s.borrow().data.clone();
    check_stream(
        &format!("client {i} ({:?}, {:?})", c.security, c.ending),
        &c.app,
        &echo,
        sent(&st),
        c.cut_short.get(),
        false,
        faults,
        totals,
    );
    let (a, b) = (c.app.borrow(), app_s.borrow());
    totals.errors += u64::from(a.lost_error.is_some()) + u64::from(b.lost_error.is_some());
    if !faults && !server_cut && matches!(c.ending, super::Ending::Close | super::Ending::WriteEof)
    {
        assert!(a.lost_error.is_none(), "client {i}: {}", a.summary());
        assert!(a.data == stream, "client {i}: full echo: {}", a.summary());
        assert!(b.data == stream, "server {i}: full stream: {}", b.summary());
        assert_eq!(sent(&ct), Some(stream.len()), "client {i}: everything sent");
    }
}
