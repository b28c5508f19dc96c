//! The seam between a connected socket and the echo: a [`Transport`] carries application
//! bytes, whatever protocol (none yet; TLS and WebSocket next) sits on the raw stream.
//!
//! The echo state machine (`session::connection`) serves every connection through this
//! trait and never learns which protocol it has. The rules a transport keeps, so that the
//! readiness rules stay true above it:
//!
//! - [`Transport::read`] says `WouldBlock` only when the socket *and* whatever the layer
//!   has already decoded are empty. "Drain until `WouldBlock`" then means the same on
//!   every transport: a layer that holds plaintext must hand it over before saying so.
//! - [`Transport::write`] takes what it can and says `WouldBlock` when it can take nothing
//!   (never `Ok(0)` for a non-empty buffer).
//! - What the layer itself must send or receive (handshakes, records it holds, replies to
//!   control frames) shows in [`Transport::wants`], which the connection joins with its
//!   own wants in the one function that derives the interest.
//!
//! A protocol is chosen once, where a connection is admitted ([`AnyTransport::admit`],
//! from the listener's [`Protocol`]); nothing after that asks which one it was.

mod peer;
mod plain;

use std::io;

use mio::event::Source;

pub use peer::Peer;
pub use plain::Stream;

/// What a listener's connections speak above the raw stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// The bytes themselves (RFC 862 over TCP or a Unix socket).
    #[default]
    Plain,
}

/// What a transport's own protocol needs from the socket, whatever the echo owes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Wants {
    /// The layer needs input before it can go on (a handshake half done).
    pub read: bool,
    /// The layer holds bytes of its own to send (records, a handshake reply).
    pub write: bool,
}

impl Wants {
    /// Nothing beyond what the echo asks for: a plain stream.
    pub(crate) const NOTHING: Wants = Wants {
        read: false,
        write: false,
    };
}

/// A connected, non-blocking byte stream carrying application bytes.
pub(crate) trait Transport: Source {
    /// Reads application bytes; `Ok(0)` is the peer's orderly end. `WouldBlock` only once
    /// the socket and the layer's own buffered input are both empty.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes application bytes: some taken, or `WouldBlock` if none could be.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;

    /// Sends what the layer holds of its own, until done or `WouldBlock` (left for the
    /// next WRITABLE, which [`Transport::wants`] asks for).
    fn flush_layer(&mut self) -> io::Result<()>;

    /// What the layer needs from the socket now (see [`Wants`]).
    fn wants(&self) -> Wants;

    /// Ends our side of the stream (FIN, or the protocol's close first): the peer reads
    /// its end and may still send.
    fn shutdown_writes(&mut self) -> io::Result<()>;

    /// Whether a read shorter than asked means the socket is drained (see
    /// [`SHORT_READ_MEANS_DRAINED`](crate::readiness::SHORT_READ_MEANS_DRAINED)). A layer
    /// that reads more from the socket than it returns must say no.
    fn short_read_means_drained(&self) -> bool;

    /// The socket's pending error (`SO_ERROR`), if any.
    fn take_error(&self) -> io::Result<Option<io::Error>>;
}

/// The transports a connection can have. An enum rather than `Box<dyn Transport>`: no
/// allocation per connection, and a plain stream's calls inline to the system calls.
#[derive(Debug)]
pub(crate) enum AnyTransport {
    Plain(Stream),
}

impl AnyTransport {
    /// The one place a connection's protocol is chosen: from its listener's kind.
    pub(crate) fn admit(protocol: Protocol, stream: Stream) -> AnyTransport {
        match protocol {
            Protocol::Plain => AnyTransport::Plain(stream),
        }
    }
}

impl Transport for AnyTransport {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            AnyTransport::Plain(stream) => io::Read::read(stream, buf),
        }
    }

    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            AnyTransport::Plain(stream) => io::Write::write(stream, buf),
        }
    }

    #[inline]
    fn flush_layer(&mut self) -> io::Result<()> {
        match self {
            AnyTransport::Plain(_) => Ok(()), // nothing is buffered in user space
        }
    }

    #[inline]
    fn wants(&self) -> Wants {
        match self {
            AnyTransport::Plain(_) => Wants::NOTHING,
        }
    }

    fn shutdown_writes(&mut self) -> io::Result<()> {
        match self {
            AnyTransport::Plain(stream) => stream.shutdown_writes(),
        }
    }

    #[inline]
    fn short_read_means_drained(&self) -> bool {
        match self {
            AnyTransport::Plain(_) => crate::readiness::SHORT_READ_MEANS_DRAINED,
        }
    }

    fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            AnyTransport::Plain(stream) => stream.take_error(),
        }
    }
}

crate::delegate::delegate_source!(AnyTransport, AnyTransport::Plain);
