//! TLS options of `race` and `echo`, over `proactor::tls`.
//!
//! `echo` speaks TLS when given a certificate and key (`--starttls` upgrades
//! after a plaintext line exchange instead); `race --tls`/`--starttls` use a
//! throwaway self-signed certificate (rcgen) unless files are given.

use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use proactor::tls::{
    client_config_insecure, client_config_webpki, client_config_with_ca_file,
    client_config_with_ca_pem, server_config_from_pem, server_config_from_pem_files,
};
use proactor::{Address, Handle, Server, TlsOptions};
use rustls::{ClientConfig, ServerConfig};

use crate::cli::{RaceArgs, TlsArgs};
use crate::echo::{EchoCounters, EchoProtocol};
use crate::starttls::StarttlsEcho;
use crate::Failure;

/// Names the throwaway certificate is valid for: the loop-back race connects
/// to "localhost".
const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// How the race's bytes travel.
#[derive(Debug, Clone)]
pub enum Security {
    Plain,
    /// TLS from the first byte.
    Tls(TlsPair),
    /// A plaintext line exchange, STARTTLS/READY, then TLS.
    Starttls(TlsPair),
}

/// Both sides' settings (the server's is unused with `--connect`).
#[derive(Debug, Clone)]
pub struct TlsPair {
    pub server: TlsOptions,
    pub client: TlsOptions,
}

impl Security {
    pub fn label(&self) -> &'static str {
        match self {
            Security::Plain => "plain",
            Security::Tls(_) => "tls",
            Security::Starttls(_) => "starttls",
        }
    }
}

fn check_readable(flag: &str, path: &Path) -> Result<(), Failure> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|e| Failure::setup(format!("{flag} {}: {e}", path.display())))
}

fn check_files(args: &TlsArgs) -> Result<(), Failure> {
    if args.tls_cert.is_some() != args.tls_key.is_some() {
        return Err(Failure::setup("--tls-cert and --tls-key go together"));
    }
    for (flag, p) in [
        ("--tls-cert", &args.tls_cert),
        ("--tls-key", &args.tls_key),
        ("--tls-ca", &args.tls_ca),
    ] {
        if let Some(p) = p {
            check_readable(flag, p)?;
        }
    }
    Ok(())
}

/// A throwaway certificate for `names`, as `(certificate PEM, key PEM)`;
/// it is its own CA.
fn self_signed(names: &[&str]) -> std::io::Result<(String, String)> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).map_err(std::io::Error::other)?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}

fn setup_err(what: &str) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::setup(format!("{what}: {e}"))
}

/// The server config from --tls-cert/--tls-key, or a fresh self-signed one
/// (returned with its certificate PEM, which the client then trusts).
fn server_config(args: &TlsArgs) -> Result<(Arc<ServerConfig>, Option<String>), Failure> {
    match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Ok((
            server_config_from_pem_files(c, k).map_err(setup_err("--tls-cert/--tls-key"))?,
            None,
        )),
        _ => {
            let (cert, key) = self_signed(&SELF_SIGNED_NAMES)
                .map_err(setup_err("cannot generate a certificate"))?;
            let config = server_config_from_pem(cert.as_bytes(), key.as_bytes())
                .map_err(setup_err("the generated certificate"))?;
            Ok((config, Some(cert)))
        }
    }
}

/// Whom the client trusts: --insecure, --tls-ca, the generated certificate,
/// the given certificate itself (self-signed, loop-back), or webpki roots.
fn client_config(
    args: &TlsArgs,
    generated: Option<&str>,
    loopback: bool,
) -> Result<Arc<ClientConfig>, Failure> {
    if args.insecure {
        return client_config_insecure().map_err(setup_err("--insecure"));
    }
    if let Some(ca) = &args.tls_ca {
        return client_config_with_ca_file(ca).map_err(setup_err("--tls-ca"));
    }
    if let Some(pem) = generated {
        return client_config_with_ca_pem(pem.as_bytes())
            .map_err(setup_err("the generated certificate"));
    }
    match (&args.tls_cert, loopback) {
        (Some(cert), true) => client_config_with_ca_file(cert).map_err(setup_err(
            "--tls-cert (trusted as its own CA; give --tls-ca otherwise)",
        )),
        _ => client_config_webpki().map_err(setup_err("webpki roots")),
    }
}

/// Which security the race runs with, and its TLS settings.
pub fn race_security(args: &RaceArgs) -> Result<Security, Failure> {
    if !args.tls && !args.starttls {
        if args.tls_files.any() {
            return Err(Failure::setup(
                "--tls-cert/--tls-key/--tls-ca/--insecure need --tls or --starttls",
            ));
        }
        return Ok(Security::Plain);
    }
    check_files(&args.tls_files)?;
    let loopback = args.connect.is_none();
    // With --connect the server is remote: no certificate to make.
    let (server, generated) = if loopback {
        server_config(&args.tls_files)?
    } else {
        (server_config_placeholder()?, None)
    };
    let client = client_config(&args.tls_files, generated.as_deref(), loopback)?;
    let name = match &args.connect {
        Some(Address::Inet(a)) => a.ip().to_string(),
        _ => "localhost".to_string(),
    };
    let pair = TlsPair {
        server: TlsOptions::server(server),
        client: TlsOptions::client(client, &name)
            .map_err(setup_err("server name"))?
            .call_connection_made(args.starttls),
    };
    Ok(if args.tls {
        Security::Tls(pair)
    } else {
        Security::Starttls(pair)
    })
}

/// A server config for the unused server side of `--connect` runs.
fn server_config_placeholder() -> Result<Arc<ServerConfig>, Failure> {
    server_config(&TlsArgs::default()).map(|(c, _)| c)
}

/// The TLS settings of an echo server.
#[derive(Debug)]
pub struct ServerTls {
    options: TlsOptions,
}

impl ServerTls {
    /// `None` for a plaintext server.
    pub fn from_args(args: &TlsArgs, starttls: bool) -> Result<Option<ServerTls>, Failure> {
        if !starttls && !args.any() {
            return Ok(None);
        }
        if args.tls_cert.is_none() {
            return Err(Failure::setup(
                "a TLS or STARTTLS echo server needs --tls-cert and --tls-key",
            ));
        }
        check_files(args)?;
        let (config, _) = server_config(args)?;
        Ok(Some(ServerTls {
            options: TlsOptions::server(config),
        }))
    }

    /// Serves the echo on `addr`: TLS from the first byte, or line echo until
    /// STARTTLS.
    pub fn serve(
        &self,
        h: &Handle,
        addr: Address,
        counters: Rc<EchoCounters>,
        starttls: bool,
    ) -> Result<Server, Failure> {
        let options = self.options.clone();
        let listen_err = |e| Failure::setup(format!("cannot listen on {addr}: {e}"));
        if starttls {
            h.create_server(addr.clone(), move || {
                StarttlsEcho::new(counters.clone(), options.clone())
            })
            .map_err(listen_err)
        } else {
            h.create_tls_server(
                addr.clone(),
                move || EchoProtocol::new(counters.clone()),
                options,
            )
            .map_err(listen_err)
        }
    }
}
