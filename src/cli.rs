//! The command line: raw flags (clap derive; each `///` is its `--help` text) and their
//! translation into a validated [`Config`].

use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use clap::{ArgAction, Parser};
use log::warn;

use crate::config::{
    Config, DEFAULT_BACKLOG, DEFAULT_MAX_PENDING, DEFAULT_UDP_MAX_DATAGRAM,
    DEFAULT_UDP_RATE_PER_IP, Mode,
};

/// A single-threaded, readiness-based echo server (RFC 862) for TCP, UDP and Unix sockets,
/// on a mio Poll loop.
#[derive(Debug, Parser)]
#[command(name = "echod", version, about)]
pub struct Args {
    /// Address to listen on; repeatable. HOST:PORT (TCP): a host name is resolved and every
    /// address it yields is bound ("localhost" means 127.0.0.1 and ::1; `[::]:PORT` is
    /// every interface, IPv4 and IPv6 alike). unix:PATH: a Unix socket file.
    /// unix:@NAME: a Linux abstract Unix socket. udp:HOST:PORT: UDP, resolved as for TCP.
    /// tls:HOST:PORT: TLS over TCP (see --tls-cert). ws:HOST:PORT, wss:HOST:PORT: WebSocket,
    /// plain or over TLS (any request path).
    /// [default: localhost:50007, unless systemd passed sockets]
    #[arg(long = "listen", value_name = "ADDR", value_parser = parse_listen)]
    pub listen: Vec<String>,

    /// Make `[::]` listeners IPv6 only (by default they also accept IPv4 clients).
    #[arg(long)]
    pub ipv6_only: bool,

    /// Set SO_REUSEPORT on TCP and UDP sockets, so several echod processes (each started
    /// with this flag) share one port; the kernel spreads new connections among them.
    #[arg(long)]
    pub reuse_port: bool,

    /// Permissions of the socket files created for unix:PATH, in octal; set before the
    /// file appears at PATH.
    #[arg(long, value_name = "MODE", default_value = "0660", value_parser = parse_mode)]
    pub unix_mode: u32,

    /// UDP datagrams larger than this are dropped whole, never cut (1 to 65527).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_UDP_MAX_DATAGRAM,
          value_parser = parse_datagram_size)]
    pub udp_max_datagram: usize,

    /// Receive and send buffer asked for each UDP socket (the kernel caps it at
    /// net.core.rmem_max / wmem_max). Suffixes K, M, G.
    #[arg(long, value_name = "BYTES", default_value = "4M", value_parser = parse_bytes)]
    pub udp_buffer: usize,

    /// Answer UDP datagrams from source ports below 1024 (by default they get no reply:
    /// a reply to another service's port can start an endless loop). For a lab.
    #[arg(long)]
    pub udp_allow_low_ports: bool,

    /// Datagrams per second answered per non-loopback source address (0: no limit);
    /// loopback is never limited.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_UDP_RATE_PER_IP)]
    pub udp_rate_per_ip: u32,

    /// Length of the kernel's queue of connections waiting for accept.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BACKLOG,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub backlog: u32,

    /// Unsent output one connection may hold; at the cap echod stops reading from it until
    /// the client catches up (TCP flow control then slows the client). Suffixes K, M, G.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_PENDING, value_parser = parse_bytes)]
    pub max_pending: usize,

    /// Cap on all connections' unsent output together; at the cap, connections owing
    /// anything stop reading until their own output drains. Default: no global cap.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub max_pending_total: Option<usize>,

    /// Connections open at once; more are accepted and closed at once.
    /// Default: the descriptor limit minus a small reserve.
    #[arg(long, value_name = "N", value_parser = at_least_one())]
    pub max_connections: Option<usize>,

    /// Connections open at once from one IP address; more are accepted and closed.
    /// Default: no per-address cap.
    #[arg(long, value_name = "N", value_parser = at_least_one())]
    pub max_connections_per_ip: Option<usize>,

    /// Close a connection that has sent nothing and is owed nothing for this long.
    /// Default: never.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub idle_timeout: Option<Duration>,

    /// Close a connection whose unsent output has not moved for this long (a client that
    /// sends but never reads). Default: never.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub stall_timeout: Option<Duration>,

    /// On SIGINT/SIGTERM (or a stop request), how long to keep flushing owed output before closing anyway.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, allow_negative_numbers = true,
          default_value = "5")]
    pub shutdown_timeout: Duration,

    /// What to do with what clients send: echo it back, answer "Got it!" per read, or
    /// discard it (RFC 863).
    #[arg(long, value_enum, default_value_t = Mode::Echo)]
    pub mode: Mode,

    /// Print what is heard to stdout as `Server heard "…" from PEER` (costs a write per read).
    #[arg(long)]
    pub print: bool,

    /// PEM file with the certificate chain tls: listeners present (with --tls-key). Without
    /// it, an ephemeral self-signed certificate is made at start (its fingerprint is
    /// logged). SIGHUP re-reads both files.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM file with the private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Close a connection whose TLS handshake or WebSocket upgrade is not done within this
    /// long.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, allow_negative_numbers = true,
          default_value = "10")]
    pub handshake_timeout: Duration,

    /// WebSocket messages larger than this are refused with close code 1009. Suffixes K,
    /// M, G.
    #[arg(long, value_name = "BYTES", default_value = "16M", value_parser = parse_bytes)]
    pub ws_max_message: usize,

    /// Serve Prometheus metrics at http://HOST:PORT/metrics and a liveness check at
    /// /health, from the same loop (with --workers: from the master, summed).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_metrics)]
    pub metrics: Option<String>,

    /// Worker processes, each one single-threaded loop like a plain echod, under a master
    /// that binds the sockets, replaces a worker that dies and forwards signals. 1: no
    /// master, this process serves (the default).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=crate::config::MAX_WORKERS as u64))]
    pub workers: usize,

    /// Log a line of counters this often. Default: only at exit and on SIGUSR1.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub stats_interval: Option<Duration>,

    /// Write stats lines as one JSON object each, on stdout.
    #[arg(long)]
    pub stats_json: bool,

    /// More logging: -v for each connection, -vv for every readiness event. RUST_LOG wins.
    #[arg(short, long, action = ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Less logging: -q for warnings only, -qq for errors only. RUST_LOG wins.
    #[arg(short, long, action = ArgAction::Count)]
    pub quiet: u8,
}

impl Args {
    /// The log filter `-v`/`-q` ask for (used when `RUST_LOG` is not set). Verbosity is
    /// raised for echod alone: mio's own trace lines would drown the loop's narration.
    pub fn log_filter(&self) -> &'static str {
        match (self.verbose, self.quiet) {
            (0, 0) => "info",
            (1, _) => "info,echod=debug",
            (v, _) if v >= 2 => "info,echod=trace",
            (_, 1) => "warn",
            _ => "error",
        }
    }

    /// The validated configuration; `descriptor_limit` sets `--max-connections`' default.
    pub fn into_config(self, descriptor_limit: Option<u64>) -> Config {
        // Above the descriptor limit a connection could never be open: each needs one.
        // (Between the default's reserve and the limit is allowed: running out there is
        // what the acceptor's spare descriptor is for.)
        let ceiling = descriptor_limit.map_or(usize::MAX, |limit| {
            usize::try_from(limit).unwrap_or(usize::MAX)
        });
        let max_connections = match self.max_connections {
            None => descriptor_limit.map_or(usize::MAX, crate::fdlimit::default_max_connections),
            Some(asked) if asked > ceiling => {
                warn!(
                    "--max-connections {asked} is more than the descriptor limit ({ceiling}) \
                     allows; using {ceiling} (raise `ulimit -n` for more)"
                );
                ceiling
            }
            Some(asked) => asked,
        };
        Config {
            // Empty means the default, unless systemd passed sockets (see `Server::bind`).
            listen: self.listen,
            inherit_sockets: true,
            systemd_notify: true,
            ipv6_only: self.ipv6_only,
            reuse_port: self.reuse_port,
            unix_mode: self.unix_mode,
            udp_max_datagram: self.udp_max_datagram,
            udp_buffer: self.udp_buffer,
            udp_allow_low_ports: self.udp_allow_low_ports,
            udp_rate_per_ip: (self.udp_rate_per_ip > 0).then_some(self.udp_rate_per_ip),
            backlog: self.backlog,
            max_pending: self.max_pending,
            max_pending_total: self.max_pending_total,
            max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            idle_timeout: self.idle_timeout,
            stall_timeout: self.stall_timeout,
            shutdown_timeout: self.shutdown_timeout,
            mode: self.mode,
            print: self.print,
            stats_interval: self.stats_interval,
            stats_json: self.stats_json,
            tls_files: self.tls_cert.zip(self.tls_key),
            handshake_timeout: self.handshake_timeout,
            ws_max_message: self.ws_max_message,
            handle_signals: true,
            metrics: self.metrics,
            workers: self.workers,
            ..Config::default()
        }
    }
}

/// A `--metrics` value: a TCP `HOST:PORT`.
fn parse_metrics(text: &str) -> Result<String, String> {
    match crate::listen::ListenSpec::parse(text)? {
        crate::listen::ListenSpec::Tcp(_) => Ok(text.to_string()),
        _ => Err("the metrics endpoint is plain HTTP over TCP: HOST:PORT".to_string()),
    }
}

/// A `--listen` value that names something: checked here so a typo exits 2.
fn parse_listen(text: &str) -> Result<String, String> {
    crate::listen::ListenSpec::parse(text).map(|_| text.to_string())
}

/// A UDP payload size: 1 to the protocol's largest, 65,527 bytes.
fn parse_datagram_size(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=DEFAULT_UDP_MAX_DATAGRAM).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{text}' is not a datagram size (1 to {DEFAULT_UDP_MAX_DATAGRAM})"
        )),
    }
}

/// Octal permission bits, `0660` or `660`; nothing beyond `0777`.
fn parse_mode(text: &str) -> Result<u32, String> {
    match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!(
            "'{text}' is not a permission mode (octal, e.g. 0660)"
        )),
    }
}

/// `1500`, `64K`, `1M`, `2G` (powers of 1024); at least 1.
fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let scale: usize = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err(format!("'{text}' is not a size (e.g. 65536, 64K, 1M)")),
    };
    let value: usize = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 65536, 64K, 1M)"))?;
    match value.checked_mul(scale) {
        Some(0) => Err("must be at least 1 byte".to_string()),
        Some(bytes) => Ok(bytes),
        None => Err(format!("'{text}' is too large")),
    }
}

/// A count of connections: at least 1, at most Linux's ceiling on descriptors per
/// process (`fs.nr_open` cannot exceed 2^30), since each connection needs one.
fn at_least_one() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(1..=1 << 30)
}

/// Seconds, fractions allowed (`0.5`); more than zero.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 1e9) {
        return Err("must be more than 0 seconds (and not absurdly many)".to_string());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_config_constants() {
        let args = Args::parse_from(["echod"]);
        let config = args.into_config(None);
        assert!(config.listen.is_empty(), "empty means DEFAULT_LISTEN");
        assert_eq!(config.unix_mode, crate::config::DEFAULT_UNIX_MODE);
        assert_eq!(config.backlog, DEFAULT_BACKLOG);
        assert_eq!(config.max_pending, DEFAULT_MAX_PENDING);
        assert_eq!(
            config.shutdown_timeout,
            crate::config::DEFAULT_SHUTDOWN_TIMEOUT
        );
        assert_eq!(config.mode, Mode::Echo);
    }

    #[test]
    fn sizes_and_seconds_parse() {
        assert_eq!(parse_bytes("64K"), Ok(65536));
        assert_eq!(parse_bytes("1m"), Ok(1 << 20));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("12Q").is_err());
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("01777").is_err());
    }

    #[test]
    fn max_connections_defaults_to_the_descriptor_limit_less_a_reserve() {
        let config = Args::parse_from(["echod"]).into_config(Some(1024));
        assert_eq!(config.max_connections, 1024 - 32);
    }

    #[test]
    fn max_connections_above_the_descriptor_limit_is_clamped() {
        let args = Args::parse_from(["echod", "--max-connections", "100000"]);
        assert_eq!(args.into_config(Some(1024)).max_connections, 1024);
        let args = Args::parse_from(["echod", "--max-connections", "1000"]);
        assert_eq!(args.into_config(Some(1024)).max_connections, 1000);
        let args = Args::parse_from(["echod", "--max-connections", "10"]);
        assert_eq!(args.into_config(Some(1024)).max_connections, 10);
    }

    #[test]
    fn a_negative_duration_is_a_bad_value_not_an_unknown_flag() {
        let err = Args::try_parse_from(["echod", "--idle-timeout", "-1"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(
            err.to_string().contains("must be more than 0 seconds"),
            "{err}"
        );
    }
}
