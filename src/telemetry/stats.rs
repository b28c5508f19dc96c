//! The server's counters: plain named numbers, each with its unit, updated by whichever
//! room does the counted thing and handed back by [`Server::run`](crate::Server::run).
//!
//! The invariants tests lean on: `accepted == closed_total() + active`; for echo
//! connections that finished cleanly, bytes out equal bytes in; and for UDP in echo mode,
//! `udp_datagrams_in == udp_datagrams_out + udp_refused()` (datagrams the kernel dropped
//! from a full queue, `udp_dropped_queue_full`, were never read, so never counted in).

use serde::ser::{Serialize, SerializeMap, Serializer};

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent EOF and got back everything it was owed.
    Eof,
    /// The client reset the connection or vanished (`ECONNRESET`, `EPIPE`, …).
    Reset,
    /// Any other socket error.
    Error,
    /// Sent nothing and owed nothing for `--idle-timeout`.
    Idle,
    /// Pending output did not move for `--stall-timeout`.
    Stall,
    /// The server stopped.
    Shutdown,
    /// The TLS handshake was not done within `--handshake-timeout`.
    Handshake,
}

impl CloseReason {
    /// The word used in logs and stats keys.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Eof => "eof",
            CloseReason::Reset => "reset",
            CloseReason::Error => "error",
            CloseReason::Idle => "idle",
            CloseReason::Stall => "stall",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Handshake => "handshake-timeout",
        }
    }
}

/// Why a connection was accepted only to be closed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// `--max-connections` were already open.
    MaxConnections,
    /// `--max-connections-per-ip` were already open from that address.
    PerIp,
    /// The process ran out of descriptors; the spare one was spent to tell the client.
    Descriptors,
}

impl RejectReason {
    /// The word used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MaxConnections => "max-connections",
            RejectReason::PerIp => "max-connections-per-ip",
            RejectReason::Descriptors => "out-of-descriptors",
        }
    }
}

/// Counters kept by the loop. All are totals since start unless the name says otherwise.
///
/// Read back from JSON (a worker's answer to its master) by field name; the derived
/// totals the JSON also carries (`closed`, `rejected`, `udp_dropped`) are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Connections accepted and served (rejected ones are not counted here).
    pub accepted: u64,
    /// Connections turned away because `--max-connections` were open.
    pub rejected_max_connections: u64,
    /// Connections turned away by `--max-connections-per-ip`.
    pub rejected_per_ip: u64,
    /// Connections turned away because the process had no descriptor to spare.
    pub rejected_descriptors: u64,
    /// Connections open now.
    pub active: u64,
    /// Most connections open at once.
    pub peak_active: u64,
    /// Connections closed after the client's EOF, everything echoed.
    pub closed_eof: u64,
    /// Connections closed because the client reset them.
    pub closed_reset: u64,
    /// Connections closed on another socket error.
    pub closed_error: u64,
    /// Connections closed by `--idle-timeout`.
    pub closed_idle: u64,
    /// Connections closed by `--stall-timeout`.
    pub closed_stall: u64,
    /// Connections closed because the server stopped.
    pub closed_shutdown: u64,
    /// Connections closed because their handshake took longer than `--handshake-timeout`.
    pub closed_handshake_timeout: u64,
    /// Handshakes completed: a TLS handshake on `tls:`, an upgrade on `ws:`, both on `wss:`
    /// (counted once, when the upgrade is done).
    pub handshakes: u64,
    /// TLS and WebSocket connections that ended before their handshake completed (a
    /// protocol error, a refused upgrade, a reset, an EOF), timeouts not included.
    pub handshakes_failed: u64,
    /// WebSocket data messages received.
    pub ws_messages_in: u64,
    /// WebSocket data messages sent (echoes, or acks).
    pub ws_messages_out: u64,
    /// WebSocket close frames received from clients.
    pub ws_closes_received: u64,
    /// WebSocket connections echod closed with 1002 (protocol error).
    pub ws_closed_protocol: u64,
    /// WebSocket connections echod closed with 1007 (invalid UTF-8 in a text message).
    pub ws_closed_invalid_utf8: u64,
    /// WebSocket connections echod closed with 1009 (a message over `--ws-max-message`).
    pub ws_closed_too_big: u64,
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
    /// Bytes read but not yet written back, all connections together, now.
    pub pending_bytes: u64,
    /// Most bytes pending at once, all connections together.
    pub peak_pending_bytes: u64,
    /// Most bytes pending at once on any single connection (never above `--max-pending`).
    pub peak_pending_connection: u64,
    /// `accept` failures other than WouldBlock (e.g. out of descriptors).
    pub accept_errors: u64,
    /// Turns of the loop (one `poll` each).
    pub loop_iterations: u64,
    /// Readiness events delivered by `poll`.
    pub events: u64,
    /// UDP datagrams read (whatever became of them; the kernel's own drops not included).
    pub udp_datagrams_in: u64,
    /// Payload bytes of the UDP datagrams received.
    pub udp_bytes_in: u64,
    /// UDP replies sent.
    pub udp_datagrams_out: u64,
    /// Payload bytes of the UDP replies sent.
    pub udp_bytes_out: u64,
    /// Datagrams from a source no reply may go to (low or own port, multicast, …).
    pub udp_dropped_guard: u64,
    /// Datagrams over their source's `--udp-rate-per-ip`.
    pub udp_dropped_rate: u64,
    /// Datagrams larger than `--udp-max-datagram`: dropped whole, never cut.
    pub udp_dropped_oversize: u64,
    /// Datagrams the kernel dropped because the receive queue was full: echod had stopped
    /// reading while its replies waited for a full send buffer (`SO_MEMINFO`, read when the
    /// counters are reported).
    pub udp_dropped_queue_full: u64,
    /// Replies the kernel refused with an error (`EMSGSIZE`, `ENOBUFS`, ICMP errors, …).
    pub udp_dropped_error: u64,
    /// `--mode ack` datagrams shorter than the reply, left unanswered (no amplification).
    pub udp_unanswered_short: u64,
}

impl Stats {
    /// Connections closed, whatever the reason.
    pub fn closed_total(&self) -> u64 {
        self.closed_eof
            + self.closed_reset
            + self.closed_error
            + self.closed_idle
            + self.closed_stall
            + self.closed_shutdown
            + self.closed_handshake_timeout
    }

    /// Connections turned away, whatever the reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected_max_connections + self.rejected_per_ip + self.rejected_descriptors
    }

    /// UDP datagrams dropped, whatever the reason.
    pub fn udp_dropped_total(&self) -> u64 {
        self.udp_refused() + self.udp_dropped_queue_full
    }

    /// UDP datagrams echod read and then dropped: guarded, over the rate, oversize, or
    /// refused by the kernel on the way out.
    pub fn udp_refused(&self) -> u64 {
        self.udp_dropped_guard
            + self.udp_dropped_rate
            + self.udp_dropped_oversize
            + self.udp_dropped_error
    }

    pub(crate) fn count_close(&mut self, reason: CloseReason) {
        self.active -= 1;
        *match reason {
            CloseReason::Eof => &mut self.closed_eof,
            CloseReason::Reset => &mut self.closed_reset,
            CloseReason::Error => &mut self.closed_error,
            CloseReason::Idle => &mut self.closed_idle,
            CloseReason::Stall => &mut self.closed_stall,
            CloseReason::Shutdown => &mut self.closed_shutdown,
            CloseReason::Handshake => &mut self.closed_handshake_timeout,
        } += 1;
    }

    pub(crate) fn count_reject(&mut self, reason: RejectReason) {
        *match reason {
            RejectReason::MaxConnections => &mut self.rejected_max_connections,
            RejectReason::PerIp => &mut self.rejected_per_ip,
            RejectReason::Descriptors => &mut self.rejected_descriptors,
        } += 1;
    }

    /// What a protocol layer counted while one connection was served.
    pub(crate) fn count_layer(&mut self, counts: crate::transport::LayerCounts) {
        self.ws_messages_in += counts.ws_messages_in;
        self.ws_messages_out += counts.ws_messages_out;
        self.ws_closes_received += counts.ws_closes_received;
        self.ws_closed_protocol += counts.ws_closed_protocol;
        self.ws_closed_invalid_utf8 += counts.ws_closed_invalid_utf8;
        self.ws_closed_too_big += counts.ws_closed_too_big;
    }

    pub(crate) fn count_accept(&mut self) {
        self.accepted += 1;
        self.active += 1;
        self.peak_active = self.peak_active.max(self.active);
    }

    /// The counters alone, the gauges (what is open or owed now) zeroed: what a worker
    /// that is gone still contributes to its master's totals.
    pub fn counters_only(&self) -> Stats {
        Stats {
            active: 0,
            pending_bytes: 0,
            ..self.clone()
        }
    }

    /// Every counter by name, in a fixed order: the one list both output formats use.
    pub fn fields(&self) -> [(&'static str, u64); 42] {
        [
            ("accepted", self.accepted),
            ("rejected", self.rejected_total()),
            ("rejected_max_connections", self.rejected_max_connections),
            ("rejected_per_ip", self.rejected_per_ip),
            ("rejected_descriptors", self.rejected_descriptors),
            ("active", self.active),
            ("peak_active", self.peak_active),
            ("closed", self.closed_total()),
            ("closed_eof", self.closed_eof),
            ("closed_reset", self.closed_reset),
            ("closed_error", self.closed_error),
            ("closed_idle", self.closed_idle),
            ("closed_stall", self.closed_stall),
            ("closed_shutdown", self.closed_shutdown),
            ("closed_handshake_timeout", self.closed_handshake_timeout),
            ("bytes_in", self.bytes_in),
            ("bytes_out", self.bytes_out),
            ("pending_bytes", self.pending_bytes),
            ("peak_pending_bytes", self.peak_pending_bytes),
            ("peak_pending_connection", self.peak_pending_connection),
            ("accept_errors", self.accept_errors),
            ("handshakes", self.handshakes),
            ("handshakes_failed", self.handshakes_failed),
            ("ws_messages_in", self.ws_messages_in),
            ("ws_messages_out", self.ws_messages_out),
            ("ws_closes_received", self.ws_closes_received),
            ("ws_closed_protocol", self.ws_closed_protocol),
            ("ws_closed_invalid_utf8", self.ws_closed_invalid_utf8),
            ("ws_closed_too_big", self.ws_closed_too_big),
            ("loop_iterations", self.loop_iterations),
            ("events", self.events),
            ("udp_datagrams_in", self.udp_datagrams_in),
            ("udp_bytes_in", self.udp_bytes_in),
            ("udp_datagrams_out", self.udp_datagrams_out),
            ("udp_bytes_out", self.udp_bytes_out),
            ("udp_dropped", self.udp_dropped_total()),
            ("udp_dropped_guard", self.udp_dropped_guard),
            ("udp_dropped_rate", self.udp_dropped_rate),
            ("udp_dropped_oversize", self.udp_dropped_oversize),
            ("udp_dropped_queue_full", self.udp_dropped_queue_full),
            ("udp_dropped_error", self.udp_dropped_error),
            ("udp_unanswered_short", self.udp_unanswered_short),
        ]
    }
}

/// Several loops' counters as one (a master summing its workers). Peaks are the largest
/// of each, not a sum: no two workers' peaks need have come at the same moment.
impl std::ops::AddAssign<&Stats> for Stats {
    fn add_assign(&mut self, other: &Stats) {
        // Named one by one, without `..`: a new counter does not compile until it is summed.
        let Stats {
            accepted,
            rejected_max_connections,
            rejected_per_ip,
            rejected_descriptors,
            active,
            peak_active,
            closed_eof,
            closed_reset,
            closed_error,
            closed_idle,
            closed_stall,
            closed_shutdown,
            closed_handshake_timeout,
            handshakes,
            handshakes_failed,
            ws_messages_in,
            ws_messages_out,
            ws_closes_received,
            ws_closed_protocol,
            ws_closed_invalid_utf8,
            ws_closed_too_big,
            bytes_in,
            bytes_out,
            pending_bytes,
            peak_pending_bytes,
            peak_pending_connection,
            accept_errors,
            loop_iterations,
            events,
            udp_datagrams_in,
            udp_bytes_in,
            udp_datagrams_out,
            udp_bytes_out,
            udp_dropped_guard,
            udp_dropped_rate,
            udp_dropped_oversize,
            udp_dropped_queue_full,
            udp_dropped_error,
            udp_unanswered_short,
        } = *other;
        self.accepted += accepted;
        self.rejected_max_connections += rejected_max_connections;
        self.rejected_per_ip += rejected_per_ip;
        self.rejected_descriptors += rejected_descriptors;
        self.active += active;
        self.closed_eof += closed_eof;
        self.closed_reset += closed_reset;
        self.closed_error += closed_error;
        self.closed_idle += closed_idle;
        self.closed_stall += closed_stall;
        self.closed_shutdown += closed_shutdown;
        self.closed_handshake_timeout += closed_handshake_timeout;
        self.handshakes += handshakes;
        self.handshakes_failed += handshakes_failed;
        self.ws_messages_in += ws_messages_in;
        self.ws_messages_out += ws_messages_out;
        self.ws_closes_received += ws_closes_received;
        self.ws_closed_protocol += ws_closed_protocol;
        self.ws_closed_invalid_utf8 += ws_closed_invalid_utf8;
        self.ws_closed_too_big += ws_closed_too_big;
        self.bytes_in += bytes_in;
        self.bytes_out += bytes_out;
        self.pending_bytes += pending_bytes;
        self.accept_errors += accept_errors;
        self.loop_iterations += loop_iterations;
        self.events += events;
        self.udp_datagrams_in += udp_datagrams_in;
        self.udp_bytes_in += udp_bytes_in;
        self.udp_datagrams_out += udp_datagrams_out;
        self.udp_bytes_out += udp_bytes_out;
        self.udp_dropped_guard += udp_dropped_guard;
        self.udp_dropped_rate += udp_dropped_rate;
        self.udp_dropped_oversize += udp_dropped_oversize;
        self.udp_dropped_queue_full += udp_dropped_queue_full;
        self.udp_dropped_error += udp_dropped_error;
        self.udp_unanswered_short += udp_unanswered_short;
        self.peak_active = self.peak_active.max(peak_active);
        self.peak_pending_bytes = self.peak_pending_bytes.max(peak_pending_bytes);
        self.peak_pending_connection = self.peak_pending_connection.max(peak_pending_connection);
    }
}

/// One flat JSON object of integers, every counter in [`Stats::fields`]' order (what
/// `--stats-json` prints and benchmark scripts read).
impl Serialize for Stats {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = self.fields();
        let mut map = serializer.serialize_map(Some(fields.len()))?;
        for (name, value) in fields {
            map.serialize_entry(name, &value)?;
        }
        map.end()
    }
}
