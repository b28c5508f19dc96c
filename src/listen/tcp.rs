//! `--listen HOST:PORT`: resolved, bound, non-blocking TCP listeners.
//!
//! This is the tutorial's *create, bind, listen*: a host name is resolved with getaddrinfo
//! (`ToSocketAddrs`), and every address it yields gets its own socket. `socket2` sets the
//! options std does not expose before `bind` (address reuse, IPv6-only, the backlog).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use log::warn;
use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

use super::{BindOptions, ListenError};

/// Resolves one `HOST:PORT` and binds every address it yields that `seen` does not hold
/// yet, in order; returns each listener with the address it actually got.
///
/// An address that was only *implied* (the IPv6 loopback that `localhost` stands for) may
/// be missing on a machine without IPv6: that one is skipped with a warning. Any other
/// failure is an error naming the address.
pub(super) fn bind_spec(
    spec: &str,
    options: &BindOptions,
    seen: &mut Vec<SocketAddr>,
) -> Result<Vec<(TcpListener, SocketAddr)>, ListenError> {
    let mut listeners = Vec::new();
    for target in resolve(spec)? {
        if seen.contains(&target.addr) {
            continue;
        }
        seen.push(target.addr);
        let bound = bind_one(target.addr, options)
            .and_then(|listener| Ok((listener.local_addr()?, listener)));
        match bound {
            Ok((addr, listener)) => listeners.push((listener, addr)),
            Err(err) if target.implied && address_family_missing(&err) => {
                warn!("skipping {}: {err}", target.addr);
            }
            Err(err) if options.reuse_port && err.raw_os_error() == Some(libc::EADDRINUSE) => {
                let hint = format!(
                    "{err} (--reuse-port shares a port only with sockets that also set it)"
                );
                return Err(ListenError::new(
                    target.addr,
                    io::Error::new(err.kind(), hint),
                ));
            }
            Err(source) => return Err(ListenError::new(target.addr, source)),
        }
    }
    Ok(listeners)
}

/// One address to bind, and whether the user named it or `localhost` merely implied it.
struct Target {
    addr: SocketAddr,
    implied: bool,
}

/// getaddrinfo, plus RFC 6761's rule that `localhost` means loopback on both families
/// (many `/etc/hosts` files list only 127.0.0.1, yet `nc ::1` users expect an answer).
fn resolve(spec: &str) -> Result<Vec<Target>, ListenError> {
    let error = |source| ListenError::new(spec, source);
    let resolved: Vec<SocketAddr> = spec.to_socket_addrs().map_err(error)?.collect();
    if resolved.is_empty() {
        return Err(error(io::Error::new(
            io::ErrorKind::NotFound,
            "the name resolved to no address",
        )));
    }
    let mut targets: Vec<Target> = resolved
        .iter()
        .map(|&addr| Target {
            addr,
            implied: false,
        })
        .collect();
    if host_of(spec).eq_ignore_ascii_case("localhost") {
        let port = resolved[0].port();
        for ip in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            let addr = SocketAddr::new(ip, port);
            if !resolved.contains(&addr) {
                targets.push(Target {
                    addr,
                    implied: true,
                });
            }
        }
    }
    Ok(targets)
}

/// The `HOST` of `HOST:PORT` (brackets and all for an IPv6 literal).
fn host_of(spec: &str) -> &str {
    spec.rsplit_once(':').map_or(spec, |(host, _port)| host)
}

fn address_family_missing(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
    )
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
    fn host_of_splits_at_the_last_colon() {
        assert_eq!(host_of("localhost:50007"), "localhost");
        assert_eq!(host_of("[::1]:80"), "[::1]");
    }

    #[test]
    fn canonical_unmaps_ipv4_in_ipv6() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:9".parse().unwrap();
        assert_eq!(
            canonical(mapped),
            "127.0.0.1:9".parse::<SocketAddr>().unwrap()
        );
    }
}
