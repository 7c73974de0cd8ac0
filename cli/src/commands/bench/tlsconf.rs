//! One TLS setting for every TLS server and the client: rustls 0.23 (the
//! single copy linked into this binary, which proactor uses too) with the
//! `ring` provider, TLS 1.3 only, one cipher suite forced on both ends, and
//! a throwaway self-signed certificate the client trusts.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::{ring, CryptoProvider};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The only suite either end offers.
pub const SUITE: &str = "TLS13_AES_128_GCM_SHA256";

/// The ring provider with its suites cut down to [`SUITE`].
fn provider() -> Arc<CryptoProvider> {
    let mut p = ring::default_provider();
    p.cipher_suites = vec![ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    Arc::new(p)
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

/// The server config every TLS server of the bench uses.
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> io::Result<Arc<ServerConfig>> {
    let certs = proactor::tls::certs_from_pem(cert_pem)?;
    let key = proactor::tls::key_from_pem(key_pem)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(invalid)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(invalid)?;
    Ok(Arc::new(config))
}

/// [`server_config`] from the files a parent wrote.
pub fn server_config_from_files(cert: &Path, key: &Path) -> io::Result<Arc<ServerConfig>> {
    server_config(&std::fs::read(cert)?, &std::fs::read(key)?)
}

/// The client config: trusts exactly `ca_pem`, offers only [`SUITE`].
pub fn client_config(ca_pem: &[u8]) -> io::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(proactor::tls::certs_from_pem(ca_pem)?);
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(invalid)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A self-signed certificate for "localhost", written to a private
/// directory for the server processes; removed on drop.
#[derive(Debug)]
pub struct Material {
    pub cert_pem: String,
    pub dir: PathBuf,
}

impl Material {
    pub fn generate() -> io::Result<Material> {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let ck = rcgen::generate_simple_self_signed(names).map_err(io::Error::other)?;
        let dir = std::env::temp_dir().join(format!("proactor-bench-{}", std::process::id()));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let cert_pem = ck.cert.pem();
        std::fs::write(dir.join("cert.pem"), &cert_pem)?;
        std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem())?;
        Ok(Material { cert_pem, dir })
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
}

impl Drop for Material {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
