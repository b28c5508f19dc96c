//! The seam between a connected socket and the echo: a `Transport` carries application
//! bytes, whatever protocol sits on the raw stream: none (`plain`), or TLS (`tls`).
//!
//! The echo state machine (`session::connection`) serves every connection through this
//! trait and never learns which protocol it has. The rules a transport keeps, so that the
//! readiness rules stay true above it:
//!
//! - `Transport::read` says `WouldBlock` only when the socket *and* whatever the layer
//!   has already decoded are empty. "Drain until `WouldBlock`" then means the same on
//!   every transport: a layer that holds plaintext must hand it over before saying so.
//!   The one exception is a pause of the layer's own (`Transport::read_paused`), after
//!   which the loop comes back as it does when the read budget is spent.
//! - `Transport::write` takes what it can and says `WouldBlock` when it can take nothing
//!   (never `Ok(0)` for a non-empty buffer).
//! - What the layer itself must send or receive (handshakes, records it holds, replies to
//!   control frames) shows in `Transport::wants`, which the connection joins with its
//!   own wants in the one function that derives the interest.
//!
//! A protocol is chosen once, where a connection is admitted (`AnyTransport::admit`,
//! from the listener's [`Protocol`]); nothing after that asks which one it was.

mod certs;
mod peer;
mod plain;
mod tls;
mod ws;

use std::io;

use mio::event::Source;

pub use certs::TlsIdentity;
pub use peer::Peer;
pub use plain::Stream;
pub use tls::TlsStream;
use ws::{Wire, WsStream};

/// What a listener's connections speak above the raw stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// The bytes themselves (RFC 862 over TCP or a Unix socket).
    #[default]
    Plain,
    /// TLS (`tls:HOST:PORT`): the bytes inside the session are echoed.
    Tls,
    /// WebSocket (`ws:HOST:PORT`): each data message comes back as the same message.
    Ws,
    /// WebSocket over TLS (`wss:HOST:PORT`).
    Wss,
}

/// What the protocols need to start a connection, shared by every listener.
#[derive(Debug)]
pub struct Layers {
    /// The certificate `tls:` and `wss:` listeners present (`None`: there are none).
    pub tls: Option<TlsIdentity>,
    /// What the echo does with messages (`--mode`): WebSocket answers empty messages itself.
    pub mode: crate::config::Mode,
    /// `--ws-max-message`: a larger WebSocket message is refused with close code 1009.
    pub ws_max_message: usize,
}

impl Default for Layers {
    fn default() -> Self {
        Layers {
            tls: None,
            mode: crate::config::Mode::Echo,
            ws_max_message: crate::config::DEFAULT_WS_MAX_MESSAGE,
        }
    }
}

impl Layers {
    /// A TLS session for a freshly accepted stream.
    fn tls_session(&self, stream: Stream) -> io::Result<TlsStream> {
        let identity = self
            .tls
            .as_ref()
            .ok_or_else(|| io::Error::other("a TLS listener without a certificate"))?;
        let session = rustls::ServerConnection::new(identity.config()).map_err(io::Error::other)?;
        Ok(TlsStream::server(session, stream))
    }

    /// SIGHUP: re-read whatever the protocols loaded from files.
    pub(crate) fn reload(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.reload();
        }
    }
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

    /// Bytes the layer holds towards the peer that the echo no longer counts (WebSocket:
    /// pongs not yet sent, the rest of a reply frame part-way out). They count against
    /// `--max-pending` with the echo's own.
    fn owed(&self) -> usize;

    /// The last `read`'s `WouldBlock` was the layer pausing (it went through many frames
    /// that gave no bytes), not the socket running dry: the loop must come back.
    fn read_paused(&self) -> bool;

    /// Ends our side of the stream (FIN, or the protocol's close first): the peer reads
    /// its end and may still send.
    fn shutdown_writes(&mut self) -> io::Result<()>;

    /// Asked right after a read shorter than asked: whether the socket is drained, so the
    /// confirming read can be skipped (see
    /// [`SHORT_READ_MEANS_DRAINED`](crate::readiness::SHORT_READ_MEANS_DRAINED)). A layer
    /// that reads more from the socket than it returns answers for its own buffer too.
    fn short_read_means_drained(&self) -> bool;

    /// The socket's pending error (`SO_ERROR`), if any.
    fn take_error(&self) -> io::Result<Option<io::Error>>;

    /// The peer's FIN has been reported (EPOLLRDHUP): a layer that skips confirming reads
    /// must stop skipping them, or the EOF behind the data is never read.
    fn note_peer_fin(&mut self);

    /// Whether the protocol's handshake is still under way (never, for a plain stream).
    fn is_handshaking(&self) -> bool;

    /// True exactly once, when the handshake has just been seen to complete.
    fn handshake_done(&mut self) -> bool;

    /// What the protocol counted since last asked (`None`: nothing to count, as for a
    /// plain stream), for the server's counters.
    fn take_counts(&mut self) -> Option<LayerCounts>;

    /// Where the last `read` stands in the client's messages (see [`Heard`]); asked after
    /// every read, whatever it returned.
    fn take_heard(&mut self) -> Heard;
}

/// What a read heard, in the client's own messages: `--print` and `--mode ack` answer
/// once per message. A byte stream has no messages, so each read of it counts as one, as
/// the tutorial servers count them; only WebSocket says more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Heard {
    /// Empty messages heard before the read's bytes (or before its `WouldBlock` or end):
    /// they carry no bytes, so no read returns them.
    pub empty_before: usize,
    /// Where the bytes read stand in their message.
    pub part: Part,
}

/// Where a read's bytes stand in their message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Part {
    /// All of a message (and, on a byte stream, every read).
    #[default]
    Whole,
    /// The start of a message of `len` bytes, longer than one read could take.
    First { len: usize },
    /// More of it, not yet its end.
    Middle,
    /// The end of it.
    Last,
}

impl Part {
    /// These bytes end their message.
    pub(crate) fn ends(self) -> bool {
        matches!(self, Part::Whole | Part::Last)
    }
}

/// Events a protocol layer counts, handed to the server's counters after each serve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LayerCounts {
    /// WebSocket data messages received.
    pub ws_messages_in: u64,
    /// WebSocket data messages sent back (completed).
    pub ws_messages_out: u64,
    /// Close frames received from clients.
    pub ws_closes_received: u64,
    /// Closes echod sent for a protocol error (1002), invalid UTF-8 (1007), a message too
    /// big (1009).
    pub ws_closed_protocol: u64,
    pub ws_closed_invalid_utf8: u64,
    pub ws_closed_too_big: u64,
}

/// The transports a connection can have. An enum rather than `Box<dyn Transport>`: no
/// allocation per connection, and a plain stream's calls inline to the system calls.
/// A TLS session is boxed: its state is a few kilobytes, and a plain connection must not
/// pay for it.
#[derive(Debug)]
pub(crate) enum AnyTransport {
    Plain(Stream),
    Tls(Box<TlsStream>),
    Ws(Box<WsStream<Stream>>),
    Wss(Box<WsStream<TlsStream>>),
}

impl AnyTransport {
    /// The one place a connection's protocol is chosen: from its listener's kind.
    pub(crate) fn admit(
        protocol: Protocol,
        stream: Stream,
        layers: &Layers,
    ) -> io::Result<AnyTransport> {
        Ok(match protocol {
            Protocol::Plain => AnyTransport::Plain(stream),
            Protocol::Tls => AnyTransport::Tls(Box::new(layers.tls_session(stream)?)),
            Protocol::Ws => AnyTransport::Ws(Box::new(WsStream::new(
                stream,
                layers.mode,
                layers.ws_max_message,
            ))),
            Protocol::Wss => AnyTransport::Wss(Box::new(WsStream::new(
                layers.tls_session(stream)?,
                layers.mode,
                layers.ws_max_message,
            ))),
        })
    }
}

impl Transport for AnyTransport {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            AnyTransport::Plain(stream) => io::Read::read(stream, buf),
            AnyTransport::Tls(tls) => tls.read(buf),
            AnyTransport::Ws(ws) => ws.read(buf),
            AnyTransport::Wss(ws) => ws.read(buf),
        }
    }

    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            AnyTransport::Plain(stream) => io::Write::write(stream, buf),
            AnyTransport::Tls(tls) => tls.write(buf),
            AnyTransport::Ws(ws) => ws.write(buf),
            AnyTransport::Wss(ws) => ws.write(buf),
        }
    }

    #[inline]
    fn flush_layer(&mut self) -> io::Result<()> {
        match self {
            AnyTransport::Plain(_) => Ok(()), // nothing is buffered in user space
            AnyTransport::Tls(tls) => tls.flush_layer(),
            AnyTransport::Ws(ws) => ws.flush_layer(),
            AnyTransport::Wss(ws) => ws.flush_layer(),
        }
    }

    #[inline]
    fn wants(&self) -> Wants {
        match self {
            AnyTransport::Plain(_) => Wants::NOTHING,
            AnyTransport::Tls(tls) => Wants {
                read: tls.wants_read(),
                write: tls.wants_write(),
            },
            AnyTransport::Ws(ws) => Wants {
                read: ws.wants_read(),
                write: ws.wants_write(),
            },
            AnyTransport::Wss(ws) => Wants {
                read: ws.wants_read() || ws.wire().wants_read(),
                write: ws.wants_write(),
            },
        }
    }

    #[inline]
    fn owed(&self) -> usize {
        match self {
            // rustls keeps at most `TLS_BUFFER_LIMIT` of records, a bound of its own.
            AnyTransport::Plain(_) | AnyTransport::Tls(_) => 0,
            AnyTransport::Ws(ws) => ws.owed(),
            AnyTransport::Wss(ws) => ws.owed(),
        }
    }

    #[inline]
    fn read_paused(&self) -> bool {
        match self {
            AnyTransport::Plain(_) | AnyTransport::Tls(_) => false,
            AnyTransport::Ws(ws) => ws.read_paused(),
            AnyTransport::Wss(ws) => ws.read_paused(),
        }
    }

    fn shutdown_writes(&mut self) -> io::Result<()> {
        match self {
            AnyTransport::Plain(stream) => stream.shutdown_writes(),
            AnyTransport::Tls(tls) => tls.shutdown_writes(),
            AnyTransport::Ws(ws) => ws.shutdown_writes(),
            AnyTransport::Wss(ws) => ws.shutdown_writes(),
        }
    }

    #[inline]
    fn short_read_means_drained(&self) -> bool {
        match self {
            AnyTransport::Plain(_) => crate::readiness::SHORT_READ_MEANS_DRAINED,
            // Plaintext comes from rustls's buffer: only the layer knows whether the socket
            // behind it is drained too.
            AnyTransport::Tls(tls) => tls.drained(),
            AnyTransport::Ws(ws) => ws.drained(),
            // Over TLS the wire's reads say nothing of the socket: read on.
            AnyTransport::Wss(_) => false,
        }
    }

    fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            AnyTransport::Plain(stream) => stream.take_error(),
            AnyTransport::Tls(tls) => tls.socket().take_error(),
            AnyTransport::Ws(ws) => ws.wire().stream().take_error(),
            AnyTransport::Wss(ws) => ws.wire().stream().take_error(),
        }
    }

    #[inline]
    fn note_peer_fin(&mut self) {
        match self {
            AnyTransport::Plain(_) => {} // the connection itself keeps this in mind
            AnyTransport::Tls(tls) => tls.note_peer_fin(),
            AnyTransport::Ws(ws) => ws.note_peer_fin(),
            AnyTransport::Wss(ws) => {
                ws.note_peer_fin();
                ws.wire_mut().note_peer_fin();
            }
        }
    }

    #[inline]
    fn is_handshaking(&self) -> bool {
        match self {
            AnyTransport::Plain(_) => false,
            AnyTransport::Tls(tls) => tls.is_handshaking(),
            AnyTransport::Ws(ws) => ws.is_handshaking(),
            AnyTransport::Wss(ws) => ws.is_handshaking(),
        }
    }

    #[inline]
    fn take_counts(&mut self) -> Option<LayerCounts> {
        match self {
            AnyTransport::Plain(_) | AnyTransport::Tls(_) => None,
            AnyTransport::Ws(ws) => ws.take_counts(),
            AnyTransport::Wss(ws) => ws.take_counts(),
        }
    }

    #[inline]
    fn take_heard(&mut self) -> Heard {
        match self {
            AnyTransport::Plain(_) | AnyTransport::Tls(_) => Heard::default(),
            AnyTransport::Ws(ws) => ws.take_heard(),
            AnyTransport::Wss(ws) => ws.take_heard(),
        }
    }

    #[inline]
    fn handshake_done(&mut self) -> bool {
        match self {
            AnyTransport::Plain(_) => false,
            AnyTransport::Tls(tls) => tls.handshake_done(),
            AnyTransport::Ws(ws) => ws.handshake_done(),
            AnyTransport::Wss(ws) => ws.handshake_done(),
        }
    }
}

impl Source for AnyTransport {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interest: mio::Interest,
    ) -> io::Result<()> {
        self.socket_mut().register(registry, token, interest)
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interest: mio::Interest,
    ) -> io::Result<()> {
        self.socket_mut().reregister(registry, token, interest)
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        self.socket_mut().deregister(registry)
    }
}

impl AnyTransport {
    /// The raw stream underneath, whatever rides on it: what `poll` watches.
    fn socket_mut(&mut self) -> &mut Stream {
        match self {
            AnyTransport::Plain(stream) => stream,
            AnyTransport::Tls(tls) => tls.socket_mut(),
            AnyTransport::Ws(ws) => ws.wire_mut().stream_mut(),
            AnyTransport::Wss(ws) => ws.wire_mut().stream_mut(),
        }
    }
}
