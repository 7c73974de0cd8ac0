//! Medians and spreads over rounds, and the meter that brackets the measured
//! window of one run (wall time, client and server CPU).

use std::time::Instant;

use super::sys;

/// Median and range of one figure over the rounds.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// `None` when no value is finite.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// The value at quantile `q` of sorted `sorted`, or NaN when empty.
pub fn quantile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64
}

/// What one run of one server in one cell measured.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Round trips per second (echo) or payload bytes echoed per second (bulk).
    pub value: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Share of one CPU the server process used in the window (NaN unknown).
    pub server_cpu: f64,
    /// Share of one CPU the client thread used in the window.
    pub client_cpu: f64,
    /// Wall time of the whole run: set-up, warm-up, window, tear-down.
    pub wall_s: f64,
}

/// Brackets the measured window: its start and end instants with the CPU
/// time of the client thread and of the server at both ends.
pub struct Meter<'a> {
    server_cpu: &'a dyn Fn() -> f64,
    start: Option<(Instant, f64, f64)>,
    end: Option<(Instant, f64, f64)>,
}

impl std::fmt::Debug for Meter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter").finish_non_exhaustive()
    }
}

impl Measured {
    /// Server CPU microseconds per unit of the figure (per round trip for
    /// an echo, the same as CPU milliseconds per 1,000 round trips): what
    /// the server spent on each, whichever side limited the rate. NaN when
    /// the server's CPU time is unknown or nothing completed. The server's
    /// CPU time comes from `/proc/PID/stat` in clock ticks (10 ms), about
    /// 1% of a 1 s window.
    pub fn server_us_per_unit(&self) -> f64 {
        if self.value > 0.0 && self.server_cpu.is_finite() {
            self.server_cpu / self.value * 1e6
        } else {
            f64::NAN
        }
    }
}

impl<'a> Meter<'a> {
    /// `server_cpu` returns the server's CPU seconds so far (NaN unknown).
    pub fn new(server_cpu: &'a dyn Fn() -> f64) -> Self {
        Meter {
            server_cpu,
            start: None,
            end: None,
        }
    }

    fn now(&self) -> (Instant, f64, f64) {
        (
            Instant::now(),
            sys::thread_cpu_seconds(),
            (self.server_cpu)(),
        )
    }

    pub fn started(&self) -> bool {
        self.start.is_some()
    }

    pub fn stopped(&self) -> bool {
        self.end.is_some()
    }

    pub fn start(&mut self) {
        if self.start.is_none() {
            self.start = Some(self.now());
        }
    }

    pub fn stop(&mut self) {
        if self.start.is_some() && self.end.is_none() {
            self.end = Some(self.now());
        }
    }

    /// Seconds between start and stop (0 if the window never closed).
    pub fn seconds(&self) -> f64 {
        match (self.start, self.end) {
            (Some(s), Some(e)) => (e.0 - s.0).as_secs_f64(),
            _ => 0.0,
        }
    }

    /// The figures of a window in which `count` units (round trips or
    /// bytes) completed, with `latencies_ns` sorted.
    pub fn measured(&self, count: u64, latencies_ns: &[u64]) -> Measured {
        let secs = self.seconds();
        let share = |i: usize| match (self.start, self.end) {
            (Some(s), Some(e)) if secs > 0.0 => {
                let (a, b) = if i == 1 { (s.1, e.1) } else { (s.2, e.2) };
                (b - a) / secs
            }
            _ => f64::NAN,
        };
        Measured {
            value: if secs > 0.0 { count as f64 / secs } else { 0.0 },
            p50_us: quantile(latencies_ns, 0.50) / 1000.0,
            p99_us: quantile(latencies_ns, 0.99) / 1000.0,
            server_cpu: share(2),
            client_cpu: share(1),
            wall_s: f64::NAN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ranges() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Summary::of(&[4.0, 1.0, 2.0, 3.0, f64::NAN]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Summary::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn quantiles() {
        assert!(quantile(&[], 0.5).is_nan());
        assert_eq!(quantile(&[1, 2, 3, 4, 5], 0.5), 3.0);
        assert_eq!(quantile(&[1, 2, 3, 4, 5], 0.99), 5.0);
    }
}
