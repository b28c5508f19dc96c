//! A warning that may repeat thousands of times a second (rejected clients, accept errors,
//! refused datagrams) is logged at most once a second, with how many were held back.

use std::time::{Duration, Instant};

/// Repeated warnings are logged at most this often.
pub(crate) const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// Lets a repeated warning through at most once per [`WARN_INTERVAL`], counting the rest.
#[derive(Debug, Default)]
pub(crate) struct RateLimit {
    /// When a warning last went out.
    last: Option<Instant>,
    /// Warnings held back since then.
    suppressed: u64,
}

impl RateLimit {
    /// `Some(n)` if a warning may be logged now, `n` being how many were held back since.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.is_quiet(now) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    /// Counts `n` occurrences without logging; [`RateLimit::flush`] reports them later.
    pub(crate) fn hold(&mut self, n: u64) {
        self.suppressed += n;
    }

    /// `Some(n)` when occurrences are held and a warning may go out now: the caller logs
    /// one line for all `n` of them.
    pub(crate) fn flush(&mut self, now: Instant) -> Option<u64> {
        if self.suppressed == 0 || self.is_quiet(now) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    /// Whether a warning went out less than [`WARN_INTERVAL`] ago.
    fn is_quiet(&self, now: Instant) -> bool {
        self.last
            .is_some_and(|last| now.duration_since(last) < WARN_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_a_second_and_a_count_of_the_rest() {
        let t0 = Instant::now();
        let mut limit = RateLimit::default();
        assert_eq!(limit.allow(t0), Some(0));
        assert_eq!(limit.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(limit.allow(t0 + Duration::from_millis(20)), None);
        assert_eq!(limit.allow(t0 + WARN_INTERVAL), Some(2));
    }

    #[test]
    fn held_occurrences_go_out_in_one_line_when_due() {
        let t0 = Instant::now();
        let mut limit = RateLimit::default();
        assert_eq!(limit.flush(t0), None, "nothing held");
        limit.hold(3);
        assert_eq!(limit.flush(t0), Some(3));
        limit.hold(1);
        assert_eq!(limit.flush(t0 + Duration::from_millis(5)), None, "too soon");
        assert_eq!(limit.flush(t0 + WARN_INTERVAL), Some(1));
    }
}
