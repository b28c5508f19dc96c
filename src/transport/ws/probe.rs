//! The wire as tungstenite sees it: reads staged in the echo's buffer so that a message
//! costs one `recv`, what tungstenite leaves behind carried to the next read, and its
//! writes held while a frame of ours is part-way out.

use std::io::{self, Read, Write};

use super::frames::FrameTracker;

/// What has been read from the socket for tungstenite: bytes it has not taken yet, and
/// where the frames it has been handed stand.
#[derive(Debug, Default)]
pub(super) struct Inbound {
    pub(super) carry: Carry,
    pub(super) frames: FrameTracker,
}

/// Bytes read from the socket beyond what tungstenite asked for, handed to it before the
/// socket is read again. Allocated only while it holds bytes (an idle connection has none)
/// and never more than one socket read, `STAGE_LIMIT`.
#[derive(Debug, Default)]
pub(super) struct Carry {
    bytes: Vec<u8>,
    at: usize,
}

impl Carry {
    pub(super) fn is_empty(&self) -> bool {
        self.at == self.bytes.len()
    }

    /// Moves what fits into `dst`; frees the buffer once it is all handed over.
    fn take_into(&mut self, dst: &mut [u8]) -> usize {
        let n = (self.bytes.len() - self.at).min(dst.len());
        dst[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        if self.is_empty() {
            *self = Carry::default();
        }
        n
    }

    pub(super) fn keep(&mut self, rest: &[u8]) {
        if !rest.is_empty() {
            debug_assert!(self.is_empty(), "a socket read while bytes were carried");
            self.bytes = rest.to_vec();
            self.at = 0;
        }
    }
}

/// The wire as tungstenite reads it: bytes carried over first; then, unless `refuse` (say
/// `WouldBlock`, so that tungstenite answers from what it holds), one socket read into
/// `stage` (the echo's shared buffer, free until the payload is copied into it) of as much
/// as has arrived, handed to tungstenite piece by piece as it asks. What it has not taken
/// when the read is over is carried (`finish`): usually nothing, a message in one read.
/// Notes a short read.
pub(super) struct Probe<'a, W> {
    wire: &'a mut W,
    refuse: bool,
    /// One of our own frames is part-way out: tungstenite's writes must wait (`WouldBlock`)
    /// or they would land inside it.
    hold_writes: bool,
    /// tungstenite tried to write (a pong or a close reply): it may hold bytes now.
    wrote: bool,
    /// What its last write left unsent (see `ProbeOutcome::unsent`).
    unsent: Option<usize>,
    short: bool,
    stage: &'a mut [u8],
    /// The part of `stage` read but not yet handed over.
    staged: std::ops::Range<usize>,
    inbound: &'a mut Inbound,
}

impl<'a, W> Probe<'a, W> {
    pub(super) fn new(
        wire: &'a mut W,
        refuse: bool,
        stage: &'a mut [u8],
        inbound: &'a mut Inbound,
    ) -> Self {
        Probe {
            wire,
            refuse,
            hold_writes: false,
            wrote: false,
            unsent: None,
            short: false,
            stage,
            staged: 0..0,
            inbound,
        }
    }

    /// The first `n` bytes of `stage` were already read from the socket (by
    /// `read_around`): they are handed over before the socket is read again.
    pub(super) fn already_read(mut self, n: usize) -> Self {
        self.short = n > 0 && n < self.stage.len();
        self.staged = 0..n;
        self
    }

    pub(super) fn holding_writes(mut self, hold: bool) -> Self {
        self.hold_writes = hold;
        self
    }

    /// Keeps what tungstenite did not take (the stage is about to be overwritten); says
    /// whether the socket read came back short, and whether tungstenite wrote.
    pub(super) fn finish(self) -> ProbeOutcome {
        self.inbound.carry.keep(&self.stage[self.staged]);
        ProbeOutcome {
            short: self.short,
            wrote: self.wrote,
            unsent: self.unsent,
        }
    }
}

/// What a `Probe` saw.
pub(super) struct ProbeOutcome {
    pub(super) short: bool,
    pub(super) wrote: bool,
    /// How many bytes tungstenite holds unsent, if it wrote at all. It hands its whole
    /// write buffer to every write it makes, and makes one after every frame it buffers
    /// (its `write_buffer_size` is 0), so what its last write left over is all it holds.
    pub(super) unsent: Option<usize>,
}

impl<W: Read> Read for Probe<'_, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.hand_over(buf)?;
        self.inbound.frames.feed(&buf[..n]);
        Ok(n)
    }
}

impl<W: Read> Probe<'_, W> {
    fn hand_over(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.inbound.carry.is_empty() {
            return Ok(self.inbound.carry.take_into(buf));
        }
        if self.staged.is_empty() {
            if self.refuse {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            if self.stage.len() <= buf.len() {
                let n = self.wire.read(buf)?;
                self.short = n > 0 && n < buf.len();
                return Ok(n);
            }
            let n = self.wire.read(self.stage)?;
            self.short = n > 0 && n < self.stage.len();
            self.staged = 0..n;
        }
        let n = self.staged.len().min(buf.len());
        buf[..n].copy_from_slice(&self.stage[self.staged.start..self.staged.start + n]);
        self.staged.start += n;
        Ok(n)
    }
}

impl<W: Write> Write for Probe<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.wrote = true;
        self.unsent = Some(buf.len());
        if self.hold_writes {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.wire.write(buf)?;
        self.unsent = Some(buf.len() - n);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.wire.flush()
    }
}
