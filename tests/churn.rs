//! 10,000 connections opened and closed leave file descriptors and the
//! loop's internal tables at their starting size (W3, O3: nothing outlives
//! its connection). Runs on uring, poll and sim (one seed: it is long;
//! `PROACTOR_SIM_SEEDS` and `PROACTOR_SIM_SEED_BASE` choose others).

mod util;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use proactor::{BaseProtocol, EventLoop, Protocol, Transport};
use util::*;

/// Client side: send a line, close when the echo is back.
struct Once {
    t: Option<Transport>,
    got: usize,
    done: Rc<Cell<usize>>,
    /// Connections that ended cleanly with their echo.
    ok: Rc<Cell<usize>>,
}
impl BaseProtocol for Once {
    fn connection_made(&mut self, t: Transport) {
        t.write(b"ping\n");
        self.t = Some(t);
    }
    fn connection_lost(&mut self, e: Option<std::io::Error>) {
        self.done.set(self.done.get() + 1);
        if e.is_none() && self.got == 5 {
            self.ok.set(self.ok.get() + 1);
        }
    }
}
impl Protocol for Once {
    fn data_received(&mut self, data: &[u8]) {
        self.got += data.len();
        if self.got >= 5 {
            if let Some(t) = &self.t {
                t.close();
            }
        }
    }
}

fn churn(lp: &EventLoop, total: usize, concurrency: usize) {
    let h = lp.handle();
    let fds_before = open_fds();
    let tables_before = h.table_sizes();
    let hh = h.clone();
    lp.run_until_complete(async move {
        let server = hh.create_server(localhost(), || Echo(None)).unwrap();
        let done = Rc::new(Cell::new(0usize));
        let ok = Rc::new(Cell::new(0usize));
        let mut started = 0usize;
        while done.get() < total {
            while started < total && started - done.get() < concurrency {
                let p = Once {
                    t: None,
                    got: 0,
                    done: done.clone(),
                    ok: ok.clone(),
                };
                let addr = server.local_addr();
                let hc = hh.clone();
                hh.spawn(async move { hc.create_connection(addr, p).await.expect("connect") });
                started += 1;
            }
            sleep(&hh, Duration::from_millis(1)).await;
        }
        server.close();
        wait_until(
            &hh,
            Duration::from_secs(30),
            "server and connections released",
            || server.active_connections() == 0 && server.is_closed(),
        )
        .await;
        server.wait_closed().await;
        assert_eq!(server.accepted(), total as u64);
        assert_eq!(
            ok.get(),
            total,
            "every connection got its echo and closed cleanly"
        );
        // The last completions (closes racing with accepts) drain.
        wait_until(
            &hh,
            Duration::from_secs(10),
            "ops and transports drained",
            || {
                let t = hh.table_sizes();
                (t.ops_in_flight, t.driver_in_flight, t.transports)
                    == (
                        tables_before.ops_in_flight,
                        tables_before.driver_in_flight,
                        tables_before.transports,
                    )
            },
        )
        .await;
    })
    .unwrap();
    assert_eq!(
        h.table_sizes(),
        tables_before,
        "loop tables back to their starting size"
    );
    assert_eq!(open_fds(), fds_before, "no file descriptor leaked");
}

#[test]
fn churn_10k_connections_leaves_no_trace() {
    let _fds = fd_count_lock();
    let plan = Plan {
        seeds: Seeds::Sweep(1),
        ..Plan::new("churn_10k_connections_leaves_no_trace")
    };
    matrix::run(plan, |lp| churn(&lp, 10_000, 64));
}
