//! The security choice, made once: plain, TLS from the first byte, or a
//! plaintext STARTTLS exchange and then TLS. The commands build a
//! [`Security`] from their flags and let it start the echo server or the
//! client; nothing else matches on the three cases.
//!
//! `echo` speaks TLS when given a certificate and key (`--starttls` upgrades
//! after a plaintext line exchange instead); `race --tls`/`--starttls` use a
//! throwaway self-signed certificate (rcgen) unless files are given.

use std::future::Future;
use std::io;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use proactor::tls::dangerous::client_config_no_verification;
use proactor::tls::{
    client_config_webpki, client_config_with_ca_file, client_config_with_ca_pem,
    server_config_from_pem, server_config_from_pem_files,
};
use proactor::{Address, AnyProtocol, Handle, Server, TlsOptions, Transport};
use rustls::{ClientConfig, ServerConfig};

use crate::args::{EchoArgs, RaceArgs, TlsArgs};
use crate::failure::Failure;
use crate::protocols::starttls::OnFailure;
use crate::protocols::{EchoCounters, EchoProtocol, StarttlsClient, StarttlsEcho};

/// Names the throwaway certificate is valid for: the loop-back race connects
/// to "localhost".
const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// How one side's bytes travel, with that side's TLS settings.
#[derive(Debug, Clone)]
pub enum Security {
    Plain,
    /// TLS from the first byte.
    Tls(TlsOptions),
    /// A plaintext line exchange, STARTTLS/READY, then TLS.
    Starttls(TlsOptions),
}

impl Security {
    pub fn label(&self) -> &'static str {
        match self {
            Security::Plain => "plain",
            Security::Tls(_) => "tls",
            Security::Starttls(_) => "starttls",
        }
    }

    /// Serves the echo on `addr` (server settings).
    pub fn serve_echo(
        &self,
        h: &Handle,
        addr: Address,
        counters: Rc<EchoCounters>,
    ) -> Result<Server, Failure> {
        let listening = match self {
            Security::Plain => {
                h.create_server(addr.clone(), move || EchoProtocol::new(counters.clone()))
            }
            Security::Tls(options) => h.create_tls_server(
                addr.clone(),
                move || EchoProtocol::new(counters.clone()),
                options.clone(),
            ),
            Security::Starttls(options) => {
                let options = options.clone();
                h.create_server(addr.clone(), move || {
                    StarttlsEcho::new(counters.clone(), options.clone())
                })
            }
        };
        listening.map_err(|e| Failure::setup(format!("cannot listen on {addr}: {e}")))
    }

    /// Connects to `addr` and runs `app` (client settings). The future ends
    /// with the connection (for STARTTLS, the plaintext one); what fails
    /// later in the STARTTLS exchange or its handshake goes to `on_failure`.
    pub fn connect(
        &self,
        h: &Handle,
        addr: Address,
        app: AnyProtocol,
        on_failure: OnFailure,
    ) -> impl Future<Output = io::Result<Transport>> + 'static {
        let h = h.clone();
        let security = self.clone();
        async move {
            match security {
                Security::Plain => h.create_connection(addr, app).await,
                Security::Tls(options) => h.create_tls_connection(addr, app, options).await,
                Security::Starttls(options) => {
                    let client = StarttlsClient::new(app, options, on_failure);
                    h.create_connection(addr, client).await
                }
            }
        }
    }
}

/// Both ends of a race.
#[derive(Debug, Clone)]
pub struct RaceSecurity {
    pub client: Security,
    /// The loop-back echo server's; `None` with `--connect` (the server is
    /// someone else's).
    pub server: Option<Security>,
}

impl RaceSecurity {
    pub fn label(&self) -> &'static str {
        self.client.label()
    }

    /// From `race`'s flags.
    pub fn from_args(args: &RaceArgs) -> Result<RaceSecurity, Failure> {
        if !args.tls && !args.starttls {
            if args.tls_files.any() {
                return Err(Failure::setup(
                    "--tls-cert/--tls-key/--tls-ca/--insecure need --tls or --starttls",
                ));
            }
            return Ok(RaceSecurity {
                client: Security::Plain,
                server: args.connect.is_none().then_some(Security::Plain),
            });
        }
        check_files(&args.tls_files)?;
        let loopback = args.connect.is_none();
        // With --connect the server is remote: no certificate to make.
        let (server, generated) = if loopback {
            let (config, generated) = server_config(&args.tls_files)?;
            (Some(TlsOptions::server(config)), generated)
        } else {
            (None, None)
        };
        let client = client_config(&args.tls_files, generated.as_deref(), loopback)?;
        let name = match &args.connect {
            Some(Address::Inet(a)) => a.ip().to_string(),
            _ => "localhost".to_string(),
        };
        let client = TlsOptions::client(client, &name)
            .map_err(setup_err("server name"))?
            .call_connection_made(args.starttls);
        let side = |options| {
            if args.tls {
                Security::Tls(options)
            } else {
                Security::Starttls(options)
            }
        };
        Ok(RaceSecurity {
            client: side(client),
            server: server.map(side),
        })
    }
}

/// The echo server's, from `echo`'s flags.
pub fn echo_server(args: &EchoArgs) -> Result<Security, Failure> {
    let files = &args.tls;
    if !args.starttls && !files.any() {
        return Ok(Security::Plain);
    }
    if files.tls_cert.is_none() {
        return Err(Failure::setup(
            "a TLS or STARTTLS echo server needs --tls-cert and --tls-key",
        ));
    }
    check_files(files)?;
    let (config, _) = server_config(files)?;
    let options = TlsOptions::server(config);
    Ok(if args.starttls {
        Security::Starttls(options)
    } else {
        Security::Tls(options)
    })
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
fn self_signed(names: &[&str]) -> io::Result<(String, String)> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).map_err(io::Error::other)?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}

fn setup_err(what: &str) -> impl Fn(io::Error) -> Failure + '_ {
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
        return client_config_no_verification().map_err(setup_err("--insecure"));
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
