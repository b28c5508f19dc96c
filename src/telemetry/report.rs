//! The counters as people and scripts read them: a stats line for the log, the same as
//! JSON on stdout (`--stats-json`), and the short status line systemd shows.
//!
//! The log line shows what applies, not every counter: stream counters when the server
//! has stream listeners, UDP ones when it has UDP sockets, a reason's count only when it
//! is not zero. The JSON always carries every counter.

use std::fmt::Write as _;
use std::io::Write as _;

use super::stats::Stats;

/// Which kinds of socket the server serves, so a report leaves out what cannot happen.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Serves {
    pub(crate) streams: bool,
    pub(crate) datagrams: bool,
}

/// `accepted=12 active=1 peak_active=4 closed=11 closed_eof=10 closed_reset=1 bytes_in=…`:
/// `key=value` for `grep`, with the reasons that are zero left out for people.
pub(crate) fn text_line(stats: &Stats, serves: Serves) -> String {
    let mut line = Line::default();
    let nonzero = |prefix: &'static str| {
        stats
            .fields()
            .into_iter()
            .filter(move |(name, value)| name.starts_with(prefix) && *value > 0)
    };
    if serves.streams || !serves.datagrams {
        line.put("accepted", stats.accepted);
        line.put("active", stats.active);
        line.put("peak_active", stats.peak_active);
        line.put("closed", stats.closed_total());
        nonzero("closed_").for_each(|(name, value)| line.put(name, value));
        nonzero("rejected_").for_each(|(name, value)| line.put(name, value));
        line.put("bytes_in", stats.bytes_in);
        line.put("bytes_out", stats.bytes_out);
        line.put("pending_bytes", stats.pending_bytes);
        line.put("peak_pending_bytes", stats.peak_pending_bytes);
        nonzero("accept_errors").for_each(|(name, value)| line.put(name, value));
        nonzero("handshakes").for_each(|(name, value)| line.put(name, value));
        nonzero("ws_").for_each(|(name, value)| line.put(name, value));
    }
    if serves.datagrams {
        line.put("udp_datagrams_in", stats.udp_datagrams_in);
        line.put("udp_datagrams_out", stats.udp_datagrams_out);
        line.put("udp_bytes_in", stats.udp_bytes_in);
        line.put("udp_bytes_out", stats.udp_bytes_out);
        line.put("udp_dropped", stats.udp_dropped_total());
        nonzero("udp_dropped_").for_each(|(name, value)| line.put(name, value));
        nonzero("udp_unanswered").for_each(|(name, value)| line.put(name, value));
    }
    line.put("loop_iterations", stats.loop_iterations);
    line.put("events", stats.events);
    line.0
}

/// A line of `key=value` pairs being built.
#[derive(Default)]
struct Line(String);

impl Line {
    fn put(&mut self, key: &str, value: u64) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        let _ = write!(self.0, "{key}={value}");
    }
}

/// The counters as one JSON object on stdout. Not `println!`: a closed stdout
/// (`echod --stats-json | head -1`) must not panic the server. The stats are lost, the
/// echo goes on.
pub(crate) fn print_json(stats: &Stats) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, stats)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush());
}

/// The short line systemd shows as the service's status.
pub(crate) fn status_line(stats: &Stats, open: usize) -> String {
    let mut line = format!(
        "{open} connections open, {} accepted, {} bytes in, {} bytes out",
        stats.accepted, stats.bytes_in, stats.bytes_out
    );
    if stats.handshakes + stats.handshakes_failed + stats.closed_handshake_timeout > 0 {
        line += &format!(
            "; {} handshakes, {} failed, {} timed out",
            stats.handshakes, stats.handshakes_failed, stats.closed_handshake_timeout
        );
    }
    if stats.udp_datagrams_in > 0 {
        line += &format!(
            "; {} datagrams in, {} out, {} dropped",
            stats.udp_datagrams_in,
            stats.udp_datagrams_out,
            stats.udp_dropped_total()
        );
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAMS_ONLY: Serves = Serves {
        streams: true,
        datagrams: false,
    };
    const DATAGRAMS_ONLY: Serves = Serves {
        streams: false,
        datagrams: true,
    };

    #[test]
    fn a_stream_server_shows_no_udp_counters_and_no_zero_reasons() {
        let stats = Stats {
            accepted: 3,
            closed_eof: 2,
            closed_reset: 1,
            bytes_in: 10,
            bytes_out: 10,
            ..Stats::default()
        };
        let line = text_line(&stats, STREAMS_ONLY);
        assert!(line.starts_with(
            "accepted=3 active=0 peak_active=0 closed=3 closed_eof=2 closed_reset=1 bytes_in=10"
        ));
        assert!(!line.contains("udp"), "{line}");
        assert!(!line.contains("rejected"), "{line}");
        assert!(line.len() < 200, "{line}");
    }

    #[test]
    fn handshakes_show_when_there_were_any() {
        let stats = Stats {
            accepted: 3,
            handshakes: 2,
            handshakes_failed: 1,
            ..Stats::default()
        };
        let line = text_line(&stats, STREAMS_ONLY);
        assert!(
            line.contains(" handshakes=2 handshakes_failed=1 "),
            "{line}"
        );
        let none = text_line(&Stats::default(), STREAMS_ONLY);
        assert!(!none.contains("handshakes"), "{none}");
    }

    #[test]
    fn a_udp_server_shows_drops_by_reason() {
        let stats = Stats {
            udp_datagrams_in: 5,
            udp_dropped_rate: 2,
            ..Stats::default()
        };
        let line = text_line(&stats, DATAGRAMS_ONLY);
        assert!(line.starts_with("udp_datagrams_in=5"), "{line}");
        assert!(line.contains("udp_dropped=2 udp_dropped_rate=2"), "{line}");
        assert!(!line.contains("accepted"), "{line}");
    }

    #[test]
    fn json_has_every_counter_in_order() {
        let stats = Stats {
            accepted: 7,
            ..Stats::default()
        };
        let json: serde_json::Value = serde_json::to_value(&stats).unwrap();
        let object = json.as_object().unwrap();
        assert_eq!(object.len(), stats.fields().len());
        assert_eq!(object["accepted"], 7);
    }
}
