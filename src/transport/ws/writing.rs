//! The writing half of a WebSocket connection: the echo's bytes sent back as frames of the
//! messages they came from, around tungstenite's own control frames, and our end.
//!
//! One frame is on its way at a time. A frame of ours that the socket takes only in part
//! is finished (`OutFrame`) before anything else is written, and none starts while
//! tungstenite holds unsent pongs or closes (`may_start_frame`), so the two never
//! interleave on the wire. Empty messages owe the echo no bytes and so go back from here,
//! in their turn (`send_empty_replies`).

use std::io;

use tungstenite::protocol::frame::coding::{Data, OpCode};

use super::out_frame::OutFrame;
use super::probe::Probe;
use super::{Body, Stage, WRITE_BUFFER_LIMIT, Wire, WsStream, into_io};
use crate::config::{ACK_REPLY, Mode};
use crate::readiness::{would_block, write_owed};

impl<W: Wire> WsStream<W> {
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
    pub(super) fn send_empty_replies(&mut self) -> io::Result<()> {
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
