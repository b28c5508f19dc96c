//! WebSocket (RFC 6455) over a raw stream or over TLS: the `ws:` and `wss:` transports.
//!
//! Two stages on one connection:
//!
//! 1. **The HTTP upgrade** (`upgrade`): a `GET` with `Upgrade: websocket`, `Connection:
//!    upgrade`, version 13 and a key is answered `101 Switching Protocols`; anything else
//!    gets a 4xx response and a close.
//! 2. **Frames.** tungstenite's `WebSocketContext`, driven over our own stream (not its TLS
//!    or its blocking socket), reads them: it unmasks, reassembles fragments, checks UTF-8,
//!    answers pings and closes. The replies to data messages are written by us
//!    (`out_frame`), around its write buffer. And while it holds nothing, a whole data
//!    frame that arrives in one read is read around it too (`around`, `read_around`):
//!    the commonest message costs no copy into its buffer.
//!
//! The echo above stays byte-oriented, as on every transport: `read` hands over the payload
//! of data messages in order, and `write` sends bytes back as frames of the same kind and
//! the same message boundaries, kept in `owed_messages` (a message may go back in several
//! frames: a fragmented reply is the same message). So `--max-pending` bounds what is
//! owed, and a client that never reads stops being read.
//!
//! This file holds the connection's state and what the rest of echod asks of it; the two
//! halves of the work are `reading` (the upgrade, then messages in) and `writing` (replies
//! out, and our end). Beside them: `upgrade` judges the request; `probe` is the stream
//! tungstenite reads through, and `frames` follows where the frames handed to it stand;
//! `around` finds a whole frame to read around it; `out_frame` writes our frames; and
//! `wire` is what runs underneath (a socket or TLS).
//!
//! The traps avoided (see tungstenite's issues):
//! - its read buffer is small (`READ_BUFFER`), not 128 KiB; and since it reads no more
//!   than that per call, the socket is read into the echo's own buffer instead (`probe`):
//!   one `recv` per message, however many reads tungstenite makes of it;
//! - its write buffer is bounded and only carries control frames (pongs, closes); nothing
//!   more goes into it while it cannot be emptied, and no frame of ours starts while it
//!   holds bytes, nor does it write while a frame of ours is part-way out;
//! - its read buffer grows to the longest frame and keeps that size: past 64 KiB it is
//!   given back once it holds nothing (`shrink_if_grown`, with `frames` following where
//!   the frames handed to it stand);
//! - a `Write` that cannot take bytes says `WouldBlock`, never `Ok(0)`;
//! - `read` can say `WouldBlock` because a pong could not be flushed, which `wants().write`
//!   then reports;
//! - replies it makes itself owe the echo nothing, so `owed` counts them (unsent pongs,
//!   queued replies) against `--max-pending`, and a run of frames without data pauses the
//!   read (`QUIET_FRAMES_PER_READ`): a ping flood is held like any other flood.

use std::collections::VecDeque;
use std::io;

use tungstenite::Message;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

mod around;
mod frames;
mod out_frame;
mod probe;
mod reading;
mod upgrade;
mod wire;
mod writing;

pub(crate) use wire::Wire;

use out_frame::OutFrame;
use probe::Inbound;

use super::{Heard, LayerCounts};
use crate::config::Mode;
use crate::readiness::would_block;

/// tungstenite's read buffer per connection: small, since an idle connection keeps it.
const READ_BUFFER: usize = 2 * 1024;
/// The most one reply frame carries (a longer message goes back in several frames of the
/// same message), and the base of the bound on tungstenite's own write buffer, which now
/// carries only pongs and close replies.
const WRITE_BUFFER_LIMIT: usize = 64 * 1024;

/// Where a WebSocket connection is.
enum Stage {
    /// Reading the HTTP upgrade request.
    Upgrade { request: Vec<u8> },
    /// Sending a refusal (4xx), then ending.
    Refusing,
    /// Exchanging frames.
    Open(Box<WebSocketContext>),
}

/// A data message read whose echo is not yet all written: its kind and bytes still owed.
#[derive(Clone, Debug)]
struct OwedMessage {
    text: bool,
    body: Body,
    /// How much of it has gone back.
    sent: usize,
}

/// Where the reply frames of an owed message take their payload from.
#[derive(Clone, Debug)]
enum Body {
    /// The message as tungstenite handed it over: in echo mode the bytes written back are
    /// exactly these, so frames are cut from it (a reference, no copy).
    Kept(tungstenite::Bytes),
    /// A message read around tungstenite (`read_around`), of this length: nothing is kept,
    /// and its frames carry the echo's own bytes as they are written.
    Echoed(usize),
}

impl OwedMessage {
    fn len(&self) -> usize {
        match &self.body {
            Body::Kept(payload) => payload.len(),
            Body::Echoed(len) => *len,
        }
    }
}

/// One WebSocket connection over `W`.
pub(crate) struct WsStream<W: Wire> {
    wire: W,
    stage: Stage,
    /// Handshake responses and refusals not yet written (small; only during the upgrade).
    out: Vec<u8>,
    /// The payload of the message being handed to the echo, and how much is handed over.
    reading: Option<(tungstenite::Bytes, usize)>,
    /// Messages handed to the echo, in order, whose replies are still owed.
    owed_messages: VecDeque<OwedMessage>,
    /// tungstenite holds frames it could not flush yet.
    flush_pending: bool,
    /// How many bytes of those it holds, as its last write showed (`ProbeOutcome::unsent`).
    control_unsent: usize,
    /// The last `read` said `WouldBlock` to pause (`QUIET_FRAMES_PER_READ`), not because
    /// everything had been read.
    read_paused: bool,
    /// Our own data frame still part-way out (see `OutFrame`).
    out_frame: Option<OutFrame>,
    /// The connection has ended at the WebSocket level (close received or sent).
    ended: bool,
    /// What the echo does with messages: `Ack` and `Discard` need no bookkeeping.
    mode: Mode,
    /// `--ws-max-message`.
    max_message: usize,
    /// The upgrade has been seen to complete (reported once).
    upgrade_reported: bool,
    /// What tungstenite gave when asked ahead without a socket read (see `look_ahead`).
    read_ahead: VecDeque<tungstenite::Result<Message>>,
    /// The socket read behind the last message came back short.
    last_read_short: bool,
    /// The last `read` left nothing behind, in tungstenite or the socket.
    drained: bool,
    /// The peer's FIN was reported.
    peer_fin: bool,
    /// tungstenite's last read said `WouldBlock`: it took every byte it was handed.
    tungstenite_waits: bool,
    /// Counted since the server last asked (see `take_counts`).
    counts: LayerCounts,
    /// What the reads since the server last asked heard, in messages (see `take_heard`).
    heard: Heard,
    /// Read from the socket for tungstenite: what it has not taken yet, and where the
    /// frames it was handed stand.
    inbound: Inbound,
}

impl<W: Wire> std::fmt::Debug for WsStream<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsStream")
            .field("open", &matches!(self.stage, Stage::Open(_)))
            .finish()
    }
}

impl<W: Wire> WsStream<W> {
    pub(crate) fn new(wire: W, mode: Mode, max_message: usize) -> WsStream<W> {
        WsStream {
            wire,
            stage: Stage::Upgrade {
                request: Vec::new(),
            },
            out: Vec::new(),
            reading: None,
            owed_messages: VecDeque::new(),
            flush_pending: false,
            control_unsent: 0,
            read_paused: false,
            out_frame: None,
            ended: false,
            mode,
            max_message,
            upgrade_reported: false,
            read_ahead: VecDeque::new(),
            last_read_short: false,
            drained: false,
            peer_fin: false,
            tungstenite_waits: false,
            counts: LayerCounts::default(),
            heard: Heard::default(),
            inbound: Inbound::default(),
        }
    }

    pub(crate) fn wire(&self) -> &W {
        &self.wire
    }

    pub(crate) fn wire_mut(&mut self) -> &mut W {
        &mut self.wire
    }

    /// Still in the TLS handshake or the HTTP upgrade.
    pub(crate) fn is_handshaking(&self) -> bool {
        self.wire.is_handshaking() || !matches!(self.stage, Stage::Open(_))
    }

    /// True exactly once, when the upgrade has completed.
    pub(crate) fn handshake_done(&mut self) -> bool {
        if self.upgrade_reported || !matches!(self.stage, Stage::Open(_)) {
            return false;
        }
        self.upgrade_reported = true;
        true
    }

    pub(crate) fn wants_read(&self) -> bool {
        matches!(self.stage, Stage::Upgrade { .. })
    }

    pub(crate) fn wants_write(&self) -> bool {
        !self.out.is_empty()
            || self.flush_pending
            || self.out_frame.is_some()
            || self.wire.wire_wants_write()
    }

    /// What this layer holds towards the client beyond what the echo owes: control frames
    /// tungstenite has not sent, the rest of a reply frame part-way out, and the
    /// bookkeeping of each message whose reply is owed (an empty message owes no bytes,
    /// but its turn in the queue still costs memory). It counts against `--max-pending`.
    pub(crate) fn owed(&self) -> usize {
        self.out.len()
            + self.control_unsent
            + self.out_frame.as_ref().map_or(0, OutFrame::unsent)
            + self.owed_messages.len() * std::mem::size_of::<OwedMessage>()
    }

    /// The last `read`'s `WouldBlock` was a pause, with more perhaps still to read.
    pub(crate) fn read_paused(&self) -> bool {
        self.read_paused
    }

    /// What a `Probe` saw tungstenite write: it may hold bytes now (`flush_pending`), and
    /// its last write says how many (`control_unsent`).
    fn saw_writes(&mut self, seen: &probe::ProbeOutcome) {
        self.flush_pending |= seen.wrote;
        if let Some(unsent) = seen.unsent {
            self.control_unsent = unsent;
        }
    }

    /// What was counted since last asked; `None` when nothing was.
    pub(crate) fn take_counts(&mut self) -> Option<LayerCounts> {
        let counts = std::mem::take(&mut self.counts);
        (counts != LayerCounts::default()).then_some(counts)
    }

    /// What the reads since last asked heard, in messages; the next read starts afresh.
    pub(crate) fn take_heard(&mut self) -> Heard {
        std::mem::take(&mut self.heard)
    }

    /// Whether the read just made left nothing unread, here or in the socket.
    pub(crate) fn drained(&self) -> bool {
        self.drained
            && self.reading.is_none()
            && self.read_ahead.is_empty()
            && self.inbound.carry.is_empty()
    }

    /// The peer's FIN was reported: every read goes to the socket from now on.
    pub(crate) fn note_peer_fin(&mut self) {
        self.peer_fin = true;
        self.drained = false;
    }
}

/// A server's tungstenite context, sized for many connections: `rest` is what followed
/// the upgrade request in the same read (the client's first frames).
fn new_context(rest: Vec<u8>, max_message: usize) -> WebSocketContext {
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        // Generous for control frames alone: tungstenite keeps one pong waiting at most
        // (a newer ping replaces it), so a ping flood does not pile up here.
        .max_write_buffer_size(WRITE_BUFFER_LIMIT + max_message.min(1 << 20))
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    WebSocketContext::from_partially_read(rest, Role::Server, Some(config))
}

/// The client went away without the closing handshake (a reset, or TLS ended without
/// close_notify): an end, not a failure.
fn is_peer_gone(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
    )
}

fn is_would_block(result: &tungstenite::Result<Message>) -> bool {
    matches!(result, Err(tungstenite::Error::Io(err)) if would_block(err))
}

fn into_io(err: tungstenite::Error) -> io::Error {
    match err {
        tungstenite::Error::Io(err) => err,
        other => io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests;
