//! Whether the server is serving or on its way out, and what a stop request does to that.
//!
//! The first stop (SIGINT, SIGTERM or [`ServerHandle::stop`](crate::ServerHandle::stop))
//! begins draining: no more accepting or reading, what is owed is flushed until
//! `--shutdown-timeout`. A second stop, or the deadline, ends it at once.

use std::time::{Duration, Instant};

/// Serving, or draining until a deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lifecycle {
    Serving,
    /// Stopped accepting and reading; flushing what is owed until the deadline.
    Draining {
        deadline: Instant,
    },
}

/// What a stop request means, given where the server is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopStep {
    /// The first request: drain gracefully.
    BeginDraining,
    /// Already draining: stop now.
    ExitNow,
}

/// Where draining has got to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DrainProgress {
    /// Not draining, or connections still catching up within the deadline.
    Continue,
    /// Every connection has closed: the loop may end.
    AllClosed,
    /// The deadline passed with connections still open: close them and end.
    TimedOut,
}

impl Lifecycle {
    pub(crate) fn is_serving(self) -> bool {
        self == Lifecycle::Serving
    }

    /// The drain deadline, while draining.
    pub(crate) fn deadline(self) -> Option<Instant> {
        match self {
            Lifecycle::Serving => None,
            Lifecycle::Draining { deadline } => Some(deadline),
        }
    }

    /// A stop was asked for at `now`: the first begins draining for `timeout`.
    pub(crate) fn on_stop(&mut self, now: Instant, timeout: Duration) -> StopStep {
        match self {
            Lifecycle::Draining { .. } => StopStep::ExitNow,
            Lifecycle::Serving => {
                *self = Lifecycle::Draining {
                    deadline: now + timeout,
                };
                StopStep::BeginDraining
            }
        }
    }

    /// Whether draining is done, with `open` connections left at `now`.
    pub(crate) fn progress(self, open: usize, now: Instant) -> DrainProgress {
        match self {
            Lifecycle::Serving => DrainProgress::Continue,
            Lifecycle::Draining { .. } if open == 0 => DrainProgress::AllClosed,
            Lifecycle::Draining { deadline } if deadline <= now => DrainProgress::TimedOut,
            Lifecycle::Draining { .. } => DrainProgress::Continue,
        }
    }
}
