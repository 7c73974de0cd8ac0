//! The engine driven entirely in memory: two engines pass their output to
//! each other, as rustls's own tests do (`transfer`, `do_handshake`).

use std::sync::{Arc, OnceLock};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};

use super::*;
use crate::tls::config::{client_config_with_ca_pem, self_signed, server_config_from_pem};

fn configs() -> &'static (Arc<ClientConfig>, Arc<ServerConfig>) {
    static CONFIGS: OnceLock<(Arc<ClientConfig>, Arc<ServerConfig>)> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let (cert, key) = self_signed(&["localhost"]);
        (
            client_config_with_ca_pem(cert.as_bytes()).unwrap(),
            server_config_from_pem(cert.as_bytes(), key.as_bytes()).unwrap(),
        )
    })
}

fn pair() -> (TlsEngine, TlsEngine) {
    let (client_config, server_config) = configs().clone();
    let client = TlsEngine::new(Role::Client {
        config: client_config,
        server_name: ServerName::try_from("localhost").unwrap(),
    })
    .unwrap();
    let server = TlsEngine::new(Role::Server {
        config: server_config,
    })
    .unwrap();
    (client, server)
}

/// Moves everything `from` has to send into `to`, in one piece; returns the
/// plaintext `to` got and what its feed said.
fn transfer(from: &mut TlsEngine, to: &mut TlsEngine) -> (Vec<u8>, Fed) {
    let ciphertext = from.take_output().unwrap().unwrap_or_default();
    let mut plaintext = Vec::new();
    let fed = to.feed(&ciphertext, &mut plaintext);
    (plaintext.concat(), fed)
}

fn handshake(client: &mut TlsEngine, server: &mut TlsEngine) {
    for _ in 0..10 {
        if !client.is_handshaking() && !server.is_handshaking() {
            return;
        }
        for (plaintext, fed) in [transfer(client, server), transfer(server, client)] {
            assert!(fed.error.is_none(), "{:?}", fed.error);
            assert!(plaintext.is_empty());
        }
    }
    panic!("the handshake did not complete");
}

fn encrypt_all(engine: &mut TlsEngine, queue: &mut SendQueue) {
    while queue.len() > 0 {
        assert!(engine.encrypt(queue).unwrap() > 0);
    }
}

#[test]
fn handshake_completes_in_memory() {
    let (mut client, mut server) = pair();
    assert!(client.is_handshaking() && server.is_handshaking());
    assert!(
        server.take_output().unwrap().is_none(),
        "the client speaks first"
    );
    handshake(&mut client, &mut server);
    let (ci, si) = (client.info(), server.info());
    assert_eq!(ci.version, "TLSv1_3");
    assert_eq!((ci.version, ci.cipher_suite), (si.version, si.cipher_suite));
    assert_eq!(ci.server_name.as_deref(), Some("localhost"));
    assert_eq!(si.server_name.as_deref(), Some("localhost"), "SNI");
    assert_eq!(ci.peer_certificates.len(), 1);
    assert!(si.peer_certificates.is_empty(), "no client certificate");
}

#[test]
fn plaintext_goes_both_ways_through_the_send_queue() {
    let (mut client, mut server) = pair();
    handshake(&mut client, &mut server);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut queue = SendQueue::default();
    for chunk in data.chunks(70_000) {
        queue.push(Bytes::copy_from_slice(chunk));
    }
    // One step takes at most ENCRYPT_STEP_BYTES.
    assert_eq!(client.encrypt(&mut queue).unwrap(), ENCRYPT_STEP_BYTES);
    assert_eq!(queue.len(), data.len() - ENCRYPT_STEP_BYTES);
    encrypt_all(&mut client, &mut queue);
    let (got, fed) = transfer(&mut client, &mut server);
    assert!(fed.error.is_none() && !fed.peer_closed);
    assert!(got == data, "every byte, in order");

    queue.push_copy(b"pong");
    encrypt_all(&mut server, &mut queue);
    assert_eq!(transfer(&mut server, &mut client).0, b"pong");
}

#[test]
fn one_step_takes_at_most_the_slice_limit() {
    let (mut client, mut server) = pair();
    handshake(&mut client, &mut server);
    let mut queue = SendQueue::default();
    for _ in 0..ENCRYPT_STEP_SLICES + 10 {
        queue.push(Bytes::from_static(b"x"));
    }
    assert_eq!(client.encrypt(&mut queue).unwrap(), ENCRYPT_STEP_SLICES);
    assert_eq!(queue.len(), 10);
}

fn byte_by_byte(from: &mut TlsEngine, to: &mut TlsEngine, plaintext: &mut Vec<Vec<u8>>) {
    let bytes = from.take_output().unwrap().unwrap_or_default();
    for b in bytes.chunks(1) {
        let fed = to.feed(b, plaintext);
        assert!(fed.error.is_none(), "{:?}", fed.error);
    }
}

#[test]
fn input_cut_at_every_byte_gives_the_same_plaintext() {
    let (mut client, mut server) = pair();
    let mut plaintext = Vec::new();
    // The whole handshake one byte at a time, in both directions.
    while client.is_handshaking() || server.is_handshaking() {
        byte_by_byte(&mut client, &mut server, &mut plaintext);
        byte_by_byte(&mut server, &mut client, &mut plaintext);
    }
    let mut queue = SendQueue::default();
    queue.push_copy(b"hello, one byte at a time");
    encrypt_all(&mut client, &mut queue);
    byte_by_byte(&mut client, &mut server, &mut plaintext);
    assert_eq!(plaintext.concat(), b"hello, one byte at a time");
}

#[test]
fn close_notify_is_reported_once_and_what_follows_is_ignored() {
    let (mut client, mut server) = pair();
    handshake(&mut client, &mut server);
    let mut queue = SendQueue::default();
    queue.push_copy(b"last words");
    encrypt_all(&mut client, &mut queue);
    client.send_close_notify();
    let mut ciphertext = client.take_output().unwrap().unwrap().to_vec();
    ciphertext.extend_from_slice(b"\x17\x03\x03\x00\x05junk!");
    let mut plaintext = Vec::new();
    let fed = server.feed(&ciphertext, &mut plaintext);
    assert!(fed.peer_closed && fed.error.is_none(), "{fed:?}");
    assert_eq!(plaintext.concat(), b"last words");
    assert!(server.peer_closed());
    let again = server.feed(b"more junk", &mut plaintext);
    assert!(!again.peer_closed && again.error.is_none(), "reported once");
    assert_eq!(plaintext.len(), 1);
}

#[test]
fn a_record_that_does_not_decrypt_is_an_engine_error_with_an_alert() {
    let (mut client, mut server) = pair();
    handshake(&mut client, &mut server);
    let mut plaintext = Vec::new();
    let fed = server.feed(b"\x17\x03\x03\x00\x10garbage-garbage!", &mut plaintext);
    let e = fed.error.expect("an error");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(matches!(TlsError::of(&e), Some(TlsError::Engine(_))), "{e}");
    assert!(plaintext.is_empty());
    assert!(server.take_output().unwrap().is_some(), "an alert to send");
}

#[test]
fn plaintext_injected_before_the_handshake_fails_it() {
    // T3: a STARTTLS server must never take plaintext as TLS.
    let (_, mut server) = pair();
    let mut plaintext = Vec::new();
    let fed = server.feed(b"EHLO injected\r\n", &mut plaintext);
    let e = fed.error.expect("an error");
    assert!(matches!(TlsError::of(&e), Some(TlsError::Engine(_))), "{e}");
    assert!(plaintext.is_empty() && server.is_handshaking());
}

/// Several records fed at once come out as one plaintext buffer (up to
/// 64 KiB), not one per record: delivery then hands them over without
/// copying them together. Every byte comes out once, in order.
#[test]
fn records_fed_together_come_out_in_one_buffer() {
    let (mut client, mut server) = pair();
    handshake(&mut client, &mut server);
    let data: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
    let mut queue = SendQueue::default();
    queue.push(Bytes::from(data.clone()));
    encrypt_all(&mut client, &mut queue);
    let ciphertext = client.take_output().unwrap().unwrap();
    let mut plaintext = vec![b"held before".to_vec()];
    let fed = server.feed(&ciphertext, &mut plaintext);
    assert!(fed.error.is_none(), "{:?}", fed.error);
    assert_eq!(plaintext[0], b"held before", "earlier buffers untouched");
    let sizes: Vec<usize> = plaintext[1..].iter().map(Vec::len).collect();
    assert_eq!(plaintext[1..].concat(), data);
    assert_eq!(
        sizes.len(),
        2,
        "7 records of 16 KiB in buffers of {sizes:?}"
    );
    assert!(sizes[0] <= 64 * 1024, "{sizes:?}");
}
