//! Who is on the other end of a connection, as logs show it and the per-address cap
//! counts it. Read once, when the connection is accepted.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use mio::net::UnixStream;

/// Who a client is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A TCP client's address (an IPv4 client of a dual-stack listener already unmapped).
    Ip(SocketAddr),
    /// A Unix client: its process and user as the kernel vouches for them (`SO_PEERCRED`),
    /// where the system tells.
    Local { pid: Option<i32>, uid: Option<u32> },
}

impl Peer {
    /// The address the per-IP cap counts; Unix clients have none and are not capped by it.
    pub fn ip(&self) -> Option<IpAddr> {
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
