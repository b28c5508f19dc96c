//! `HOST:PORT` → the addresses to bind: getaddrinfo, RFC 6761's `localhost`, and the rules
//! for an address that cannot be bound. Shared by TCP listeners and UDP sockets.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use log::warn;

use super::{BindOptions, ListenError};

/// Resolves one `HOST:PORT` and binds (with `bind`) every address it yields that `seen`
/// does not hold yet, in order; returns each socket with the address it actually got.
///
/// An address that was only *implied* (the IPv6 loopback that `localhost` stands for) may
/// be missing on a machine without IPv6: that one is skipped with a warning. Any other
/// failure is an error naming the address.
pub(super) fn bind_resolved<T>(
    spec: &str,
    options: &BindOptions,
    seen: &mut Vec<SocketAddr>,
    bind: impl Fn(SocketAddr) -> io::Result<(SocketAddr, T)>,
) -> Result<Vec<(T, SocketAddr)>, ListenError> {
    let mut sockets = Vec::new();
    for target in resolve(spec)? {
        // The same address twice is bound once; but port 0 asks for a new port each time
        // (`127.0.0.1:0` and `tls:127.0.0.1:0` are two listeners).
        if target.addr.port() != 0 {
            if seen.contains(&target.addr) {
                continue;
            }
            seen.push(target.addr);
        }
        match bind(target.addr) {
            Ok((addr, socket)) => sockets.push((socket, addr)),
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
    Ok(sockets)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_splits_at_the_last_colon() {
        assert_eq!(host_of("localhost:50007"), "localhost");
        assert_eq!(host_of("[::1]:80"), "[::1]");
    }
}
