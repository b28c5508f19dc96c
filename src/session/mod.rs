//! The sessions: every open connection, and what they share.
//!
//! - the slab of [`Connection`]s, whose key *is* the connection's `Token`;
//! - the one read buffer all of them read into (no buffer per connection or message);
//! - the close list: connections finished this turn, which leave the slab only in the
//!   loop's close phase, so no key is reused while a batch of events may still name it;
//! - the idle and stall lists (`timers`), O(1) per event.
//!
//! The loop hands each connection event here ([`Sessions::serve`]); what serving changed
//! (bytes owed, interest, clocks, closing) is applied here too, so the loop never reaches
//! into a connection.

mod connection;
mod pending;
mod timers;

use std::time::{Duration, Instant};

use log::{debug, trace};
use mio::{Registry, Token};
use slab::Slab;

use crate::config::{Config, Mode, READ_BUFFER_SIZE};
use crate::readiness::{Drain, Ready};
use crate::telemetry::stats::{CloseReason, Stats};
use crate::transport::{AnyTransport, Peer, Transport};
use connection::{Connection, Limits, Outcome};
use timers::{DeadlineList, Which};

/// The settings the sessions serve with, taken from the [`Config`] once.
#[derive(Clone, Copy, Debug)]
struct Settings {
    max_pending: usize,
    max_pending_total: Option<usize>,
    read_budget: usize,
    mode: Mode,
    print: bool,
    idle_timeout: Option<Duration>,
    stall_timeout: Option<Duration>,
    handshake_timeout: Duration,
}

/// Every open connection and what they share.
pub(crate) struct Sessions {
    /// Every open connection; the slab key is the connection's `Token`.
    slab: Slab<Connection>,
    /// The one read buffer the whole loop shares: no buffer per connection or message.
    scratch: Box<[u8]>,
    /// Keys of connections marked finished this turn, closed in the close phase.
    to_close: Vec<usize>,
    /// Connections by time of last activity (only maintained with `--idle-timeout`).
    idle: DeadlineList,
    /// Connections owing output, by time of last write progress (`--stall-timeout`).
    stall: DeadlineList,
    /// Connections still shaking hands (TLS), by when they were accepted.
    handshake: DeadlineList,
    settings: Settings,
}

impl Sessions {
    pub(crate) fn new(config: &Config) -> Sessions {
        Sessions {
            slab: Slab::new(),
            scratch: vec![0; READ_BUFFER_SIZE].into_boxed_slice(),
            to_close: Vec::new(),
            idle: DeadlineList::new(Which::Idle),
            stall: DeadlineList::new(Which::Stall),
            handshake: DeadlineList::new(Which::Handshake),
            settings: Settings {
                max_pending: config.max_pending,
                max_pending_total: config.max_pending_total,
                read_budget: config.read_budget,
                mode: config.mode,
                print: config.print,
                idle_timeout: config.idle_timeout,
                stall_timeout: config.stall_timeout,
                handshake_timeout: config.handshake_timeout,
            },
        }
    }

    /// Connections open now (those closing this turn included).
    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    /// Registers a just-admitted connection and gives it a slot; its key is returned.
    /// Registration comes first and the slot after, so the slab and the poll set never
    /// disagree.
    pub(crate) fn open(
        &mut self,
        mut transport: AnyTransport,
        peer: Peer,
        registry: &Registry,
        now: Instant,
    ) -> std::io::Result<usize> {
        let entry = self.slab.vacant_entry();
        let key = entry.key();
        registry.register(&mut transport, Token(key), mio::Interest::READABLE)?;
        let handshaking = transport.is_handshaking();
        entry.insert(Connection::new(transport, peer));
        if handshaking {
            self.handshake.touch(&mut self.slab, key, now);
        }
        if self.settings.idle_timeout.is_some() {
            self.idle.touch(&mut self.slab, key, now);
        }
        Ok(key)
    }

    /// Whether `key` is an open connection that stopped reading early (the revisit phase
    /// serves only those: the slot may have been closed and reused since).
    pub(crate) fn owes_read(&self, key: usize) -> bool {
        self.slab.get(key).is_some_and(Connection::owes_read)
    }

    /// The nearest idle or stall deadline.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        let idle = self.settings.idle_timeout.and_then(|timeout| {
            self.idle
                .oldest(&mut self.slab)
                .map(|(_, since)| since + timeout)
        });
        let stall = self.settings.stall_timeout.and_then(|timeout| {
            self.stall
                .oldest(&mut self.slab)
                .map(|(_, since)| since + timeout)
        });
        let handshake = self
            .handshake
            .oldest(&mut self.slab)
            .map(|(_, since)| since + self.settings.handshake_timeout);
        idle.into_iter().chain(stall).chain(handshake).min()
    }

    /// The limits a connection is served under right now.
    fn limits(&self, stats: &Stats, reading_allowed: bool) -> Limits {
        let global_headroom = self.settings.max_pending_total.map(|cap| {
            let owed = usize::try_from(stats.pending_bytes).unwrap_or(usize::MAX);
            cap.saturating_sub(owed)
        });
        Limits {
            max_pending: self.settings.max_pending,
            read_budget: self.settings.read_budget,
            global_headroom,
            reading_allowed,
            mode: self.settings.mode,
            print: self.settings.print,
        }
    }

    /// Serves one connection's event (or revisit) and applies what followed: stats,
    /// interest, clocks, closing. `ComeBack` if it stopped reading early for the budget.
    pub(crate) fn serve(
        &mut self,
        key: usize,
        ready: Ready,
        reading_allowed: bool,
        registry: &Registry,
        stats: &mut Stats,
        now: Instant,
    ) -> Drain {
        let limits = self.limits(stats, reading_allowed);
        let Some(conn) = self.slab.get_mut(key) else {
            trace!("token {key}: event for a connection already gone, ignored");
            return Drain::Drained;
        };
        if conn.closing.is_some() {
            trace!("token {key}: event for a connection closing this turn, ignored");
            return Drain::Drained;
        }
        let (owed_before, in_before, out_before) =
            (conn.pending_len(), conn.bytes_in, conn.bytes_out);
        let outcome = conn.serve(Token(key), ready, &mut self.scratch, &limits, stats);
        let owed_after = conn.pending_len();
        let (read_any, wrote_any) = (conn.bytes_in != in_before, conn.bytes_out != out_before);
        if let Some(counts) = conn.transport_mut().take_counts() {
            stats.count_layer(counts);
        }
        if conn.transport_mut().handshake_done() {
            stats.handshakes += 1;
            trace!("token {key}: handshake done");
            self.handshake.remove(&mut self.slab, key);
        }

        if owed_after != owed_before {
            stats.pending_bytes = stats.pending_bytes + owed_after as u64 - owed_before as u64;
            stats.peak_pending_bytes = stats.peak_pending_bytes.max(stats.pending_bytes);
            stats.peak_pending_connection = stats.peak_pending_connection.max(owed_after as u64);
        }

        match outcome {
            Outcome::Finished(reason) => {
                self.mark_closing(key, reason);
                Drain::Drained
            }
            Outcome::Open { come_back } => {
                // With a global cap, the headroom moved while serving: decide on fresh limits.
                let limits =
                    if owed_after != owed_before && self.settings.max_pending_total.is_some() {
                        self.limits(stats, reading_allowed)
                    } else {
                        limits
                    };
                if self.update_interest(key, &limits, registry) {
                    self.restart_clocks(key, owed_before, owed_after, read_any, wrote_any, now);
                }
                if come_back {
                    Drain::ComeBack
                } else {
                    Drain::Drained
                }
            }
        }
    }

    /// Serves every connection once, as if revisited: how a graceful stop begins (those
    /// owing nothing close now, the others switch to WRITABLE only and close as they catch
    /// up). Returns the keys that must come back.
    pub(crate) fn serve_all(
        &mut self,
        reading_allowed: bool,
        registry: &Registry,
        stats: &mut Stats,
        now: Instant,
    ) -> Vec<usize> {
        let keys: Vec<usize> = self.slab.iter().map(|(key, _)| key).collect();
        keys.into_iter()
            .filter(|&key| {
                self.serve(key, Ready::default(), reading_allowed, registry, stats, now)
                    == Drain::ComeBack
            })
            .collect()
    }

    /// Re-registers `key` if its state now calls for a different interest (rarely: only
    /// when output starts or stops being owed). False if that failed and it must close.
    fn update_interest(&mut self, key: usize, limits: &Limits, registry: &Registry) -> bool {
        let conn = &mut self.slab[key];
        let wanted = conn.desired_interest(limits);
        if wanted == conn.registered {
            return true;
        }
        trace!("token {key}: interest {:?} -> {wanted:?}", conn.registered);
        match registry.reregister(conn.transport_mut(), Token(key), wanted) {
            Ok(()) => {
                conn.registered = wanted;
                true
            }
            Err(err) => {
                debug!("{} token {key}: reregister failed: {err}", conn.peer);
                self.mark_closing(key, CloseReason::Error);
                false
            }
        }
    }

    /// Keeps the idle and stall lists in step with what just happened on `key`.
    fn restart_clocks(
        &mut self,
        key: usize,
        owed_before: usize,
        owed_after: usize,
        read_any: bool,
        wrote_any: bool,
        now: Instant,
    ) {
        if self.settings.idle_timeout.is_some() {
            let caught_up = owed_before > 0 && owed_after == 0;
            if read_any || caught_up {
                self.idle.touch(&mut self.slab, key, now);
            }
        }
        if self.settings.stall_timeout.is_some() {
            if owed_after == 0 {
                self.stall.remove(&mut self.slab, key);
            } else if owed_before == 0 || wrote_any {
                // Newly owing, or progress: the stall clock starts over.
                self.stall.touch(&mut self.slab, key, now);
            }
        }
    }

    fn mark_closing(&mut self, key: usize, reason: CloseReason) {
        let conn = &mut self.slab[key];
        if conn.closing.is_none() {
            conn.closing = Some(reason);
            self.to_close.push(key);
        }
    }

    /// Marks connections whose idle, stall or handshake clock has run out; they close this
    /// turn.
    pub(crate) fn expire(&mut self, now: Instant) {
        let timeout = self.settings.handshake_timeout;
        while let Some((key, since)) = self.handshake.oldest(&mut self.slab) {
            if now.duration_since(since) < timeout {
                break;
            }
            self.handshake.remove(&mut self.slab, key);
            let conn = &mut self.slab[key];
            if conn.closing.is_none() && conn.transport_mut().is_handshaking() {
                debug!("{} token {key}: no handshake within {timeout:?}", conn.peer);
                self.mark_closing(key, CloseReason::Handshake);
            }
        }
        if let Some(timeout) = self.settings.idle_timeout {
            while let Some((key, since)) = self.idle.oldest(&mut self.slab) {
                if now.duration_since(since) < timeout {
                    break;
                }
                let conn = &self.slab[key];
                if conn.closing.is_some() {
                    self.idle.remove(&mut self.slab, key);
                } else if conn.pending_len() > 0 {
                    // Owing output is not idleness: the stall clock rules that case.
                    self.idle.touch(&mut self.slab, key, now);
                } else {
                    debug!("{} token {key}: idle for {timeout:?}", conn.peer);
                    self.idle.remove(&mut self.slab, key);
                    self.mark_closing(key, CloseReason::Idle);
                }
            }
        }
        if let Some(timeout) = self.settings.stall_timeout {
            while let Some((key, since)) = self.stall.oldest(&mut self.slab) {
                if now.duration_since(since) < timeout {
                    break;
                }
                self.stall.remove(&mut self.slab, key);
                let conn = &self.slab[key];
                if conn.closing.is_none() {
                    debug!(
                        "{} token {key}: {} bytes owed, no progress for {timeout:?}",
                        conn.peer,
                        conn.pending_len()
                    );
                    self.mark_closing(key, CloseReason::Stall);
                }
            }
        }
    }

    /// Marked connections leave the slab (dropping the socket closes it, which also takes
    /// it out of the epoll set: no separate deregister syscall needed). `closed` hears of
    /// each peer that left, for whoever counts connections per peer.
    pub(crate) fn close_finished(&mut self, stats: &mut Stats, mut closed: impl FnMut(&Peer)) {
        for i in 0..self.to_close.len() {
            let key = self.to_close[i];
            self.idle.remove(&mut self.slab, key);
            self.stall.remove(&mut self.slab, key);
            self.handshake.remove(&mut self.slab, key);
            let mut conn = self.slab.remove(key);
            let reason = conn.closing.unwrap_or(CloseReason::Error);
            if conn.transport_mut().is_handshaking() && reason != CloseReason::Handshake {
                stats.handshakes_failed += 1;
            }
            stats.pending_bytes -= conn.pending_len() as u64;
            stats.count_close(reason);
            closed(&conn.peer);
            debug!(
                "closed {} token {key}: {}, {} bytes in, {} bytes out",
                conn.peer,
                reason.as_str(),
                conn.bytes_in,
                conn.bytes_out
            );
        }
        self.to_close.clear();
    }

    /// Closes every connection at once, whatever is owed.
    pub(crate) fn close_all(
        &mut self,
        reason: CloseReason,
        stats: &mut Stats,
        closed: impl FnMut(&Peer),
    ) {
        let keys: Vec<usize> = self.slab.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.mark_closing(key, reason);
        }
        self.close_finished(stats, closed);
    }
}
