//! `proactor echo`: an echo server (plain, TLS or STARTTLS) until killed.

use std::io::Write;
use std::rc::Rc;

use crate::args::EchoArgs;
use crate::failure::{build_loop, Failure};
use crate::protocols::EchoCounters;
use crate::security::{self, Security};

pub fn run(args: &EchoArgs) -> Result<(), Failure> {
    let security = security::echo_server(args)?;
    let event_loop = build_loop(args.driver, None)?;
    let h = event_loop.handle();
    let counters = Rc::new(EchoCounters::default());
    let server = security.serve_echo(&h, args.listen.clone(), counters)?;
    let mode = match security {
        Security::Plain => String::new(),
        _ => format!(", {}", security.label().to_ascii_uppercase()),
    };
    println!(
        "proactor echo: listening on {} (driver {}{mode})",
        server.local_addr(),
        h.driver_kind(),
    );
    // Scripts wait for the line above before connecting.
    let _ = std::io::stdout().flush();
    event_loop
        .run_forever()
        .map_err(|e| Failure::run(format!("event loop failed: {e}")))
}
