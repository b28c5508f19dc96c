//! Admission: taking clients off the listeners' queues and deciding who gets a session.
//!
//! Per readiness event on a listener, [`Acceptor::accept_from`] accepts until `WouldBlock`
//! or the per-turn budget (after which the loop comes back: edge triggering sends no new
//! event for clients already queued). Each client is then admitted or turned away:
//!
//! - **Caps.** `--max-connections` open at once, `--max-connections-per-ip` from one
//!   address: over either, the client is accepted and closed at once (it sees EOF).
//! - **Out of descriptors.** `accept` fails with `EMFILE` while clients wait in the
//!   backlog, and readiness would report them forever. A spare descriptor is held for
//!   this: closed, so the queued clients can be accepted and told "no", then reopened.
//!   `accept` is tried again after a short delay (the retry deadline).
//! - **Protocol.** The one place a connection's protocol is chosen: from its listener.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use log::{debug, trace, warn};
use mio::Registry;

use crate::config::Config;
use crate::listen::Listener;
use crate::ratelimit::RateLimit;
use crate::readiness::{Drain, interrupted, would_block};
use crate::session::Sessions;
use crate::telemetry::stats::{RejectReason, Stats};
use crate::transport::{AnyTransport, Layers, Peer, Stream};

/// How soon to try `accept` again after it failed for want of descriptors or memory.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// A descriptor held in reserve, to be spent when `accept` runs out of them.
#[derive(Debug)]
struct SpareDescriptor(Option<File>);

impl SpareDescriptor {
    fn new() -> Self {
        SpareDescriptor(File::open("/dev/null").ok())
    }

    /// Frees the spare for the length of `spend`, then takes it back (if it can).
    /// False if there was no spare to free.
    fn spend(&mut self, spend: impl FnOnce()) -> bool {
        let Some(spare) = self.0.take() else {
            return false;
        };
        drop(spare);
        spend();
        *self = SpareDescriptor::new();
        true
    }
}

/// The listeners and everything admission decides with.
pub(crate) struct Acceptor {
    /// Listening sockets, registered under their listener tokens; emptied (closed) when
    /// shutdown begins.
    listeners: Vec<Listener>,
    /// What the protocols need to start a connection (the TLS certificate).
    layers: Layers,
    /// Connections accepted per listener per turn.
    budget: usize,
    /// `--max-connections`.
    max_connections: usize,
    /// `--max-connections-per-ip` (`None`: no cap, and `per_ip` stays empty).
    max_per_ip: Option<usize>,
    /// Open connections per peer address (only maintained with a per-IP cap).
    per_ip: HashMap<IpAddr, usize>,
    spare: SpareDescriptor,
    /// When to try `accept` again after it failed for want of resources.
    retry_at: Option<Instant>,
    /// Rejections and accept failures come in floods: one warning a second each.
    reject_warnings: RateLimit,
    accept_warnings: RateLimit,
}

impl Acceptor {
    pub(crate) fn new(listeners: Vec<Listener>, layers: Layers, config: &Config) -> Acceptor {
        Acceptor {
            listeners,
            layers,
            budget: config.accept_budget,
            max_connections: config.max_connections,
            max_per_ip: config.max_connections_per_ip,
            per_ip: HashMap::new(),
            spare: SpareDescriptor::new(),
            retry_at: None,
            reject_warnings: RateLimit::default(),
            accept_warnings: RateLimit::default(),
        }
    }

    /// Listeners open now.
    pub(crate) fn len(&self) -> usize {
        self.listeners.len()
    }

    /// When `accept` should be tried again, if it failed for want of resources.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Shutdown: every listener closes (new clients are refused by the kernel).
    pub(crate) fn close(&mut self) {
        self.listeners.clear();
        self.retry_at = None;
    }

    /// SIGHUP: the protocols re-read their files (new connections get the result).
    pub(crate) fn reload(&mut self) {
        self.layers.reload();
    }

    /// A session from `peer` has closed: it no longer counts against its address's cap.
    pub(crate) fn release(&mut self, peer: &Peer) {
        if let Some(ip) = peer.ip()
            && let Some(count) = self.per_ip.get_mut(&ip)
        {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// After a failed `accept`, once the retry delay has passed: try every listener again.
    pub(crate) fn retry_if_due(
        &mut self,
        now: Instant,
        sessions: &mut Sessions,
        registry: &Registry,
        stats: &mut Stats,
    ) -> Vec<usize> {
        if self.retry_at.is_none_or(|at| at > now) {
            return Vec::new();
        }
        self.retry_at = None;
        (0..self.listeners.len())
            .filter(|&index| {
                self.accept_from(index, sessions, registry, stats, now) == Drain::ComeBack
            })
            .collect()
    }

    /// Listener `index` is readable: accept until `WouldBlock` or the per-turn budget.
    pub(crate) fn accept_from(
        &mut self,
        index: usize,
        sessions: &mut Sessions,
        registry: &Registry,
        stats: &mut Stats,
        now: Instant,
    ) -> Drain {
        for _ in 0..self.budget {
            let Some(listener) = self.listeners.get(index) else {
                return Drain::Drained; // closed by shutdown earlier in this batch
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    self.admit(index, stream, peer, sessions, registry, stats, now)
                }
                Err(err) if would_block(&err) => {
                    trace!("listener {index}: accept WouldBlock");
                    return Drain::Drained;
                }
                Err(err) if interrupted(&err) => {}
                // The client gave up while queued: its problem, not the listener's.
                Err(err) if err.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(err) => {
                    self.on_accept_failure(index, err, stats, now);
                    return Drain::Drained;
                }
            }
        }
        // Budget spent with connections perhaps still queued: no new edge will say so.
        trace!("listener {index}: accept budget spent, revisit next turn");
        Drain::ComeBack
    }

    /// A new client: turn it away if a cap says so, else give it a session.
    #[allow(clippy::too_many_arguments)] // each is a distinct owner's; a struct would hide that
    fn admit(
        &mut self,
        index: usize,
        stream: Stream,
        peer: Peer,
        sessions: &mut Sessions,
        registry: &Registry,
        stats: &mut Stats,
        now: Instant,
    ) {
        if sessions.len() >= self.max_connections {
            return self.reject(stream, peer, RejectReason::MaxConnections, stats, now);
        }
        if let (Some(cap), Some(ip)) = (self.max_per_ip, peer.ip())
            && self.per_ip.get(&ip).copied().unwrap_or(0) >= cap
        {
            return self.reject(stream, peer, RejectReason::PerIp, stats, now);
        }
        if let Err(err) = stream.set_nodelay() {
            debug!("{peer}: TCP_NODELAY: {err}");
        }
        let listener = &self.listeners[index];
        let transport = match AnyTransport::admit(listener.protocol, stream, &self.layers) {
            Ok(transport) => transport,
            Err(err) => {
                stats.accept_errors += 1;
                debug!("{peer}: cannot start its session: {err}");
                return;
            }
        };
        let key = match sessions.open(transport, peer, registry, now) {
            Ok(key) => key,
            Err(err) => {
                stats.accept_errors += 1;
                debug!("{peer}: cannot register: {err}");
                return;
            }
        };
        stats.count_accept();
        if let (Some(_), Some(ip)) = (self.max_per_ip, peer.ip()) {
            *self.per_ip.entry(ip).or_insert(0) += 1;
        }
        debug!("accepted {peer} on {listener} as token {key}");
    }

    /// Closes a just-accepted connection at once: the client sees EOF.
    fn reject(
        &mut self,
        stream: Stream,
        peer: Peer,
        reason: RejectReason,
        stats: &mut Stats,
        now: Instant,
    ) {
        drop(stream);
        stats.count_reject(reason);
        if let Some(suppressed) = self.reject_warnings.allow(now) {
            warn!(
                "rejected {peer}: {} ({suppressed} more rejected since the last warning)",
                reason.as_str()
            );
        }
    }

    /// `accept` failed for a reason other than the client: usually out of descriptors.
    fn on_accept_failure(&mut self, index: usize, err: io::Error, stats: &mut Stats, now: Instant) {
        stats.accept_errors += 1;
        if let Some(suppressed) = self.accept_warnings.allow(now) {
            warn!("accept on listener {index}: {err} ({suppressed} more since the last warning)");
        }
        if matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
            // Spend the spare on telling queued clients "no" instead of leaving them
            // waiting in the backlog for a descriptor that may never come.
            let mut spare = std::mem::replace(&mut self.spare, SpareDescriptor(None));
            spare.spend(|| self.turn_away_queued(index, stats, now));
            self.spare = spare;
        }
        self.retry_at = Some(now + ACCEPT_RETRY_DELAY);
    }

    /// Accepts and closes whatever is queued on listener `index`, up to the accept budget.
    fn turn_away_queued(&mut self, index: usize, stats: &mut Stats, now: Instant) {
        for _ in 0..self.budget {
            match self.listeners[index].accept() {
                Ok((stream, peer)) => {
                    self.reject(stream, peer, RejectReason::Descriptors, stats, now)
                }
                Err(err) if interrupted(&err) => {}
                Err(_) => return,
            }
        }
    }
}
