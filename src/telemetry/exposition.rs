//! The counters as Prometheus metrics: names, help, units and labels, encoded by the
//! `prometheus-client` crate in either of the two text formats a scraper may ask for.
//!
//! Naming follows Prometheus's rules: an `echod_` prefix, base units in the name
//! (`_bytes`, `_seconds`), `_total` on every counter (the encoder adds it), one metric
//! with a `reason` label rather than one metric per reason. The `process_*` metrics are
//! the standard ones every client library exports, so existing dashboards read them.
//!
//! The numbers are a [`Snapshot`] taken by the loop when a scrape arrives: nothing here is
//! updated as traffic flows, so the hot path pays nothing for metrics.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use super::process::ProcessSample;
use super::stats::Stats;

/// Which text format a scrape gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus's text format 0.0.4, what a scraper gets unless it asks otherwise.
    Prometheus,
    /// OpenMetrics 1.0 text, for an `Accept` header naming `application/openmetrics-text`.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for (Prometheus itself names OpenMetrics first,
    /// with 0.0.4 as a fallback).
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// One worker as the master sees it, for the per-worker metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerUp {
    /// The worker's slot, 0 to N−1 (a replacement keeps its slot).
    pub slot: usize,
    /// Whether it is running and answered the master's last question in time.
    pub up: bool,
    /// How many times this slot's worker has been replaced.
    pub restarts: u64,
}

/// Everything one scrape reports.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The loop's counters (with workers: summed over them).
    pub stats: Stats,
    /// The process's resources (with workers: the master's and theirs together).
    pub process: ProcessSample,
    /// With `--workers`: each worker; empty for a single process.
    pub workers: Vec<WorkerUp>,
}

impl Snapshot {
    /// The snapshot encoded in `format`.
    pub fn encode(self, format: Format) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
            }
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, &registry),
        };
        text
    }
}

/// Writes metric families one call each; keeps the list below readable.
struct Families<'a, 'e> {
    encoder: &'a mut DescriptorEncoder<'e>,
}

type Result = std::result::Result<(), std::fmt::Error>;

impl Families<'_, '_> {
    fn counter(&mut self, name: &str, help: &str, unit: Option<Unit>, value: u64) -> Result {
        let metric =
            self.encoder
                .encode_descriptor(name, help, unit.as_ref(), MetricType::Counter)?;
        ConstCounter::new(value).encode(metric)
    }

    fn gauge(&mut self, name: &str, help: &str, unit: Option<Unit>, value: u64) -> Result {
        let metric =
            self.encoder
                .encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
        ConstGauge::new(value).encode(metric)
    }

    /// A counter with one label, one sample per `(label value, count)`.
    fn counters_by(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        samples: &[(&str, u64)],
    ) -> Result {
        let mut metric = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (value, count) in samples {
            let labels = [(label, *value)];
            ConstCounter::new(*count).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result {
        let s = &self.stats;
        let mut f = Families {
            encoder: &mut encoder,
        };
        f.counter(
            "echod_connections_accepted",
            "Stream connections accepted and served.",
            None,
            s.accepted,
        )?;
        f.counters_by(
            "echod_connections_rejected",
            "Stream connections accepted only to be closed at once, by reason.",
            "reason",
            &[
                ("max_connections", s.rejected_max_connections),
                ("max_connections_per_ip", s.rejected_per_ip),
                ("out_of_descriptors", s.rejected_descriptors),
            ],
        )?;
        f.gauge(
            "echod_connections_open",
            "Stream connections open now.",
            None,
            s.active,
        )?;
        f.gauge(
            "echod_connections_open_peak",
            "Most stream connections open at once since start.",
            None,
            s.peak_active,
        )?;
        f.counters_by(
            "echod_connections_closed",
            "Stream connections closed, by reason.",
            "reason",
            &[
                ("eof", s.closed_eof),
                ("reset", s.closed_reset),
                ("error", s.closed_error),
                ("idle", s.closed_idle),
                ("stall", s.closed_stall),
                ("shutdown", s.closed_shutdown),
                ("handshake_timeout", s.closed_handshake_timeout),
            ],
        )?;
        f.counter(
            "echod_received",
            "Bytes read from stream clients (after TLS and WebSocket framing are removed).",
            Some(Unit::Bytes),
            s.bytes_in,
        )?;
        f.counter(
            "echod_sent",
            "Bytes written back to stream clients.",
            Some(Unit::Bytes),
            s.bytes_out,
        )?;
        f.gauge(
            "echod_pending",
            "Bytes read but not yet written back, all connections together.",
            Some(Unit::Bytes),
            s.pending_bytes,
        )?;
        f.gauge(
            "echod_pending_peak",
            "Most bytes pending at once since start, all connections together.",
            Some(Unit::Bytes),
            s.peak_pending_bytes,
        )?;
        f.counter(
            "echod_accept_errors",
            "accept() failures other than WouldBlock (such as running out of descriptors).",
            None,
            s.accept_errors,
        )?;
        f.counter(
            "echod_handshakes",
            "TLS handshakes and WebSocket upgrades completed (wss: once, when both are done).",
            None,
            s.handshakes,
        )?;
        f.counter(
            "echod_handshake_failures",
            "TLS and WebSocket connections that ended before their handshake completed (timeouts aside).",
            None,
            s.handshakes_failed,
        )?;
        f.counter(
            "echod_ws_messages_received",
            "WebSocket data messages received.",
            None,
            s.ws_messages_in,
        )?;
        f.counter(
            "echod_ws_messages_sent",
            "WebSocket data messages sent.",
            None,
            s.ws_messages_out,
        )?;
        f.counter(
            "echod_ws_closes_received",
            "WebSocket close frames received from clients.",
            None,
            s.ws_closes_received,
        )?;
        f.counters_by(
            "echod_ws_closed_by_server",
            "WebSocket connections echod closed, by close code.",
            "code",
            &[
                ("1002", s.ws_closed_protocol),
                ("1007", s.ws_closed_invalid_utf8),
                ("1009", s.ws_closed_too_big),
            ],
        )?;
        f.counter(
            "echod_udp_datagrams_received",
            "UDP datagrams read.",
            None,
            s.udp_datagrams_in,
        )?;
        f.counter(
            "echod_udp_received",
            "Payload bytes of the UDP datagrams read.",
            Some(Unit::Bytes),
            s.udp_bytes_in,
        )?;
        f.counter(
            "echod_udp_datagrams_sent",
            "UDP replies sent.",
            None,
            s.udp_datagrams_out,
        )?;
        f.counter(
            "echod_udp_sent",
            "Payload bytes of the UDP replies sent.",
            Some(Unit::Bytes),
            s.udp_bytes_out,
        )?;
        f.counters_by(
            "echod_udp_dropped",
            "UDP datagrams dropped, by reason.",
            "reason",
            &[
                ("guard", s.udp_dropped_guard),
                ("rate", s.udp_dropped_rate),
                ("oversize", s.udp_dropped_oversize),
                ("queue_full", s.udp_dropped_queue_full),
                ("send_error", s.udp_dropped_error),
                ("ack_too_short", s.udp_unanswered_short),
            ],
        )?;
        f.counter(
            "echod_loop_iterations",
            "Turns of the event loop (one poll each).",
            None,
            s.loop_iterations,
        )?;
        f.counter(
            "echod_loop_events",
            "Readiness events the event loop was handed.",
            None,
            s.events,
        )?;
        if !self.workers.is_empty() {
            f.gauge(
                "echod_workers",
                "Worker processes configured (--workers).",
                None,
                self.workers.len() as u64,
            )?;
            let mut up = f.encoder.encode_descriptor(
                "echod_worker_up",
                "1 if the worker runs and answered the master in time, else 0.",
                None,
                MetricType::Gauge,
            )?;
            for worker in &self.workers {
                let slot = worker.slot.to_string();
                let labels = [("worker", slot.as_str())];
                ConstGauge::new(u64::from(worker.up)).encode(up.encode_family(&labels)?)?;
            }
            let mut restarts = f.encoder.encode_descriptor(
                "echod_worker_restarts",
                "Times the master replaced the worker in this slot.",
                None,
                MetricType::Counter,
            )?;
            for worker in &self.workers {
                let slot = worker.slot.to_string();
                let labels = [("worker", slot.as_str())];
                ConstCounter::new(worker.restarts).encode(restarts.encode_family(&labels)?)?;
            }
        }
        self.encode_process(&mut f)
    }
}

impl Snapshot {
    /// The standard `process_*` metrics, each only if it could be read.
    fn encode_process(&self, f: &mut Families) -> Result {
        let p = &self.process;
        if let Some(cpu) = p.cpu_seconds {
            let metric = f.encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent.",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?;
            ConstCounter::new(cpu).encode(metric)?;
        }
        if let Some(rss) = p.resident_bytes {
            f.gauge(
                "process_resident_memory",
                "Resident memory size.",
                Some(Unit::Bytes),
                rss,
            )?;
        }
        if let Some(open) = p.open_fds {
            f.gauge("process_open_fds", "Open file descriptors.", None, open)?;
        }
        if let Some(max) = p.max_fds {
            f.gauge(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                None,
                max,
            )?;
        }
        if let Some(start) = p.start_time_seconds {
            let metric = f.encoder.encode_descriptor(
                "process_start_time",
                "Start time of the process since the Unix epoch.",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            ConstGauge::new(start).encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            stats: Stats {
                accepted: 3,
                closed_eof: 2,
                bytes_in: 1234,
                ..Stats::default()
            },
            process: ProcessSample {
                cpu_seconds: Some(0.25),
                resident_bytes: Some(4096),
                ..ProcessSample::default()
            },
            workers: Vec::new(),
        }
    }

    #[test]
    fn prometheus_text_names_counters_with_total_and_has_no_eof() {
        let text = sample().encode(Format::Prometheus);
        assert!(text.contains("# TYPE echod_connections_accepted_total counter"));
        assert!(text.contains("echod_connections_accepted_total 3\n"));
        assert!(text.contains("echod_connections_closed_total{reason=\"eof\"} 2\n"));
        assert!(text.contains("echod_received_bytes_total 1234\n"));
        assert!(text.contains("process_cpu_seconds_total 0.25\n"));
        assert!(text.contains("process_resident_memory_bytes 4096\n"));
        assert!(!text.contains("# EOF"));
        assert!(!text.contains("echod_worker_up"));
    }

    #[test]
    fn openmetrics_ends_with_eof_and_declares_units() {
        let text = sample().encode(Format::OpenMetrics);
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains("# UNIT echod_received_bytes bytes"));
        assert!(text.contains("echod_connections_accepted_total 3\n"));
    }

    #[test]
    fn workers_get_a_sample_each() {
        let mut snapshot = sample();
        snapshot.workers = vec![
            WorkerUp {
                slot: 0,
                up: true,
                restarts: 0,
            },
            WorkerUp {
                slot: 1,
                up: false,
                restarts: 2,
            },
        ];
        let text = snapshot.encode(Format::Prometheus);
        assert!(text.contains("echod_worker_up{worker=\"0\"} 1\n"));
        assert!(text.contains("echod_worker_up{worker=\"1\"} 0\n"));
        assert!(text.contains("echod_worker_restarts_total{worker=\"1\"} 2\n"));
        assert!(text.contains("echod_workers 2\n"));
    }

    #[test]
    fn the_accept_header_picks_the_format() {
        let prometheus =
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("text/plain")), Format::Prometheus);
        assert_eq!(Format::from_accept(None), Format::Prometheus);
    }
}
