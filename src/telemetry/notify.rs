//! Telling systemd how the service is doing (`sd_notify(3)`, through the `sd-notify` crate).
//!
//! | message | when | what systemd does with it |
//! |---|---|---|
//! | `READY=1` | every socket is bound, the loop is about to poll | a `Type=notify` unit counts as started; units ordered after it may start |
//! | `STATUS=…` | at start, with each watchdog ping and stats line, when stopping | shown by `systemctl status` |
//! | `WATCHDOG=1` | from the loop itself, every half `WATCHDOG_USEC` | with `WatchdogSec=`, a loop that stops turning is killed and restarted |
//! | `STOPPING=1` | when a graceful stop begins | the unit shows "deactivating" while clients are flushed |
//!
//! Without `NOTIFY_SOCKET` in the environment there is no [`Notifier`] at all: nothing is
//! sent and the loop has no watchdog deadline.

use std::time::{Duration, Instant};

use log::{debug, warn};
use sd_notify::NotifyState;

/// A connection to systemd's notification socket, and the watchdog's cadence.
#[derive(Debug)]
pub(crate) struct Notifier {
    /// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3)
    /// advises, so one late turn of the loop is not yet fatal. `None`: no watchdog.
    pub(crate) watchdog_every: Option<Duration>,
    /// When the next `WATCHDOG=1` is due.
    pub(crate) next_watchdog_at: Option<Instant>,
    /// A failure to reach systemd is warned about once, then only logged at debug.
    warned: bool,
}

impl Notifier {
    /// A notifier if `NOTIFY_SOCKET` is set, else `None`.
    pub(crate) fn from_env(now: Instant) -> Option<Notifier> {
        std::env::var_os("NOTIFY_SOCKET")?;
        // `watchdog_enabled` also checks `WATCHDOG_PID` is ours.
        let watchdog_every = sd_notify::watchdog_enabled().map(|usec| usec / 2);
        Some(Notifier {
            watchdog_every,
            next_watchdog_at: watchdog_every.map(|every| now + every),
            warned: false,
        })
    }

    /// `READY=1`, with a first status line.
    pub(crate) fn ready(&mut self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `STATUS=…` alone.
    pub(crate) fn status(&mut self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `STOPPING=1`, with the reason as status.
    pub(crate) fn stopping(&mut self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// If the watchdog is due at `now`: `WATCHDOG=1` with a fresh status line, and the
    /// next deadline. One datagram either way.
    pub(crate) fn watchdog_if_due(&mut self, now: Instant, status: impl FnOnce() -> String) {
        let (Some(at), Some(every)) = (self.next_watchdog_at, self.watchdog_every) else {
            return;
        };
        if at > now {
            return;
        }
        self.send(&[NotifyState::Watchdog, NotifyState::Status(&status())]);
        // Skip pings missed while busy rather than sending a burst.
        let next = at + every;
        self.next_watchdog_at = Some(if next > now { next } else { now + every });
    }

    fn send(&mut self, states: &[NotifyState]) {
        if let Err(err) = sd_notify::notify(states) {
            if std::mem::replace(&mut self.warned, true) {
                debug!("cannot notify systemd: {err}");
            } else {
                warn!("cannot notify systemd (NOTIFY_SOCKET): {err}; serving on regardless");
            }
        }
    }
}
