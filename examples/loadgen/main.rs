//! echod's load generator: a readiness-based (mio) client that holds many connections,
//! keeps messages in flight on each, checks every echoed byte, and reports throughput and
//! latency percentiles (and, given the server's PID, the server's CPU per message and RSS).
//!
//! Two terminals:
//!
//! ```sh
//! cargo run --release                                            # terminal 1: echod
//! cargo run --release --example loadgen -- --conns 100 --size 64 # terminal 2
//! cargo run --release --example loadgen -- --conns 1000 --pipeline 8 --threads 2 --json
//! cargo run --release --example loadgen -- --conns 19000 --idle --duration 10
//! cargo run --release --example loadgen -- --churn --conns 100 --duration 5
//! ```
//!
//! Layout: `wire.rs` (the message format and its check), `worker.rs` (one thread's poll
//! loop), `probe.rs` (the server's CPU and memory from `/proc`), `report.rs` (output).
//!
//! Exit status: 0 on a clean run; 1 if any echoed byte differed, a connection failed or
//! was lost, or (with `--idle`) a connection did not answer; 2 for bad flags.

mod link;
mod probe;
mod report;
#[path = "../client/tls.rs"]
mod trust;
mod udp;
mod wire;
mod worker;
mod ws;

use std::net::ToSocketAddrs;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;

use probe::Probe;
use report::Report;
use worker::{Plan, Shared, Target};

/// Load generator for echo servers: many connections, every byte checked, latency measured.
#[derive(Debug, Parser)]
#[command(name = "loadgen")]
struct Args {
    /// Server address: HOST:PORT, unix:PATH or unix:@NAME (as echod's --listen).
    #[arg(long, default_value = "localhost:50007")]
    addr: String,

    /// Connections to open (one process reaches 19,000 with the default descriptor limit).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    conns: u32,

    /// Message size in bytes, header included (at least 16).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(16..))]
    size: u32,

    /// Seconds to measure, after the warm-up (with --idle: seconds to hold).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,

    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,

    /// Messages in flight per connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pipeline: u32,

    /// Threads, each with its own Poll and share of the connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: u32,

    /// Open-loop pacing: start this many messages per second in total (each still needs
    /// room in its connection's pipeline). Default: closed loop, as fast as echoes return.
    #[arg(long, value_name = "MSGS_PER_SEC")]
    rate: Option<f64>,

    /// Open the connections, hold them silent for --duration, then ping each once and
    /// report how many answered.
    #[arg(long, conflicts_with = "churn")]
    idle: bool,

    /// Connection churn: each of --conns slots connects, sends one message, reads its echo,
    /// closes, and starts over. Reports connections per second, connect latency and (with
    /// --server-pid) the server's CPU per connection: the cost of the accept path.
    #[arg(long, conflicts_with_all = ["rate", "pipeline"])]
    churn: bool,

    /// UDP: each of --conns is a flow (one connected socket, so one source port) keeping
    /// --pipeline datagrams of --size bytes in flight; every echoed datagram is checked.
    /// --addr may be HOST:PORT or udp:HOST:PORT.
    #[arg(long, conflicts_with_all = ["idle", "churn", "rate"])]
    udp: bool,

    /// With --udp: seconds after which a datagram not echoed counts as lost and its place
    /// in the pipeline is refilled.
    #[arg(long, value_name = "SECS", default_value_t = 0.2)]
    udp_timeout: f64,

    /// Never sleep while loading: poll without waiting, so the server's replies never have
    /// to wake the generator. Its core spins; the server's CPU per message is then its own
    /// work, without the cost of waking a sleeping peer (on a VM, an inter-processor
    /// interrupt and an exit to the hypervisor, which swing from run to run).
    #[arg(long, conflicts_with_all = ["idle", "churn"])]
    busy_poll: bool,

    /// Local addresses to connect from, used in turn, e.g. 127.0.0.2,127.0.0.3: each gives
    /// about 28,000 more ephemeral ports towards one server address.
    #[arg(long, value_name = "ADDR[,ADDR…]", value_delimiter = ',')]
    bind: Vec<std::net::IpAddr>,

    /// Connects in flight at once while ramping up.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    connect_burst: u32,

    /// Seconds allowed for all connections to come up.
    #[arg(long, default_value_t = 60.0)]
    connect_timeout: f64,

    /// PID of the server under test: report its CPU time per message and its memory.
    /// Repeatable: several processes (sharing a port with --reuse-port) are added up.
    #[arg(long, value_name = "PID")]
    server_pid: Vec<u32>,

    /// TLS: every connection a TLS session (also: --addr tls:HOST:PORT). The server's
    /// certificate is not verified (benchmarks meet self-signed ones); signatures are.
    #[arg(long, conflicts_with = "udp")]
    tls: bool,

    /// WebSocket: every connection upgraded, each write one binary message (also: --addr
    /// ws:HOST:PORT, or wss:HOST:PORT with TLS).
    #[arg(long, conflicts_with = "udp")]
    ws: bool,

    /// Print one JSON line instead of the table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            if report.clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(err) => {
            eprintln!("loadgen: {err}");
            ExitCode::from(1)
        }
    }
}

fn seconds(name: &str, value: f64, allow_zero: bool) -> Result<Duration, String> {
    let ok = value.is_finite() && (value > 0.0 || (allow_zero && value == 0.0)) && value < 1e7;
    if ok {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(format!(
            "--{name} must be a positive number of seconds, not {value}"
        ))
    }
}

/// `--udp`'s server: `HOST:PORT` or `udp:HOST:PORT`, the first address it resolves to.
fn udp_target(spec: &str) -> Result<Target, String> {
    let host_port = spec.strip_prefix("udp:").unwrap_or(spec);
    host_port
        .to_socket_addrs()
        .map_err(|err| format!("cannot resolve {spec}: {err}"))?
        .next()
        .map(Target::Udp)
        .ok_or_else(|| format!("{spec} resolved to no address"))
}

/// `HOST:PORT` (the first address it resolves to), `unix:PATH` or `unix:@NAME`.
fn target(spec: &str) -> Result<Target, String> {
    use echod::listen::ListenSpec;
    let unix = |addr: std::io::Result<std::os::unix::net::SocketAddr>| {
        addr.map(Target::Unix)
            .map_err(|err| format!("bad Unix address {spec}: {err}"))
    };
    match ListenSpec::parse(spec)? {
        ListenSpec::Tcp(host_port) => host_port
            .to_socket_addrs()
            .map_err(|err| format!("cannot resolve {spec}: {err}"))?
            .next()
            .map(Target::Tcp)
            .ok_or_else(|| format!("{spec} resolved to no address")),
        ListenSpec::Udp(_) => Err(format!("{spec} is a UDP address: add --udp")),
        ListenSpec::Ws(host_port) | ListenSpec::Wss(host_port) => host_port
            .to_socket_addrs()
            .map_err(|err| format!("cannot resolve {spec}: {err}"))?
            .next()
            .map(Target::Tcp)
            .ok_or_else(|| format!("{spec} resolved to no address")),
        ListenSpec::Tls(host_port) => host_port
            .to_socket_addrs()
            .map_err(|err| format!("cannot resolve {spec}: {err}"))?
            .next()
            .map(Target::Tcp)
            .ok_or_else(|| format!("{spec} resolved to no address")),
        ListenSpec::UnixPath(path) => unix(std::os::unix::net::SocketAddr::from_pathname(path)),
        ListenSpec::UnixAbstract(name) => {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            {
                use std::os::linux::net::SocketAddrExt;
                unix(std::os::unix::net::SocketAddr::from_abstract_name(name))
            }
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            Err(format!(
                "{spec}: abstract socket names exist only on Linux ({name})"
            ))
        }
    }
}

fn run(args: &Args) -> Result<Report, String> {
    let target = if args.udp {
        udp_target(&args.addr)?
    } else {
        target(&args.addr)?
    };
    // TLS by flag or by the address's own prefix; the host is the name to ask for.
    let tls = args.tls || args.addr.starts_with("tls:") || args.addr.starts_with("wss:");
    let ws = args.ws || args.addr.starts_with("ws:") || args.addr.starts_with("wss:");
    let host = args
        .addr
        .split_once(':')
        .filter(|(kind, _)| matches!(*kind, "tls" | "ws" | "wss"))
        .map_or(args.addr.as_str(), |(_, rest)| rest)
        .rsplit_once(':')
        .map(|(host, _)| host.to_string())
        .unwrap_or_else(|| "localhost".to_string());
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err("--rate must be a positive number".into());
    }
    let threads = args.threads.min(args.conns) as usize;
    let plan = Plan {
        target,
        size: args.size as usize,
        pipeline: args.pipeline as usize,
        warmup: if args.idle {
            Duration::ZERO
        } else {
            seconds("warmup", args.warmup, true)?
        },
        duration: seconds("duration", args.duration, false)?,
        idle: args.idle,
        churn: args.churn,
        udp_timeout: seconds("udp-timeout", args.udp_timeout, false)?,
        busy_poll: args.busy_poll,
        bind: args.bind.clone(),
        rate: args.rate.map(|r| r / threads as f64),
        connects_in_flight: (args.connect_burst as usize).div_ceil(threads),
        connect_timeout: seconds("connect-timeout", args.connect_timeout, false)?,
        layers: link::Layers {
            tls: if tls {
                Some((
                    trust::client_config(None, true)?,
                    trust::server_name(&host)?,
                ))
            } else {
                None
            },
            ws: ws.then(|| host.clone()),
        },
    };

    // One descriptor per connection: take all the process may have.
    let _ = rlimit::increase_nofile_limit(u64::MAX);

    let probe = (!args.server_pid.is_empty())
        .then(|| Probe::new(&args.server_pid))
        .transpose()?;
    let rss_before = probe.as_ref().map(Probe::rss_kib).transpose()?;

    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        connected: Default::default(),
        echoed: Default::default(),
        ready: Barrier::new(threads),
        start: OnceLock::new(),
    });
    let per_thread = args.conns as usize / threads;
    let extra = args.conns as usize % threads;
    let mut first_id = 0u32;
    let mut handles = Vec::new();
    for t in 0..threads {
        let count = per_thread + usize::from(t < extra);
        let (plan, shared) = (plan.clone(), Arc::clone(&shared));
        let first = first_id;
        handles.push(std::thread::spawn(move || match plan.target {
            Target::Udp(server) => udp::run(&plan, &shared, server, first, count),
            _ => worker::run(&plan, &shared, first, count),
        }));
        first_id += count as u32;
    }

    // The main thread watches: progress once a second, server samples at the window edges.
    let began = Instant::now();
    let mut next_progress = began + Duration::from_secs(1);
    let mut last_echoed = 0;
    let mut window_cpu = (None, None);
    let mut rss_loaded = None;
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(5));
        let now = Instant::now();
        if let (Some(probe), Some(&start)) = (&probe, shared.start.get()) {
            let (from, to) = if plan.idle {
                // Sample memory half-way through the hold, when everyone is connected.
                (start + plan.duration / 2, start + plan.duration)
            } else {
                (start + plan.warmup, start + plan.warmup + plan.duration)
            };
            if now >= from && window_cpu.0.is_none() {
                window_cpu.0 = Some(probe.cpu_seconds()?);
                rss_loaded = Some(probe.rss_kib()?);
            }
            if now >= to && window_cpu.1.is_none() {
                window_cpu.1 = Some(probe.cpu_seconds()?);
            }
        }
        if now >= next_progress {
            let echoed = shared.echoed.load(Ordering::Relaxed);
            eprintln!(
                "[{:5.1}s] conns up {}/{}  msgs/s {}",
                (now - began).as_secs_f64(),
                shared.connected.load(Ordering::Relaxed),
                args.conns,
                echoed - last_echoed
            );
            last_echoed = echoed;
            next_progress += Duration::from_secs(1);
        }
    }

    let mut report = Report::new(args.conns as u64, plan.size, plan.duration, plan.idle);
    report.churn = plan.churn;
    report.udp = args.udp;
    for handle in handles {
        let outcome = handle
            .join()
            .map_err(|_| "a worker thread panicked".to_string())?
            .map_err(|err| format!("worker: {err}"))?;
        report.add(outcome);
    }
    // The workers stop at the window's end; if they all finished before this thread woke to
    // take the closing sample (a busy core), take it now: the server has had no load since.
    if let (Some(probe), (Some(_), None)) = (&probe, window_cpu) {
        window_cpu.1 = Some(probe.cpu_seconds()?);
    }
    if let (Some(a), Some(b)) = window_cpu {
        report.server_cpu_s = Some(b - a);
    }
    report.server_rss_before_kib = rss_before;
    report.server_rss_loaded_kib = rss_loaded;
    Ok(report)
}
