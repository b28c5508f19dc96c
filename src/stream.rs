//! The one seam between transports: a connected byte stream, TCP or Unix, and who is on
//! the other end of it.
//!
//! [`Connection`](crate::connection) serves both through [`Stream`] without knowing which
//! it has: reading, writing, half-closing and readiness mean the same on both. The few
//! things that differ (Nagle's algorithm, how a peer is named) are decided here, once.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};

use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};

/// A connected, non-blocking stream socket. Public so that the examples' clients (the load
/// generator) drive TCP and Unix sockets through the same seam as the server.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Turns Nagle's algorithm off on TCP: an echo is small and must go out at once.
    /// (Unix sockets have no such delay.)
    pub fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nodelay(true),
            Stream::Unix(_) => Ok(()),
        }
    }

    /// Sends our FIN (or its Unix equivalent): the peer reads EOF, and may still send.
    pub fn shutdown_writes(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }

    /// Whether a non-blocking connect has completed (`getpeername` succeeds): `Ok(false)`
    /// while it is still in progress.
    pub fn is_connected(&self) -> io::Result<bool> {
        let peer = match self {
            Stream::Tcp(s) => s.peer_addr().map(drop),
            Stream::Unix(s) => s.peer_addr().map(drop),
        };
        match peer {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The socket's pending error (`SO_ERROR`), if any.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Stream::Tcp(s) => s.take_error(),
            Stream::Unix(s) => s.take_error(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(()) // nothing is buffered in user space
    }
}

impl Source for Stream {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.register(registry, token, interest),
            Stream::Unix(s) => s.register(registry, token, interest),
        }
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.reregister(registry, token, interest),
            Stream::Unix(s) => s.reregister(registry, token, interest),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.deregister(registry),
            Stream::Unix(s) => s.deregister(registry),
        }
    }
}

/// Who a client is, as logs show it and as the per-address cap counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    /// A TCP client's address (an IPv4 client of a dual-stack listener already unmapped).
    Ip(SocketAddr),
    /// A Unix client: its process and user as the kernel vouches for them (`SO_PEERCRED`),
    /// where the system tells.
    Local { pid: Option<i32>, uid: Option<u32> },
}

impl Peer {
    /// The address the per-IP cap counts; Unix clients have none and are not capped by it.
    pub(crate) fn ip(&self) -> Option<IpAddr> {
        match self {
            Peer::Ip(addr) => Some(addr.ip()),
            Peer::Local { .. } => None,
        }
    }

    /// A Unix client's credentials, read once when it is accepted.
    pub(crate) fn of_unix(stream: &UnixStream) -> Peer {
        let (pid, uid) = peer_credentials(stream).unzip();
        Peer::Local { pid, uid }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Ip(addr) => write!(f, "{addr}"),
            Peer::Local {
                pid: Some(pid),
                uid: Some(uid),
            } => write!(f, "unix pid {pid} uid {uid}"),
            Peer::Local { .. } => write!(f, "unix peer"),
        }
    }
}

/// `SO_PEERCRED`: the pid and uid of the process that connected (Linux and Android).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn peer_credentials(stream: &UnixStream) -> Option<(i32, u32)> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` is `cred`'s size, as
    // getsockopt(2) requires; the descriptor is open for as long as `stream` lives.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some((cred.pid, cred.uid))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn peer_credentials(_stream: &UnixStream) -> Option<(i32, u32)> {
    None
}
