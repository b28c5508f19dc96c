//! What the load generator puts on the wire, and how it checks what comes back.
//!
//! Every connection carries an endless stream of fixed-size messages:
//!
//! ```text
//! offset 0        8               16                      size
//!        | seq u64 | sent_at u64   | payload ...           |
//!          big-endian ("network byte order"), as the classic tutorials teach
//! ```
//!
//! `seq` counts messages on the connection; `sent_at` is nanoseconds since the run began.
//! The payload is a shared pattern mixed with the connection id and `seq`, so bytes from
//! another connection or another message never pass for the right ones.
//!
//! Because message `k` occupies stream bytes `k*size .. (k+1)*size` and its timestamp is
//! remembered until it comes back, any range of the stream can be regenerated: that is how
//! partial writes are resumed and every echoed byte is checked, with no copy of what was
//! sent and no allocation per message.

/// Bytes of header at the front of every message.
pub const HEADER_LEN: usize = 16;

/// Knows how to produce any byte range of one connection's outgoing stream.
pub struct Stream<'a> {
    /// Message size in bytes (at least `HEADER_LEN`).
    pub size: usize,
    /// Shared payload pattern, `size` bytes long.
    pub pattern: &'a [u8],
    /// The connection's number, mixed into its payload.
    pub conn_id: u32,
    /// Send timestamps of the messages in flight, indexed by `seq % sent_at.len()`.
    pub sent_at: &'a [u64],
}

impl Stream<'_> {
    /// Writes stream bytes `start .. start + out.len()` into `out`.
    pub fn fill(&self, start: u64, out: &mut [u8]) {
        let size = self.size as u64;
        let mut done = 0;
        while done < out.len() {
            let pos = start + done as u64;
            let seq = pos / size;
            let offset = (pos % size) as usize;
            let take = (self.size - offset).min(out.len() - done);
            self.fill_message(seq, offset, &mut out[done..done + take]);
            done += take;
        }
    }

    /// Bytes `offset .. offset + out.len()` of message `seq`.
    fn fill_message(&self, seq: u64, offset: usize, out: &mut [u8]) {
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(&seq.to_be_bytes());
        let stamp = self.sent_at[(seq % self.sent_at.len() as u64) as usize];
        header[8..].copy_from_slice(&stamp.to_be_bytes());
        let mix = payload_mix(self.conn_id, seq);
        for (i, byte) in out.iter_mut().enumerate() {
            let at = offset + i;
            *byte = if at < HEADER_LEN {
                header[at]
            } else {
                self.pattern[at] ^ mix
            };
        }
    }
}

/// The byte each payload byte of message `seq` on connection `conn_id` is XORed with.
fn payload_mix(conn_id: u32, seq: u64) -> u8 {
    (conn_id.wrapping_mul(0x9E37_79B9) >> 24) as u8 ^ (seq as u8).wrapping_mul(31) ^ 0x5A
}

/// The shared payload pattern for messages of `size` bytes.
pub fn pattern(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i.wrapping_mul(131) >> 3) as u8)
        .collect()
}
