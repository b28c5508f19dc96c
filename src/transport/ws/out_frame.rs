//! The echo's data frames on their way out, written around tungstenite's write buffer.

use std::io::{self, Write};

use tungstenite::protocol::frame::coding::OpCode;

use crate::readiness::{interrupted, would_block};

/// A data frame of the echo's, written to the wire around tungstenite's write buffer: the
/// header and the payload (a reference into the message as received) leave in one
/// vectored write, which the raw stream joins with a copy only when the frame is small
/// (`plain::Stream::write_vectored`). Started only when tungstenite
/// holds nothing unsent, and while it is part-way out tungstenite may not write
/// (`Probe::hold_writes`): frames never interleave.
#[derive(Debug)]
pub(super) struct OutFrame {
    head: Head,
    payload: tungstenite::Bytes,
    /// Bytes of head and payload written so far.
    sent: usize,
}

impl OutFrame {
    pub(super) fn new(opcode: OpCode, is_final: bool, payload: tungstenite::Bytes) -> OutFrame {
        OutFrame {
            head: Head::new(opcode, is_final, payload.len()),
            payload,
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
        let head = Head::new(opcode, is_final, payload.len());
        let mut sent = 0;
        if write_frame(head.as_bytes(), payload, &mut sent, wire)? {
            return Ok(None);
        }
        Ok(Some(OutFrame {
            head,
            payload: tungstenite::Bytes::copy_from_slice(payload),
            sent,
        }))
    }

    /// Bytes of the frame not yet written.
    pub(super) fn unsent(&self) -> usize {
        self.head.as_bytes().len() + self.payload.len() - self.sent
    }

    /// Writes what the wire takes: true once all of the frame is out.
    pub(super) fn write_to(&mut self, wire: &mut impl Write) -> io::Result<bool> {
        write_frame(self.head.as_bytes(), &self.payload, &mut self.sent, wire)
    }
}

/// A server's frame header (RFC 6455 section 5.2): FIN and the opcode, no mask, and the
/// length in seven bits, or 126 and sixteen, or 127 and sixty-four. Made here rather than by
/// tungstenite's `FrameHeader::format`, whose `io::Write` onto a cursor cost more than the
/// rest of a 64 B reply's user-space work; the tests hold the two byte for byte.
#[derive(Debug)]
struct Head {
    bytes: [u8; Head::MAX],
    len: u8,
}

impl Head {
    /// Two bytes, and at most eight of length.
    const MAX: usize = 10;

    fn new(opcode: OpCode, is_final: bool, payload_len: usize) -> Head {
        let mut bytes = [0u8; Head::MAX];
        bytes[0] = u8::from(opcode) | if is_final { 0x80 } else { 0 };
        let len = match payload_len {
            0..=125 => {
                bytes[1] = payload_len as u8;
                2
            }
            126..=0xffff => {
                bytes[1] = 126;
                bytes[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
                4
            }
            _ => {
                bytes[1] = 127;
                bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
                10
            }
        };
        Head { bytes, len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
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

#[cfg(test)]
mod tests {
    use super::Head;
    use tungstenite::protocol::frame::FrameHeader;
    use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

    #[test]
    fn a_head_is_what_tungstenite_would_format() {
        let opcodes = [
            OpCode::Data(Data::Text),
            OpCode::Data(Data::Binary),
            OpCode::Data(Data::Continue),
            OpCode::Control(Control::Close),
        ];
        let lengths = [
            0,
            1,
            125,
            126,
            127,
            65_535,
            65_536,
            1 << 24,
            usize::MAX >> 1,
        ];
        for opcode in opcodes {
            for is_final in [true, false] {
                for len in lengths {
                    let header = FrameHeader {
                        is_final,
                        opcode,
                        ..FrameHeader::default()
                    };
                    let mut theirs = Vec::new();
                    header.format(len as u64, &mut theirs).unwrap();
                    let ours = Head::new(opcode, is_final, len);
                    assert_eq!(ours.as_bytes(), &theirs[..], "{opcode:?} {is_final} {len}");
                }
            }
        }
    }
}
