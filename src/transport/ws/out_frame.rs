//! The echo's data frames on their way out, written around tungstenite's write buffer.

use std::io::{self, Write};

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::OpCode;

use crate::readiness::{interrupted, would_block};

/// A data frame of the echo's, written to the wire around tungstenite's write buffer: the
/// header (formatted by tungstenite's `FrameHeader`) and the payload (a reference into the
/// message as received) leave in one vectored write, so a reply costs no copy in user
/// space. Started only when tungstenite holds nothing unsent, and while it is part-way
/// out tungstenite may not write (`Probe::hold_writes`): frames never interleave.
#[derive(Debug)]
pub(super) struct OutFrame {
    head: [u8; OutFrame::MAX_HEAD],
    head_len: usize,
    payload: tungstenite::Bytes,
    /// Bytes of head and payload written so far.
    sent: usize,
}

impl OutFrame {
    /// A server's frames are unmasked: two bytes, and at most eight of length.
    const MAX_HEAD: usize = 10;

    pub(super) fn new(opcode: OpCode, is_final: bool, payload: tungstenite::Bytes) -> OutFrame {
        let mut frame = OutFrame::head_only(opcode, is_final, payload.len());
        frame.payload = payload;
        frame
    }

    /// The header of a frame of `len` bytes, formatted by tungstenite; no payload yet.
    fn head_only(opcode: OpCode, is_final: bool, len: usize) -> OutFrame {
        let header = FrameHeader {
            is_final,
            opcode,
            ..FrameHeader::default()
        };
        let mut head = [0u8; OutFrame::MAX_HEAD];
        let mut cursor = io::Cursor::new(&mut head[..]);
        header
            .format(len as u64, &mut cursor)
            .expect("an unmasked frame header fits in ten bytes");
        let head_len = cursor.position() as usize;
        OutFrame {
            head,
            head_len,
            payload: tungstenite::Bytes::new(),
            sent: 0,
        }
    }

    /// Writes a frame of `payload` (the caller's bytes) as far as the wire takes it: `None`
    /// once all of it is out, or the frame to finish later, holding a copy of the rest.
    pub(super) fn write_borrowed(
        opcode: OpCode,
        is_final: bool,
        payload: &[u8],
        wire: &mut impl Write,
    ) -> io::Result<Option<OutFrame>> {
        let mut frame = OutFrame::head_only(opcode, is_final, payload.len());
        if write_frame(
            &frame.head[..frame.head_len],
            payload,
            &mut frame.sent,
            wire,
        )? {
            return Ok(None);
        }
        frame.payload = tungstenite::Bytes::copy_from_slice(payload);
        Ok(Some(frame))
    }

    /// Bytes of the frame not yet written.
    pub(super) fn unsent(&self) -> usize {
        self.head_len + self.payload.len() - self.sent
    }

    /// Writes what the wire takes: true once all of the frame is out.
    pub(super) fn write_to(&mut self, wire: &mut impl Write) -> io::Result<bool> {
        write_frame(
            &self.head[..self.head_len],
            &self.payload,
            &mut self.sent,
            wire,
        )
    }
}

/// Writes `head` then `payload`, from `sent` bytes into the two, until all is out (true)
/// or the wire says `WouldBlock` (false); both at once while any of the header is left.
fn write_frame(
    head: &[u8],
    payload: &[u8],
    sent: &mut usize,
    wire: &mut impl Write,
) -> io::Result<bool> {
    while *sent < head.len() + payload.len() {
        let result = if *sent < head.len() {
            let head = &head[*sent..];
            if payload.is_empty() {
                wire.write(head)
            } else {
                wire.write_vectored(&[io::IoSlice::new(head), io::IoSlice::new(payload)])
            }
        } else {
            wire.write(&payload[*sent - head.len()..])
        };
        match result {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *sent += n,
            Err(err) if would_block(&err) => return Ok(false),
            Err(err) if interrupted(&err) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(true)
}
