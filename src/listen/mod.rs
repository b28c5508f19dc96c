//! Where listening sockets come from, and the one shape they all end in.
//!
//! A socket is bound from a `--listen` spec (`tcp` for `HOST:PORT`, `unix` for
//! `unix:PATH` and `unix:@NAME`, `udp` for `udp:HOST:PORT`) or inherited from systemd
//! ([`inherited`]). Either way a stream socket becomes a [`Listener`]: a non-blocking
//! socket, the [`Endpoint`] it serves, and, for a Unix path echod created, the duty to
//! remove that file again; a datagram socket becomes a [`Datagram`]. The loop registers
//! them and serves them without ever knowing how they came to be.

pub mod inherited;
mod resolve;
mod tcp;
mod udp;
mod unix;

use std::fmt;
use std::io;
use std::net::SocketAddr;

use mio::event::Source;
use mio::net::{TcpListener, UdpSocket, UnixListener};
use mio::{Interest, Registry, Token};

use crate::transport::{Peer, Protocol, Stream};
pub use tcp::canonical;
use unix::SocketFile;

/// How sockets are bound: the `--listen`-related settings of a [`Config`](crate::Config).
#[derive(Clone, Copy, Debug)]
pub struct BindOptions {
    /// `listen(2)` backlog.
    pub backlog: u32,
    /// Whether a wildcard IPv6 listener refuses IPv4 clients.
    pub ipv6_only: bool,
    /// `SO_REUSEPORT`: let several processes bind the same TCP port.
    pub reuse_port: bool,
    /// Permission bits of the socket files echod creates for `unix:PATH`.
    pub unix_mode: u32,
    /// Receive and send buffer size asked for each UDP socket (`SO_RCVBUF`, `SO_SNDBUF`).
    pub udp_buffer: usize,
}

/// A failure to set up listening, naming the address it concerns.
#[derive(Debug)]
pub struct ListenError {
    /// The `--listen` value, resolved address, path or inherited descriptor that failed.
    pub addr: String,
    /// What the OS (or the resolver, or echod's own checks) said.
    pub source: io::Error,
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot listen on {}: {}", self.addr, self.source)
    }
}

impl std::error::Error for ListenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl ListenError {
    pub(crate) fn new(addr: impl fmt::Display, source: io::Error) -> Self {
        ListenError {
            addr: addr.to_string(),
            source,
        }
    }
}

/// What a listener serves, as logs and `--listen` spell it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP address, with the real port when 0 was asked for.
    Tcp(SocketAddr),
    /// A TCP address whose connections speak TLS.
    Tls(SocketAddr),
    /// A TCP address whose connections speak WebSocket.
    Ws(SocketAddr),
    /// A TCP address whose connections speak WebSocket over TLS.
    Wss(SocketAddr),
    /// A Unix socket file.
    UnixPath(std::path::PathBuf),
    /// A Linux abstract-namespace Unix socket (no file; gone when the socket closes).
    UnixAbstract(String),
    /// An inherited Unix socket whose address could not be read back.
    UnixUnnamed,
    /// A UDP socket, with the real port when 0 was asked for.
    Udp(SocketAddr),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "{addr}"),
            Endpoint::Tls(addr) => write!(f, "tls:{addr}"),
            Endpoint::Ws(addr) => write!(f, "ws:{addr}"),
            Endpoint::Wss(addr) => write!(f, "wss:{addr}"),
            Endpoint::UnixPath(path) => write!(f, "unix:{}", path.display()),
            Endpoint::UnixAbstract(name) => write!(f, "unix:@{name}"),
            Endpoint::UnixUnnamed => write!(f, "unix:(unnamed)"),
            Endpoint::Udp(addr) => write!(f, "udp:{addr}"),
        }
    }
}

/// A bound, listening, non-blocking socket.
#[derive(Debug)]
pub enum ListenSocket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A listening socket, what it serves, and the socket file to remove when it closes.
#[derive(Debug)]
pub struct Listener {
    /// Registered with the loop's `Poll` under the listener's named token.
    pub socket: ListenSocket,
    /// What it serves.
    pub endpoint: Endpoint,
    /// `LISTEN_FDNAMES`' name for an inherited socket.
    pub name: Option<String>,
    /// What its connections speak above the raw stream (chosen for each as it is admitted).
    pub protocol: Protocol,
    /// Removes the socket file at drop, if echod created it (never an inherited one's).
    _file: Option<SocketFile>,
}

impl Listener {
    /// Takes the next client off the queue, as a [`Stream`] and who it is.
    pub(crate) fn accept(&self) -> io::Result<(Stream, Peer)> {
        match &self.socket {
            ListenSocket::Tcp(listener) => {
                let (stream, addr) = listener.accept()?;
                Ok((Stream::Tcp(stream), Peer::Ip(canonical(addr))))
            }
            ListenSocket::Unix(listener) => {
                let (stream, _addr) = listener.accept()?;
                let peer = Peer::of_unix(&stream);
                Ok((Stream::Unix(stream), peer))
            }
        }
    }
}

impl std::os::fd::AsFd for Listener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match &self.socket {
            ListenSocket::Tcp(listener) => listener.as_fd(),
            ListenSocket::Unix(listener) => listener.as_fd(),
        }
    }
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{} (\"{name}\")", self.endpoint),
            None => write!(f, "{}", self.endpoint),
        }
    }
}

crate::delegate::delegate_source!(ListenSocket, ListenSocket::Tcp, ListenSocket::Unix);

impl Source for Listener {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        self.socket.register(registry, token, interest)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        self.socket.reregister(registry, token, interest)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.socket.deregister(registry)
    }
}

/// A bound UDP socket (from `--listen udp:…` or systemd) and its address.
#[derive(Debug)]
pub struct Datagram {
    /// Registered with the loop's `Poll` under its UDP token.
    pub socket: UdpSocket,
    /// The address it is bound to (its real port when 0 was asked for).
    pub addr: SocketAddr,
    /// `LISTEN_FDNAMES`' name for an inherited socket.
    pub name: Option<String>,
}

/// Everything bound: stream listeners and datagram sockets.
#[derive(Debug, Default)]
pub struct Bound {
    pub listeners: Vec<Listener>,
    pub datagrams: Vec<Datagram>,
}

/// A `--listen` value, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenSpec {
    /// `HOST:PORT`, resolved with getaddrinfo.
    Tcp(String),
    /// `tls:HOST:PORT`: TCP, resolved the same way, each connection a TLS session.
    Tls(String),
    /// `ws:HOST:PORT`: TCP, each connection a WebSocket.
    Ws(String),
    /// `wss:HOST:PORT`: TCP, each connection a WebSocket over TLS.
    Wss(String),
    /// `udp:HOST:PORT`, resolved the same way.
    Udp(String),
    /// `unix:PATH`: a socket file.
    UnixPath(std::path::PathBuf),
    /// `unix:@NAME`: Linux's abstract namespace.
    UnixAbstract(String),
}

/// The longest Unix socket address: `sun_path` holds 108 bytes, one of them the path's
/// closing NUL (or, for an abstract name, the leading one). A longer path can still be
/// created (echod binds inside a short private directory, then links the file in), but
/// no client could ever connect to it.
const UNIX_ADDRESS_MAX: usize = 107;

impl ListenSpec {
    /// `unix:@NAME`, `unix:PATH`, `udp:HOST:PORT`, or else `HOST:PORT`. Checks the form
    /// only (a name is resolved when it is bound): what is wrong is said in one line.
    pub fn parse(spec: &str) -> Result<ListenSpec, String> {
        if let Some(host_port) = spec.strip_prefix("ws:") {
            check_host_port(host_port, "ws:HOST:PORT, e.g. ws:localhost:50080")?;
            return Ok(ListenSpec::Ws(host_port.to_string()));
        }
        if let Some(host_port) = spec.strip_prefix("wss:") {
            check_host_port(host_port, "wss:HOST:PORT, e.g. wss:localhost:50443")?;
            return Ok(ListenSpec::Wss(host_port.to_string()));
        }
        if let Some(host_port) = spec.strip_prefix("tls:") {
            check_host_port(host_port, "tls:HOST:PORT, e.g. tls:localhost:50443")?;
            return Ok(ListenSpec::Tls(host_port.to_string()));
        }
        if let Some(host_port) = spec.strip_prefix("udp:") {
            check_host_port(host_port, "udp:HOST:PORT, e.g. udp:localhost:50007")?;
            return Ok(ListenSpec::Udp(host_port.to_string()));
        }
        let Some(rest) = spec.strip_prefix("unix:") else {
            check_host_port(spec, "HOST:PORT, e.g. localhost:50007")?;
            return Ok(ListenSpec::Tcp(spec.to_string()));
        };
        let (named, parsed) = match rest.strip_prefix('@') {
            Some(name) => (name, ListenSpec::UnixAbstract(name.to_string())),
            None => (rest, ListenSpec::UnixPath(rest.into())),
        };
        if named.is_empty() {
            return Err("names no socket (unix:PATH or unix:@NAME)".to_string());
        }
        if named.len() > UNIX_ADDRESS_MAX {
            return Err(format!(
                "too long ({} bytes; a Unix socket address holds at most {UNIX_ADDRESS_MAX}): \
                 use a shorter path",
                named.len()
            ));
        }
        Ok(parsed)
    }
}

/// `HOST:PORT` as written: a host (a name, an IPv4 address, or an IPv6 one in brackets)
/// and a port from 0 to 65535. `form` is how the flag should have looked. The message
/// is what follows the flag's value in "invalid value … for --listen: …".
fn check_host_port(host_port: &str, form: &str) -> Result<(), String> {
    if host_port.is_empty() {
        return Err(format!("names no address ({form})"));
    }
    let Some((host, port)) = host_port.rsplit_once(':') else {
        return Err(format!("no port ({form})"));
    };
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.contains(':') && !bracketed {
        return Err("an IPv6 address goes in brackets, e.g. [::1]:50007".to_string());
    }
    if host.is_empty() || host == "[]" {
        return Err(format!("no host ({form})"));
    }
    if port.is_empty() {
        return Err(format!("no port ({form})"));
    }
    match port.parse::<u64>() {
        Ok(n) if n <= u64::from(u16::MAX) => Ok(()),
        Ok(n) => Err(format!("port {n} is out of range (0 to 65535)")),
        Err(_) => Err(format!("'{port}' is not a port number ({form})")),
    }
}

/// Binds a TCP `HOST:PORT` (every address it resolves to), each listener serving
/// `endpoint(addr)`: plain TCP or TLS.
fn bind_tcp(
    spec: &str,
    options: &BindOptions,
    seen: &mut Vec<SocketAddr>,
    endpoint: fn(SocketAddr) -> Endpoint,
    listeners: &mut Vec<Listener>,
) -> Result<(), ListenError> {
    for (socket, addr) in tcp::bind_spec(spec, options, seen)? {
        listeners.push(Listener::new(
            ListenSocket::Tcp(socket),
            endpoint(addr),
            None,
            None,
        ));
    }
    Ok(())
}

/// Binds every spec, in order; TCP and UDP addresses are each deduplicated.
///
/// On error, whatever was already bound is dropped again (and socket files removed).
pub fn bind_all(specs: &[String], options: &BindOptions) -> Result<Bound, ListenError> {
    let mut listeners = Vec::new();
    let mut datagrams = Vec::new();
    let mut seen = Vec::new();
    let mut seen_udp = Vec::new();
    for spec in specs {
        let parsed = ListenSpec::parse(spec).map_err(|why| {
            ListenError::new(spec, io::Error::new(io::ErrorKind::InvalidInput, why))
        })?;
        match parsed {
            ListenSpec::Tcp(spec) => {
                bind_tcp(&spec, options, &mut seen, Endpoint::Tcp, &mut listeners)?;
            }
            ListenSpec::Tls(spec) => {
                bind_tcp(&spec, options, &mut seen, Endpoint::Tls, &mut listeners)?;
            }
            ListenSpec::Ws(spec) => {
                bind_tcp(&spec, options, &mut seen, Endpoint::Ws, &mut listeners)?;
            }
            ListenSpec::Wss(spec) => {
                bind_tcp(&spec, options, &mut seen, Endpoint::Wss, &mut listeners)?;
            }
            ListenSpec::Udp(spec) => {
                for (socket, addr) in udp::bind_spec(&spec, options, &mut seen_udp)? {
                    datagrams.push(Datagram {
                        socket,
                        addr,
                        name: None,
                    });
                }
            }
            ListenSpec::UnixPath(path) => {
                let (socket, file) = unix::bind_path(&path, options)?;
                listeners.push(Listener::new(
                    ListenSocket::Unix(socket),
                    Endpoint::UnixPath(path),
                    None,
                    Some(file),
                ));
            }
            ListenSpec::UnixAbstract(name) => {
                let socket = unix::bind_abstract(&name, options)?;
                listeners.push(Listener::new(
                    ListenSocket::Unix(socket),
                    Endpoint::UnixAbstract(name),
                    None,
                    None,
                ));
            }
        }
    }
    Ok(Bound {
        listeners,
        datagrams,
    })
}

/// Binds the `--metrics` endpoint's `HOST:PORT`, every address it resolves to. Never with
/// `SO_REUSEPORT`: a metrics port that is also an echo port must fail to bind, not share.
pub fn bind_metrics(
    spec: &str,
    options: &BindOptions,
) -> Result<Vec<(mio::net::TcpListener, SocketAddr)>, ListenError> {
    let options = BindOptions {
        reuse_port: false,
        ..*options
    };
    tcp::bind_spec(spec, &options, &mut Vec::new()).map_err(|err| ListenError {
        addr: format!("--metrics {}", err.addr),
        ..err
    })
}

impl Listener {
    /// `file`: the socket file echod created for it (removed again when it is dropped);
    /// `None` for TCP, abstract names and anything inherited, which is not echod's to remove.
    fn new(
        socket: ListenSocket,
        endpoint: Endpoint,
        name: Option<String>,
        file: Option<SocketFile>,
    ) -> Self {
        // The listener's kind decides its connections' protocol, once.
        let protocol = match endpoint {
            Endpoint::Tls(_) => Protocol::Tls,
            Endpoint::Ws(_) => Protocol::Ws,
            Endpoint::Wss(_) => Protocol::Wss,
            _ => Protocol::Plain,
        };
        Listener {
            socket,
            endpoint,
            name,
            protocol,
            _file: file,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_by_prefix() {
        assert_eq!(
            ListenSpec::parse("localhost:7"),
            Ok(ListenSpec::Tcp("localhost:7".into()))
        );
        assert_eq!(
            ListenSpec::parse("unix:/run/echod.sock"),
            Ok(ListenSpec::UnixPath("/run/echod.sock".into()))
        );
        assert_eq!(
            ListenSpec::parse("unix:@echod"),
            Ok(ListenSpec::UnixAbstract("echod".into()))
        );
        assert_eq!(
            ListenSpec::parse("udp:[::]:7"),
            Ok(ListenSpec::Udp("[::]:7".into()))
        );
        assert!(ListenSpec::parse("unix:").is_err());
        assert!(ListenSpec::parse("unix:@").is_err());
    }

    #[test]
    fn a_malformed_address_says_what_is_wrong() {
        let said = |spec: &str| ListenSpec::parse(spec).unwrap_err();
        assert!(said("nonsense").starts_with("no port (HOST:PORT"));
        assert!(said("localhost:99999").contains("port 99999 is out of range"));
        assert!(said("localhost:http").contains("'http' is not a port number"));
        assert!(said("udp:").starts_with("names no address (udp:HOST:PORT"));
        assert!(said("udp:localhost").starts_with("no port (udp:HOST:PORT"));
        assert!(said(":7").starts_with("no host"));
        assert!(said("::1:7").contains("in brackets"));
        let long = format!("unix:/tmp/{}", "x".repeat(103));
        assert!(
            said(&long)
                .starts_with("too long (108 bytes; a Unix socket address holds at most 107)")
        );
        let longest = format!("unix:/tmp/{}", "x".repeat(102));
        assert!(ListenSpec::parse(&longest).is_ok());
        assert!(ListenSpec::parse("[::]:0").is_ok());
        assert!(ListenSpec::parse("udp:[::1]:65535").is_ok());
    }
}
