//! Reading around tungstenite: the commonest frame, read without it.
//!
//! Nearly every message an echo sees is one frame (final, masked, text or binary, no
//! extension bits) that arrives whole in one socket read. Handing it to tungstenite costs
//! a copy into its read buffer, a zero-fill of that buffer before the copy, a reference-
//! counted payload and the frame's parse a second time; together that is most of echod's
//! user-space time per message. So, when tungstenite holds nothing (it has said
//! `WouldBlock`, and every byte it was handed ended a frame of a complete message), the
//! socket is read into the echo's buffer here, and such a frame is unmasked in place and
//! handed to the echo directly. Anything else (control frames, fragments, a frame not all
//! here, extension bits, invalid UTF-8, an oversized message) goes to tungstenite exactly
//! as read, which then decides as it always did.
//!
//! Recognising that one shape takes its first two bytes, the length and the mask: a few
//! comparisons, done here. tungstenite's `FrameHeader::parse` goes through `io::Read` on a
//! cursor, about 180 instructions a frame, a ninth of echod's user-space cost per 64 B
//! message. The tests hold this to tungstenite's own parse, header by header.

/// A data frame that can go around tungstenite, found at the start of what was read.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct WholeFrame {
    /// Where its payload starts, and how long it is (never 0: an empty message goes to
    /// tungstenite, since a read of no bytes would mean the client's end).
    pub(super) head_len: usize,
    pub(super) len: usize,
    pub(super) text: bool,
    pub(super) mask: [u8; 4],
}

impl WholeFrame {
    /// The frame at the start of `bytes`, if it is whole and of the one shape read
    /// around tungstenite, and its message no longer than `max_message`.
    pub(super) fn at_start_of(bytes: &[u8], max_message: usize) -> Option<WholeFrame> {
        // FIN set, no RSV bits, and a text (1) or binary (2) opcode (RFC 6455 section 5.2).
        let text = match *bytes.first()? {
            0x81 => true,
            0x82 => false,
            _ => return None,
        };
        let second = *bytes.get(1)?;
        if second & 0x80 == 0 {
            return None; // unmasked: tungstenite refuses it
        }
        let (len, len_end) = match second & 0x7f {
            126 => (
                u64::from(u16::from_be_bytes(*bytes.get(2..4)?.as_array()?)),
                4,
            ),
            127 => (u64::from_be_bytes(*bytes.get(2..10)?.as_array()?), 10),
            short => (u64::from(short), 2),
        };
        let mask = *bytes.get(len_end..len_end + 4)?.as_array()?;
        let head_len = len_end + 4;
        let whole = len > 0 && len <= max_message as u64 && len <= (bytes.len() - head_len) as u64;
        whole.then_some(WholeFrame {
            head_len,
            len: len as usize,
            text,
            mask,
        })
    }

    /// Unmasks the payload in place (masking is its own inverse: applied again, it gives
    /// the bytes back as they came).
    pub(super) fn unmask(&self, frame: &mut [u8]) {
        let payload = &mut frame[self.head_len..self.head_len + self.len];
        let mask = u64::from_ne_bytes([
            self.mask[0],
            self.mask[1],
            self.mask[2],
            self.mask[3],
            self.mask[0],
            self.mask[1],
            self.mask[2],
            self.mask[3],
        ]);
        let mut words = payload.chunks_exact_mut(8);
        for word in &mut words {
            let unmasked = u64::from_ne_bytes((&*word).try_into().unwrap()) ^ mask;
            word.copy_from_slice(&unmasked.to_ne_bytes());
        }
        for (i, byte) in words.into_remainder().iter_mut().enumerate() {
            *byte ^= self.mask[i % 4];
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use tungstenite::protocol::frame::FrameHeader;
    use tungstenite::protocol::frame::coding::{Data, OpCode};

    use super::WholeFrame;
    use crate::transport::ws::tests::client_frame_starting as client_frame;

    #[test]
    fn a_whole_final_data_frame_is_found_and_unmasked() {
        for len in [1, 7, 8, 9, 125, 126, 1000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut bytes = client_frame(0x82, &payload);
            bytes.extend_from_slice(b"the next frame");
            let found = WholeFrame::at_start_of(&bytes, 1 << 20).expect("a whole frame");
            assert!(!found.text);
            assert_eq!(found.len, len);
            found.unmask(&mut bytes);
            assert_eq!(&bytes[found.head_len..found.head_len + len], &payload[..]);
            assert!(
                bytes.ends_with(b"the next frame"),
                "nothing past the frame touched"
            );
        }
        let text = client_frame(0x81, "汉语".as_bytes());
        assert!(WholeFrame::at_start_of(&text, 100).unwrap().text);
    }

    /// Every first and second byte, each length form at its edges, against tungstenite's
    /// own parse: a frame is taken here exactly when tungstenite reads it as a whole,
    /// final, masked text or binary frame without RSV bits, and both agree on its parts.
    #[test]
    fn the_shape_taken_is_what_tungstenite_parses() {
        let mask = [0xa1, 0xb2, 0xc3, 0xd4];
        let max = 70_000;
        let mut taken = 0;
        for first in 0..=255u8 {
            for second in 0..=255u8 {
                let extended: &[&[u8]] = match second & 0x7f {
                    126 => &[&[0, 126], &[0x11, 0x70], &[0xff, 0xff]],
                    127 => &[
                        &[0, 0, 0, 0, 0, 1, 0x11, 0x70],
                        &[0x80, 0, 0, 0, 0, 0, 0, 1],
                    ],
                    _ => &[&[]],
                };
                for ext in extended {
                    let mut bytes = vec![first, second];
                    bytes.extend_from_slice(ext);
                    if second & 0x80 != 0 {
                        bytes.extend_from_slice(&mask);
                    }
                    let head_len = bytes.len();
                    let declared = match ext.len() {
                        0 => usize::from(second & 0x7f),
                        _ => ext
                            .iter()
                            .fold(0usize, |n, &b| n.saturating_mul(256) + usize::from(b)),
                    };
                    bytes.resize(head_len + declared.min(max) + 10, 0x5a);
                    for end in [
                        bytes.len(),
                        head_len + declared,
                        head_len + 10,
                        head_len - 1,
                    ] {
                        taken += usize::from(check_against_tungstenite(
                            &bytes[..end.min(bytes.len())],
                            max,
                        ));
                    }
                }
            }
        }
        // Text and binary, masked, each length form: 2 × (126 + 3 + 1) lengths, taken when
        // the payload is all there.
        assert!(taken > 500, "{taken} frames taken");
    }

    /// Whether the frame was taken here; panics if tungstenite sees it otherwise.
    fn check_against_tungstenite(bytes: &[u8], max: usize) -> bool {
        let mut cursor = Cursor::new(bytes);
        let theirs = match FrameHeader::parse(&mut cursor) {
            Ok(Some((header, len)))
                if header.is_final
                    && !(header.rsv1 || header.rsv2 || header.rsv3)
                    && len > 0
                    && len <= max as u64
                    && len <= bytes.len() as u64 - cursor.position() =>
            {
                let text = match header.opcode {
                    OpCode::Data(Data::Text) => Some(true),
                    OpCode::Data(Data::Binary) => Some(false),
                    _ => None,
                };
                text.zip(header.mask).map(|(text, mask)| WholeFrame {
                    head_len: cursor.position() as usize,
                    len: len as usize,
                    text,
                    mask,
                })
            }
            _ => None,
        };
        let ours = WholeFrame::at_start_of(bytes, max);
        assert_eq!(
            ours,
            theirs,
            "header {:02x?}",
            &bytes[..bytes.len().min(14)]
        );
        ours.is_some()
    }

    #[test]
    fn every_other_shape_is_left_to_tungstenite() {
        let payload = b"0123456789";
        let whole = client_frame(0x82, payload);
        let cases: [(&str, Vec<u8>, usize); 9] = [
            ("not all here", whole[..whole.len() - 1].to_vec(), 100),
            ("half a header", whole[..3].to_vec(), 100),
            ("too long", whole.clone(), 9),
            ("not final", client_frame(0x02, payload), 100),
            ("a continuation", client_frame(0x80, payload), 100),
            ("a ping", client_frame(0x89, payload), 100),
            ("RSV1", client_frame(0xc2, payload), 100),
            ("empty", client_frame(0x82, b""), 100),
            ("unmasked", [&[0x82, 10][..], payload].concat(), 100),
        ];
        for (what, bytes, max) in cases {
            assert_eq!(WholeFrame::at_start_of(&bytes, max), None, "{what}");
        }
        assert!(
            WholeFrame::at_start_of(&whole, 10).is_some(),
            "at the limit"
        );
    }
}
