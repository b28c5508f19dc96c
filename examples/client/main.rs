//! The tutorial's echo client, done properly.
//!
//! It resolves the host with getaddrinfo and tries each address in turn (IPv6 and IPv4
//! alike) until one connects; sends each message and reads back *exactly* as many bytes,
//! looping over partial reads, because TCP is a byte stream and one `recv` may return only
//! part of what was sent (the tutorial's fixed-length receive). Plain blocking sockets with
//! timeouts are the right tool for one conversation at a time; the server is where
//! readiness pays.
//!
//! Two terminals:
//!
//! ```sh
//! cargo run --release                                   # terminal 1: the server
//! cargo run --example client                            # Hello, world + 汉语/漢語 Hànyǔ
//! cargo run --example client -- "one" "two words"       # your own messages
//! cargo run --example client -- --interactive           # Type your msg here: …
//! printf 'a\nb\n' | cargo run --example client -- --interactive   # a message per line
//! cargo run --example client -- --hex "$(printf '\x01\x02')"      # replies as hex
//! cargo run --example client -- --host unix:/tmp/echod.sock       # a Unix socket
//! cargo run --example client -- --udp                              # datagrams (echod --listen udp:…)
//! cargo run --example client -- --host tls://localhost:50443 --insecure  # TLS (echod --listen tls:…)
//! cargo run --example client -- --tls --port 50443 --ca cert.pem       # TLS, verified
//! cargo run --example client -- --host ws://localhost:50080/          # WebSocket messages
//! cargo run --example client -- --host wss://localhost:50443/ --insecure
//! ```
//!
//! Exit status: 0 when every echo matched; 1 when one differed, the connection closed
//! early, a wait timed out, or no address would connect; 2 for bad flags.

use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

mod tls;
mod ws;

/// What the tutorial's client sends when given nothing to say.
const DEFAULT_MESSAGES: [&str; 2] = ["Hello, world", "汉语/漢語 Hànyǔ"];
/// The tutorial's prompt.
const PROMPT: &str = "Type your msg here: ";

/// Send messages to an echo server and check that each comes back unchanged.
#[derive(Debug, Parser)]
#[command(name = "client")]
struct Args {
    /// Server host name or address (resolved with getaddrinfo), or a Unix socket as
    /// unix:PATH or unix:@NAME (then --port is not used).
    #[arg(long, default_value = "localhost")]
    host: String,

    /// Server port.
    #[arg(long, default_value_t = 50007)]
    port: u16,

    /// Prompt for messages until EOF, the tutorial's interactive client. With stdin piped,
    /// each line is one message. (Without it, the messages given, or the two defaults.)
    #[arg(long)]
    interactive: bool,

    /// Print replies as hex bytes, for binary data.
    #[arg(long)]
    hex: bool,

    /// Give up on connecting, sending or receiving after this many seconds (with --udp:
    /// on one datagram's echo, before sending it again).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    timeout: f64,

    /// UDP: each message is one datagram, sent again (up to --retries times) if its echo
    /// does not come back within --timeout. A message must fit one datagram.
    #[arg(long)]
    udp: bool,

    /// TLS: the conversation inside a TLS session (also: --host tls://HOST:PORT).
    #[arg(long)]
    tls: bool,

    /// With --tls: trust the certificate(s) in this PEM file (echod's --tls-cert).
    #[arg(long, value_name = "FILE")]
    ca: Option<std::path::PathBuf>,

    /// With --tls: accept any certificate (echod's ephemeral self-signed one).
    #[arg(long)]
    insecure: bool,

    /// With --udp: how many times a datagram is sent again before giving up.
    #[arg(long, default_value_t = 3)]
    retries: u32,

    /// Messages to send, one after another. Default: "Hello, world" and "汉语/漢語 Hànyǔ".
    messages: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("client: {err}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        return Err(format!(
            "--timeout must be a positive number, not {}",
            args.timeout
        ));
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    if args.udp {
        return run_udp(args, timeout);
    }
    // `ws://HOST:PORT/PATH` and `wss://…`: a WebSocket conversation instead.
    if let Some((scheme, rest)) = args.host.split_once("://")
        && (scheme == "ws" || scheme == "wss")
    {
        let authority = rest.split('/').next().unwrap_or(rest);
        let (host, port) = authority
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
            .ok_or_else(|| format!("{}: expected {scheme}://HOST:PORT/PATH", args.host))?;
        let socket = connect(host, port, timeout)?;
        let tls = (scheme == "wss").then_some((host, args.ca.as_deref(), args.insecure));
        let messages: Vec<&str> = if args.messages.is_empty() {
            DEFAULT_MESSAGES.to_vec()
        } else {
            args.messages.iter().map(String::as_str).collect()
        };
        return ws::run(&args.host, socket, tls, &messages, args.hex);
    }
    // `tls://HOST:PORT` says both what to speak and where.
    let (tls, host, port) = match args.host.strip_prefix("tls://") {
        Some(host_port) => {
            let (host, port) = host_port
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
                .ok_or_else(|| format!("{}: expected tls://HOST:PORT", args.host))?;
            (true, host.to_string(), port)
        }
        None => (args.tls, args.host.clone(), args.port),
    };
    let mut stream: Box<dyn Duplex> = match host.strip_prefix("unix:") {
        Some(path) => Box::new(connect_unix(path, timeout)?),
        None if tls => {
            let socket = connect(&host, port, timeout)?;
            Box::new(tls::wrap(socket, &host, args.ca.as_deref(), args.insecure)?)
        }
        None => Box::new(connect(&host, port, timeout)?),
    };
    let stream = stream.as_mut();

    if args.interactive {
        return converse(stream, args.hex);
    }
    let messages: Vec<&str> = if args.messages.is_empty() {
        DEFAULT_MESSAGES.to_vec()
    } else {
        args.messages.iter().map(String::as_str).collect()
    };
    for message in messages {
        let reply = echo(stream, message.as_bytes())?;
        println!("Received: {}", show(&reply, args.hex));
    }
    Ok(())
}

/// `--udp`: each message a datagram to the first address the host resolves to; an echo
/// must come back whole, from the server, within the timeout (a few tries: UDP loses).
fn run_udp(args: &Args, timeout: Duration) -> Result<(), String> {
    let host = args.host.strip_prefix("udp:").unwrap_or(&args.host);
    let server = (host, args.port)
        .to_socket_addrs()
        .map_err(|err| format!("cannot resolve {host}: {err}"))?
        .next()
        .ok_or_else(|| format!("{host} resolved to no address"))?;
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket =
        UdpSocket::bind(local).map_err(|err| format!("cannot open a UDP socket: {err}"))?;
    // Connected: the kernel then delivers only the server's datagrams, and reports its
    // ICMP "port unreachable" as ECONNREFUSED.
    socket
        .connect(server)
        .and_then(|()| socket.set_read_timeout(Some(timeout)))
        .map_err(|err| format!("cannot reach {server}: {err}"))?;
    let messages: Vec<&str> = if args.messages.is_empty() {
        DEFAULT_MESSAGES.to_vec()
    } else {
        args.messages.iter().map(String::as_str).collect()
    };
    for message in messages {
        let reply = udp_echo(&socket, message.as_bytes(), args.retries)?;
        println!("Received: {}", show(&reply, args.hex));
    }
    Ok(())
}

/// One datagram out, its echo back (sent again on a timeout, up to `retries` times).
fn udp_echo(socket: &UdpSocket, message: &[u8], retries: u32) -> Result<Vec<u8>, String> {
    let mut buf = vec![0; 65_536];
    for _ in 0..=retries {
        socket
            .send(message)
            .map_err(|err| format!("send failed: {err}"))?;
        match socket.recv(&mut buf) {
            Ok(n) if buf[..n] == *message => return Ok(buf[..n].to_vec()),
            Ok(n) => {
                return Err(format!(
                    "the echo differs: sent {:?}, received {:?}",
                    String::from_utf8_lossy(message),
                    String::from_utf8_lossy(&buf[..n])
                ));
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                return Err("nobody answers there (ICMP port unreachable)".to_string());
            }
            Err(err) => return Err(format!("receive failed: {err}")),
        }
    }
    Err(format!(
        "no echo after {} tries (each waited --timeout)",
        retries + 1
    ))
}

/// A connected socket of either kind: the conversation is the same bytes both ways.
trait Duplex: Read + Write {}
impl<T: Read + Write> Duplex for T {}

/// A Unix socket: a path, or `@NAME` in Linux's abstract namespace.
fn connect_unix(path: &str, timeout: Duration) -> Result<UnixStream, String> {
    let connected = match path.strip_prefix('@') {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|addr| UnixStream::connect_addr(&addr))
        }
        _ => UnixStream::connect(path),
    };
    let stream = connected.map_err(|err| format!("cannot connect to unix:{path}: {err}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

/// getaddrinfo, then each address in turn until one connects (the tutorial's loop).
fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|err| format!("cannot resolve {host}: {err}"))?
        .collect();
    let mut failures = Vec::new();
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(stream) => {
                stream
                    .set_read_timeout(Some(timeout))
                    .map_err(|e| e.to_string())?;
                stream
                    .set_write_timeout(Some(timeout))
                    .map_err(|e| e.to_string())?;
                return Ok(stream);
            }
            Err(err) => failures.push(format!("{addr}: {err}")),
        }
    }
    Err(format!(
        "cannot connect to {host}:{port} (tried {})",
        if failures.is_empty() {
            "no addresses".to_string()
        } else {
            failures.join("; ")
        }
    ))
}

/// Sends `message` and reads back exactly `message.len()` bytes; they must match.
fn echo(stream: &mut dyn Duplex, message: &[u8]) -> Result<Vec<u8>, String> {
    stream
        .write_all(message)
        .map_err(|err| format!("send failed: {err}"))?;
    let mut reply = vec![0; message.len()];
    let mut received = 0;
    // One read may return only part of the echo: keep reading until all of it is here.
    while received < reply.len() {
        match stream.read(&mut reply[received..]) {
            Ok(0) => {
                return Err(format!(
                    "the server closed the connection after {received} of {} bytes",
                    message.len()
                ));
            }
            Ok(n) => received += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!(
                    "timed out waiting for the echo ({received} of {} bytes received)",
                    message.len()
                ));
            }
            Err(err) => return Err(format!("receive failed: {err}")),
        }
    }
    if reply != message {
        return Err(format!(
            "the echo differs: sent {:?}, received {:?}",
            String::from_utf8_lossy(message),
            String::from_utf8_lossy(&reply)
        ));
    }
    Ok(reply)
}

/// The interactive loop: prompt, send a line, print the reply, until EOF.
fn converse(stream: &mut dyn Duplex, hex: bool) -> Result<(), String> {
    let stdin = io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        print!("{PROMPT}");
        io::stdout().flush().map_err(|e| e.to_string())?;
        let Some(line) = lines.next() else {
            println!();
            return Ok(());
        };
        let line = line.map_err(|err| format!("cannot read stdin: {err}"))?;
        if line.is_empty() {
            continue; // nothing to send, and an empty echo would be indistinguishable
        }
        let reply = echo(stream, line.as_bytes())?;
        println!("Received: {}", show(&reply, hex));
    }
}

fn show(bytes: &[u8], hex: bool) -> String {
    if hex {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}
