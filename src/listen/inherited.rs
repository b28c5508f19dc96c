//! Sockets passed in by systemd: socket activation (`sd_listen_fds(3)`).
//!
//! systemd binds the sockets a `.socket` unit names (port 7 needs no root in echod, only in
//! systemd), then starts echod with them as descriptors 3, 4, … and says so in
//! `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`. The `listenfd` crate reads those and
//! checks each descriptor's family and type as it hands it over; echod decides what it can
//! serve, makes it non-blocking, and wraps it as a [`Listener`] like any other.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use listenfd::ListenFd;
use log::{info, warn};
use mio::net::{TcpListener, UnixListener};
use socket2::SockRef;

use super::{Datagram, Endpoint, ListenError, ListenSocket, Listener};

/// What systemd passed in, and what echod took of it.
#[derive(Debug, Default)]
pub struct Inherited {
    /// The stream listeners echod serves.
    pub listeners: Vec<Listener>,
    /// The UDP sockets echod serves.
    pub datagrams: Vec<Datagram>,
    /// How many descriptors were passed, served or not. Any at all means echod was
    /// started as a service, so it must not fall back to binding its default address.
    pub offered: usize,
}

/// Takes every socket systemd passed in; none when `LISTEN_FDS` is unset or meant for
/// another process.
///
/// A descriptor that is not a socket at all is an error (the unit is wrong). A socket of a
/// kind echod does not serve (a Unix datagram socket, one not listening) is skipped with
/// a warning; TCP, Unix stream and UDP sockets are served.
pub fn take_all() -> Result<Inherited, ListenError> {
    let Some(count) = std::env::var_os("LISTEN_FDS") else {
        return Ok(Inherited::default());
    };
    let ours = std::process::id().to_string();
    if let Some(pid) = std::env::var("LISTEN_PID").ok().filter(|pid| *pid != ours) {
        warn!(
            "LISTEN_FDS={} is meant for process {pid}, not this one ({ours}): ignored",
            count.to_string_lossy()
        );
    }
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|names| names.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    // Reads and clears LISTEN_FDS and LISTEN_PID (so no child of ours inherits them).
    let mut passed = ListenFd::from_env();
    let mut listeners = Vec::new();
    let mut datagrams = Vec::new();
    for index in 0..passed.len() {
        let name = names.get(index).filter(|name| !name.is_empty()).cloned();
        let described = match &name {
            Some(name) => format!("inherited socket {index} (\"{name}\")"),
            None => format!("inherited socket {index}"),
        };
        let error = |source| ListenError::new(&described, source);
        let Some(socket) = take_one(&mut passed, index).map_err(error)? else {
            continue;
        };
        match adopt(socket) {
            Ok(Adopted::Stream(socket, endpoint)) => {
                let endpoint = match (endpoint, name.as_deref().map(named_protocol)) {
                    (Endpoint::Tcp(addr), Some(Some(protocol))) => protocol(addr),
                    (endpoint, _) => endpoint,
                };
                let listener = Listener::new(socket, endpoint, name, None);
                info!("adopted {described}: {}", listener.endpoint);
                listeners.push(listener);
            }
            Ok(Adopted::Datagram(socket, addr)) => {
                info!("adopted {described}: udp:{addr}");
                datagrams.push(Datagram { socket, addr, name });
            }
            Err(why) => warn!("{described}: {why}; skipped"),
        }
    }
    Ok(Inherited {
        listeners,
        datagrams,
        offered: passed.len(),
    })
}

/// The protocol a TCP socket's `FileDescriptorName=` asks for: `tls`, `ws` or `wss`, alone
/// or before a `-` (`tls-echo`); anything else is plain (systemd passes sockets, not
/// protocols: the name is how a unit says which).
fn named_protocol(name: &str) -> Option<fn(std::net::SocketAddr) -> Endpoint> {
    let kind = name.split('-').next().unwrap_or(name);
    match kind {
        "tls" => Some(Endpoint::Tls),
        "ws" => Some(Endpoint::Ws),
        "wss" => Some(Endpoint::Wss),
        _ => None,
    }
}

/// What a passed descriptor turned out to be.
enum Passed {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
    Udp(std::net::UdpSocket),
    /// A socket echod does not serve: described for the warning.
    Other(&'static str),
}

/// Takes descriptor `index` as the first kind `listenfd` accepts it as. `Ok(None)` if it
/// was already taken; an error if it is not a socket at all.
fn take_one(passed: &mut ListenFd, index: usize) -> io::Result<Option<Passed>> {
    if let Ok(taken) = passed.take_tcp_listener(index) {
        return Ok(taken.map(Passed::Tcp));
    }
    if let Ok(taken) = passed.take_unix_listener(index) {
        return Ok(taken.map(Passed::Unix));
    }
    if let Ok(taken) = passed.take_udp_socket(index) {
        return Ok(taken.map(Passed::Udp));
    }
    if let Ok(taken) = passed.take_unix_datagram(index) {
        return Ok(
            taken.map(|_| Passed::Other("a Unix datagram socket, which echod does not serve"))
        );
    }
    // Neither stream nor datagram of a known family. Ask the kernel what it is: a
    // descriptor that is no socket at all (a file, a pipe) means the unit is wrong.
    let Some(fd) = passed.take_raw_fd(index)? else {
        return Ok(None);
    };
    // SAFETY: listenfd handed the descriptor over: it is open, and ours alone from now on.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    match SockRef::from(&owned).r#type() {
        Err(err) if err.raw_os_error() == Some(libc::ENOTSOCK) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} is not a socket"),
        )),
        _ => Ok(Some(Passed::Other(
            "a socket of a kind echod does not serve",
        ))),
    }
}

/// A passed socket ready for the loop.
enum Adopted {
    Stream(ListenSocket, Endpoint),
    Datagram(mio::net::UdpSocket, std::net::SocketAddr),
}

/// Makes a passed socket non-blocking for mio, after checking a stream socket is
/// listening; a UDP socket is asked for what the batch receiver reads.
fn adopt(passed: Passed) -> Result<Adopted, String> {
    let text = |err: io::Error| err.to_string();
    match passed {
        Passed::Tcp(listener) => {
            ensure_listening(&listener)?;
            listener.set_nonblocking(true).map_err(text)?;
            let addr = listener.local_addr().map_err(text)?;
            let socket = ListenSocket::Tcp(TcpListener::from_std(listener));
            Ok(Adopted::Stream(
                socket,
                Endpoint::Tcp(super::canonical(addr)),
            ))
        }
        Passed::Unix(listener) => {
            ensure_listening(&listener)?;
            listener.set_nonblocking(true).map_err(text)?;
            let endpoint = unix_endpoint(&listener);
            let socket = ListenSocket::Unix(UnixListener::from_std(listener));
            Ok(Adopted::Stream(socket, endpoint))
        }
        Passed::Udp(socket) => {
            socket.set_nonblocking(true).map_err(text)?;
            let socket = mio::net::UdpSocket::from_std(socket);
            super::udp::adopt(&socket).map_err(text)?;
            let addr = socket.local_addr().map_err(text)?;
            Ok(Adopted::Datagram(socket, addr))
        }
        Passed::Other(what) => Err(format!("is {what}")),
    }
}

/// A connected socket (a unit with `Accept=yes`) would make `accept` fail forever.
fn ensure_listening(socket: &impl AsFd) -> Result<(), String> {
    match SockRef::from(socket).is_listener() {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!(
            "descriptor {} is not listening (echod accepts by itself: use Accept=no)",
            socket.as_fd().as_raw_fd()
        )),
        Err(err) => Err(err.to_string()),
    }
}

/// The path or abstract name an inherited Unix listener is bound to, for the logs.
fn unix_endpoint(listener: &std::os::unix::net::UnixListener) -> Endpoint {
    let Ok(addr) = listener.local_addr() else {
        return Endpoint::UnixUnnamed;
    };
    if let Some(path) = addr.as_pathname() {
        return Endpoint::UnixPath(path.to_path_buf());
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::linux::net::SocketAddrExt;
        if let Some(name) = addr.as_abstract_name() {
            return Endpoint::UnixAbstract(String::from_utf8_lossy(name).into_owned());
        }
    }
    Endpoint::UnixUnnamed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_name_may_ask_for_tls_or_websocket() {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 7));
        let kind = |name: &str| named_protocol(name).map(|endpoint| endpoint(addr));
        assert_eq!(kind("tls"), Some(Endpoint::Tls(addr)));
        assert_eq!(kind("tls-echo"), Some(Endpoint::Tls(addr)));
        assert_eq!(kind("ws"), Some(Endpoint::Ws(addr)));
        assert_eq!(kind("wss-public"), Some(Endpoint::Wss(addr)));
        assert_eq!(kind("echo-tcp"), None);
        assert_eq!(kind("tlsx"), None);
    }
}
