//! Building rustls configurations: webpki roots, a CA from PEM, server
//! certificates from PEM. The opt-out of verification lives apart, in
//! [`dangerous`](super::dangerous).
//!
//! Every builder uses the `ring` provider explicitly, so nothing depends on a
//! process-wide default provider being installed.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The crypto provider every config here uses (`ring`).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(what: impl fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

pub(super) fn client_builder(
) -> io::Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid)
}

fn server_builder() -> io::Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>> {
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid)
}

/// A client config that trusts the Mozilla root set (`webpki-roots`).
///
/// # Errors
/// The provider supports none of the default protocol versions (not the
/// case for `ring`; the builders return errors rather than assume it).
pub fn client_config_webpki() -> io::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    Ok(Arc::new(
        client_builder()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// A client config that trusts exactly the CA certificates in `ca_pem`.
///
/// # Errors
/// `ca_pem` is not PEM, or holds no usable CA certificate (`InvalidInput`).
pub fn client_config_with_ca_pem(ca_pem: &[u8]) -> io::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    let certs = certs_from_pem(ca_pem)?;
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(invalid("no usable CA certificate in the PEM data"));
    }
    Ok(Arc::new(
        client_builder()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// [`client_config_with_ca_pem`] reading the PEM from a file.
///
/// # Errors
/// The file cannot be read (the error names it), or as
/// [`client_config_with_ca_pem`].
pub fn client_config_with_ca_file(path: impl AsRef<Path>) -> io::Result<Arc<ClientConfig>> {
    client_config_with_ca_pem(&read(path.as_ref())?)
}

/// A server config from a certificate chain and a private key, both PEM.
///
/// # Errors
/// No certificate or no private key in the PEM data, or a key that does not
/// suit the certificate or the provider (`InvalidInput`).
pub fn server_config_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> io::Result<Arc<ServerConfig>> {
    let certs = certs_from_pem(cert_pem)?;
    if certs.is_empty() {
        return Err(invalid("no certificate in the PEM data"));
    }
    let key = key_from_pem(key_pem)?;
    Ok(Arc::new(
        server_builder()?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(invalid)?,
    ))
}

/// [`server_config_from_pem`] reading both PEM files.
///
/// # Errors
/// A file cannot be read (the error names it), or as
/// [`server_config_from_pem`].
pub fn server_config_from_pem_files(
    cert_path: impl AsRef<Path>,
    key_path: impl AsRef<Path>,
) -> io::Result<Arc<ServerConfig>> {
    server_config_from_pem(&read(cert_path.as_ref())?, &read(key_path.as_ref())?)
}

/// The certificates in `pem` (DER), in order.
///
/// # Errors
/// A certificate section of `pem` is malformed.
pub fn certs_from_pem(pem: &[u8]) -> io::Result<Vec<CertificateDer<'static>>> {
    rustls_pemfile::certs(&mut &pem[..]).collect()
}

/// The first private key in `pem` (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
/// `pem` holds no private key (`InvalidInput`), or a malformed section.
pub fn key_from_pem(pem: &[u8]) -> io::Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut &pem[..])?
        .ok_or_else(|| invalid("no private key in the PEM data"))
}

fn read(path: &Path) -> io::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// `(certificate PEM, key PEM)`, self-signed, for unit tests (rcgen is a
/// dev-dependency).
#[cfg(test)]
pub(crate) fn self_signed(names: &[&str]) -> (String, String) {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_round_trips_through_the_config_builders() {
        let (cert, key) = self_signed(&["localhost", "127.0.0.1"]);
        assert!(cert.contains("BEGIN CERTIFICATE"));
        server_config_from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        client_config_with_ca_pem(cert.as_bytes()).unwrap();
        client_config_webpki().unwrap();
    }

    #[test]
    fn bad_pem_is_an_error_not_a_panic() {
        assert!(server_config_from_pem(b"nope", b"nope").is_err());
        assert!(client_config_with_ca_pem(b"").is_err());
        let (cert, _) = self_signed(&["localhost"]);
        assert!(server_config_from_pem(cert.as_bytes(), b"").is_err());
    }
}
