//! The raw stream: a connected TCP or Unix socket, served alike.
//!
//! Reading, writing, half-closing and readiness mean the same on both; the few things that
//! differ (Nagle's algorithm, how a peer is named) are decided here, once. This is also
//! the `Plain` transport: the bytes themselves, with nothing buffered in user space.

use std::io::{self, Read, Write};
use std::net::Shutdown;

use mio::net::{TcpStream, UnixStream};

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
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    /// One `writev`: a frame's header and payload leave together, without a copy.
    #[inline]
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(()) // nothing is buffered in user space
    }
}

crate::delegate::delegate_source!(Stream, Stream::Tcp, Stream::Unix);
