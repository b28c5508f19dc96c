//! UDP echo, the datagram half of RFC 862: each datagram goes back, whole, to whoever sent
//! it, from the address it was sent to.
//!
//! A UDP socket has no connections, no half-close and no per-peer buffer, so it is not a
//! session: it has its own small state here, served by the same
//! loop under a named token. Per readiness event:
//!
//! 1. **Flush first.** Replies a full send buffer refused earlier go out before anything is
//!    read; while any are still owed, the socket is not read at all (interest WRITABLE only)
//!    and the kernel drops what no longer fits its receive queue, which is what UDP means.
//!    So at most one batch is ever held, whatever arrives.
//! 2. **Drain in batches** ([`batch`]): `recvmmsg` until `WouldBlock`, up to a budget per
//!    turn, after which the loop comes back (the revisit list), so a flood on one socket
//!    cannot starve TCP clients or the other sockets. A socket whose last few wake-ups each
//!    brought a single datagram is read one datagram at a time (`recvfrom`, cheaper for
//!    one) until a wake-up finds a second waiting: then batches again. Large datagrams
//!    (16 KiB and up) are always taken one at a time: there the copies cost more than the
//!    calls, and an echo is cheapest straight after its own copy in (see `LARGE_DATAGRAM`).
//! 3. **Judge each datagram** ([`guard`]): oversize, a source no reply may go to, over its
//!    source's rate: dropped and counted by reason. What remains is answered, as runs of
//!    same-size replies to one peer per GSO message.
//!
//! A datagram's trouble concerns that datagram alone: errors are counted and logged at
//! most once a second, and the socket is never closed because of one.

pub(crate) mod batch;
pub(crate) mod guard;

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use log::{debug, trace, warn};
use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};

use crate::config::{ACK_REPLY, Mode};
use crate::print::print_heard;
use crate::ratelimit::RateLimit;
use crate::readiness::{Drain, SHORT_READ_MEANS_DRAINED, interrupted, would_block};
use crate::telemetry::stats::Stats;
use batch::{Batch, Reply};
use guard::{Refusal, SourceGuard, SourceRates};

/// Receive batches per socket per turn before the loop serves the others.
const BATCHES_PER_TURN: usize = 8;

/// Wake-ups in a row with a single datagram before a socket is read one datagram at a
/// time. One is not enough: under load, a wake-up now and then finds a single datagram,
/// and on the single path the first datagram of the next wake-up is answered alone, out of
/// the GSO run it would have shared (measured at U3, 1,400 B: one at a time after every
/// lone wake-up, 6 % of the datagrams went the single path; with four, none, and the
/// server's CPU per datagram was 0.98 × that, both builds run at the same moment).
const LONE_WAKES: u8 = 4;

/// Datagrams of at least this many bytes are read and answered one at a time. Above
/// 1,452 bytes a batch saves only system calls (no GSO), a few hundred nanoseconds per
/// datagram, while the copies dominate; and one at a time, each echo copies out what it
/// has just copied in, still in the nearest cache, where a batch of them has pushed the
/// first out. Measured (4 flows × 2 in flight, both builds at the same moment), one at a
/// time ÷ batched: 4,000 B 1.03, 9,000 B 0.99, 16 KiB 1.02, 24,000 B 1.00, 28,000 B 0.98,
/// 32 KiB 0.92–0.99. So below the threshold batching wins or ties, and above it the single
/// path ties or wins; anywhere from 9 to 24 KiB would do as well.
const LARGE_DATAGRAM: usize = 16 * 1024;

/// The UDP settings the loop serves with.
#[derive(Clone, Debug)]
pub(crate) struct UdpSettings {
    pub(crate) mode: Mode,
    pub(crate) print: bool,
    /// `--udp-max-datagram`: larger datagrams are dropped whole.
    pub(crate) max_datagram: usize,
    pub(crate) allow_low_ports: bool,
    /// `--udp-rate-per-ip` (`None`: no limit).
    pub(crate) rate_per_ip: Option<u32>,
    /// Loopback sources are not rate limited.
    pub(crate) rate_exempts_loopback: bool,
}

impl From<&crate::config::Config> for UdpSettings {
    fn from(config: &crate::config::Config) -> Self {
        UdpSettings {
            mode: config.mode,
            print: config.print,
            max_datagram: config.udp_max_datagram,
            allow_low_ports: config.udp_allow_low_ports,
            rate_per_ip: config.udp_rate_per_ip,
            rate_exempts_loopback: config.udp_rate_exempts_loopback,
        }
    }
}

/// One bound UDP socket and what it still owes.
pub(crate) struct UdpEndpoint {
    /// Registered with the loop's `Poll` under its UDP token.
    pub(crate) socket: UdpSocket,
    /// The address it is bound to.
    pub(crate) local: SocketAddr,
    /// Replies the send buffer refused: sent on WRITABLE, before anything is read.
    owed: Vec<OwedReply>,
    /// What the socket is registered for now: READABLE, or WRITABLE while owing.
    registered: Interest,
    /// Datagrams have been arriving one per wake-up, or large: read them singly (never on
    /// a wildcard bind, whose replies need each datagram's PKTINFO).
    one_at_a_time: bool,
    /// Wake-ups in a row that brought a single datagram (saturating).
    lone_wakes: u8,
    /// The kernel's receive-queue drop counter as last seen (`SO_MEMINFO`).
    queue_drops_seen: u32,
}

/// A refused reply, copied out of the shared batch (rare: only when the socket is full).
struct OwedReply {
    to: SocketAddr,
    from: Option<std::net::IpAddr>,
    bytes: Vec<u8>,
}

impl UdpEndpoint {
    pub(crate) fn new(socket: UdpSocket, local: SocketAddr) -> UdpEndpoint {
        UdpEndpoint {
            socket,
            local,
            owed: Vec::new(),
            registered: Interest::READABLE,
            one_at_a_time: false,
            lone_wakes: 0,
            queue_drops_seen: 0,
        }
    }
}

/// Everything UDP the loop owns: the sockets, the one batch of buffers they share, the
/// guards, and the rate-limited error log.
pub(crate) struct Datagrams {
    pub(crate) sockets: Vec<UdpEndpoint>,
    settings: UdpSettings,
    /// Allocated with the first UDP socket; shared, since only one socket is read at a time.
    batch: Batch,
    guard: SourceGuard,
    rates: Option<SourceRates>,
    /// The replies decided for the current batch (reused: no allocation per batch).
    replies: Vec<Reply>,
    /// Datagram errors: counted as they happen, logged at most once a second.
    errors: RateLimit,
}

impl Datagrams {
    pub(crate) fn new(sockets: Vec<UdpEndpoint>, settings: UdpSettings) -> Datagrams {
        let fixed_reply = if settings.mode == Mode::Ack {
            ACK_REPLY
        } else {
            &[]
        };
        let guard = SourceGuard {
            allow_low_ports: settings.allow_low_ports,
            own_ports: sockets.iter().map(|s| s.local.port()).collect(),
        };
        Datagrams {
            batch: Batch::new(
                if sockets.is_empty() {
                    0
                } else {
                    settings.max_datagram
                },
                fixed_reply,
            ),
            guard,
            rates: settings
                .rate_per_ip
                .map(|rate| SourceRates::new(rate, settings.rate_exempts_loopback)),
            replies: Vec::with_capacity(batch::BATCH),
            sockets,
            settings,
            errors: RateLimit::default(),
        }
    }

    /// Serves socket `index` after a readiness event (or a revisit).
    pub(crate) fn serve(
        &mut self,
        index: usize,
        token: Token,
        writable: bool,
        registry: &Registry,
        stats: &mut Stats,
        now: Instant,
    ) -> Drain {
        let Some(endpoint) = self.sockets.get_mut(index) else {
            return Drain::Drained; // closed by shutdown earlier in this batch
        };
        if writable && !endpoint.owed.is_empty() {
            flush_owed(endpoint, stats, &mut self.errors);
        }
        let mut served = Drain::Drained;
        if endpoint.owed.is_empty() {
            served = self.drain(index, stats, now);
        }
        let endpoint = &mut self.sockets[index];
        let wanted = if endpoint.owed.is_empty() {
            Interest::READABLE
        } else {
            Interest::WRITABLE
        };
        if wanted != endpoint.registered {
            trace!(
                "udp {index}: interest {:?} -> {wanted:?}",
                endpoint.registered
            );
            match registry.reregister(&mut endpoint.socket, token, wanted) {
                Ok(()) => endpoint.registered = wanted,
                Err(err) => warn!("udp {}: cannot re-register: {err}", endpoint.local),
            }
        }
        self.log_errors(now);
        served
    }

    /// Adds what the kernel dropped from full receive queues since last asked: called just
    /// before the counters are reported (a system call per socket, so not per datagram).
    pub(crate) fn count_queue_drops(&mut self, stats: &mut Stats) {
        for endpoint in &mut self.sockets {
            match batch::queue_drops(&endpoint.socket) {
                Ok(total) => {
                    stats.udp_dropped_queue_full +=
                        u64::from(total.wrapping_sub(endpoint.queue_drops_seen));
                    endpoint.queue_drops_seen = total;
                }
                Err(err) => debug!("udp {}: SO_MEMINFO: {err}", endpoint.local),
            }
        }
    }

    /// Receives and answers batches until `WouldBlock`, a full send buffer, or the budget.
    fn drain(&mut self, index: usize, stats: &mut Stats, now: Instant) -> Drain {
        for turn in 0..BATCHES_PER_TURN {
            let endpoint = &mut self.sockets[index];
            let singly = endpoint.one_at_a_time;
            let result = if singly {
                self.batch.receive_one(&endpoint.socket)
            } else {
                self.batch
                    .receive(&endpoint.socket, endpoint.local.ip().is_unspecified())
            };
            let received = match result {
                Ok(n) => n,
                Err(err) if would_block(&err) => {
                    trace!(
                        "udp {index}: {} WouldBlock",
                        if singly { "recvfrom" } else { "recvmmsg" }
                    );
                    return Drain::Drained;
                }
                Err(err) if interrupted(&err) => continue,
                Err(err) if concerns_one_datagram(&err) => {
                    // An ICMP error from an earlier send, reported on this call: counted,
                    // and the socket read on.
                    stats.udp_dropped_error += 1;
                    self.errors.hold(1);
                    debug!("udp {index}: {err}");
                    continue;
                }
                Err(err) => {
                    warn!("udp {}: recvmmsg: {err}", endpoint.local);
                    return Drain::Drained;
                }
            };
            // Several wake-ups in a row with one datagram each: expect one next time too. A
            // second datagram waiting in the same wake-up: back to batches, unless they
            // are large (see LARGE_DATAGRAM).
            endpoint.lone_wakes = if turn == 0 && received == 1 {
                endpoint.lone_wakes.saturating_add(1)
            } else {
                0
            };
            let large = self.batch.arrived.iter().all(|a| a.len >= LARGE_DATAGRAM);
            endpoint.one_at_a_time = (endpoint.lone_wakes >= LONE_WAKES || large)
                && !endpoint.local.ip().is_unspecified();
            trace!("udp {index}: received a batch of {received}");
            self.judge(stats, now);
            let fixed = self.settings.mode == Mode::Ack;
            let endpoint = &mut self.sockets[index];
            let sent = self.batch.send(&endpoint.socket, &self.replies, fixed);
            trace!(
                "udp {index}: sent {} of {} replies in {} calls",
                sent.datagrams,
                self.replies.len(),
                sent.calls
            );
            stats.udp_datagrams_out += sent.datagrams;
            stats.udp_bytes_out += sent.bytes;
            for err in &sent.failed {
                stats.udp_dropped_error += 1;
                self.errors.hold(1);
                debug!("udp {index}: reply refused: {err}");
            }
            if let Some(first) = sent.blocked_at {
                trace!(
                    "udp {index}: sendmmsg WouldBlock, {} replies owed",
                    self.replies.len() - first
                );
                for reply in &self.replies[first..] {
                    let arrived = self.batch.arrived[reply.slot];
                    let bytes = if fixed {
                        ACK_REPLY.to_vec()
                    } else {
                        self.batch.datagram(reply.slot)[..reply.len].to_vec()
                    };
                    endpoint.owed.push(OwedReply {
                        to: arrived.source,
                        from: arrived.local,
                        bytes,
                    });
                }
                return Drain::Drained;
            }
            if !singly && received < batch::BATCH && SHORT_READ_MEANS_DRAINED {
                // A short batch: the queue ran dry just now, and on epoll and kqueue the
                // next datagram raises a fresh edge (elsewhere, read on to WouldBlock,
                // which re-arms the socket; see SHORT_READ_MEANS_DRAINED).
                return Drain::Drained;
            }
        }
        trace!("udp {index}: batch budget spent, revisit next turn");
        Drain::ComeBack
    }

    /// Decides, datagram by datagram, which get a reply (into `self.replies`).
    fn judge(&mut self, stats: &mut Stats, now: Instant) {
        self.replies.clear();
        // The guard's verdict depends on the source alone, and a batch mostly holds runs
        // from one source: one that just passed need not be judged again (its rate is).
        let mut passed_guard = None;
        for slot in 0..self.batch.arrived.len() {
            let arrived = self.batch.arrived[slot];
            stats.udp_datagrams_in += 1;
            stats.udp_bytes_in += arrived.len as u64;
            if arrived.truncated || arrived.len > self.settings.max_datagram {
                stats.udp_dropped_oversize += 1;
                trace!("udp: {} sent an oversize datagram: dropped", arrived.source);
                continue;
            }
            let guarded = if passed_guard == Some(arrived.source) {
                Ok(())
            } else {
                self.guard.check(arrived.source)
            };
            if guarded.is_ok() {
                passed_guard = Some(arrived.source);
            }
            let verdict = guarded.and_then(|()| match &mut self.rates {
                Some(rates) => rates.allow(arrived.source.ip(), now),
                None => Ok(()),
            });
            match verdict {
                Err(Refusal::Guard) => {
                    stats.udp_dropped_guard += 1;
                    trace!("udp: {}: guarded source, dropped", arrived.source);
                    continue;
                }
                Err(Refusal::Rate) => {
                    stats.udp_dropped_rate += 1;
                    trace!("udp: {}: over its rate, dropped", arrived.source);
                    continue;
                }
                Ok(()) => {}
            }
            if self.settings.print {
                // An IPv4 sender on a dual-stack socket is shown as the IPv4 address it is.
                print_heard(
                    crate::listen::canonical(arrived.source),
                    self.batch.datagram(slot),
                );
            }
            match self.settings.mode {
                Mode::Echo => self.replies.push(Reply {
                    slot,
                    len: arrived.len,
                }),
                // Never a reply larger than its request: no amplification.
                Mode::Ack if arrived.len >= ACK_REPLY.len() => self.replies.push(Reply {
                    slot,
                    len: ACK_REPLY.len(),
                }),
                Mode::Ack => stats.udp_unanswered_short += 1,
                Mode::Discard => {}
            }
        }
    }

    /// At most one warning a second for datagram errors, with how many there were.
    fn log_errors(&mut self, now: Instant) {
        if let Some(errors) = self.errors.flush(now) {
            warn!(
                "udp: {errors} datagrams met errors (ICMP unreachable, EMSGSIZE, ENOBUFS, …); \
                 each was dropped and counted"
            );
        }
    }
}

/// Sends what a full send buffer refused earlier, in order, until done or full again.
fn flush_owed(endpoint: &mut UdpEndpoint, stats: &mut Stats, errors: &mut RateLimit) {
    let mut sent = 0;
    for reply in &endpoint.owed {
        match batch::send_one(&endpoint.socket, &reply.bytes, reply.to, reply.from) {
            Ok(()) => {
                stats.udp_datagrams_out += 1;
                stats.udp_bytes_out += reply.bytes.len() as u64;
            }
            Err(err) if would_block(&err) => break,
            Err(_) => {
                stats.udp_dropped_error += 1;
                errors.hold(1);
            }
        }
        sent += 1;
    }
    endpoint.owed.drain(..sent);
    trace!(
        "udp {}: flushed {sent} owed replies, {} left",
        endpoint.local,
        endpoint.owed.len()
    );
}

/// Errors that a UDP socket reports for one earlier or current datagram only.
fn concerns_one_datagram(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EMSGSIZE
                | libc::ENOBUFS
                | libc::EPERM
        )
    )
}
