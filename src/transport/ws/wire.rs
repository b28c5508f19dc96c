//! What the WebSocket layer runs over: the raw stream (`ws:`) or a TLS session (`wss:`),
//! behind one trait, so that the frames above never ask which.

use std::io::{self, Read, Write};

use crate::transport::plain::Stream;
use crate::transport::tls::TlsStream;

/// What the WebSocket layer runs over: the raw stream, or a TLS session.
pub(crate) trait Wire: Read + Write {
    /// Sends what the wire's own layer holds (TLS records).
    fn flush_wire(&mut self) -> io::Result<()>;
    /// The wire's own layer holds bytes to send.
    fn wire_wants_write(&self) -> bool;
    /// Ends our side of the wire (FIN, or close_notify and FIN).
    fn end(&mut self) -> io::Result<()>;
    fn stream_mut(&mut self) -> &mut Stream;
    fn stream(&self) -> &Stream;
    fn is_handshaking(&self) -> bool;
    /// Whether a short read of the wire means the socket is drained (a raw stream on
    /// epoll or kqueue; never TLS, whose reads come from its own buffer).
    fn short_read_is_drained(&self) -> bool;
}

impl Wire for Stream {
    fn flush_wire(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn wire_wants_write(&self) -> bool {
        false
    }
    fn end(&mut self) -> io::Result<()> {
        self.shutdown_writes()
    }
    fn stream_mut(&mut self) -> &mut Stream {
        self
    }
    fn stream(&self) -> &Stream {
        self
    }
    fn is_handshaking(&self) -> bool {
        false
    }
    fn short_read_is_drained(&self) -> bool {
        crate::readiness::SHORT_READ_MEANS_DRAINED
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        TlsStream::read(self, buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        TlsStream::write(self, buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        TlsStream::write_vectored(self, bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flush_layer()
    }
}

impl Wire for TlsStream {
    fn flush_wire(&mut self) -> io::Result<()> {
        self.flush_layer()
    }
    fn wire_wants_write(&self) -> bool {
        self.wants_write()
    }
    fn end(&mut self) -> io::Result<()> {
        self.shutdown_writes()
    }
    fn stream_mut(&mut self) -> &mut Stream {
        self.socket_mut()
    }
    fn stream(&self) -> &Stream {
        self.socket()
    }
    fn is_handshaking(&self) -> bool {
        TlsStream::is_handshaking(self)
    }
    fn short_read_is_drained(&self) -> bool {
        false
    }
}
