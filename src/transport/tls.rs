//! TLS over a raw stream (rustls, `ring` provider): the `tls:` transport, and (public, for
//! the load generator) the same pump for a client session.
//!
//! rustls is sans-I/O: it is handed TLS bytes read from the socket (`read_tls`), turns them
//! into plaintext (`process_new_packets`, then `reader()`), and holds the TLS records it
//! wants sent until they are written out (`write_tls`). This file is the pump between it
//! and the non-blocking socket, keeping the seam's rules (see `transport`):
//!
//! - **`read` says `WouldBlock` only when both are empty**: plaintext rustls has already
//!   decrypted is handed over first; only then is the socket read, until it too says
//!   `WouldBlock`. So "drain until `WouldBlock`" means the same as on a plain stream, and a
//!   short read proves nothing (`short_read_means_drained` is false).
//! - **Every read is followed by a write.** Whatever processing a record produced (a
//!   handshake reply, a KeyUpdate answer, an alert) is written out at once; what the socket
//!   refuses shows in `wants().write`, so the connection asks for WRITABLE.
//! - **Bounded.** rustls buffers at most `TLS_BUFFER_LIMIT` bytes of outgoing records; past
//!   that, `write` takes nothing (`WouldBlock`) and the echo owes the rest itself, under
//!   `--max-pending`, as on a plain stream.
//! - **Ends.** The client's close_notify reads as EOF, and so does a FIN without one (many
//!   clients end that way). Our end is close_notify, then FIN.

use std::io::{self, Read, Write};

use rustls::{ClientConnection, Connection, ServerConnection};

use super::plain::Stream;
use crate::readiness::{SHORT_READ_MEANS_DRAINED, interrupted, would_block};

/// Outgoing TLS bytes rustls may hold for one connection before `write` stops taking
/// plaintext: a little over one full record, so the layer adds at most this to what
/// `--max-pending` bounds.
const TLS_BUFFER_LIMIT: usize = 20 * 1024;

/// One TLS session over its non-blocking socket, server or client side.
pub struct TlsStream {
    /// The TLS state: handshake, keys, buffered records both ways.
    tls: Connection,
    /// The socket the records travel on, registered with the loop's `Poll`.
    socket: Stream,
    /// The socket said EOF: no more records will come.
    socket_eof: bool,
    /// The handshake has been seen to complete (reported once, see `handshake_done`).
    handshake_reported: bool,
    /// The last socket read returned less than rustls asked for: the socket is drained,
    /// and on epoll and kqueue new data raises a fresh edge. Once the plaintext it brought
    /// is handed over too, the confirming read that would say `WouldBlock` can be skipped
    /// (one system call per message; see `drained`).
    socket_drained: bool,
    /// Decrypted bytes rustls still holds for the reader.
    plaintext_left: usize,
    /// The peer's FIN was reported: read on to the EOF, skip nothing.
    peer_fin: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("socket", &self.socket)
            .field("handshaking", &self.tls.is_handshaking())
            .finish()
    }
}

impl TlsStream {
    /// The server side of an accepted connection.
    pub fn server(tls: ServerConnection, socket: Stream) -> TlsStream {
        TlsStream::new(Connection::Server(tls), socket)
    }

    /// The client side of a connected socket (the handshake starts with the first write).
    pub fn client(tls: ClientConnection, socket: Stream) -> TlsStream {
        TlsStream::new(Connection::Client(tls), socket)
    }

    fn new(mut tls: Connection, socket: Stream) -> TlsStream {
        tls.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        TlsStream {
            tls,
            socket,
            socket_eof: false,
            handshake_reported: false,
            socket_drained: false,
            plaintext_left: 0,
            peer_fin: false,
        }
    }

    /// The socket underneath (to register it, or ask it for its error).
    pub fn socket_mut(&mut self) -> &mut Stream {
        &mut self.socket
    }

    pub fn socket(&self) -> &Stream {
        &self.socket
    }

    /// Whether the handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }

    /// True exactly once: the first time it is asked after the handshake completed.
    pub(crate) fn handshake_done(&mut self) -> bool {
        if self.handshake_reported || self.tls.is_handshaking() {
            return false;
        }
        self.handshake_reported = true;
        true
    }

    /// Reads TLS bytes from the socket into rustls and processes them. `Ok(false)` when
    /// the socket had nothing (`WouldBlock`); an error if the peer broke the protocol
    /// (after a best-effort alert).
    fn pull(&mut self) -> io::Result<bool> {
        let mut probe = ShortReadProbe {
            socket: &mut self.socket,
            short: false,
        };
        let read = self.tls.read_tls(&mut probe);
        self.socket_drained = probe.short && SHORT_READ_MEANS_DRAINED && !self.peer_fin;
        match read {
            Ok(0) => self.socket_eof = true,
            Ok(_) => {}
            Err(err) if would_block(&err) => return Ok(false),
            Err(err) if interrupted(&err) => return Ok(true),
            Err(err) => return Err(err),
        }
        match self.tls.process_new_packets() {
            Ok(state) => {
                self.plaintext_left = state.plaintext_bytes_to_read();
                // After the peer's close_notify the reader has one more thing to say: EOF.
                if state.peer_has_closed() {
                    self.socket_drained = false;
                }
            }
            Err(err) => {
                // Tell the peer why (an alert is queued), then give up on it.
                let _ = self.push();
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("tls: {err}"),
                ));
            }
        }
        // What processing produced (handshake messages, KeyUpdate replies) goes out now.
        self.push()?;
        Ok(true)
    }

    /// Writes what rustls holds until it is empty or the socket is full.
    fn push(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.socket) {
                Ok(_) => {}
                Err(err) if would_block(&err) => return Ok(()),
                Err(err) if interrupted(&err) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Application bytes; `Ok(0)` at the peer's end; `WouldBlock` only when rustls holds no
    /// plaintext and the socket has nothing either.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => {
                    self.plaintext_left = self.plaintext_left.saturating_sub(n);
                    return Ok(n); // 0: the client's close_notify
                }
                Err(err) if would_block(&err) => {}
                // The socket ended without close_notify: how many clients end. An EOF.
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(err) => return Err(err),
            }
            if self.socket_eof {
                return Ok(0);
            }
            if !self.pull()? {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
    }

    /// Application bytes taken (and sent as far as the socket allows), or `WouldBlock`.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_with(|writer| writer.write(buf))
    }

    /// As `write`, from several slices sealed into the same records (a WebSocket frame's
    /// header and payload go out as one record, not two).
    pub fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.write_with(|writer| writer.write_vectored(bufs))
    }

    fn write_with(
        &mut self,
        give: impl FnOnce(&mut rustls::Writer<'_>) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if self.tls.is_handshaking() {
            // Nothing can be sent before the keys exist: move the handshake on (a client's
            // first write sends its ClientHello) and come back when it is done.
            self.push()?;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let taken = give(&mut self.tls.writer())?;
        self.push()?;
        if taken == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// Sends what rustls holds, until done or `WouldBlock`.
    pub fn flush_layer(&mut self) -> io::Result<()> {
        self.push()
    }

    /// rustls holds records still to send.
    pub fn wants_write(&self) -> bool {
        self.tls.wants_write()
    }

    /// close_notify, then FIN. Called once everything owed has been written; the alert is
    /// a few dozen bytes, so it fits a socket that just took the rest.
    pub fn shutdown_writes(&mut self) -> io::Result<()> {
        self.tls.send_close_notify();
        self.push()?;
        self.socket.shutdown_writes()
    }

    /// Whether the read just made emptied both rustls's plaintext and (by a short read) the
    /// socket, so that the caller may stop without the confirming read: the TLS form of a
    /// plain stream's short-read shortcut, on the same selectors, never once the peer's
    /// FIN is known (the EOF behind the data must still be read).
    pub(crate) fn drained(&self) -> bool {
        self.socket_drained && self.plaintext_left == 0
    }

    /// From now on, every read goes to the socket (see `drained`).
    pub(crate) fn note_peer_fin(&mut self) {
        self.peer_fin = true;
        self.socket_drained = false;
    }

    /// Read more from the socket to know more: while the handshake is under way.
    pub(crate) fn wants_read(&self) -> bool {
        self.tls.is_handshaking()
    }
}

/// The socket as rustls reads it, noting whether a read came back short.
struct ShortReadProbe<'a> {
    socket: &'a mut Stream,
    short: bool,
}

impl Read for ShortReadProbe<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.socket.read(buf)?;
        self.short = n > 0 && n < buf.len();
        Ok(n)
    }
}
