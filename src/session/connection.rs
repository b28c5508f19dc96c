//! One client connection and the small state machine that echoes over it.
//!
//! The sessions call [`Connection::serve`] whenever `poll` says the socket is ready (or when
//! the loop comes back to a connection it had to leave early). The connection speaks to
//! its client through a [`Transport`] and never learns which protocol that is. `serve`
//! follows the rules of readiness-based I/O:
//!
//! 1. **Flush first.** Bytes already owed go out before anything newly read, so order holds.
//! 2. **Drain.** Under edge triggering no new event arrives until the socket has said
//!    `WouldBlock`, so read until then, retrying `Interrupted`. Stopping early (the budget
//!    or the pending cap) is allowed only if the connection *remembers* it owes a read
//!    ([`Connection::owes_read`]) and the loop comes back.
//! 3. **Write straight back.** What a read returns is written at once from the loop's
//!    shared buffer; only what the socket will not take is copied into [`PendingOutput`].
//! 4. **Interest follows state.** [`Connection::desired_interest`] derives it in one place,
//!    from what the echo owes joined with what the transport wants; the loop re-registers
//!    only when it changes (WRITABLE only while something is owed).
//! 5. **Close gracefully.** After the client's EOF, finish what is owed, then send our FIN.
//!    When the server stops first, flush, send our FIN, then read and drop until the
//!    client's EOF (`linger`): closing with unread input would reset the connection.

use std::io;

use log::{debug, trace};
use mio::{Interest, Token};

use crate::config::{ACK_REPLY, Mode};
use crate::print::{print_heard, print_heard_start};
use crate::readiness::{Ready, interrupted, would_block};
use crate::telemetry::stats::{CloseReason, Stats};
use crate::transport::{AnyTransport, Part, Peer, Transport};

use super::pending::PendingOutput;
use super::timers::{Linked, Links};

/// The limits a turn of `serve` works within, set by the loop.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// `--max-pending`: reading stops while this much is owed.
    pub max_pending: usize,
    /// Bytes to read before yielding to other connections.
    pub read_budget: usize,
    /// What `--max-pending-total` leaves for all connections together (`None`: no cap).
    pub global_headroom: Option<usize>,
    /// False once the server is stopping: flush what is owed, read nothing new.
    pub reading_allowed: bool,
    /// What to answer with: the bytes read, `Got it!`, or nothing.
    pub mode: Mode,
    /// `--print`: say on stdout what was heard.
    pub print: bool,
}

/// Largest read a connection owing nothing may make while `--max-pending-total` is reached.
const OVER_CAP_READ: usize = 4096;

/// What the loop must do with a connection after serving it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Still open. `come_back` is true when it stopped reading early for the budget and so
    /// will get no new event for data already queued: the loop must revisit it next turn.
    Open { come_back: bool },
    /// Done: the loop closes it at the end of this turn.
    Finished(CloseReason),
}

/// Why a read loop stopped.
#[derive(Debug, PartialEq, Eq)]
enum ReadStop {
    /// `WouldBlock` (or a short read): nothing more until the next event.
    Drained,
    /// The client sent EOF.
    Eof,
    /// Owing `--max-pending` (or paused by the global cap): resumes as output drains.
    Backpressure,
    /// Read its share for this turn; more may be queued.
    Budget,
}

/// How far the client's side of the stream has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadSide {
    /// Open: the client may send more.
    Open,
    /// The client sent FIN (EPOLLRDHUP seen), but the EOF behind its data is still to be
    /// read. Sticky: a short read is then not "drained" (see `read_some`).
    FinSeen,
    /// The EOF was read: nothing more will come.
    Eof,
}

/// Whether reading waits for the next event or must be resumed by the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NextRead {
    /// The last read loop reached `WouldBlock` (or a short read): an event will come.
    OnEvent,
    /// Reading stopped before `WouldBlock` (the budget or a cap); under edge triggering
    /// no event will say there is more, so the loop comes back (see [`Connection::owes_read`]).
    Owed,
}

/// How far our side of the stream has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteSide {
    Open,
    /// Our FIN has gone out (`shutdown(Write)`); nothing more will be written.
    FinSent,
}

/// One client.
#[derive(Debug)]
pub(crate) struct Connection {
    /// The non-blocking socket and whatever protocol rides on it, registered with the
    /// loop's `Poll` under this slab key.
    transport: AnyTransport,
    /// Who the client is, as shown in logs and counted by the per-IP cap.
    pub(crate) peer: Peer,
    /// Bytes read but not yet written back.
    pending: PendingOutput,
    /// The client's side: open, FIN seen, or EOF read.
    read_side: ReadSide,
    /// Whether the loop owes this connection a read.
    next_read: NextRead,
    /// Our side: open, or FIN sent.
    write_side: WriteSide,
    /// What the socket is registered for now, to re-register only on change.
    pub(crate) registered: Interest,
    /// Set once the connection is finished; the loop closes it at the end of the turn and
    /// ignores any further event for it in the same batch.
    pub(crate) closing: Option<CloseReason>,
    /// Bytes read from this client.
    pub(crate) bytes_in: u64,
    /// Bytes written to this client.
    pub(crate) bytes_out: u64,
    /// Places in the sessions' idle and stall lists (see `timers.rs`).
    links: Links,
}

impl Linked for Connection {
    fn links(&mut self) -> &mut Links {
        &mut self.links
    }
}

impl Connection {
    pub(crate) fn new(transport: AnyTransport, peer: Peer) -> Self {
        Connection {
            transport,
            peer,
            pending: PendingOutput::default(),
            read_side: ReadSide::Open,
            next_read: NextRead::OnEvent,
            write_side: WriteSide::Open,
            registered: Interest::READABLE,
            closing: None,
            bytes_in: 0,
            bytes_out: 0,
            links: Links::default(),
        }
    }

    pub(crate) fn transport_mut(&mut self) -> &mut AnyTransport {
        &mut self.transport
    }

    /// Bytes owed to the client now: the echo's, and those its transport holds of its own
    /// (see [`Transport::owed`]).
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len() + self.transport.owed()
    }

    /// The transport still holds bytes of its own to send (TLS records): the connection may
    /// not end, nor send its FIN, before they are out.
    fn layer_owes(&self) -> bool {
        self.transport.wants().write
    }

    /// Reading stopped early and must be resumed by the loop, not by an event.
    pub(crate) fn owes_read(&self) -> bool {
        self.next_read == NextRead::Owed
    }

    /// READABLE while it may read, WRITABLE while something is owed, joined with what the
    /// transport's own protocol wants: the one place interest is decided. (Never empty: mio
    /// needs at least one interest, and READABLE also brings the hang-up and error reports.)
    pub(crate) fn desired_interest(&self, limits: &Limits) -> Interest {
        let layer = self.transport.wants();
        if self.pending.is_empty() && !layer.write {
            return Interest::READABLE; // the common case, decided first: it runs per message
        }
        let echo_reads = limits.reading_allowed
            && self.read_side != ReadSide::Eof
            && self.read_room(limits, self.pending_len(), 0) > 0;
        if echo_reads || layer.read {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::WRITABLE
        }
    }

    /// Serves one readiness event (or a revisit, with `ready` all false).
    pub(crate) fn serve(
        &mut self,
        token: Token,
        ready: Ready,
        scratch: &mut [u8],
        limits: &Limits,
        stats: &mut Stats,
    ) -> Outcome {
        match self.serve_inner(token, ready, scratch, limits, stats) {
            Ok(outcome) => outcome,
            Err(err) => {
                let reason = classify(&err);
                debug!(
                    "{} token {}: {}: {err}",
                    self.peer,
                    token.0,
                    reason.as_str()
                );
                Outcome::Finished(reason)
            }
        }
    }

    fn serve_inner(
        &mut self,
        token: Token,
        ready: Ready,
        scratch: &mut [u8],
        limits: &Limits,
        stats: &mut Stats,
    ) -> io::Result<Outcome> {
        if ready.error
            && let Some(err) = self.transport.take_error()?
        {
            return Err(err);
        }
        if ready.read_closed && self.read_side == ReadSide::Open {
            self.read_side = ReadSide::FinSeen;
            self.transport.note_peer_fin();
        }
        if ready.writable {
            // What the protocol holds of its own is older than anything owed: it goes first.
            self.transport.flush_layer()?;
            if !self.pending.is_empty() {
                self.flush(token, stats)?;
            }
        }
        let eof = self.read_side == ReadSide::Eof;
        if !limits.reading_allowed && !eof {
            return self.linger(token, scratch, limits, stats);
        }
        let mut come_back = false;
        let may_read = ready.readable || ready.read_closed || self.owes_read();
        if may_read && !eof {
            match self.read_some(token, scratch, limits, stats)? {
                ReadStop::Budget => come_back = true,
                ReadStop::Drained | ReadStop::Eof | ReadStop::Backpressure => {}
            }
        }
        if self.pending.is_empty() && self.read_side == ReadSide::Eof && !self.layer_owes() {
            // Everything owed has gone out: the half-close handshake's second half.
            self.shut_down_writes(token);
            return Ok(Outcome::Finished(CloseReason::Eof));
        }
        Ok(Outcome::Open { come_back })
    }

    /// The server is stopping: send what is owed, then our FIN, then read and discard until
    /// the client's EOF. Closing with unread input would make the kernel answer with RST and
    /// throw away whatever it had not yet delivered: the very bytes just flushed.
    fn linger(
        &mut self,
        token: Token,
        scratch: &mut [u8],
        limits: &Limits,
        stats: &mut Stats,
    ) -> io::Result<Outcome> {
        if !self.pending.is_empty() || self.layer_owes() {
            return Ok(Outcome::Open { come_back: false });
        }
        if self.write_side == WriteSide::Open {
            self.shut_down_writes(token);
        }
        // The same drain as always, with everything read dropped on the floor.
        let drop_everything = Limits {
            mode: Mode::Discard,
            print: false,
            global_headroom: None,
            ..*limits
        };
        Ok(
            match self.read_some(token, scratch, &drop_everything, stats)? {
                ReadStop::Eof => Outcome::Finished(CloseReason::Shutdown),
                ReadStop::Budget => Outcome::Open { come_back: true },
                ReadStop::Drained | ReadStop::Backpressure => Outcome::Open { come_back: false },
            },
        )
    }

    /// How many bytes the next read may take without breaking a memory cap, `owed` being
    /// what the connection owes now (`pending_len`) and `added` what this turn has
    /// already queued.
    fn read_room(&self, limits: &Limits, owed: usize, added: usize) -> usize {
        let room = match limits.mode {
            // Whatever is read may end up owed, so read no more than the cap leaves.
            Mode::Echo => limits.max_pending.saturating_sub(owed),
            // Each read owes one fixed reply, whatever its size.
            Mode::Ack if owed == 0 || owed + ACK_REPLY.len() <= limits.max_pending => usize::MAX,
            Mode::Ack => 0,
            // Nothing read is owed back, but a layer's own replies (pongs) may be.
            Mode::Discard if owed < limits.max_pending => return usize::MAX,
            Mode::Discard => 0,
        };
        let Some(headroom) = limits.global_headroom else {
            return room;
        };
        let left = headroom.saturating_sub(added);
        if owed > 0 {
            // Its socket is full, so anything read now is queued: only within the global
            // cap. At the cap it pauses; its own WRITABLE events wake it as it drains.
            let needed = if limits.mode == Mode::Ack {
                ACK_REPLY.len()
            } else {
                1
            };
            if left < needed { 0 } else { room.min(left) }
        } else {
            // Owing nothing, its reads mostly go straight back out. It keeps reading even
            // at the cap (others' backlog must not stop it), in small bites so that what
            // it might queue stays small.
            room.min(left.max(OVER_CAP_READ))
        }
    }

    /// Reads until the socket is drained, the client's EOF, the cap, or the budget.
    fn read_some(
        &mut self,
        token: Token,
        scratch: &mut [u8],
        limits: &Limits,
        stats: &mut Stats,
    ) -> io::Result<ReadStop> {
        let mut budget = limits.read_budget;
        let owed_at_start = self.pending_len();
        loop {
            let owed = self.pending_len();
            let added = owed.saturating_sub(owed_at_start);
            let room = self.read_room(limits, owed, added).min(scratch.len());
            if room == 0 {
                trace!(
                    "token {}: pause reading, {} bytes owed",
                    token.0,
                    self.pending.len()
                );
                self.next_read = NextRead::Owed;
                return Ok(ReadStop::Backpressure);
            }
            if budget == 0 {
                trace!("token {}: read budget spent, yield", token.0);
                self.next_read = NextRead::Owed;
                return Ok(ReadStop::Budget);
            }
            let read = self.transport.read(&mut scratch[..room]);
            let heard = self.transport.take_heard();
            // Empty messages were heard first, whatever the read then returned.
            for _ in 0..heard.empty_before {
                self.answer(token, b"", Part::Whole, limits, stats)?;
            }
            let n = match read {
                Ok(0) => {
                    trace!("token {}: read EOF", token.0);
                    self.read_side = ReadSide::Eof;
                    self.next_read = NextRead::OnEvent;
                    return Ok(ReadStop::Eof);
                }
                Ok(n) => n,
                Err(err) if would_block(&err) && self.transport.read_paused() => {
                    trace!("token {}: the transport paused reading, yield", token.0);
                    self.next_read = NextRead::Owed;
                    return Ok(ReadStop::Budget);
                }
                Err(err) if would_block(&err) => {
                    trace!("token {}: read WouldBlock", token.0);
                    self.next_read = NextRead::OnEvent;
                    return Ok(ReadStop::Drained);
                }
                Err(err) if interrupted(&err) => continue,
                Err(err) => return Err(err),
            };
            trace!("token {}: read {n} bytes", token.0);
            self.bytes_in += n as u64;
            stats.bytes_in += n as u64;
            budget = budget.saturating_sub(n);
            self.answer(token, &scratch[..n], heard.part, limits, stats)?;
            // The short-read shortcut (epoll and kqueue, plain streams only; see
            // `SHORT_READ_MEANS_DRAINED`): a stream socket's read returns less than asked only
            // when its receive queue ran dry, and data arriving later raises a fresh edge.
            // The exception is a FIN that came with the data: its edge is the one being
            // handled now, so `ReadSide::FinSeen` (sticky) sends us on to read the EOF.
            if n < room
                && self.read_side == ReadSide::Open
                && self.transport.short_read_means_drained()
            {
                trace!("token {}: short read: socket drained", token.0);
                self.next_read = NextRead::OnEvent;
                return Ok(ReadStop::Drained);
            }
        }
    }

    /// Does what `--mode` and `--print` say with bytes just read, `part` saying where they
    /// stand in the client's message: a message is printed once (a long one by its first
    /// part) and acked once, at its end. Empty messages are echoed by their transport.
    fn answer(
        &mut self,
        token: Token,
        bytes: &[u8],
        part: Part,
        limits: &Limits,
        stats: &mut Stats,
    ) -> io::Result<()> {
        if limits.print {
            match part {
                Part::Whole => print_heard(self.peer, bytes),
                Part::First { len } => print_heard_start(self.peer, bytes, len),
                Part::Middle | Part::Last => {}
            }
        }
        match limits.mode {
            Mode::Echo if !bytes.is_empty() => self.send(token, bytes, stats),
            Mode::Ack if part.ends() => self.send(token, ACK_REPLY, stats),
            Mode::Echo | Mode::Ack | Mode::Discard => Ok(()),
        }
    }

    /// Writes `bytes` now if nothing is owed ahead of them; queues what the socket refuses.
    fn send(&mut self, token: Token, bytes: &[u8], stats: &mut Stats) -> io::Result<()> {
        if !self.pending.is_empty() {
            // Older bytes are still waiting for WRITABLE: these go behind them.
            self.pending.push(bytes);
            return Ok(());
        }
        let mut written = 0;
        while written < bytes.len() {
            match self.transport.write(&bytes[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    trace!("token {}: wrote {n} bytes", token.0);
                    written += n;
                }
                Err(err) if would_block(&err) => {
                    trace!("token {}: write WouldBlock", token.0);
                    break;
                }
                Err(err) if interrupted(&err) => continue,
                Err(err) => return Err(err),
            }
        }
        self.bytes_out += written as u64;
        stats.bytes_out += written as u64;
        if written < bytes.len() {
            self.pending.push(&bytes[written..]);
            trace!("token {}: {} bytes now owed", token.0, self.pending.len());
        }
        Ok(())
    }

    /// Writes owed bytes until none are left or the socket is full.
    fn flush(&mut self, token: Token, stats: &mut Stats) -> io::Result<()> {
        while !self.pending.is_empty() {
            match self.transport.write(self.pending.unsent()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    trace!("token {}: flushed {n} owed bytes", token.0);
                    self.pending.consume(n);
                    self.bytes_out += n as u64;
                    stats.bytes_out += n as u64;
                }
                Err(err) if would_block(&err) => {
                    trace!(
                        "token {}: flush WouldBlock, {} bytes still owed",
                        token.0,
                        self.pending.len()
                    );
                    return Ok(());
                }
                Err(err) if interrupted(&err) => continue,
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Sends our FIN. Failure only means the peer is already gone, which closing handles.
    fn shut_down_writes(&mut self, token: Token) {
        trace!(
            "token {}: all caught up: shutdown(Write) sends our FIN",
            token.0
        );
        self.write_side = WriteSide::FinSent;
        if let Err(err) = self.transport.shutdown_writes() {
            trace!("token {}: shutdown(Write): {err}", token.0);
        }
    }
}

/// Reset-like errors are the client leaving; anything else is a genuine error.
fn classify(err: &io::Error) -> CloseReason {
    match err.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::NotConnected
        | io::ErrorKind::TimedOut => CloseReason::Reset,
        _ => CloseReason::Error,
    }
}
