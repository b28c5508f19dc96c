//! The validated settings a [`Server`](crate::Server) runs with, and their defaults.
//!
//! The command line (`cli.rs`) turns raw flags into a [`Config`]; tests build one directly.
//! Every default is a `pub const` here so that `--help`, the README and the tests agree.

use std::time::Duration;

/// Where echod listens when no `--listen` is given and systemd passed no sockets:
/// loopback only, never exposed.
pub const DEFAULT_LISTEN: &str = "localhost:50007";
/// The largest UDP datagram echoed by default: the protocol's largest (over IPv6).
pub const DEFAULT_UDP_MAX_DATAGRAM: usize = 65_527;
/// Datagrams per second one non-loopback source may have answered by default: plenty
/// for any real client, and a ceiling on what a forged source can reflect at a victim.
pub const DEFAULT_UDP_RATE_PER_IP: u32 = 1000;
/// The receive and send buffer asked for each UDP socket: a burst of thousands of small
/// datagrams fits (the kernel caps it at `net.core.rmem_max` / `wmem_max`).
pub const DEFAULT_UDP_BUFFER: usize = 4 << 20;
/// Permission bits of a `unix:PATH` socket file: owner and group may connect.
pub const DEFAULT_UNIX_MODE: u32 = 0o660;
/// Connections the kernel may queue before `accept` (mio's own default is only 128).
pub const DEFAULT_BACKLOG: u32 = 1024;
/// Unsent output one connection may hold before echod stops reading from it.
pub const DEFAULT_MAX_PENDING: usize = 64 * 1024;
/// Size of the one read buffer the whole loop shares.
pub const READ_BUFFER_SIZE: usize = 64 * 1024;
/// Bytes read from one connection per turn of the loop before the others get their go.
pub const DEFAULT_READ_BUDGET: usize = 256 * 1024;
/// Connections accepted per listener per turn before existing clients get their go.
pub const DEFAULT_ACCEPT_BUDGET: usize = 128;
/// How long a graceful stop waits for pending output to drain.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest WebSocket message echoed by default; a larger one is refused (1009).
pub const DEFAULT_WS_MAX_MESSAGE: usize = 16 << 20;
/// How long a TLS handshake may take before the connection is closed.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// `--workers` at most: far more than any machine has cores, and few enough that a typo
/// (an extra zero or three) is an error rather than a fork storm.
pub const MAX_WORKERS: usize = 1024;

/// Descriptors kept back from `--max-connections`' default for listeners, the poll
/// instance, signals, logging and the spare descriptor used to turn clients away.
pub const DESCRIPTOR_RESERVE: u64 = 32;

/// What the server does with the bytes it reads (`--mode`; each doc line is its help).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// Send every byte back, in order, untouched (RFC 862).
    #[default]
    Echo,
    /// Reply "Got it!" for every chunk read, as the tutorial's server does.
    Ack,
    /// Read and drop (RFC 863).
    Discard,
}

/// The reply an [`Mode::Ack`] server sends for every chunk it reads.
pub const ACK_REPLY: &[u8] = b"Got it!";

/// Everything a [`Server`](crate::Server) needs to know, already validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// `HOST:PORT`, `tls:HOST:PORT`, `ws:HOST:PORT`, `wss:HOST:PORT`, `udp:HOST:PORT`, `unix:PATH` or `unix:@NAME` specs; each is resolved and every
    /// resolved address is bound. Empty: [`DEFAULT_LISTEN`], unless sockets were inherited.
    pub listen: Vec<String>,
    /// Adopt sockets passed by systemd (`LISTEN_FDS`) besides those in `listen`.
    pub inherit_sockets: bool,
    /// Tell systemd about readiness, status, stopping and liveness (`NOTIFY_SOCKET`).
    pub systemd_notify: bool,
    /// Whether a wildcard IPv6 listener (`[::]`) refuses IPv4 clients.
    pub ipv6_only: bool,
    /// `SO_REUSEPORT` on TCP and UDP sockets, so several processes can share a port.
    pub reuse_port: bool,
    /// Permission bits of the socket files created for `unix:PATH`.
    pub unix_mode: u32,
    /// UDP datagrams larger than this are dropped whole (at most 65,527).
    pub udp_max_datagram: usize,
    /// `SO_RCVBUF` / `SO_SNDBUF` asked for each UDP socket echod binds.
    pub udp_buffer: usize,
    /// Answer UDP sources on ports below 1024 (off: the inetd guard against echo loops).
    pub udp_allow_low_ports: bool,
    /// Datagrams per second per non-loopback source (`None`: no limit).
    pub udp_rate_per_ip: Option<u32>,
    /// Loopback sources are not rate limited (so local benchmarks run free). Tests, whose
    /// every source is loopback, turn this off to exercise the limiter for real.
    pub udp_rate_exempts_loopback: bool,
    /// `listen(2)` backlog.
    pub backlog: u32,
    /// Cap on one connection's unsent output, in bytes (at least 1).
    pub max_pending: usize,
    /// Cap on all connections' unsent output together, in bytes (`None`: no global cap).
    pub max_pending_total: Option<usize>,
    /// Bytes read from one connection per turn before it yields to the others.
    pub read_budget: usize,
    /// Accepts per listener per turn before existing connections are served.
    pub accept_budget: usize,
    /// Connections open at once; one more is accepted and closed at once.
    pub max_connections: usize,
    /// Connections open at once from one peer IP address (`None`: no cap).
    pub max_connections_per_ip: Option<usize>,
    /// Close a connection that has sent nothing and owes nothing for this long.
    pub idle_timeout: Option<Duration>,
    /// Close a connection whose pending output has not moved for this long.
    pub stall_timeout: Option<Duration>,
    /// How long a graceful stop waits for pending output to drain.
    pub shutdown_timeout: Duration,
    /// What to do with bytes read.
    pub mode: Mode,
    /// Print what is heard to stdout, as the tutorial servers do.
    pub print: bool,
    /// Log a stats line this often (`None`: only at exit and on SIGUSR1).
    pub stats_interval: Option<Duration>,
    /// Stats lines as one JSON object each instead of `key=value` text.
    pub stats_json: bool,
    /// The certificate chain and private key (PEM files) `tls:` listeners present;
    /// `None`: an ephemeral self-signed certificate.
    pub tls_files: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Close a connection whose TLS handshake (or WebSocket upgrade) is not done within
    /// this long.
    pub handshake_timeout: Duration,
    /// A WebSocket message larger than this is refused with close code 1009.
    pub ws_max_message: usize,
    /// Handle SIGINT/SIGTERM (graceful stop), SIGUSR1 (log stats) and SIGHUP (re-read the
    /// certificate) in the loop.
    /// The binary turns this on; an in-process test server leaves it off.
    pub handle_signals: bool,
    /// `--metrics HOST:PORT`: serve `/metrics` and `/health` over HTTP there.
    pub metrics: Option<String>,
    /// `--workers`: processes serving the sockets (1: this process serves them itself).
    pub workers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![DEFAULT_LISTEN.to_string()],
            inherit_sockets: false,
            systemd_notify: false,
            ipv6_only: false,
            reuse_port: false,
            unix_mode: DEFAULT_UNIX_MODE,
            udp_max_datagram: DEFAULT_UDP_MAX_DATAGRAM,
            udp_buffer: DEFAULT_UDP_BUFFER,
            udp_allow_low_ports: false,
            udp_rate_per_ip: Some(DEFAULT_UDP_RATE_PER_IP),
            udp_rate_exempts_loopback: true,
            backlog: DEFAULT_BACKLOG,
            max_pending: DEFAULT_MAX_PENDING,
            max_pending_total: None,
            read_budget: DEFAULT_READ_BUDGET,
            accept_budget: DEFAULT_ACCEPT_BUDGET,
            max_connections: usize::MAX,
            max_connections_per_ip: None,
            idle_timeout: None,
            stall_timeout: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            mode: Mode::Echo,
            print: false,
            stats_interval: None,
            stats_json: false,
            tls_files: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            ws_max_message: DEFAULT_WS_MAX_MESSAGE,
            handle_signals: false,
            metrics: None,
            workers: 1,
        }
    }
}

impl Config {
    /// The settings that decide how sockets are bound.
    pub fn bind_options(&self) -> crate::listen::BindOptions {
        crate::listen::BindOptions {
            backlog: self.backlog,
            ipv6_only: self.ipv6_only,
            reuse_port: self.reuse_port,
            unix_mode: self.unix_mode,
            udp_buffer: self.udp_buffer,
        }
    }

    /// A config that listens on the given addresses with every other setting at its default.
    pub fn listening_on<S: Into<String>>(addrs: impl IntoIterator<Item = S>) -> Self {
        Config {
            listen: addrs.into_iter().map(Into::into).collect(),
            ..Config::default()
        }
    }
}
