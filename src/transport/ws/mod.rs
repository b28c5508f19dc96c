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
use tungstenite::error::ProtocolError;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

mod around;
mod frames;
mod out_frame;
mod probe;
mod upgrade;
mod wire;

pub(crate) use wire::Wire;

use around::WholeFrame;
use out_frame::OutFrame;
use probe::{Inbound, Probe};
use upgrade::Verdict;

use super::{Heard, LayerCounts, Part};
use crate::config::{ACK_REPLY, Mode};
use crate::readiness::{interrupted, would_block, write_owed};

/// tungstenite's read buffer per connection: small, since an idle connection keeps it.
const READ_BUFFER: usize = 2 * 1024;
/// The most one socket read takes for tungstenite (into the echo's shared buffer, the
/// rest kept in `Carry`): a 16 KiB message in one `recv`, not eight of `READ_BUFFER`.
const STAGE_LIMIT: usize = 32 * 1024;
/// The most one reply frame carries (a longer message goes back in several frames of the
/// same message), and the base of the bound on tungstenite's own write buffer, which now
/// carries only pongs and close replies.
const WRITE_BUFFER_LIMIT: usize = 64 * 1024;
/// After a frame longer than this, tungstenite's read buffer is given back once it holds
/// nothing (`shrink_if_grown`). Up to it, the buffer is kept: a new one for every message
/// would cost an allocation each, and an idle connection holds at most this much.
const SHRINK_AFTER: u64 = 64 * 1024;
/// The most frames that give the echo no bytes (pings, pongs, empty messages) one `read`
/// goes through before it pauses: a flood of them gets its turn like any other client,
/// and the replies they owe are weighed against `--max-pending` between turns.
const QUIET_FRAMES_PER_READ: usize = 32;

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

/// What `read_around` found.
enum Around {
    /// A whole message, its payload now at the start of the buffer.
    Message(usize),
    /// Bytes read that tungstenite must have: this many at the start of the buffer.
    ForTungstenite(usize),
    /// The client's end.
    End,
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

    /// Writes the upgrade's own bytes, then whatever tungstenite and the wire hold.
    pub(crate) fn flush_layer(&mut self) -> io::Result<()> {
        if !write_owed(&mut self.wire, &mut self.out)? {
            return Ok(());
        }
        // Our frame part-way out comes first: nothing may be written inside it.
        if let Some(frame) = &mut self.out_frame {
            if !frame.write_to(&mut self.wire)? {
                return self.wire.flush_wire();
            }
            self.out_frame = None;
        }
        if let Stage::Open(ctx) = &mut self.stage
            && self.flush_pending
        {
            let mut wire = Probe::new(&mut self.wire, true, &mut [], &mut self.inbound);
            let flushed = ctx.flush(&mut wire);
            let seen = wire.finish();
            self.saw_writes(&seen);
            match flushed {
                Ok(()) => {
                    self.flush_pending = false;
                    self.control_unsent = 0;
                    self.shrink_if_grown();
                }
                Err(tungstenite::Error::Io(err)) if would_block(&err) => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    self.flush_pending = false;
                    self.control_unsent = 0;
                }
                Err(err) => return Err(into_io(err)),
            }
        }
        self.send_empty_replies()?;
        self.wire.flush_wire()
    }

    /// The wire is free for a frame of ours: nothing of our own part-way out, nothing
    /// unsent in tungstenite.
    fn may_start_frame(&self) -> bool {
        self.out_frame.is_none() && !self.flush_pending
    }

    /// Starts `frame` and writes what the wire takes; the rest waits for `flush_layer`.
    fn start_frame(&mut self, mut frame: OutFrame) -> io::Result<()> {
        debug_assert!(self.may_start_frame());
        if !frame.write_to(&mut self.wire)? {
            self.out_frame = Some(frame);
        }
        Ok(())
    }

    /// Echoes the empty messages at the head of the queue: they have no bytes for the
    /// echo to carry, so nothing else would. In their turn, behind every earlier reply,
    /// and never after a close (as `write` sends nothing once the connection has ended).
    #[inline]
    fn send_empty_replies(&mut self) -> io::Result<()> {
        while let Some(owed) = self.owed_messages.front()
            && owed.len() == 0
            && !self.ended
            && self.may_start_frame()
        {
            let kind = if owed.text { Data::Text } else { Data::Binary };
            self.owed_messages.pop_front();
            self.counts.ws_messages_out += 1;
            self.start_frame(OutFrame::new(
                OpCode::Data(kind),
                true,
                tungstenite::Bytes::new(),
            ))?;
        }
        Ok(())
    }

    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_paused = false;
        loop {
            match &mut self.stage {
                Stage::Upgrade { .. } => {
                    if !self.read_upgrade()? {
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                }
                // Nothing more is read from a client being refused: its end is ours.
                Stage::Refusing => return Ok(0),
                Stage::Open(_) => return self.read_message(buf),
            }
        }
    }

    /// Reads the upgrade request; true once it has been answered (either way).
    fn read_upgrade(&mut self) -> io::Result<bool> {
        let Stage::Upgrade { request } = &mut self.stage else {
            return Ok(true);
        };
        let mut chunk = [0u8; 1024];
        loop {
            let n = match self.wire.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(err) if would_block(&err) => return Ok(false),
                Err(err) if interrupted(&err) => continue,
                Err(err) => return Err(err),
            };
            request.extend_from_slice(&chunk[..n]);
            match upgrade::judge(request) {
                Verdict::Partial => continue,
                Verdict::Accept { response, used } => {
                    self.out.extend_from_slice(&response);
                    let rest = request[used..].to_vec();
                    self.inbound.frames.feed(&rest);
                    self.stage = Stage::Open(Box::new(new_context(rest, self.max_message)));
                }
                Verdict::Refuse { response } => {
                    self.out.extend_from_slice(&response);
                    self.stage = Stage::Refusing;
                }
            }
            self.flush_layer()?;
            return Ok(true);
        }
    }

    /// Hands over payload of the next data message (or the rest of the current one).
    fn read_message(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut quiet_frames = 0;
        loop {
            if let Some((payload, at)) = &mut self.reading {
                if *at > 0 {
                    // A later go at a long message: what was learned about the socket when
                    // it arrived may be stale by now.
                    self.drained = false;
                }
                let n = (payload.len() - *at).min(buf.len());
                buf[..n].copy_from_slice(&payload[*at..*at + n]);
                let first = *at == 0;
                *at += n;
                let done = *at == payload.len();
                self.heard.part = match (first, done) {
                    (true, true) => Part::Whole,
                    (true, false) => Part::First { len: payload.len() },
                    (false, false) => Part::Middle,
                    (false, true) => Part::Last,
                };
                if done {
                    self.reading = None;
                }
                return Ok(n);
            }
            if self.ended {
                return Ok(0);
            }
            if !matches!(self.stage, Stage::Open(_)) {
                return Ok(0);
            }
            if quiet_frames == QUIET_FRAMES_PER_READ {
                log::trace!("websocket: {quiet_frames} frames without data: pause reading");
                self.read_paused = true;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            // A message read ahead (see below) comes first.
            let next = match self.read_ahead.pop_front() {
                Some(next) => next,
                None => {
                    let stage_len = buf.len().min(STAGE_LIMIT);
                    let mut already_read = 0;
                    if self.tungstenite_holds_nothing() {
                        match self.read_around(&mut buf[..stage_len])? {
                            Around::Message(n) => return Ok(n),
                            Around::ForTungstenite(n) => already_read = n,
                            Around::End => {
                                self.ended = true;
                                return Ok(0);
                            }
                        }
                    }
                    let Stage::Open(ctx) = &mut self.stage else {
                        return Ok(0);
                    };
                    let mut probe = Probe::new(
                        &mut self.wire,
                        false,
                        &mut buf[..stage_len],
                        &mut self.inbound,
                    )
                    .already_read(already_read)
                    .holding_writes(self.out_frame.is_some());
                    let next = ctx.read(&mut probe);
                    let seen = probe.finish();
                    self.last_read_short = seen.short;
                    self.saw_writes(&seen);
                    self.tungstenite_waits = is_would_block(&next);
                    next
                }
            };
            let message = match next {
                Ok(message) => message,
                // Everything read is taken. (A pong or a close reply it could not write
                // shows as a write it tried: `flush_pending`, and `wants().write`.)
                Err(tungstenite::Error::Io(err)) if would_block(&err) => {
                    self.shrink_if_grown();
                    return Err(err);
                }
                // The close handshake done; or the client went without it (a FIN before any
                // close frame, which tungstenite calls `ResetWithoutClosingHandshake`, or a
                // reset): an end all the same, as a FIN without close_notify is on TLS.
                Err(
                    tungstenite::Error::ConnectionClosed
                    | tungstenite::Error::AlreadyClosed
                    | tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake),
                ) => {
                    self.ended = true;
                    return Ok(0);
                }
                Err(tungstenite::Error::Io(err)) if is_peer_gone(&err) => {
                    self.ended = true;
                    return Ok(0);
                }
                Err(tungstenite::Error::Io(err)) => return Err(err),
                Err(err) => {
                    self.fail(err);
                    return Ok(0);
                }
            };
            let (text, payload) = match message {
                Message::Text(text) => (true, tungstenite::Bytes::from(text)),
                Message::Binary(bytes) => (false, bytes),
                Message::Close(_) => {
                    self.counts.ws_closes_received += 1;
                    // tungstenite has queued the reply (the same code): send it, then end.
                    self.flush_pending = true;
                    self.ended = true;
                    self.flush_layer()?;
                    return Ok(0);
                }
                // Pings are answered by tungstenite itself; pongs and raw frames need nothing.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                    self.flush_pending = true;
                    self.flush_layer()?;
                    quiet_frames += 1;
                    continue;
                }
            };
            self.counts.ws_messages_in += 1;
            if self.mode == Mode::Echo {
                self.owed_messages.push_back(OwedMessage {
                    text,
                    body: Body::Kept(payload.clone()),
                    sent: 0,
                });
            }
            if payload.is_empty() {
                // No bytes for the echo to carry: its echo goes out here, in its turn, and
                // the server hears of it through `take_heard`.
                self.heard.empty_before += 1;
                self.send_empty_replies()?;
                quiet_frames += 1;
                continue;
            }
            self.reading = Some((payload, 0));
            self.look_ahead();
        }
    }

    /// What a `Probe` saw tungstenite write: it may hold bytes now (`flush_pending`), and
    /// its last write says how many (`control_unsent`).
    fn saw_writes(&mut self, seen: &probe::ProbeOutcome) {
        self.flush_pending |= seen.wrote;
        if let Some(unsent) = seen.unsent {
            self.control_unsent = unsent;
        }
    }

    /// tungstenite has said `WouldBlock` and every byte it was handed ends a frame of a
    /// complete message, so it holds nothing read; nothing is carried, read ahead or
    /// unsent. The next frame may then be read around it (see `around`).
    fn tungstenite_holds_nothing(&self) -> bool {
        self.tungstenite_waits
            && !self.ended
            && !self.flush_pending
            && self.read_ahead.is_empty()
            && self.inbound.carry.is_empty()
            && self.inbound.frames.at_rest()
    }

    /// Reads the socket into `stage` (the echo's buffer). A whole data frame at its start
    /// is unmasked and its payload moved to the start, for the echo; what follows it is
    /// carried for tungstenite. Anything else is left as read, for tungstenite.
    fn read_around(&mut self, stage: &mut [u8]) -> io::Result<Around> {
        let n = match self.wire.read(stage) {
            Ok(0) => return Ok(Around::End),
            Ok(n) => n,
            Err(err) if is_peer_gone(&err) => return Ok(Around::End),
            Err(err) => return Err(err),
        };
        let Some(frame) = WholeFrame::at_start_of(&stage[..n], self.max_message) else {
            return Ok(Around::ForTungstenite(n));
        };
        frame.unmask(stage);
        let end = frame.head_len + frame.len;
        if frame.text && std::str::from_utf8(&stage[frame.head_len..end]).is_err() {
            frame.unmask(stage); // as it came: tungstenite closes with 1007
            return Ok(Around::ForTungstenite(n));
        }
        log::trace!(
            "websocket: a whole {}-byte {} frame, read around tungstenite",
            frame.len,
            if frame.text { "text" } else { "binary" }
        );
        self.inbound.carry.keep(&stage[end..n]);
        stage.copy_within(frame.head_len..end, 0);
        self.counts.ws_messages_in += 1;
        if self.mode == Mode::Echo {
            self.owed_messages.push_back(OwedMessage {
                text: frame.text,
                body: Body::Echoed(frame.len),
                sent: 0,
            });
        }
        self.last_read_short = n < stage.len();
        self.drained =
            end == n && self.last_read_short && self.wire.short_read_is_drained() && !self.peer_fin;
        Ok(Around::Message(frame.len))
    }

    /// After a message that came with a short read of the socket, asks tungstenite for the
    /// next one *without* reading the socket: a message already buffered is kept for the
    /// next `read`; none at all means everything that arrived has been handed over, so the
    /// socket is drained and the confirming read can be skipped (`drained`). Plain `ws:` on
    /// epoll and kqueue only, never once the peer's FIN is known.
    fn look_ahead(&mut self) {
        self.drained = false;
        if !(self.last_read_short && self.wire.short_read_is_drained() && !self.peer_fin) {
            return;
        }
        let Stage::Open(ctx) = &mut self.stage else {
            return;
        };
        let mut probe = Probe::new(&mut self.wire, true, &mut [], &mut self.inbound)
            .holding_writes(self.out_frame.is_some());
        let next = ctx.read(&mut probe);
        let seen = probe.finish();
        self.saw_writes(&seen);
        self.tungstenite_waits = is_would_block(&next);
        match next {
            Err(tungstenite::Error::Io(err)) if would_block(&err) => {
                self.drained = true;
                self.shrink_if_grown();
            }
            other => self.read_ahead.push_back(other),
        }
    }

    /// tungstenite's read buffer grows to the longest frame it is sent and keeps that size:
    /// one 1 MiB message left a connection holding 1 MiB for as long as it stayed open.
    /// Past `SHRINK_AFTER`, the first time tungstenite holds nothing (it has just said
    /// `WouldBlock`, every byte it was handed ends a frame, no fragmented message is open,
    /// and it has nothing unsent), its context is replaced by a new one: all it held then
    /// was its configuration. The payloads handed over keep their own memory until they
    /// are echoed.
    fn shrink_if_grown(&mut self) {
        if !self.tungstenite_holds_nothing() || !self.inbound.frames.grown_past(SHRINK_AFTER) {
            return;
        }
        if let Stage::Open(ctx) = &mut self.stage {
            **ctx = new_context(Vec::new(), self.max_message);
            self.inbound.frames.renewed();
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

    /// A protocol error of the client's: close with the code RFC 6455 gives it.
    fn fail(&mut self, err: tungstenite::Error) {
        let code = match &err {
            tungstenite::Error::Utf8(_) => CloseCode::Invalid, // 1007
            tungstenite::Error::Capacity(_) => CloseCode::Size, // 1009
            _ => CloseCode::Protocol,                          // 1002
        };
        match code {
            CloseCode::Invalid => self.counts.ws_closed_invalid_utf8 += 1,
            CloseCode::Size => self.counts.ws_closed_too_big += 1,
            _ => self.counts.ws_closed_protocol += 1,
        }
        log::debug!("websocket: {err}: closing with {}", u16::from(code));
        if let Stage::Open(ctx) = &mut self.stage {
            let frame = CloseFrame {
                code,
                reason: "".into(),
            };
            let mut wire = Probe::new(&mut self.wire, true, &mut [], &mut self.inbound)
                .holding_writes(self.out_frame.is_some());
            let _ = ctx.close(&mut wire, Some(frame));
            let seen = wire.finish();
            self.saw_writes(&seen);
        }
        self.flush_pending = true;
        self.ended = true;
        let _ = self.flush_layer();
    }

    /// Bytes of the echo, sent back as frames of the messages they came from.
    pub(crate) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.ended || !matches!(self.stage, Stage::Open(_)) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if !self.may_start_frame() {
            self.flush_layer()?;
            if !self.may_start_frame() {
                // One frame out at a time, and none while tungstenite cannot empty its buffer.
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
        let (opcode, last, kept, taken) = match self.owed_messages.front_mut() {
            Some(owed) => {
                debug_assert!(owed.len() > 0, "empty replies go out first");
                let left = owed.len() - owed.sent;
                let taken = buf.len().min(left).min(WRITE_BUFFER_LIMIT);
                let opcode = match (owed.sent == 0, owed.text) {
                    (false, _) => OpCode::Data(Data::Continue),
                    (true, true) => OpCode::Data(Data::Text),
                    (true, false) => OpCode::Data(Data::Binary),
                };
                let kept = match &owed.body {
                    Body::Kept(payload) => {
                        let data = payload.slice(owed.sent..owed.sent + taken);
                        debug_assert_eq!(&data[..], &buf[..taken], "an echo writes what it read");
                        Some(data)
                    }
                    Body::Echoed(_) => None,
                };
                owed.sent += taken;
                let last = owed.sent == owed.len();
                if last {
                    self.owed_messages.pop_front();
                    self.counts.ws_messages_out += 1;
                }
                (opcode, last, kept, taken)
            }
            // --mode ack: each reply is a text message of its own, also when several wait
            // in the echo's pending output as one run of bytes.
            None => {
                debug_assert!(
                    buf.starts_with(ACK_REPLY),
                    "only acks come without a message"
                );
                let taken = buf.len().min(ACK_REPLY.len());
                self.counts.ws_messages_out += 1;
                (OpCode::Data(Data::Text), true, None, taken)
            }
        };
        match kept {
            Some(data) => self.start_frame(OutFrame::new(opcode, last, data))?,
            None => {
                // From the echo's bytes: copied only if the wire cannot take all of them.
                debug_assert!(self.may_start_frame());
                self.out_frame =
                    OutFrame::write_borrowed(opcode, last, &buf[..taken], &mut self.wire)?;
            }
        }
        self.send_empty_replies()?;
        self.wire.flush_wire()?;
        Ok(taken)
    }

    /// Our end: a close frame (1000) if none was exchanged yet, then the wire's end.
    pub(crate) fn shutdown_writes(&mut self) -> io::Result<()> {
        // Nothing more will be written: what is still read (a graceful stop reads to the
        // client's end) must not pile up as replies owed.
        self.mode = Mode::Discard;
        self.owed_messages.clear();
        if !self.ended
            && let Stage::Open(ctx) = &mut self.stage
        {
            let mut wire = Probe::new(&mut self.wire, true, &mut [], &mut self.inbound)
                .holding_writes(self.out_frame.is_some());
            let _ = ctx.close(&mut wire, None);
            let seen = wire.finish();
            self.saw_writes(&seen);
            self.flush_pending = true;
            self.ended = true;
        }
        self.flush_layer()?;
        self.wire.end()
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
