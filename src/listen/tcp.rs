//! `--listen HOST:PORT`: resolved, bound, non-blocking TCP listeners.
//!
//! This is the tutorial's *create, bind, listen*: a host name is resolved with getaddrinfo
//! (`ToSocketAddrs`), and every address it yields gets its own socket. `socket2` sets the
//! options std does not expose before `bind` (address reuse, IPv6-only, the backlog).

use std::io;
use std::net::SocketAddr;

use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

use super::{BindOptions, ListenError, resolve};

/// Resolves one `HOST:PORT` and binds a TCP listener on every address it yields that
/// `seen` does not hold yet (see [`resolve::bind_resolved`]).
pub(super) fn bind_spec(
    spec: &str,
    options: &BindOptions,
    seen: &mut Vec<SocketAddr>,
) -> Result<Vec<(TcpListener, SocketAddr)>, ListenError> {
    resolve::bind_resolved(spec, options, seen, |addr| {
        let listener = bind_one(addr, options)?;
        Ok((listener.local_addr()?, listener))
    })
}

/// socket → options → bind → listen, then hand the socket to mio.
fn bind_one(addr: SocketAddr, options: &BindOptions) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // A restarted server may bind while old connections linger in TIME_WAIT.
    socket.set_reuse_address(true)?;
    if options.reuse_port {
        // Several processes, one port: the kernel spreads new connections among them.
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        // Set explicitly: the system default (net.ipv6.bindv6only) varies between machines.
        socket.set_only_v6(options.ipv6_only)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(options.backlog).unwrap_or(i32::MAX))?;
    Ok(TcpListener::from_std(socket.into()))
}

/// How a peer address reads in logs: an IPv4 client of a dual-stack listener arrives as
/// `::ffff:a.b.c.d`, which is shown as the plain IPv4 address it is.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_unmaps_ipv4_in_ipv6() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:9".parse().unwrap();
        assert_eq!(
            canonical(mapped),
            "127.0.0.1:9".parse::<SocketAddr>().unwrap()
        );
    }
}
