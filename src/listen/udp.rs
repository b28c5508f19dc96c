//! `--listen udp:HOST:PORT`: resolved, bound, non-blocking UDP sockets.
//!
//! Resolved exactly like TCP addresses (`udp:localhost:PORT` is 127.0.0.1 and ::1,
//! `udp:[::]:PORT` is dual-stack unless `--ipv6-only`). A wildcard socket also asks the
//! kernel for each datagram's local address, so a multi-homed host answers from the
//! address it was asked at.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use mio::net::UdpSocket;
use socket2::{Domain, Protocol, Socket, Type};

use super::{BindOptions, ListenError, resolve};
use crate::readiness::syscall_result;

/// Resolves one `HOST:PORT` and binds a UDP socket on every address it yields that `seen`
/// does not hold yet.
pub(super) fn bind_spec(
    spec: &str,
    options: &BindOptions,
    seen: &mut Vec<SocketAddr>,
) -> Result<Vec<(UdpSocket, SocketAddr)>, ListenError> {
    resolve::bind_resolved(spec, options, seen, |addr| {
        let socket = bind_one(addr, options)?;
        Ok((socket.local_addr()?, socket))
    })
}

/// socket → options → bind, then hand the socket to mio. No SO_REUSEADDR: on UDP it
/// would let a second process silently share the port.
fn bind_one(addr: SocketAddr, options: &BindOptions) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if options.reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(options.ipv6_only)?;
    }
    // A burst that outruns one turn of the loop waits in the receive queue, and replies in
    // the send queue: the default (~200 KiB, a few hundred small datagrams) drops bursts
    // that a larger queue rides out. A limit, not an allocation; the kernel caps it at
    // net.core.rmem_max / wmem_max.
    if let Err(err) = socket
        .set_recv_buffer_size(options.udp_buffer)
        .and_then(|()| socket.set_send_buffer_size(options.udp_buffer))
    {
        log::warn!(
            "udp:{addr}: cannot size its buffers to {} bytes: {err}",
            options.udp_buffer
        );
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let socket = UdpSocket::from_std(socket.into());
    adopt(&socket)?;
    Ok(socket)
}

/// Asks for the control messages the batch receiver reads (local address on a wildcard
/// bind; the receive-queue drop count). Also used for sockets inherited from systemd.
pub(super) fn adopt(socket: &UdpSocket) -> io::Result<()> {
    let local = socket.local_addr()?;
    enable_controls(socket, local.ip().is_unspecified(), local.is_ipv6())
}

/// Asks the kernel for what the batch receiver (`udp::batch`) reads: the local address of each datagram, on a
/// wildcard bind (elsewhere there is nothing to ask for).
fn enable_controls(socket: &UdpSocket, wildcard: bool, ipv6: bool) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    let on: libc::c_int = 1;
    let set = |level, name| {
        // SAFETY: `on` is a valid c_int for the duration of the call.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&raw const on).cast(),
                std::mem::size_of::<libc::c_int>() as _,
            )
        };
        syscall_result(rc as isize).map(drop)
    };
    if wildcard {
        if ipv6 {
            set(libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)?;
            // A dual-stack socket's IPv4 datagrams carry IP_PKTINFO.
            let _ = set(libc::IPPROTO_IP, libc::IP_PKTINFO);
        } else {
            set(libc::IPPROTO_IP, libc::IP_PKTINFO)?;
        }
    }
    Ok(())
}
