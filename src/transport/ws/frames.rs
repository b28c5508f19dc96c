//! Where the frames handed to tungstenite stand: how much of the frame in progress it has
//! still to get, and whether a fragmented message is open. That is what it takes to know,
//! from outside, when tungstenite's read buffer holds nothing, so that a buffer a large
//! frame has grown can be given back (`WsStream::shrink_if_grown`).

use std::io::Cursor;

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::OpCode;

/// The longest frame header (a client's: masked, with a 64-bit length).
const MAX_HEAD: usize = 14;

#[derive(Debug, Default)]
pub(super) struct FrameTracker {
    /// The start of a header that has not all arrived yet.
    head: [u8; MAX_HEAD],
    head_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// A data frame without FIN was seen, and its message's last frame not yet.
    message_open: bool,
    /// The longest frame seen since the last `renewed`.
    largest: u64,
    /// A header tungstenite refuses too: the connection is about to fail, and nothing is
    /// known any more.
    lost: bool,
}

impl FrameTracker {
    /// Follows `bytes`, the next ones handed to tungstenite.
    pub(super) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.lost {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len() as u64) as usize;
                self.payload_left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let take = (MAX_HEAD - self.head_len).min(bytes.len());
            self.head[self.head_len..self.head_len + take].copy_from_slice(&bytes[..take]);
            let have = self.head_len + take;
            let mut cursor = Cursor::new(&self.head[..have]);
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((header, len))) => {
                    let head_size = cursor.position() as usize;
                    bytes = &bytes[head_size - self.head_len..];
                    self.head_len = 0;
                    self.payload_left = len;
                    self.largest = self.largest.max(len);
                    if let OpCode::Data(_) = header.opcode {
                        self.message_open = !header.is_final;
                    }
                }
                // Not all of the header yet: all of `bytes` is in `head` (had there been
                // more, the longest header would have fitted).
                Ok(None) => {
                    self.head_len = have;
                    bytes = &[];
                }
                Err(_) => self.lost = true,
            }
        }
    }

    /// Every byte handed over ends a frame, and no fragmented message is open: once
    /// tungstenite has said `WouldBlock`, it holds nothing read.
    pub(super) fn at_rest(&self) -> bool {
        !self.lost && self.head_len == 0 && self.payload_left == 0 && !self.message_open
    }

    /// A frame longer than `limit` has been seen since the last `renewed`.
    pub(super) fn grown_past(&self, limit: u64) -> bool {
        self.largest > limit
    }

    /// tungstenite's buffer is new again.
    pub(super) fn renewed(&mut self) {
        self.largest = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::FrameTracker;

    /// A masked client frame with a 16-bit length (the payload's bytes do not matter here).
    fn frame(first: u8, len: usize) -> Vec<u8> {
        let mut bytes = vec![first, 0x80 | 126];
        bytes.extend_from_slice(&(len as u16).to_be_bytes());
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        bytes.resize(bytes.len() + len, 0);
        bytes
    }

    #[test]
    fn follows_frames_split_anywhere() {
        let mut stream = frame(0x82, 300); // binary, final
        stream.extend(frame(0x01, 200)); // text, not final
        stream.extend(frame(0x89, 5)); // a ping between the fragments
        stream.extend(frame(0x80, 1000)); // the last fragment
        let ends = [308, 308 + 208, 308 + 208 + 13, stream.len()];
        for piece in [1, 2, 3, 7, 64, 1000] {
            let mut tracker = FrameTracker::default();
            let mut at_rest = Vec::new();
            for (i, chunk) in stream.chunks(piece).enumerate() {
                tracker.feed(chunk);
                let fed = (i * piece + chunk.len()).min(stream.len());
                at_rest.push((fed, tracker.at_rest()));
            }
            for (fed, rest) in at_rest {
                let expected = fed == ends[0] || fed == ends[3];
                assert_eq!(rest, expected, "piece {piece}, after {fed} bytes");
            }
            assert!(tracker.grown_past(999) && !tracker.grown_past(1000));
            tracker.renewed();
            assert!(!tracker.grown_past(0));
        }
    }

    #[test]
    fn a_header_tungstenite_would_refuse_loses_the_thread() {
        let mut tracker = FrameTracker::default();
        // A reserved opcode (3), with no payload: parse refuses it.
        tracker.feed(&[0x83, 0x80, 1, 2, 3, 4]);
        assert!(!tracker.at_rest());
        tracker.feed(&[0x82, 0x80, 1, 2, 3, 4]);
        assert!(!tracker.at_rest(), "lost for good");
    }
}
