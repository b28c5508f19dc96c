//! The event loop: one thread, one `mio::Poll`, one slab of connections.
//!
//! Each turn of [`Server::run`] is the same fixed list of phases:
//!
//! 1. **timeout**: how long `poll` may sleep: zero if work was left over, else until the
//!    nearest deadline (idle, stall, shutdown, stats, accept retry), else forever.
//! 2. **poll**: wait for readiness events.
//! 3. **dispatch**: each event goes to its listener (accept), the waker (stop request),
//!    the signal pipe, or its connection (serve). Connections that finish are only *marked*.
//! 4. **revisit**: listeners and connections that stopped early last turn (accept or read
//!    budget spent) are served again; under edge triggering nothing else would wake them.
//! 5. **timers**: close connections whose idle or stall clock ran out.
//! 6. **close**: marked connections leave the slab. Doing it last means no slab key is
//!    reused within a batch, so a stale event can never reach a new connection.
//! 7. **housekeeping**: periodic stats, shutdown progress.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use log::{debug, info, trace, warn};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::config::{Config, DEFAULT_LISTEN, READ_BUFFER_SIZE};
use crate::connection::{Connection, Limits, Outcome, Ready, interrupted, would_block};
use crate::handle::{Request, ServerHandle};
use crate::listen::{Datagram, Endpoint, Listener, bind_all, inherited};
use crate::notify::Notifier;
use crate::stats::{CloseReason, RejectReason, Stats};
use crate::stream::{Peer, Stream};
use crate::timers::{DeadlineList, Which};
use crate::udp::{Datagrams, Served, UdpEndpoint, UdpSettings};

/// The waker's token: the top of the token space, far above any slab key.
const WAKER: Token = Token(usize::MAX);
/// The signal pipe's token.
const SIGNALS: Token = Token(usize::MAX - 1);
/// Listener `i` has token `FIRST_LISTENER - i`; slab keys (connections) stay below.
const FIRST_LISTENER: usize = usize::MAX - 2;
/// Stream listeners at most (their tokens are a range of their own).
const MAX_LISTENERS: usize = 1024;
/// UDP socket `i` has token `FIRST_UDP - i`, below the listeners' range.
const FIRST_UDP: usize = FIRST_LISTENER - MAX_LISTENERS;
/// UDP sockets at most; slab keys stay below all these named tokens.
const MAX_UDP: usize = 1024;
/// Readiness events taken from the kernel per `poll`.
const EVENTS_PER_POLL: usize = 1024;
/// How soon to try `accept` again after it failed for want of descriptors or memory.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Repeated warnings (rejections, accept errors) are logged at most this often.
pub(crate) const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// A bound echo server, ready to [`run`](Server::run).
///
/// ```no_run
/// let server = echod::Server::bind(echod::Config::listening_on(["127.0.0.1:0"]))?;
/// println!("listening on {:?}", server.local_addrs());
/// let handle = server.handle();
/// std::thread::spawn(move || handle.stop());
/// let stats = server.run()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Server {
    /// The one poll instance; listeners and the waker are registered with it already.
    poll: Poll,
    /// Bound, registered listening sockets: inherited first, then in `--listen` order.
    listeners: Vec<Listener>,
    /// Bound, registered UDP sockets, in the same order.
    datagrams: Vec<Datagram>,
    config: Config,
    /// Cloned out to callers by [`Server::handle`].
    handle: ServerHandle,
    /// Where the handles' requests arrive; handed to the loop by [`Server::run`].
    inbox: Receiver<Request>,
    /// Keeps the waker registered for as long as the server lives.
    _waker: Arc<Waker>,
}

impl Server {
    /// Adopts the sockets systemd passed (if `inherit_sockets`), binds every `--listen`
    /// address (or, if neither gave any, [`DEFAULT_LISTEN`]), and registers them all with
    /// a new `Poll`. An error names the address that failed and what the OS said.
    pub fn bind(config: Config) -> io::Result<Server> {
        let poll = Poll::new()?;
        let as_io =
            |err: crate::listen::ListenError| io::Error::new(err.source.kind(), err.to_string());
        let inherited = if config.inherit_sockets {
            inherited::take_all().map_err(as_io)?
        } else {
            inherited::Inherited::default()
        };
        let (mut listeners, mut datagrams) = (inherited.listeners, inherited.datagrams);
        let default = [DEFAULT_LISTEN.to_string()];
        let specs = if config.listen.is_empty() && inherited.offered == 0 {
            &default[..]
        } else {
            &config.listen[..]
        };
        let bound = bind_all(specs, &config.bind_options()).map_err(as_io)?;
        listeners.extend(bound.listeners);
        datagrams.extend(bound.datagrams);
        if listeners.is_empty() && datagrams.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "nothing to listen on: every inherited socket was skipped and no --listen given",
            ));
        }
        if listeners.len() > MAX_LISTENERS || datagrams.len() > MAX_UDP {
            return Err(io::Error::other(format!(
                "too many listening addresses (at most {MAX_LISTENERS} stream and {MAX_UDP} UDP)"
            )));
        }
        for (index, listener) in listeners.iter_mut().enumerate() {
            poll.registry()
                .register(listener, listener_token(index), Interest::READABLE)?;
            info!("listening on {listener}");
        }
        for (index, datagram) in datagrams.iter_mut().enumerate() {
            poll.registry()
                .register(&mut datagram.socket, udp_token(index), Interest::READABLE)?;
            match &datagram.name {
                Some(name) => info!("listening on udp:{} (\"{name}\")", datagram.addr),
                None => info!("listening on udp:{}", datagram.addr),
            }
        }
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (handle, inbox) = ServerHandle::new(Arc::clone(&waker));
        Ok(Server {
            poll,
            listeners,
            datagrams,
            config,
            handle,
            inbox,
            _waker: waker,
        })
    }

    /// The TCP addresses actually bound (real ports for port 0), in `--listen` order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.endpoints()
            .into_iter()
            .filter_map(|endpoint| match endpoint {
                Endpoint::Tcp(addr) => Some(addr),
                _ => None,
            })
            .collect()
    }

    /// Everything listened on, TCP and Unix, inherited first, then in `--listen` order;
    /// then the UDP sockets.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let streams = self.listeners.iter().map(|l| l.endpoint.clone());
        streams
            .chain(self.datagrams.iter().map(|d| Endpoint::Udp(d.addr)))
            .collect()
    }

    /// The UDP addresses actually bound (real ports for port 0).
    pub fn local_udp_addrs(&self) -> Vec<SocketAddr> {
        self.datagrams.iter().map(|d| d.addr).collect()
    }

    /// A handle to stop the loop, or read its counters, from another thread.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Serves on the calling thread until stopped; returns the final counters.
    ///
    /// Only a failure of `poll` itself (or of setting up signal handling) ends it with an
    /// error: whatever a client does affects that client's connection alone.
    pub fn run(self) -> io::Result<Stats> {
        let mut event_loop = EventLoop::new(self)?;
        event_loop.run()?;
        event_loop.log_stats("exiting:");
        Ok(event_loop.stats)
    }
}

fn listener_token(index: usize) -> Token {
    Token(FIRST_LISTENER - index)
}

/// Which listener a token names, if it names one.
fn listener_index(token: Token) -> Option<usize> {
    (token.0 <= FIRST_LISTENER && token.0 > FIRST_LISTENER - MAX_LISTENERS)
        .then(|| FIRST_LISTENER - token.0)
}

fn udp_token(index: usize) -> Token {
    Token(FIRST_UDP - index)
}

/// Which UDP socket a token names, if it names one.
fn udp_index(token: Token) -> Option<usize> {
    (token.0 <= FIRST_UDP && token.0 > FIRST_UDP - MAX_UDP).then(|| FIRST_UDP - token.0)
}

/// Whether the loop is serving or on its way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Stopped accepting and reading; flushing what is owed until the deadline.
    Draining {
        deadline: Instant,
    },
}

/// Everything the running loop owns.
struct EventLoop {
    /// The one poll instance: every socket, the waker and the signal pipe report here.
    poll: Poll,
    /// Listening sockets; emptied (closed) when shutdown begins.
    listeners: Vec<Listener>,
    /// The UDP sockets and what they share; emptied (closed) when shutdown begins.
    udp: Datagrams,
    /// The settings, as validated by the caller.
    config: Config,
    /// Every open connection; the slab key is the connection's `Token`.
    connections: Slab<Connection>,
    /// The one read buffer the whole loop shares: no buffer per connection or message.
    scratch: Box<[u8]>,
    /// The counters handed back by `run` (and to `ServerHandle::stats`).
    stats: Stats,
    /// Tokens (connections and listeners) to serve again next turn because they stopped
    /// before `WouldBlock`; filled during a turn, taken at the next turn's revisit phase.
    revisit: Vec<Token>,
    /// The list being worked through in this turn's revisit phase (swapped with `revisit`).
    revisiting: Vec<Token>,
    /// Keys of connections marked finished this turn, closed in the close phase.
    to_close: Vec<usize>,
    /// Connections by time of last activity (only maintained with `--idle-timeout`).
    idle: DeadlineList,
    /// Connections owing output, by time of last write progress (`--stall-timeout`).
    stall: DeadlineList,
    /// Open connections per peer address (only maintained with a per-IP cap).
    per_ip: HashMap<IpAddr, usize>,
    /// A descriptor held in reserve: when `accept` fails for want of descriptors it is
    /// closed so the queued clients can be accepted and closed (told) rather than left
    /// hanging in the backlog, then reopened.
    spare_descriptor: Option<File>,
    /// Listeners are retried at this time after `accept` failed for want of resources:
    /// with edge triggering, connections already queued raise no new event.
    accept_retry_at: Option<Instant>,
    /// Serving, or draining towards the exit.
    phase: Phase,
    /// Requests from [`ServerHandle`]s, announced by the waker.
    inbox: Receiver<Request>,
    /// SIGINT, SIGTERM and SIGUSR1 as a pollable pipe (only when `handle_signals`).
    signals: Option<Signals>,
    /// When the next `--stats-interval` line is due.
    next_stats_at: Option<Instant>,
    /// Read once per turn, right after `poll`: the only clock the loop consults.
    now: Instant,
    /// Keeps "rejected" warnings to one a second.
    reject_warnings: RateLimit,
    /// Keeps "accept failed" warnings to one a second.
    accept_warnings: RateLimit,
    /// Talks to systemd when it asked to be told (`NOTIFY_SOCKET`); `None` costs nothing.
    notifier: Option<Notifier>,
    /// Keeps the waker registered for the loop's lifetime.
    _waker: Arc<Waker>,
}

impl EventLoop {
    fn new(server: Server) -> io::Result<Self> {
        let Server {
            poll,
            listeners,
            datagrams,
            config,
            handle: _,
            inbox,
            _waker,
        } = server;
        let signals = if config.handle_signals {
            let mut signals = Signals::new([SIGINT, SIGTERM, SIGUSR1])?;
            poll.registry()
                .register(&mut signals, SIGNALS, Interest::READABLE)?;
            Some(signals)
        } else {
            None
        };
        let now = Instant::now();
        let config_notifier = if config.systemd_notify {
            Notifier::from_env(now)
        } else {
            None
        };
        let udp = Datagrams::new(
            datagrams
                .into_iter()
                .map(|d| UdpEndpoint::new(d.socket, d.addr))
                .collect(),
            UdpSettings {
                mode: config.mode,
                print: config.print,
                max_datagram: config.udp_max_datagram,
                allow_low_ports: config.udp_allow_low_ports,
                rate_per_ip: config.udp_rate_per_ip,
                rate_exempts_loopback: config.udp_rate_exempts_loopback,
            },
        );
        Ok(EventLoop {
            poll,
            listeners,
            udp,
            next_stats_at: config.stats_interval.map(|every| now + every),
            config,
            connections: Slab::new(),
            scratch: vec![0; READ_BUFFER_SIZE].into_boxed_slice(),
            stats: Stats::default(),
            revisit: Vec::new(),
            revisiting: Vec::new(),
            to_close: Vec::new(),
            idle: DeadlineList::new(Which::Idle),
            stall: DeadlineList::new(Which::Stall),
            per_ip: HashMap::new(),
            spare_descriptor: File::open("/dev/null").ok(),
            accept_retry_at: None,
            phase: Phase::Serving,
            inbox,
            signals,
            now,
            reject_warnings: RateLimit::default(),
            accept_warnings: RateLimit::default(),
            notifier: config_notifier,
            _waker,
        })
    }

    fn run(&mut self) -> io::Result<()> {
        // Kept outside `self` so dispatch can read the events while serving through `&mut self`.
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        // Every socket is bound and listening (clients are already queueing): say so.
        if let Some(notifier) = self.notifier.as_mut() {
            let sockets = self.listeners.len() + self.udp.sockets.len();
            let status = format!("serving on {sockets} sockets");
            notifier.ready(&status);
        }
        loop {
            let timeout = self.poll_timeout();
            trace!("poll (timeout {timeout:?})");
            if let Err(err) = self.poll.poll(&mut events, timeout) {
                if interrupted(&err) {
                    // A signal landed while we slept; if it was one of ours, the signal
                    // pipe is now readable and the next poll reports it.
                    trace!("poll interrupted by a signal");
                    continue;
                }
                return Err(err);
            }
            self.now = Instant::now();
            self.stats.loop_iterations += 1;
            if self.dispatch_events(&events) == Flow::Exit {
                self.close_all(CloseReason::Shutdown);
                return Ok(());
            }
            self.revisit_capped();
            self.expire_timers();
            self.close_finished();
            if self.housekeeping() == Flow::Exit {
                return Ok(());
            }
        }
    }

    /// Phase 1: sleep no later than the nearest deadline; not at all if work is waiting.
    fn poll_timeout(&mut self) -> Option<Duration> {
        if !self.revisit.is_empty() {
            return Some(Duration::ZERO);
        }
        let idle = self.config.idle_timeout.and_then(|timeout| {
            self.idle
                .oldest(&mut self.connections)
                .map(|(_, since)| since + timeout)
        });
        let stall = self.config.stall_timeout.and_then(|timeout| {
            self.stall
                .oldest(&mut self.connections)
                .map(|(_, since)| since + timeout)
        });
        let shutdown = match self.phase {
            Phase::Draining { deadline } => Some(deadline),
            Phase::Serving => None,
        };
        let nearest = [
            idle,
            stall,
            shutdown,
            self.next_stats_at,
            self.accept_retry_at,
            self.notifier.as_ref().and_then(|n| n.next_watchdog_at),
        ]
        .into_iter()
        .flatten()
        .min()?;
        // Round up to whole milliseconds (epoll's unit) so we never wake a hair too early
        // and spin on a deadline that has not quite arrived.
        let wait = nearest.saturating_duration_since(Instant::now());
        Some(Duration::from_millis(wait.as_micros().div_ceil(1000) as u64))
    }

    /// Phase 3: hand each event to whoever owns its token.
    fn dispatch_events(&mut self, events: &Events) -> Flow {
        for event in events {
            let (token, ready) = (event.token(), Ready::from_event(event));
            self.stats.events += 1;
            trace!(
                "event {}: readable={} writable={} read_closed={} error={}",
                TokenName(token),
                ready.readable,
                ready.writable,
                ready.read_closed,
                ready.error
            );
            let flow = match token {
                WAKER => self.on_requests(),
                SIGNALS => self.on_signals(),
                token => {
                    if let Some(index) = listener_index(token) {
                        self.accept_from(index);
                    } else if let Some(index) = udp_index(token) {
                        self.serve_udp(index, ready.writable);
                    } else {
                        self.serve_connection(token.0, ready);
                    }
                    Flow::Continue
                }
            };
            if flow == Flow::Exit {
                return Flow::Exit;
            }
        }
        Flow::Continue
    }

    /// Phase 4: come back to whoever stopped early last turn.
    fn revisit_capped(&mut self) {
        // Swap the two lists: this turn works through last turn's, and whatever stops early
        // now goes on the other. Both keep their allocations: nothing is allocated per turn.
        std::mem::swap(&mut self.revisit, &mut self.revisiting);
        for i in 0..self.revisiting.len() {
            let token = self.revisiting[i];
            if let Some(index) = udp_index(token) {
                self.serve_udp(index, false);
                continue;
            }
            match listener_index(token) {
                Some(index) => self.accept_from(index),
                None => {
                    let key = token.0;
                    // The slot may have been closed and reused since: serve only a connection
                    // that still owes a read (a spurious extra read would be harmless anyway).
                    if self.connections.get(key).is_some_and(Connection::owes_read) {
                        trace!("revisit token {key}");
                        self.serve_connection(key, Ready::default());
                    }
                }
            }
        }
        self.revisiting.clear();
    }

    /// A UDP socket's readiness: answer what it holds, within the per-turn budget.
    fn serve_udp(&mut self, index: usize, writable: bool) {
        let registry = self.poll.registry();
        let served = self.udp.serve(
            index,
            udp_token(index),
            writable,
            registry,
            &mut self.stats,
            self.now,
        );
        if served == Served::ComeBack {
            self.revisit.push(udp_token(index));
        }
    }

    /// The limits a connection is served under right now.
    fn limits(&self) -> Limits {
        let global_headroom = self.config.max_pending_total.map(|cap| {
            let owed = usize::try_from(self.stats.pending_bytes).unwrap_or(usize::MAX);
            cap.saturating_sub(owed)
        });
        Limits {
            max_pending: self.config.max_pending,
            read_budget: self.config.read_budget,
            global_headroom,
            reading_allowed: self.phase == Phase::Serving,
            mode: self.config.mode,
            print: self.config.print,
        }
    }

    /// Serves one connection and applies what followed: stats, interest, timers, closing.
    fn serve_connection(&mut self, key: usize, ready: Ready) {
        let limits = self.limits();
        let Some(conn) = self.connections.get_mut(key) else {
            trace!("token {key}: event for a connection already gone, ignored");
            return;
        };
        if conn.closing.is_some() {
            trace!("token {key}: event for a connection closing this turn, ignored");
            return;
        }
        let (owed_before, in_before, out_before) =
            (conn.pending_len(), conn.bytes_in, conn.bytes_out);
        let outcome = conn.serve(
            Token(key),
            ready,
            &mut self.scratch,
            &limits,
            &mut self.stats,
        );
        let owed_after = conn.pending_len();
        let (read_any, wrote_any) = (conn.bytes_in != in_before, conn.bytes_out != out_before);

        if owed_after != owed_before {
            self.stats.pending_bytes =
                self.stats.pending_bytes + owed_after as u64 - owed_before as u64;
            self.stats.peak_pending_bytes =
                self.stats.peak_pending_bytes.max(self.stats.pending_bytes);
            self.stats.peak_pending_connection =
                self.stats.peak_pending_connection.max(owed_after as u64);
        }

        match outcome {
            Outcome::Finished(reason) => self.mark_closing(key, reason),
            Outcome::Open { come_back } => {
                if come_back {
                    self.revisit.push(Token(key));
                }
                // With a global cap, the headroom moved while serving: decide on fresh limits.
                let limits = if owed_after != owed_before && self.config.max_pending_total.is_some()
                {
                    self.limits()
                } else {
                    limits
                };
                if !self.update_interest(key, &limits) {
                    return;
                }
                self.restart_clocks(key, owed_before, owed_after, read_any, wrote_any);
            }
        }
    }

    /// Re-registers `key` if its state now calls for a different interest (rarely: only
    /// when output starts or stops being owed). False if that failed and it must close.
    fn update_interest(&mut self, key: usize, limits: &Limits) -> bool {
        let conn = &mut self.connections[key];
        let wanted = conn.desired_interest(limits);
        if wanted == conn.registered {
            return true;
        }
        trace!("token {key}: interest {:?} -> {wanted:?}", conn.registered);
        let registry = self.poll.registry();
        match registry.reregister(conn.socket_mut(), Token(key), wanted) {
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
    ) {
        let now = self.now;
        if self.config.idle_timeout.is_some() {
            let caught_up = owed_before > 0 && owed_after == 0;
            if read_any || caught_up {
                self.idle.touch(&mut self.connections, key, now);
            }
        }
        if self.config.stall_timeout.is_some() {
            if owed_after == 0 {
                self.stall.remove(&mut self.connections, key);
            } else if owed_before == 0 || wrote_any {
                // Newly owing, or progress: the stall clock starts over.
                self.stall.touch(&mut self.connections, key, now);
            }
        }
    }

    fn mark_closing(&mut self, key: usize, reason: CloseReason) {
        let conn = &mut self.connections[key];
        if conn.closing.is_none() {
            conn.closing = Some(reason);
            self.to_close.push(key);
        }
    }

    /// The listener's readiness: accept until `WouldBlock` or the per-turn budget.
    fn accept_from(&mut self, index: usize) {
        for _ in 0..self.config.accept_budget {
            let Some(listener) = self.listeners.get(index) else {
                return; // closed by shutdown earlier in this batch
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(index, stream, peer),
                Err(err) if would_block(&err) => {
                    trace!("listener {index}: accept WouldBlock");
                    return;
                }
                Err(err) if interrupted(&err) => {}
                // The client gave up while queued: its problem, not the listener's.
                Err(err) if err.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(err) => {
                    self.on_accept_failure(index, err);
                    return;
                }
            }
        }
        // Budget spent with connections perhaps still queued: no new edge will say so.
        trace!("listener {index}: accept budget spent, revisit next turn");
        self.revisit.push(listener_token(index));
    }

    /// A new client: turn it away if a cap says so, else register it and give it a slot.
    fn admit(&mut self, listener: usize, mut stream: Stream, peer: Peer) {
        if self.connections.len() >= self.config.max_connections {
            return self.reject(stream, peer, RejectReason::MaxConnections);
        }
        if let (Some(cap), Some(ip)) = (self.config.max_connections_per_ip, peer.ip())
            && self.per_ip.get(&ip).copied().unwrap_or(0) >= cap
        {
            return self.reject(stream, peer, RejectReason::PerIp);
        }
        if let Err(err) = stream.set_nodelay() {
            debug!("{peer}: TCP_NODELAY: {err}");
        }
        let entry = self.connections.vacant_entry();
        let key = entry.key();
        // Register first and insert after, so the slab and the poll set never disagree.
        let registered = self
            .poll
            .registry()
            .register(&mut stream, Token(key), Interest::READABLE);
        if let Err(err) = registered {
            self.stats.accept_errors += 1;
            debug!("{peer}: cannot register: {err}");
            return;
        }
        entry.insert(Connection::new(stream, peer));
        self.stats.count_accept();
        if let (Some(_), Some(ip)) = (self.config.max_connections_per_ip, peer.ip()) {
            *self.per_ip.entry(ip).or_insert(0) += 1;
        }
        if self.config.idle_timeout.is_some() {
            self.idle.touch(&mut self.connections, key, self.now);
        }
        if log::log_enabled!(log::Level::Debug) {
            let on = &self.listeners[listener];
            debug!("accepted {peer} on {on} as token {key}");
        }
    }

    /// Closes a just-accepted connection at once: the client sees EOF.
    fn reject(&mut self, stream: Stream, peer: Peer, reason: RejectReason) {
        drop(stream);
        self.stats.count_reject(reason);
        if let Some(suppressed) = self.reject_warnings.allow(self.now) {
            warn!(
                "rejected {peer}: {} ({suppressed} more rejected since the last warning)",
                reason.as_str()
            );
        }
    }

    /// `accept` failed for a reason other than the client: usually out of descriptors.
    fn on_accept_failure(&mut self, index: usize, err: io::Error) {
        self.stats.accept_errors += 1;
        if let Some(suppressed) = self.accept_warnings.allow(self.now) {
            warn!("accept on listener {index}: {err} ({suppressed} more since the last warning)");
        }
        let out_of_descriptors = matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
        if out_of_descriptors && let Some(spare) = self.spare_descriptor.take() {
            // Spend the spare on telling queued clients "no" instead of leaving them
            // waiting in the backlog for a descriptor that may never come.
            drop(spare);
            self.turn_away_queued(index);
            self.spare_descriptor = File::open("/dev/null").ok();
        }
        self.accept_retry_at = Some(self.now + ACCEPT_RETRY_DELAY);
    }

    /// Accepts and closes whatever is queued on listener `index`, up to the accept budget.
    fn turn_away_queued(&mut self, index: usize) {
        for _ in 0..self.config.accept_budget {
            match self.listeners[index].accept() {
                Ok((stream, peer)) => self.reject(stream, peer, RejectReason::Descriptors),
                Err(err) if interrupted(&err) => {}
                Err(_) => return,
            }
        }
    }

    /// Phase 5: close connections whose idle or stall clock has run out.
    fn expire_timers(&mut self) {
        let now = self.now;
        if let Some(timeout) = self.config.idle_timeout {
            while let Some((key, since)) = self.idle.oldest(&mut self.connections) {
                if now.duration_since(since) < timeout {
                    break;
                }
                let conn = &self.connections[key];
                if conn.closing.is_some() {
                    self.idle.remove(&mut self.connections, key);
                } else if conn.pending_len() > 0 {
                    // Owing output is not idleness: the stall clock rules that case.
                    self.idle.touch(&mut self.connections, key, now);
                } else {
                    debug!("{} token {key}: idle for {timeout:?}", conn.peer);
                    self.idle.remove(&mut self.connections, key);
                    self.mark_closing(key, CloseReason::Idle);
                }
            }
        }
        if let Some(timeout) = self.config.stall_timeout {
            while let Some((key, since)) = self.stall.oldest(&mut self.connections) {
                if now.duration_since(since) < timeout {
                    break;
                }
                self.stall.remove(&mut self.connections, key);
                let conn = &self.connections[key];
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
        if self.accept_retry_at.is_some_and(|at| at <= now) && self.phase == Phase::Serving {
            self.accept_retry_at = None;
            for index in 0..self.listeners.len() {
                self.accept_from(index);
            }
        }
    }

    /// Phase 6: closed connections leave the slab (dropping the socket closes it, which
    /// also takes it out of the epoll set: no separate deregister syscall needed).
    fn close_finished(&mut self) {
        for i in 0..self.to_close.len() {
            let key = self.to_close[i];
            self.idle.remove(&mut self.connections, key);
            self.stall.remove(&mut self.connections, key);
            let conn = self.connections.remove(key);
            let reason = conn.closing.unwrap_or(CloseReason::Error);
            self.stats.pending_bytes -= conn.pending_len() as u64;
            self.stats.count_close(reason);
            if let Some(ip) = conn.peer.ip()
                && let Some(count) = self.per_ip.get_mut(&ip)
            {
                *count -= 1;
                if *count == 0 {
                    self.per_ip.remove(&ip);
                }
            }
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

    /// Phase 7: periodic stats and shutdown progress.
    fn housekeeping(&mut self) -> Flow {
        if let Some(notifier) = self.notifier.as_mut() {
            // Sent by the loop itself: if the loop wedges, the pings stop and systemd acts.
            let (stats, open) = (&self.stats, self.connections.len());
            notifier.watchdog_if_due(self.now, || status_line(stats, open));
        }
        if let (Some(at), Some(every)) = (self.next_stats_at, self.config.stats_interval)
            && at <= self.now
        {
            self.log_stats_and_status("stats");
            // Skip ticks missed while busy rather than firing them all at once.
            let next = at + every;
            self.next_stats_at = Some(if next > self.now {
                next
            } else {
                self.now + every
            });
        }
        match self.phase {
            Phase::Serving => Flow::Continue,
            Phase::Draining { deadline } => {
                if self.connections.is_empty() {
                    info!("all connections closed");
                    Flow::Exit
                } else if deadline <= self.now {
                    info!(
                        "shutdown timeout: closing {} connections with {} bytes still owed",
                        self.connections.len(),
                        self.stats.pending_bytes
                    );
                    self.close_all(CloseReason::Shutdown);
                    Flow::Exit
                } else {
                    Flow::Continue
                }
            }
        }
    }

    /// One line of counters: `label key=value …` at info, or with `--stats-json` a bare JSON
    /// object on stdout, so scripts need no log parsing.
    fn log_stats(&mut self, label: &str) {
        self.udp.count_queue_drops(&mut self.stats);
        if self.config.stats_json {
            // Not println!: a closed stdout (`echod --stats-json | head -1`) must not panic
            // the server. The stats are lost, the echo goes on.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", self.stats.to_json()).and_then(|()| out.flush());
        } else {
            info!("{label} {}", self.stats.to_text());
        }
    }

    /// Each stats line also refreshes what `systemctl status` shows.
    fn log_stats_and_status(&mut self, label: &str) {
        self.log_stats(label);
        if let Some(notifier) = self.notifier.as_mut() {
            notifier.status(&status_line(&self.stats, self.connections.len()));
        }
    }

    /// The waker fired: answer whatever [`ServerHandle`]s have queued.
    fn on_requests(&mut self) -> Flow {
        while let Ok(request) = self.inbox.try_recv() {
            match request {
                Request::Stats(reply_to) => {
                    self.udp.count_queue_drops(&mut self.stats);
                    // The asker may have given up waiting: nothing to do about that.
                    let _ = reply_to.send(self.stats.clone());
                }
                Request::Stop(ack) => {
                    let _ = ack.send(());
                    if self.request_stop("stop request") == Flow::Exit {
                        return Flow::Exit;
                    }
                }
            }
        }
        Flow::Continue
    }

    fn on_signals(&mut self) -> Flow {
        let mut received = Vec::new();
        if let Some(signals) = self.signals.as_mut() {
            received.extend(signals.pending());
            // signal-hook drains its pipe with its own reads, not through mio, so mio's
            // poll(2) selector never sees the `WouldBlock` that would re-arm it: re-arm by
            // hand. (Harmless on epoll; signals are rare, so the syscall is too.)
            if let Err(err) = self
                .poll
                .registry()
                .reregister(signals, SIGNALS, Interest::READABLE)
            {
                warn!("cannot re-arm the signal pipe: {err}");
            }
        }
        for signal in received {
            let flow = match signal {
                SIGUSR1 => {
                    self.log_stats_and_status("stats");
                    Flow::Continue
                }
                SIGINT => self.request_stop("SIGINT"),
                _ => self.request_stop("SIGTERM"),
            };
            if flow == Flow::Exit {
                return Flow::Exit;
            }
        }
        Flow::Continue
    }

    /// First request: drain gracefully. Second: stop now.
    fn request_stop(&mut self, source: &str) -> Flow {
        match self.phase {
            Phase::Draining { .. } => {
                info!("{source} again: stopping now");
                Flow::Exit
            }
            Phase::Serving => {
                self.begin_draining(source);
                Flow::Continue
            }
        }
    }

    /// Stop accepting (listeners closed) and reading; flush what is owed, then close.
    fn begin_draining(&mut self, source: &str) {
        let deadline = self.now + self.config.shutdown_timeout;
        self.phase = Phase::Draining { deadline };
        self.listeners.clear();
        // UDP has nothing to drain: its sockets simply close (their drops counted first).
        self.udp.count_queue_drops(&mut self.stats);
        self.udp.sockets.clear();
        self.accept_retry_at = None;
        let stopping = format!(
            "{source}: stopping; flushing {} bytes owed to {} connections (up to {:?})",
            self.stats.pending_bytes,
            self.connections.len(),
            self.config.shutdown_timeout
        );
        info!("{stopping}");
        if let Some(notifier) = self.notifier.as_mut() {
            notifier.stopping(&stopping);
        }
        // Once per shutdown, every connection: those owing nothing close now, the others
        // switch to WRITABLE only and close as they catch up.
        let keys: Vec<usize> = self.connections.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.serve_connection(key, Ready::default());
        }
    }

    /// Closes every connection at once, whatever is owed.
    fn close_all(&mut self, reason: CloseReason) {
        let keys: Vec<usize> = self.connections.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.mark_closing(key, reason);
        }
        self.close_finished();
    }
}

/// The short line systemd shows as the service's status.
fn status_line(stats: &Stats, open: usize) -> String {
    let mut line = format!(
        "{open} connections open, {} accepted, {} bytes in, {} bytes out",
        stats.accepted, stats.bytes_in, stats.bytes_out
    );
    if stats.udp_datagrams_in > 0 {
        line += &format!(
            "; {} datagrams in, {} out, {} dropped",
            stats.udp_datagrams_in,
            stats.udp_datagrams_out,
            stats.udp_dropped_total()
        );
    }
    line
}

/// How a token reads in the trace narration: `listener 0`, `waker`, `token 17`.
struct TokenName(Token);

impl std::fmt::Display for TokenName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            WAKER => write!(f, "waker"),
            SIGNALS => write!(f, "signals"),
            token => match (listener_index(token), udp_index(token)) {
                (Some(index), _) => write!(f, "listener {index}"),
                (_, Some(index)) => write!(f, "udp {index}"),
                _ => write!(f, "token {}", token.0),
            },
        }
    }
}

/// Whether the loop goes on after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Exit,
}

/// Lets a repeated warning through at most once per [`WARN_INTERVAL`], counting the rest.
#[derive(Debug, Default)]
struct RateLimit {
    /// When a warning last went out.
    last: Option<Instant>,
    /// Warnings held back since then.
    suppressed: u64,
}

impl RateLimit {
    /// `Some(n)` if a warning may be logged now, `n` being how many were held back since.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARN_INTERVAL)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}
