//! The reading half of a WebSocket connection: the HTTP upgrade, then data messages handed
//! to the echo as bytes, in order.
//!
//! Frames go through tungstenite's `WebSocketContext`, over a `Probe` that reads the socket
//! into the echo's own buffer. While tungstenite holds nothing, a whole data frame that
//! arrives in one read skips it (`read_around`): the commonest message is unmasked where it
//! landed and costs no copy. After a short read, tungstenite is asked once more without a
//! socket read (`look_ahead`), so that a drained socket needs no confirming `recv`. Control
//! frames are tungstenite's to answer; a protocol error closes with the code RFC 6455
//! gives it (`fail`).

use std::io;

use tungstenite::Message;
use tungstenite::error::ProtocolError;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use super::around::WholeFrame;
use super::probe::Probe;
use super::upgrade::{self, Verdict};
use super::{Body, OwedMessage, Stage, Wire, WsStream, is_peer_gone, is_would_block, new_context};
use crate::config::Mode;
use crate::readiness::{interrupted, would_block};
use crate::transport::Part;

/// The most one socket read takes for tungstenite (into the echo's shared buffer, the
/// rest kept in `Carry`): a 16 KiB message in one `recv`, not eight of `READ_BUFFER`.
const STAGE_LIMIT: usize = 32 * 1024;
/// After a frame longer than this, tungstenite's read buffer is given back once it holds
/// nothing (`shrink_if_grown`). Up to it, the buffer is kept: a new one for every message
/// would cost an allocation each, and an idle connection holds at most this much.
const SHRINK_AFTER: u64 = 64 * 1024;
/// The most frames that give the echo no bytes (pings, pongs, empty messages) one `read`
/// goes through before it pauses: a flood of them gets its turn like any other client,
/// and the replies they owe are weighed against `--max-pending` between turns.
pub(super) const QUIET_FRAMES_PER_READ: usize = 32;

/// What `read_around` found.
enum Around {
    /// A whole message, its payload now at the start of the buffer.
    Message(usize),
    /// Bytes read that tungstenite must have: this many at the start of the buffer.
    ForTungstenite(usize),
    /// The client's end.
    End,
}

impl<W: Wire> WsStream<W> {
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

    /// tungstenite has said `WouldBlock` and every byte it was handed ends a frame of a
    /// complete message, so it holds nothing read; nothing is carried, read ahead or
    /// unsent. The next frame may then be read around it (see `around`).
    pub(super) fn tungstenite_holds_nothing(&self) -> bool {
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
    pub(super) fn shrink_if_grown(&mut self) {
        if !self.tungstenite_holds_nothing() || !self.inbound.frames.grown_past(SHRINK_AFTER) {
            return;
        }
        if let Stage::Open(ctx) = &mut self.stage {
            **ctx = new_context(Vec::new(), self.max_message);
            self.inbound.frames.renewed();
        }
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
}
