//! What the server tells the world about itself: counters ([`stats`]), the report lines
//! they are shown in (`report`), and systemd's notifications (`notify`), with the one
//! schedule they share (periodic stats lines and watchdog pings).

pub mod exposition;
pub(crate) mod notify;
pub mod process;
pub(crate) mod report;
pub mod stats;

use std::time::{Duration, Instant};

use log::info;

use crate::config::Config;
use notify::Notifier;
pub(crate) use report::Serves;
use report::{print_json, status_line, text_line};
use stats::Stats;

/// Reports, notifications and their schedule.
pub(crate) struct Telemetry {
    /// systemd's notification socket, when started by systemd (`NOTIFY_SOCKET`).
    notifier: Option<Notifier>,
    /// `--stats-interval` (`None`: only at exit and on SIGUSR1).
    stats_interval: Option<Duration>,
    /// When the next periodic stats line is due.
    next_stats_at: Option<Instant>,
    /// `--stats-json`: reports go to stdout as JSON instead of to the log.
    json: bool,
    /// What the server serves, so the log line leaves out what cannot happen.
    serves: Serves,
}

impl Telemetry {
    pub(crate) fn new(config: &Config, serves: Serves, now: Instant) -> Telemetry {
        Telemetry {
            notifier: if config.systemd_notify {
                Notifier::from_env(now)
            } else {
                None
            },
            stats_interval: config.stats_interval,
            next_stats_at: config.stats_interval.map(|every| now + every),
            json: config.stats_json,
            serves,
        }
    }

    /// The nearest of the next stats line and the next watchdog ping.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let watchdog = self.notifier.as_ref().and_then(|n| n.next_watchdog_at);
        self.next_stats_at.into_iter().chain(watchdog).min()
    }

    /// Every socket is bound and listening (clients may already be queueing): `READY=1`.
    pub(crate) fn ready(&mut self, sockets: usize) {
        if let Some(notifier) = self.notifier.as_mut() {
            notifier.ready(&format!("serving on {sockets} sockets"));
        }
    }

    /// A graceful stop has begun: said in the log and to systemd.
    pub(crate) fn stopping(&mut self, why: &str) {
        info!("{why}");
        if let Some(notifier) = self.notifier.as_mut() {
            notifier.stopping(why);
        }
    }

    /// Sends the watchdog ping if due (from the loop itself: if the loop wedges, the pings
    /// stop and systemd acts). True if a periodic stats line is due now.
    pub(crate) fn tick(&mut self, now: Instant, stats: &Stats, open: usize) -> bool {
        if let Some(notifier) = self.notifier.as_mut() {
            notifier.watchdog_if_due(now, || status_line(stats, open));
        }
        let (Some(at), Some(every)) = (self.next_stats_at, self.stats_interval) else {
            return false;
        };
        if at > now {
            return false;
        }
        // Skip ticks missed while busy rather than firing them all at once.
        let next = at + every;
        self.next_stats_at = Some(if next > now { next } else { now + every });
        true
    }

    /// One report: `label key=value …` in the log, or with `--stats-json` a bare JSON
    /// object on stdout, so scripts need no log parsing.
    pub(crate) fn report(&self, label: &str, stats: &Stats) {
        if self.json {
            print_json(stats);
        } else {
            info!("{label} {}", text_line(stats, self.serves));
        }
    }

    /// A report that also refreshes what `systemctl status` shows.
    pub(crate) fn report_and_status(&mut self, label: &str, stats: &Stats, open: usize) {
        self.report(label, stats);
        if let Some(notifier) = self.notifier.as_mut() {
            notifier.status(&status_line(stats, open));
        }
    }
}
