//! `--workers N`: one master process and N workers, the model of nginx's master/worker and
//! HAProxy's master-worker mode, with exactly today's single-threaded loop in each worker.
//!
//! The master binds (or adopts) every socket ([`sockets`]) and serves no client itself. It
//! starts each worker as a copy of its own binary, handing it its sockets the way systemd
//! does (`LISTEN_FDS`), plus one end of a control link ([`link`]); the worker adopts them
//! like any socket-activated echod. From then on the master's own small `mio` loop:
//!
//! - **replaces** a worker that dies: at once the first time, then with a growing backoff
//!   if it keeps dying at once ([`slot`]). The master still holds the dead worker's
//!   sockets, so the connections queued on them wait for the replacement;
//! - **stops** when a worker exits with status 1 or 2 (its configuration is wrong, so a
//!   replacement would fail the same way): the others are stopped, and the master exits
//!   with that status;
//! - **forwards** SIGTERM/SIGINT (each worker drains as a single echod does; past
//!   `--shutdown-timeout` plus [`KILL_GRACE`] the stragglers get SIGKILL), SIGUSR1 and
//!   SIGHUP;
//! - **asks** each worker for its counters every second over the link; one that has not
//!   answered for a few seconds (stopped, wedged) is killed and replaced;
//! - is the only one that **talks to systemd**: `READY=1` once every worker is serving,
//!   `STATUS=` with the summed counters, `WATCHDOG=1` only while every worker answers;
//! - serves **`--metrics`**, summed over the workers, with each worker's `up`.
//!
//! When the master dies, each worker reads EOF on its link and stops within a second.

pub mod link;
mod slot;
mod sockets;

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use log::{error, info, warn};
use mio::net::UnixStream;
use mio::{Events, Interest, Poll};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;

use crate::config::Config;
use crate::listen::bind_metrics;
use crate::metrics::{Exporter, MetricsEndpoint};
use crate::reactor::tokens::Owner;
use crate::readiness::{interrupted, rearm_after_foreign_drain};
use crate::telemetry::exposition::{Snapshot, WorkerUp};
use crate::telemetry::notify::Notifier;
use crate::telemetry::process::ProcessSample;
use crate::telemetry::report::status_line;
use crate::telemetry::stats::Stats;
use link::{LINK_FD_ENV, SLOT_ENV};
use slot::{ASK_EVERY, Heard, Slot};
use sockets::SocketSets;

/// After `--shutdown-timeout`, how long workers still have to exit before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// Serving, or stopping with the status the master will exit with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Serving,
    Stopping { kill_at: Instant, status: u8 },
}

/// The master process.
pub struct Master {
    poll: Poll,
    signals: Signals,
    slots: Vec<Slot>,
    sockets: SocketSets,
    metrics: Option<MetricsEndpoint>,
    notifier: Option<Notifier>,
    config: Config,
    state: State,
    /// `READY=1` has been sent (it is sent once, not again for replacements).
    ready_sent: bool,
    next_ask: Instant,
    /// The binary and arguments each worker is started with: the master's own, the path
    /// read once at start (later, `/proc/self/exe` may name a file replaced since).
    exe: std::path::PathBuf,
    args: Vec<OsString>,
    now: Instant,
}

impl Master {
    /// Binds every socket and the metrics endpoint; starts nothing yet. An error names the
    /// address that failed, as a single echod's does.
    pub fn bind(config: Config) -> io::Result<Master> {
        let as_io =
            |err: crate::listen::ListenError| io::Error::new(err.source.kind(), err.to_string());
        let poll = Poll::new()?;
        let sockets = SocketSets::bind(&config).map_err(as_io)?;
        let metrics = match &config.metrics {
            Some(spec) => {
                let bound = bind_metrics(spec, &config.bind_options()).map_err(as_io)?;
                Some(MetricsEndpoint::new(bound, poll.registry())?)
            }
            None => None,
        };
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGUSR1, SIGHUP, SIGCHLD])?;
        poll.registry()
            .register(&mut signals, Owner::Signals.token(), Interest::READABLE)?;
        let now = Instant::now();
        Ok(Master {
            poll,
            signals,
            slots: (0..config.workers).map(Slot::new).collect(),
            sockets,
            metrics,
            notifier: Notifier::from_env(now),
            config,
            state: State::Serving,
            ready_sent: false,
            next_ask: now + ASK_EVERY,
            exe: std::env::current_exe()?,
            args: std::env::args_os().skip(1).collect(),
            now,
        })
    }

    /// Starts the workers and supervises them until stopped; returns the exit status.
    pub fn run(mut self) -> io::Result<u8> {
        info!(
            "master (pid {}): starting {} workers",
            std::process::id(),
            self.slots.len()
        );
        for index in 0..self.slots.len() {
            if let Err(err) = self.spawn(index) {
                error!("cannot start worker {index}: {err}");
                self.begin_stop("a worker could not be started", 1);
            }
        }
        let mut events = Events::with_capacity(64);
        loop {
            let timeout = self.next_wake();
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(err) if interrupted(&err) => continue,
                Err(err) => return Err(err),
            }
            self.now = Instant::now();
            for event in &events {
                match Owner::of(event.token()) {
                    Owner::Signals => self.on_signals(),
                    Owner::Worker(index) => self.hear(index),
                    owner @ (Owner::MetricsListener(_) | Owner::MetricsClient(_)) => {
                        self.serve_metrics(owner)
                    }
                    _ => {}
                }
            }
            self.reap();
            if let Some(status) = self.finished() {
                info!("master: every worker has exited");
                return Ok(status);
            }
            self.tick();
        }
    }

    /// The nearest thing the master must do without being woken.
    fn next_wake(&self) -> Duration {
        let mut nearest = self.next_ask;
        let respawns = self.slots.iter().filter_map(|s| s.respawn_at);
        let kill = match self.state {
            State::Stopping { kill_at, .. } => Some(kill_at),
            State::Serving => None,
        };
        let metrics = self
            .metrics
            .as_ref()
            .and_then(MetricsEndpoint::next_deadline);
        // The systemd watchdog only counts while every worker answers: until then its
        // deadline is not ours to wake for (the ask timer comes round each second anyway).
        let watchdog = self
            .notifier
            .as_ref()
            .and_then(|n| n.next_watchdog_at)
            .filter(|_| self.all_up());
        for at in respawns.chain(kill).chain(metrics).chain(watchdog) {
            nearest = nearest.min(at);
        }
        let wait = nearest.saturating_duration_since(Instant::now());
        Duration::from_millis(wait.as_micros().div_ceil(1000) as u64)
    }

    /// Starts a worker in slot `index`, on that slot's sockets.
    fn spawn(&mut self, index: usize) -> io::Result<()> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let sockets = self.sockets.for_slot(index)?;
        let count = sockets.len();
        let names: Vec<String> = sockets.iter().map(|(_, name)| name.clone()).collect();
        // Descriptors 3, 4, … are the sockets, as systemd would pass them; the link after.
        let mut mappings: Vec<FdMapping> = sockets
            .into_iter()
            .enumerate()
            .map(|(i, (fd, _))| FdMapping {
                parent_fd: fd,
                child_fd: 3 + i as i32,
            })
            .collect();
        let link_fd = 3 + count as i32;
        mappings.push(FdMapping {
            parent_fd: theirs.into(),
            child_fd: link_fd,
        });
        let mut command = Command::new(&self.exe);
        command
            .args(&self.args)
            .env("LISTEN_FDS", count.to_string())
            .env("LISTEN_FDNAMES", names.join(":"))
            .env(LINK_FD_ENV, link_fd.to_string())
            .env(SLOT_ENV, index.to_string())
            // No LISTEN_PID: the worker's pid is not known before it starts, and listenfd
            // skips the check without one. systemd hears from the master alone.
            .env_remove("LISTEN_PID")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            // A terminal's Ctrl-C reaches the master alone, which forwards it once.
            .process_group(0);
        command
            .fd_mappings(mappings)
            .map_err(|err| io::Error::other(err.to_string()))?;
        let child = command.spawn()?;
        ours.set_nonblocking(true)?;
        let mut link = UnixStream::from_std(ours);
        self.poll.registry().register(
            &mut link,
            Owner::Worker(index).token(),
            Interest::READABLE,
        )?;
        info!("worker {index} started (pid {})", child.id());
        self.slots[index].started(child, link, self.now);
        Ok(())
    }

    fn on_signals(&mut self) {
        let arrived: Vec<i32> = self.signals.pending().collect();
        if let Err(err) = rearm_after_foreign_drain(
            self.poll.registry(),
            &mut self.signals,
            Owner::Signals.token(),
        ) {
            warn!("cannot re-arm the signal pipe: {err}");
        }
        for signal in arrived {
            match signal {
                SIGTERM | SIGINT => {
                    let name = if signal == SIGINT {
                        "SIGINT"
                    } else {
                        "SIGTERM"
                    };
                    if self.state == State::Serving {
                        self.begin_stop(name, 0);
                    } else {
                        // A second one: the workers stop now, as a single echod would.
                        info!("{name} again: the workers stop now");
                        self.signal_all(libc::SIGTERM);
                    }
                }
                SIGUSR1 => {
                    info!(
                        "stats (all workers) {}",
                        status_line(&self.summed(), self.open())
                    );
                    self.signal_all(libc::SIGUSR1);
                }
                SIGHUP => self.signal_all(libc::SIGHUP),
                _ => {} // SIGCHLD: the exit is reaped after this turn's events.
            }
        }
    }

    /// Stop every worker (they drain), and exit with `status` once they have.
    fn begin_stop(&mut self, why: &str, status: u8) {
        if let State::Stopping { .. } = self.state {
            return;
        }
        let kill_at = self.now + self.config.shutdown_timeout + KILL_GRACE;
        self.state = State::Stopping { kill_at, status };
        let message = format!("{why}: stopping {} workers", self.running());
        info!("{message}");
        if let Some(notifier) = self.notifier.as_mut() {
            notifier.stopping(&message);
        }
        for slot in &mut self.slots {
            slot.respawn_at = None;
        }
        self.signal_all(libc::SIGTERM);
    }

    fn signal_all(&self, signal: i32) {
        for pid in self.slots.iter().filter_map(Slot::pid) {
            // SAFETY: kill has no memory-safety preconditions; the pid is our own child,
            // not yet reaped (so not reused).
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
    }

    /// Reads what worker `index` said.
    fn hear(&mut self, index: usize) {
        let now = self.now;
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        match slot.hear(now) {
            Heard::Ready => {
                info!(
                    "worker {index} (pid {}) is serving",
                    slot.pid().unwrap_or(0)
                );
                if !self.ready_sent && self.slots.iter().all(|s| s.is_up(now)) {
                    self.ready_sent = true;
                    let status = format!(
                        "serving on {} sockets with {} workers",
                        self.sockets.count_per_worker(),
                        self.slots.len()
                    );
                    info!("all {} workers are serving", self.slots.len());
                    if let Some(notifier) = self.notifier.as_mut() {
                        notifier.ready(&status);
                    }
                }
            }
            Heard::Closed => {
                // The exit itself follows; stop listening to a link that is done.
                if let Some(link) = slot.link() {
                    let _ = self.poll.registry().deregister(link);
                }
            }
            Heard::Nothing => {}
        }
    }

    /// Collects every worker that has exited and decides what follows.
    fn reap(&mut self) {
        for index in 0..self.slots.len() {
            let status = match self.slots[index].running.as_mut().map(|r| r.try_wait()) {
                Some(Ok(Some(status))) => status,
                Some(Err(err)) => {
                    warn!("worker {index}: cannot read its exit status: {err}");
                    continue;
                }
                _ => continue,
            };
            self.exited(index, status);
        }
        if self.state == State::Serving {
            let due: Vec<usize> = (0..self.slots.len())
                .filter(|&i| self.slots[i].running.is_none())
                .filter(|&i| self.slots[i].respawn_at.is_some_and(|at| at <= self.now))
                .collect();
            for index in due {
                if let Err(err) = self.spawn(index) {
                    warn!("cannot start worker {index}: {err}; trying again shortly");
                    self.slots[index].respawn_at = Some(self.now + ASK_EVERY);
                }
            }
        }
    }

    fn exited(&mut self, index: usize, status: ExitStatus) {
        let slot = &mut self.slots[index];
        let pid = slot.pid().unwrap_or(0);
        let killed = slot.running.as_ref().is_some_and(|r| r.killed);
        if let Some(link) = slot.link() {
            let _ = self.poll.registry().deregister(link);
        }
        match (self.state, status.code()) {
            (State::Stopping { .. }, _) => {
                info!("worker {index} (pid {pid}) exited ({status})");
                slot.exited(self.now, false);
            }
            (State::Serving, Some(code @ (1 | 2))) if !killed => {
                slot.exited(self.now, false);
                error!(
                    "worker {index} (pid {pid}) exited with status {code}: its configuration \
                     is refused, and a replacement would be too"
                );
                self.begin_stop("a worker's configuration is refused", code as u8);
            }
            (State::Serving, _) => {
                let delay = slot.exited(self.now, true).unwrap_or_default();
                warn!(
                    "worker {index} (pid {pid}) {}; replacing it{}",
                    describe(status),
                    if delay.is_zero() {
                        String::new()
                    } else {
                        format!(" in {delay:?} (it keeps dying at once)")
                    }
                );
            }
        }
    }

    /// Once stopping and every worker has exited: the status to exit with.
    fn finished(&self) -> Option<u8> {
        match self.state {
            State::Stopping { status, .. } if self.running() == 0 => Some(status),
            _ => None,
        }
    }

    /// The timers: asking the workers, the systemd watchdog, the kill deadline, metrics.
    fn tick(&mut self) {
        let now = self.now;
        if now >= self.next_ask {
            self.next_ask = now + ASK_EVERY;
            for index in 0..self.slots.len() {
                if self.slots[index].ask(now) {
                    warn!(
                        "worker {index} (pid {}) has not answered for {:?} (stopped or \
                         wedged): killing it",
                        self.slots[index].pid().unwrap_or(0),
                        slot::ANSWER_WITHIN
                    );
                    self.kill(index);
                }
            }
            if self.ready_sent {
                let status = status_line(&self.summed(), self.open());
                if let Some(notifier) = self.notifier.as_mut() {
                    notifier.status(&status);
                }
            }
        }
        if self.all_up() {
            let (summed, open) = (self.summed(), self.open());
            if let Some(notifier) = self.notifier.as_mut() {
                notifier.watchdog_if_due(now, || status_line(&summed, open));
            }
        }
        if let State::Stopping { kill_at, .. } = self.state
            && now >= kill_at
        {
            for index in 0..self.slots.len() {
                if self.slots[index]
                    .running
                    .as_ref()
                    .is_some_and(|r| !r.killed)
                {
                    warn!("worker {index} did not stop in time: killing it");
                    self.kill(index);
                }
            }
        }
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.expire(now, self.poll.registry());
        }
    }

    fn kill(&mut self, index: usize) {
        if let Some(running) = self.slots[index].running.as_mut() {
            running.killed = true;
            let _ = running.child.kill();
        }
    }

    fn serve_metrics(&mut self, owner: Owner) {
        if let Some(metrics) = self.metrics.as_mut() {
            let mut exporter = MasterExporter {
                slots: &self.slots,
                now: self.now,
            };
            metrics.on_event(owner, self.poll.registry(), self.now, &mut exporter);
        }
    }

    fn running(&self) -> usize {
        self.slots.iter().filter(|s| s.running.is_some()).count()
    }

    fn all_up(&self) -> bool {
        self.slots.iter().all(|s| s.is_up(self.now))
    }

    fn summed(&self) -> Stats {
        sum(&self.slots)
    }

    fn open(&self) -> usize {
        self.summed().active as usize
    }
}

fn sum(slots: &[Slot]) -> Stats {
    let mut total = Stats::default();
    for slot in slots {
        total += &slot.stats();
    }
    total
}

/// How a worker's exit reads in the log.
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => format!("ended ({status})"),
    }
}

/// What a scrape of the master reports: every worker summed, and each one's `up`.
struct MasterExporter<'a> {
    slots: &'a [Slot],
    now: Instant,
}

impl Exporter for MasterExporter<'_> {
    fn snapshot(&mut self) -> Snapshot {
        let mut processes = vec![ProcessSample::own()];
        processes.extend(
            self.slots
                .iter()
                .filter_map(Slot::pid)
                .map(ProcessSample::of),
        );
        Snapshot {
            stats: sum(self.slots),
            process: ProcessSample::combined(&processes),
            workers: self
                .slots
                .iter()
                .map(|slot| WorkerUp {
                    slot: slot.index,
                    up: slot.is_up(self.now),
                    restarts: slot.restarts,
                })
                .collect(),
        }
    }

    /// Healthy while every worker runs and answers.
    fn healthy(&self) -> bool {
        self.slots.iter().all(|s| s.is_up(self.now))
    }
}
