//! The raw stream: a connected TCP or Unix socket, served alike.
//!
//! Reading, writing, half-closing and readiness mean the same on both; the few things that
//! differ (Nagle's algorithm, how a peer is named) are decided here, once. This is also
//! the `Plain` transport: the bytes themselves, with nothing buffered in user space.

use std::io::{self, Read, Write};
use std::net::Shutdown;

use mio::net::{TcpStream, UnixStream};

/// A vectored write this small is copied and sent in one `send`. The kernel's `writev`
/// (its iovec import and file layer) costs more than copying a kilobyte: on a 64 B
/// WebSocket or TLS echo, about 3 % of the server's CPU per message.
const SEND_COPIED_UP_TO: usize = 1024;
/// The buffer a small join is copied into is zeroed first; for a 64 B echo's frame, a
/// buffer of this size rather than `SEND_COPIED_UP_TO` spares zeroing a kilobyte.
const SMALL_JOIN: usize = 256;

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

    /// One system call either way: a WebSocket frame's header and payload, or the records
    /// rustls holds, leave together. Up to `SEND_COPIED_UP_TO` bytes they are copied into
    /// one buffer and go by `send`; above it, by one `writev`, without a copy.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        if let [only] = bufs {
            return self.write(only);
        }
        let total: usize = bufs.iter().map(|buf| buf.len()).sum();
        if total == 0 {
            Ok(0)
        } else if total <= SMALL_JOIN {
            self.send_joined::<SMALL_JOIN>(bufs)
        } else if total <= SEND_COPIED_UP_TO {
            self.send_joined::<SEND_COPIED_UP_TO>(bufs)
        } else {
            match self {
                Stream::Tcp(s) => s.write_vectored(bufs),
                Stream::Unix(s) => s.write_vectored(bufs),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(()) // nothing is buffered in user space
    }
}

impl Stream {
    /// Copies `bufs` (`N` bytes at most, together) into one buffer and sends it.
    fn send_joined<const N: usize>(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut joined = [0u8; N];
        let mut len = 0;
        for buf in bufs {
            joined[len..len + buf.len()].copy_from_slice(buf);
            len += buf.len();
        }
        self.write(&joined[..len])
    }
}

crate::delegate::delegate_source!(Stream, Stream::Tcp, Stream::Unix);

#[cfg(test)]
mod tests {
    use super::*;

    /// What `write_vectored` put on the wire, read back from the other end of the pair.
    fn sent_by(parts: &[&[u8]]) -> (usize, Vec<u8>) {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut stream = Stream::Unix(ours);
        let slices: Vec<io::IoSlice<'_>> = parts.iter().map(|p| io::IoSlice::new(p)).collect();
        let taken = stream.write_vectored(&slices).unwrap();
        drop(stream); // EOF behind what was sent
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).unwrap();
        (taken, got)
    }

    #[test]
    fn a_small_vectored_write_arrives_joined_and_whole() {
        let (taken, got) = sent_by(&[b"\x82\x05", b"", b"hello"]);
        assert_eq!(taken, 7);
        assert_eq!(got, b"\x82\x05hello");
    }

    #[test]
    fn sizes_either_side_of_the_copy_limit_arrive_in_order() {
        for total in [
            SMALL_JOIN,
            SMALL_JOIN + 1,
            SEND_COPIED_UP_TO - 1,
            SEND_COPIED_UP_TO,
            SEND_COPIED_UP_TO + 1,
            5000,
        ] {
            let message: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
            let (head, rest) = message.split_at(10);
            let (middle, tail) = rest.split_at(rest.len() / 2);
            let (taken, got) = sent_by(&[head, middle, tail]);
            assert_eq!(taken, total, "{total} bytes: a Unix socket takes them all");
            assert_eq!(got, message, "{total} bytes");
        }
    }

    #[test]
    fn nothing_to_write_writes_nothing() {
        let (taken, got) = sent_by(&[b"", b""]);
        assert_eq!((taken, got.len()), (0, 0));
    }
}
