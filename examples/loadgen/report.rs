//! The load generator's results: merged across threads, printed as a table or JSON.

use std::fmt::Write as _;
use std::time::Duration;

use crate::worker::Outcome;

pub struct Report {
    conns_requested: u64,
    size: usize,
    duration: Duration,
    idle: bool,
    /// `--churn`: the figures are per connection, not per message.
    pub churn: bool,
    /// `--udp`: messages are datagrams, connections are flows, and loss is reported.
    pub udp: bool,
    /// Every thread's counts, added up.
    totals: Outcome,
    /// Server CPU seconds used during the measured window.
    pub server_cpu_s: Option<f64>,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_loaded_kib: Option<u64>,
}

impl Report {
    pub fn new(conns_requested: u64, size: usize, duration: Duration, idle: bool) -> Report {
        Report {
            conns_requested,
            size,
            duration,
            idle,
            churn: false,
            udp: false,
            totals: Outcome::new(),
            server_cpu_s: None,
            server_rss_before_kib: None,
            server_rss_loaded_kib: None,
        }
    }

    pub fn add(&mut self, outcome: Outcome) {
        self.totals.merge(&outcome);
    }

    /// Errors of every kind after the connections were up.
    fn errors(&self) -> u64 {
        self.totals.mismatches + self.totals.resets + self.totals.eofs
    }

    /// No byte differed, nothing failed, and (idle) everyone answered.
    pub fn clean(&self) -> bool {
        self.errors() == 0
            && self.totals.connect_failures == 0
            && (!self.idle || self.totals.answered == self.conns_requested)
    }

    fn msgs_per_s(&self) -> f64 {
        self.totals.msgs as f64 / self.duration.as_secs_f64()
    }

    fn conns_per_s(&self) -> f64 {
        self.totals.cycles as f64 / self.duration.as_secs_f64()
    }

    /// A connect-latency percentile, in µs.
    fn connect_micros(&self, quantile: f64) -> f64 {
        if self.totals.connect_latency.is_empty() {
            return 0.0;
        }
        self.totals.connect_latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn cpu_us_per_conn(&self) -> Option<f64> {
        self.server_cpu_s
            .filter(|_| self.churn && self.totals.cycles > 0)
            .map(|cpu| cpu * 1e6 / self.totals.cycles as f64)
    }

    fn micros(&self, quantile: f64) -> f64 {
        if self.totals.latency.is_empty() {
            return 0.0;
        }
        self.totals.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn cpu_us_per_msg(&self) -> Option<f64> {
        let msgs = if self.idle {
            self.totals.answered
        } else {
            self.totals.msgs
        };
        self.server_cpu_s
            .filter(|_| msgs > 0)
            .map(|cpu| cpu * 1e6 / msgs as f64)
    }

    fn rss_per_conn_kib(&self) -> Option<f64> {
        match (self.server_rss_before_kib, self.server_rss_loaded_kib) {
            (Some(before), Some(loaded)) if self.totals.connected > 0 => {
                Some((loaded as f64 - before as f64) / self.totals.connected as f64)
            }
            _ => None,
        }
    }

    pub fn to_table(&self) -> String {
        let mut t = String::new();
        if self.churn {
            let _ = writeln!(
                t,
                "connections   {} made by {} slots ({} failed)",
                self.totals.connected, self.conns_requested, self.totals.connect_failures
            );
        } else {
            let _ = writeln!(
                t,
                "connections   {} up of {} ({} failed)",
                self.totals.connected, self.conns_requested, self.totals.connect_failures
            );
        }
        if self.idle {
            let _ = writeln!(
                t,
                "idle          held {:.1} s, then {} of {} answered a ping",
                self.duration.as_secs_f64(),
                self.totals.answered,
                self.totals.connected
            );
        } else {
            let _ = writeln!(
                t,
                "messages      {} of {} B in {:.1} s: {:.0} msgs/s, {:.2} MB/s",
                self.totals.msgs,
                self.size,
                self.duration.as_secs_f64(),
                self.msgs_per_s(),
                self.msgs_per_s() * self.size as f64 / 1e6
            );
        }
        if self.udp {
            let _ = writeln!(
                t,
                "datagrams     {} lost (not echoed within --udp-timeout)",
                self.totals.lost
            );
        }
        if self.churn {
            let _ = writeln!(
                t,
                "churn         {} connections opened, echoed and closed in {:.1} s: {:.0} conns/s",
                self.totals.cycles,
                self.duration.as_secs_f64(),
                self.conns_per_s()
            );
            let _ = writeln!(
                t,
                "connect µs    p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}",
                self.connect_micros(0.5),
                self.connect_micros(0.9),
                self.connect_micros(0.99),
                self.connect_micros(0.999)
            );
        }
        let _ = writeln!(
            t,
            "latency µs    p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            self.micros(0.5),
            self.micros(0.9),
            self.micros(0.99),
            self.micros(0.999),
            self.totals.latency.max() as f64 / 1000.0
        );
        let _ = writeln!(
            t,
            "errors        {} mismatched, {} reset, {} closed by server{}",
            self.totals.mismatches,
            self.totals.resets,
            self.totals.eofs,
            if self.totals.behind > 0 {
                format!(
                    ", {} paced messages never sent (pipeline full)",
                    self.totals.behind
                )
            } else {
                String::new()
            }
        );
        if !self.idle && !self.churn {
            // Whether the servers' replies had to wake the generator (none: --busy-poll).
            let _ = writeln!(t, "generator     slept {} times", self.totals.sleeps);
        }
        if let Some(cpu) = self.cpu_us_per_conn() {
            let _ = writeln!(t, "server CPU    {cpu:.2} µs per connection");
        } else if let Some(cpu) = self.cpu_us_per_msg() {
            let _ = writeln!(t, "server CPU    {cpu:.2} µs per message");
        }
        if let (Some(before), Some(loaded)) =
            (self.server_rss_before_kib, self.server_rss_loaded_kib)
        {
            let _ = writeln!(
                t,
                "server RSS    {before} KiB before, {loaded} KiB loaded, {:.3} KiB per connection",
                self.rss_per_conn_kib().unwrap_or(0.0)
            );
        }
        t
    }

    /// One JSON object (serde_json: nothing hand-escaped), figures to three decimals;
    /// a figure that could not be measured is `null`.
    pub fn to_json(&self) -> String {
        let num = |v: f64| (v * 1000.0).round() / 1000.0;
        let opt = |v: Option<f64>| v.map(num);
        serde_json::json!({
            "conns": self.totals.connected,
            "size": self.size,
            "duration_s": num(self.duration.as_secs_f64()),
            "msgs": self.totals.msgs,
            "msgs_per_s": num(self.msgs_per_s()),
            "mb_per_s": num(self.msgs_per_s() * self.size as f64 / 1e6),
            "p50_us": num(self.micros(0.5)),
            "p90_us": num(self.micros(0.9)),
            "p99_us": num(self.micros(0.99)),
            "p999_us": num(self.micros(0.999)),
            "max_us": num(self.totals.latency.max() as f64 / 1000.0),
            "errors": self.errors(),
            "connect_failures": self.totals.connect_failures,
            "mismatches": self.totals.mismatches,
            "resets": self.totals.resets,
            "eofs": self.totals.eofs,
            "answered": self.totals.answered,
            "behind": self.totals.behind,
            "server_cpu_us_per_msg": opt(self.cpu_us_per_msg()),
            "server_rss_before_kib": self.server_rss_before_kib,
            "server_rss_loaded_kib": self.server_rss_loaded_kib,
            "server_rss_per_conn_kib": opt(self.rss_per_conn_kib()),
            "churn": self.churn,
            "udp": self.udp,
            "lost": self.totals.lost,
            "cycles": self.totals.cycles,
            "loadgen_sleeps": self.totals.sleeps,
            "conns_per_s": num(self.conns_per_s()),
            "connect_p50_us": num(self.connect_micros(0.5)),
            "connect_p90_us": num(self.connect_micros(0.9)),
            "connect_p99_us": num(self.connect_micros(0.99)),
            "connect_p999_us": num(self.connect_micros(0.999)),
            "server_cpu_us_per_conn": opt(self.cpu_us_per_conn()),
        })
        .to_string()
    }
}
