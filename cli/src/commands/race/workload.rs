//! One race on one loop: an echo server (unless `--connect`) and N clients,
//! run to completion or to the timeout.

use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use indicatif::ProgressBar;
use proactor::{Address, DriverKind, DriverStats, EventLoop, RunError, Server};

use super::client::{Client, ClientReport, Plan, Shared};
use crate::args::RaceArgs;
use crate::failure::Failure;
use crate::protocols::starttls::OnFailure;
use crate::protocols::EchoCounters;
use crate::security::RaceSecurity;

/// How long the server may take to release its connections after the race.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What one race on one loop produced.
#[derive(Debug)]
pub struct Outcome {
    pub driver: DriverKind,
    pub clients: Vec<ClientReport>,
    /// Bytes the loop-back echo server wrote back (None with `--connect`).
    pub server_echoed: Option<u64>,
    pub seconds: f64,
    /// A failure of the run as a whole (timeout, loop error).
    pub error: Option<String>,
    pub stats: DriverStats,
}

impl Outcome {
    pub fn errors(&self) -> impl Iterator<Item = String> + '_ {
        let run = self.error.iter().cloned();
        let clients = self
            .clients
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.error.as_ref().map(|e| format!("client {i}: {e}")));
        run.chain(clients)
    }
}

/// Plans of the clients: client `i` uses pattern seed `seed + i`, so bytes
/// delivered to the wrong connection fail verification too.
pub fn plans(args: &RaceArgs) -> Vec<Plan> {
    (0..args.connections)
        .map(|i| Plan {
            packets: args.packets,
            size: args.size,
            seed: args.pattern_seed.wrapping_add(i),
            pause_every: (!args.pause_every.is_zero()).then_some(args.pause_every),
        })
        .collect()
}

/// Runs the race on `event_loop`. Fails only for set-up errors (cannot listen);
/// everything that goes wrong during the run is in the [`Outcome`].
pub fn run(
    event_loop: &EventLoop,
    args: &RaceArgs,
    security: &RaceSecurity,
    bar: Option<&ProgressBar>,
) -> Result<Outcome, Failure> {
    let h = event_loop.handle();
    let counters = Rc::new(EchoCounters::default());
    let (server, addr): (Option<Server>, Address) = match (&security.server, &args.connect) {
        (Some(server_security), _) => {
            let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
            let s = server_security.serve_echo(&h, loopback.into(), counters.clone())?;
            let addr = s.local_addr();
            (Some(s), addr)
        }
        (None, Some(a)) => (None, a.clone()),
        (None, None) => return Err(Failure::setup("a race needs a server or --connect")),
    };

    let (clients, done): (Vec<Shared>, Vec<_>) = plans(args)
        .into_iter()
        .map(|p| Client::new(p, bar.cloned()))
        .unzip();

    let start = Instant::now();
    let timeout = h.call_later(Duration::from_secs(args.timeout), {
        let h = h.clone();
        move || h.stop()
    });
    let race = {
        let h = h.clone();
        let clients = clients.clone();
        let connects: Vec<_> = clients
            .iter()
            .map(|c| {
                let failed = c.clone();
                let on_failure: OnFailure = Rc::new(move |why| failed.borrow_mut().fail(why));
                let app = Client::protocol(c).into();
                security.client.connect(&h, addr.clone(), app, on_failure)
            })
            .collect();
        async move {
            let results = join_all(connects).await;
            for (c, r) in clients.iter().zip(results) {
                if let Err(e) = r {
                    c.borrow_mut()
                        .fail(format!("cannot connect to {addr}: {e}"));
                }
            }
            for rx in done {
                // A dropped sender means the client is gone: nothing to wait for.
                let _ = rx.await;
            }
        }
    };
    let result = event_loop.run_until_complete(race);
    let seconds = start.elapsed().as_secs_f64();
    timeout.cancel();
    let error = match result {
        Ok(()) => None,
        Err(RunError::Stopped) => Some(format!("timed out after {} s", args.timeout)),
        Err(e) => Some(e.to_string()),
    };
    if let Some(s) = &server {
        shut_down(event_loop, s);
    }
    Ok(Outcome {
        driver: h.driver_kind(),
        clients: clients.iter().map(|c| c.borrow().report()).collect(),
        server_echoed: server.map(|_| counters.echoed.get()),
        seconds,
        error,
        stats: h.driver_stats(),
    })
}

/// Closes the server and lets its connections finish, within a grace period,
/// so the driver's counters are final and nothing is left in flight.
fn shut_down(event_loop: &EventLoop, server: &Server) {
    let h = event_loop.handle();
    server.close();
    server.close_clients();
    let grace = h.call_later(SHUTDOWN_GRACE, {
        let h = h.clone();
        move || h.stop()
    });
    if event_loop.run_until_complete(server.wait_closed()).is_err() {
        tracing::warn!("the echo server did not release its connections within {SHUTDOWN_GRACE:?}");
    }
    grace.cancel();
}
