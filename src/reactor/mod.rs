//! The event loop: one thread, one `mio::Poll`, and a turn that is always the same list
//! of named phases ([`EventLoop::run`]):
//!
//! 1. **next wake**: how long `poll` may sleep: zero if work was left over, else until the
//!    nearest deadline any owner offers (sessions: idle and stall; the acceptor: its retry;
//!    the lifecycle: the drain deadline; telemetry: stats and watchdog), else forever.
//! 2. **wait**: `poll` for readiness events.
//! 3. **dispatch**: each event goes to the owner its token names ([`tokens`]): a listener
//!    (accept), a UDP socket, a session, the waker or the signal pipe ([`control`]).
//!    Sessions that finish are only *marked*.
//! 4. **revisit**: whoever stopped early last turn (an accept, read or batch budget spent)
//!    is served again; under edge triggering nothing else would wake them.
//! 5. **expire**: sessions whose idle or stall clock ran out are marked; a failed accept
//!    is retried once its delay has passed.
//! 6. **close finished**: marked sessions leave the slab. Doing it last means no slab key
//!    is reused within a batch, so a stale event can never reach a new connection.
//! 7. **housekeeping**: watchdog, periodic stats, drain progress ([`lifecycle`]).
//!
//! The loop knows owners and phases, never protocols or clients: what happens inside a
//! phase is the owner's business (`accept`, `session`, `udp`, `telemetry`).

mod control;
mod lifecycle;
pub(crate) mod tokens;

use std::io;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use log::{info, trace};
use mio::{Events, Poll, Waker};

use crate::accept::Acceptor;
use crate::config::Config;
use crate::handle::Request;
use crate::listen::Listener;
use crate::metrics::{Exporter, MetricsEndpoint};
use crate::readiness::{Drain, Ready, interrupted};
use crate::session::Sessions;
use crate::telemetry::exposition::Snapshot;
use crate::telemetry::process::ProcessSample;
use crate::telemetry::stats::{CloseReason, Stats};
use crate::telemetry::{Serves, Telemetry};
use crate::transport::Layers;
use crate::udp::Datagrams;
use crate::workers::link::{LinkEvent, MasterLink};
use control::{Command, Control};
use lifecycle::{DrainProgress, Lifecycle, StopStep};
use tokens::Owner;

/// A worker whose master is gone flushes what it owes for at most this long: the master
/// is not coming back, and a replacement may already be listening.
const ORPHAN_DRAIN: Duration = Duration::from_secs(1);

/// Readiness events taken from the kernel per `poll`.
const EVENTS_PER_POLL: usize = 1024;

/// Whether the loop goes on after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Exit,
}

/// Everything the running loop owns, one field per owner.
pub(crate) struct EventLoop {
    /// The one poll instance: every socket, the waker and the signal pipe report here.
    poll: Poll,
    /// The listeners and admission (caps, spare descriptor, retry).
    acceptor: Acceptor,
    /// Every open connection, the shared read buffer, the idle and stall lists.
    sessions: Sessions,
    /// The UDP sockets and what they share.
    udp: Datagrams,
    /// Requests from handles and signals.
    control: Control,
    /// `--metrics`: the HTTP endpoint and its clients.
    metrics: Option<MetricsEndpoint>,
    /// In a worker: the link to the master (questions in, answers out; EOF: stop).
    master: Option<MasterLink>,
    /// Serving or draining.
    lifecycle: Lifecycle,
    /// Reports, systemd notifications and their schedule.
    telemetry: Telemetry,
    /// The counters handed back by `run` (and to `ServerHandle::stats`).
    stats: Stats,
    /// `--shutdown-timeout`.
    shutdown_timeout: Duration,
    /// Owners to serve again next turn because they stopped before `WouldBlock`; filled
    /// during a turn, taken at the next turn's revisit phase.
    revisit: Vec<Owner>,
    /// The list being worked through in this turn's revisit phase (swapped with `revisit`).
    revisiting: Vec<Owner>,
    /// The time, read once per turn after `poll` returns: every clock restarted in a
    /// turn gets the same stamp, which keeps the timer lists sorted.
    now: Instant,
}

/// What the loop serves, bound and registered already.
pub(crate) struct Rooms {
    pub(crate) listeners: Vec<Listener>,
    pub(crate) layers: Layers,
    pub(crate) udp: Datagrams,
    pub(crate) metrics: Option<MetricsEndpoint>,
    pub(crate) master: Option<MasterLink>,
}

impl EventLoop {
    /// A loop over sockets already bound and registered with `poll`.
    pub(crate) fn new(
        poll: Poll,
        rooms: Rooms,
        config: &Config,
        inbox: Receiver<Request>,
        waker: Arc<Waker>,
    ) -> io::Result<EventLoop> {
        let Rooms {
            listeners,
            layers,
            udp,
            metrics,
            master,
        } = rooms;
        let now = Instant::now();
        let serves = Serves {
            streams: !listeners.is_empty(),
            datagrams: !udp.sockets.is_empty(),
        };
        Ok(EventLoop {
            control: Control::new(inbox, waker, config.handle_signals, poll.registry())?,
            poll,
            acceptor: Acceptor::new(listeners, layers, config),
            sessions: Sessions::new(config),
            udp,
            metrics,
            master,
            lifecycle: Lifecycle::Serving,
            telemetry: Telemetry::new(config, serves, now),
            stats: Stats::default(),
            shutdown_timeout: config.shutdown_timeout,
            revisit: Vec::new(),
            revisiting: Vec::new(),
            now,
        })
    }

    /// Turns until stopped; returns the final counters.
    pub(crate) fn run(mut self) -> io::Result<Stats> {
        // Kept outside `self` so dispatch can read the events while serving through `&mut self`.
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        self.telemetry
            .ready(self.acceptor.len() + self.udp.sockets.len());
        loop {
            let timeout = self.next_wake();
            if !self.wait(&mut events, timeout)? {
                continue;
            }
            if self.dispatch(&events) == Flow::Exit {
                self.close_all(CloseReason::Shutdown);
                break;
            }
            self.revisit();
            self.expire();
            self.close_finished();
            if self.housekeeping() == Flow::Exit {
                break;
            }
        }
        self.report("exiting:");
        Ok(self.stats)
    }

    /// Phase 1: sleep no later than the nearest deadline; not at all if work is waiting.
    fn next_wake(&mut self) -> Option<Duration> {
        if !self.revisit.is_empty() {
            return Some(Duration::ZERO);
        }
        let nearest = [
            self.sessions.next_deadline(),
            self.acceptor.next_deadline(),
            self.lifecycle.deadline(),
            self.telemetry.next_deadline(),
            self.metrics
                .as_ref()
                .and_then(MetricsEndpoint::next_deadline),
        ]
        .into_iter()
        .flatten()
        .min()?;
        // Round up to whole milliseconds (epoll's unit) so we never wake a hair too early
        // and spin on a deadline that has not quite arrived.
        let wait = nearest.saturating_duration_since(Instant::now());
        Some(Duration::from_millis(wait.as_micros().div_ceil(1000) as u64))
    }

    /// Phase 2: wait for events. False if a signal cut the wait short (no events).
    fn wait(&mut self, events: &mut Events, timeout: Option<Duration>) -> io::Result<bool> {
        trace!("poll (timeout {timeout:?})");
        match self.poll.poll(events, timeout) {
            Ok(()) => {}
            Err(err) if interrupted(&err) => {
                // A signal landed while we slept; if it was one of ours, the signal pipe is
                // now readable and the next poll reports it.
                trace!("poll interrupted by a signal");
                return Ok(false);
            }
            Err(err) => return Err(err),
        }
        self.now = Instant::now();
        self.stats.loop_iterations += 1;
        Ok(true)
    }

    /// Phase 3: hand each event to whoever owns its token.
    fn dispatch(&mut self, events: &Events) -> Flow {
        for event in events {
            let (owner, ready) = (Owner::of(event.token()), Ready::from_event(event));
            self.stats.events += 1;
            trace!(
                "event {owner}: readable={} writable={} read_closed={} error={}",
                ready.readable, ready.writable, ready.read_closed, ready.error
            );
            let flow = match owner {
                Owner::Waker => {
                    let commands = self.control.requests();
                    self.apply(commands)
                }
                Owner::Signals => {
                    let commands = self.control.signals(self.poll.registry());
                    self.apply(commands)
                }
                Owner::Master => self.serve_master(),
                Owner::MetricsListener(_) | Owner::MetricsClient(_) => {
                    self.serve_metrics(owner);
                    Flow::Continue
                }
                owner => {
                    self.serve(owner, ready);
                    Flow::Continue
                }
            };
            if flow == Flow::Exit {
                return Flow::Exit;
            }
        }
        Flow::Continue
    }

    /// Serves a socket's readiness (or, with `ready` all false, a revisit), and notes it
    /// for the next turn if it stopped early.
    fn serve(&mut self, owner: Owner, ready: Ready) {
        let registry = self.poll.registry();
        let (stats, now) = (&mut self.stats, self.now);
        let drain = match owner {
            Owner::Session(key) => {
                let reading = self.lifecycle.is_serving();
                self.sessions
                    .serve(key, ready, reading, registry, stats, now)
            }
            Owner::Listener(index) => {
                self.acceptor
                    .accept_from(index, &mut self.sessions, registry, stats, now)
            }
            Owner::Udp(index) => {
                let token = owner.token();
                self.udp
                    .serve(index, token, ready.writable, registry, stats, now)
            }
            _ => Drain::Drained,
        };
        if drain == Drain::ComeBack {
            self.revisit.push(owner);
        }
    }

    /// Phase 4: come back to whoever stopped early last turn.
    fn revisit(&mut self) {
        // Swap the two lists: this turn works through last turn's, and whatever stops early
        // now goes on the other. Both keep their allocations: nothing is allocated per turn.
        std::mem::swap(&mut self.revisit, &mut self.revisiting);
        for i in 0..self.revisiting.len() {
            let owner = self.revisiting[i];
            // A session's slot may have been closed and reused since: serve only one that
            // still owes a read (a spurious extra read would be harmless anyway).
            if let Owner::Session(key) = owner
                && !self.sessions.owes_read(key)
            {
                continue;
            }
            trace!("revisit {owner}");
            self.serve(owner, Ready::default());
        }
        self.revisiting.clear();
    }

    /// A metrics listener or client is ready.
    fn serve_metrics(&mut self, owner: Owner) {
        if let Some(metrics) = self.metrics.as_mut() {
            let mut exporter = LoopExporter {
                stats: &mut self.stats,
                udp: &mut self.udp,
            };
            metrics.on_event(owner, self.poll.registry(), self.now, &mut exporter);
        }
    }

    /// The master asked for the counters, or is gone.
    fn serve_master(&mut self) -> Flow {
        let Some(link) = self.master.as_mut() else {
            return Flow::Continue;
        };
        let (stats, udp) = (&mut self.stats, &mut self.udp);
        let event = link.serve(|| {
            udp.count_queue_drops(stats);
            stats.clone()
        });
        if event == LinkEvent::Quiet {
            return Flow::Continue;
        }
        link.deregister(self.poll.registry());
        self.master = None;
        let drain_for = self.shutdown_timeout.min(ORPHAN_DRAIN);
        match self.lifecycle.on_stop(self.now, drain_for) {
            StopStep::BeginDraining => {
                self.begin_draining("the master is gone");
                Flow::Continue
            }
            StopStep::ExitNow => Flow::Exit,
        }
    }

    /// Phase 5: clocks that ran out.
    fn expire(&mut self) {
        self.sessions.expire(self.now);
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.expire(self.now, self.poll.registry());
        }
        if self.lifecycle.is_serving() {
            let registry = self.poll.registry();
            let again =
                self.acceptor
                    .retry_if_due(self.now, &mut self.sessions, registry, &mut self.stats);
            self.revisit.extend(again.into_iter().map(Owner::Listener));
        }
    }

    /// Phase 6: finished sessions leave the slab; the acceptor hears who left.
    fn close_finished(&mut self) {
        let acceptor = &mut self.acceptor;
        self.sessions
            .close_finished(&mut self.stats, |peer| acceptor.release(peer));
    }

    /// Phase 7: watchdog, periodic stats, drain progress.
    fn housekeeping(&mut self) -> Flow {
        if self
            .telemetry
            .tick(self.now, &self.stats, self.sessions.len())
        {
            self.report_and_status("stats");
        }
        match self.lifecycle.progress(self.sessions.len(), self.now) {
            DrainProgress::Continue => Flow::Continue,
            DrainProgress::AllClosed => {
                info!("all connections closed");
                Flow::Exit
            }
            DrainProgress::TimedOut => {
                info!(
                    "shutdown timeout: closing {} connections with {} bytes still owed",
                    self.sessions.len(),
                    self.stats.pending_bytes
                );
                self.close_all(CloseReason::Shutdown);
                Flow::Exit
            }
        }
    }

    /// Carries out what the control inputs asked for.
    fn apply(&mut self, commands: Vec<Command>) -> Flow {
        for command in commands {
            match command {
                Command::SendStats(reply_to) => {
                    self.udp.count_queue_drops(&mut self.stats);
                    // The asker may have given up waiting: nothing to do about that.
                    let _ = reply_to.send(self.stats.clone());
                }
                Command::Report => self.report_and_status("stats"),
                Command::Reload => self.acceptor.reload(),
                Command::Stop(source) => {
                    match self.lifecycle.on_stop(self.now, self.shutdown_timeout) {
                        StopStep::BeginDraining => self.begin_draining(source),
                        StopStep::ExitNow => {
                            info!("{source} again: stopping now");
                            return Flow::Exit;
                        }
                    }
                }
            }
        }
        Flow::Continue
    }

    /// Stop accepting (listeners closed) and reading; flush what is owed, then close.
    fn begin_draining(&mut self, source: &str) {
        self.acceptor.close();
        // UDP has nothing to drain: its sockets simply close (their drops counted first).
        self.udp.count_queue_drops(&mut self.stats);
        self.udp.sockets.clear();
        self.telemetry.stopping(&format!(
            "{source}: stopping; flushing {} bytes owed to {} connections (up to {:?})",
            self.stats.pending_bytes,
            self.sessions.len(),
            self.shutdown_timeout
        ));
        // Once per shutdown, every session: those owing nothing close now, the others
        // switch to WRITABLE only and close as they catch up.
        let registry = self.poll.registry();
        let again = self
            .sessions
            .serve_all(false, registry, &mut self.stats, self.now);
        self.revisit.extend(again.into_iter().map(Owner::Session));
    }

    /// Closes every session at once, whatever is owed.
    fn close_all(&mut self, reason: CloseReason) {
        let acceptor = &mut self.acceptor;
        self.sessions
            .close_all(reason, &mut self.stats, |peer| acceptor.release(peer));
    }

    /// A report of the counters, UDP's kernel-side drops counted first.
    fn report(&mut self, label: &str) {
        self.udp.count_queue_drops(&mut self.stats);
        self.telemetry.report(label, &self.stats);
    }

    /// A report that also refreshes what `systemctl status` shows.
    fn report_and_status(&mut self, label: &str) {
        self.udp.count_queue_drops(&mut self.stats);
        self.telemetry
            .report_and_status(label, &self.stats, self.sessions.len());
    }
}

/// What a scrape of a single loop reports: its own counters and process.
struct LoopExporter<'a> {
    stats: &'a mut Stats,
    udp: &'a mut Datagrams,
}

impl Exporter for LoopExporter<'_> {
    fn snapshot(&mut self) -> Snapshot {
        self.udp.count_queue_drops(self.stats);
        Snapshot {
            stats: self.stats.clone(),
            process: ProcessSample::own(),
            workers: Vec::new(),
        }
    }

    /// The loop is answering, so it is alive: that is all `/health` says.
    fn healthy(&self) -> bool {
        true
    }
}
