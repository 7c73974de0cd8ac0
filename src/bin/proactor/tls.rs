//! TLS options of `race` and `echo`.
//!
//! The flags are parsed and checked here so their rules do not change when
//! the `proactor::tls` layer lands: `echo` speaks TLS when given a
//! certificate and key (`--starttls` upgrades after a plaintext line
//! exchange instead); `race --tls`/`--starttls` use a throwaway self-signed
//! certificate unless files are given.
//!
//! Until `proactor::tls` is on this branch, every TLS request ends with a
//! clear "not available" error rather than a silent plaintext run.

use std::path::Path;
use std::rc::Rc;

use proactor::{Address, Handle, Server};

use crate::cli::{RaceArgs, TlsArgs};
use crate::echo::EchoCounters;
use crate::Failure;

fn unavailable(what: &str) -> Failure {
    Failure::setup(format!(
        "{what} needs the proactor::tls layer, which is not in this build yet"
    ))
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

/// Which security the race runs with: `plain`, `tls` or `starttls`.
pub fn race_security(args: &RaceArgs) -> Result<&'static str, Failure> {
    if !args.tls && !args.starttls {
        if args.tls_files.any() {
            return Err(Failure::setup(
                "--tls-cert/--tls-key/--tls-ca/--insecure need --tls or --starttls",
            ));
        }
        return Ok("plain");
    }
    check_files(&args.tls_files)?;
    Err(unavailable(if args.tls {
        "race --tls"
    } else {
        "race --starttls"
    }))
}

/// The TLS settings of an echo server.
#[derive(Debug)]
pub struct ServerTls {
    _private: (),
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
        Err(unavailable(if starttls {
            "echo --starttls"
        } else {
            "a TLS echo server"
        }))
    }

    /// Serves the (STARTTLS) echo on `addr`.
    pub fn serve(
        &self,
        _h: &Handle,
        _addr: Address,
        _counters: Rc<EchoCounters>,
        _starttls: bool,
    ) -> Result<Server, Failure> {
        Err(unavailable("a TLS echo server"))
    }
}
