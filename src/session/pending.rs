//! A connection's pending output: bytes read but not yet taken by the client's socket.
//!
//! It holds heap memory only while something is owed. Once the client catches up the
//! buffer is given back, so an idle or caught-up connection costs no buffer at all.
//! The loop never lets it grow past `--max-pending` (it stops reading instead).

/// Unsent bytes, oldest first: `buf[start..]` is still owed to the client.
#[derive(Debug, Default)]
pub(crate) struct PendingOutput {
    /// Storage; empty and unallocated whenever nothing is owed.
    buf: Vec<u8>,
    /// How much of `buf` has already been written to the socket.
    start: usize,
}

impl PendingOutput {
    /// Bytes still owed.
    pub(crate) fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes to write next.
    pub(crate) fn unsent(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Appends bytes behind whatever is already owed.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            // Slide the unsent tail to the front rather than grow: memory stays at the cap.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Records that the socket took `n` more bytes; frees the buffer once all are gone.
    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.buf.len());
        if self.start == self.buf.len() {
            // Caught up: give the memory back (an idle connection holds no buffer).
            self.buf = Vec::new();
            self.start = 0;
        }
    }

    /// Heap bytes held (for tests of the "idle holds nothing" promise).
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_across_partial_consumes_and_frees_when_caught_up() {
        let mut p = PendingOutput::default();
        assert_eq!(p.capacity(), 0);
        p.push(b"hello ");
        p.consume(2);
        p.push(b"world");
        assert_eq!(p.unsent(), b"llo world");
        p.consume(p.len());
        assert!(p.is_empty());
        assert_eq!(p.capacity(), 0);
    }
}
