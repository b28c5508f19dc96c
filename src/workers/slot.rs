//! One worker slot as the master sees it: the process running in it now (if any), its end
//! of the control link, what it last said, and how often the slot has had to be refilled.
//!
//! A slot outlives its workers: a replacement takes the same slot, the same sockets and
//! the same number in logs and metrics, and the counters of the workers it replaced are
//! kept (`retired`) so the master's totals never go backwards.

use std::io::{self, Read, Write};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use mio::net::UnixStream;

use super::link::{MAX_LINE, Message, take_lines};
use crate::readiness::{interrupted, would_block};
use crate::telemetry::stats::Stats;

/// A worker that answers nothing for this long is stopped or wedged: it is killed and
/// replaced (the master asks every [`ASK_EVERY`]).
pub(crate) const ANSWER_WITHIN: Duration = Duration::from_secs(3);
/// How often the master asks each worker for its counters (and so whether it is alive).
pub(crate) const ASK_EVERY: Duration = Duration::from_secs(1);
/// A worker whose last answer is older than this has missed a question: it no longer
/// counts as up (no systemd watchdog ping, `/health` 503) though it is not killed yet.
const LATE_AFTER: Duration = Duration::from_millis(1500);
/// A worker that lived at least this long did not die "at once": its slot's backoff resets.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// The longest wait before refilling a slot whose workers keep dying at once.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A worker process in its slot.
pub(crate) struct Running {
    pub(crate) child: Child,
    link: UnixStream,
    input: Vec<u8>,
    started: Instant,
    /// It said `ready`: bound and serving.
    pub(crate) ready: bool,
    /// When it last answered (or was started).
    answered_at: Instant,
    /// Its counters, as of its last answer.
    stats: Stats,
    /// The master has killed it (no answer); its death is expected.
    pub(crate) killed: bool,
}

/// What came of reading a worker's link.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Heard {
    Nothing,
    /// It said `ready` for the first time.
    Ready,
    /// Its end closed: it is exiting (the exit itself is seen by `try_wait`).
    Closed,
}

/// A slot and whoever is in it.
pub(crate) struct Slot {
    pub(crate) index: usize,
    pub(crate) running: Option<Running>,
    /// The counters of the workers this slot has already lost.
    retired: Stats,
    /// Workers started in this slot after the first.
    pub(crate) restarts: u64,
    /// Deaths in a row of workers that had not lived [`STABLE_AFTER`].
    quick_deaths: u32,
    /// When to start the next worker, if the slot is empty.
    pub(crate) respawn_at: Option<Instant>,
}

impl Slot {
    pub(crate) fn new(index: usize) -> Slot {
        Slot {
            index,
            running: None,
            retired: Stats::default(),
            restarts: 0,
            quick_deaths: 0,
            respawn_at: None,
        }
    }

    /// A worker has just been started in this slot.
    pub(crate) fn started(&mut self, child: Child, link: UnixStream, now: Instant) {
        self.respawn_at = None;
        self.running = Some(Running {
            child,
            link,
            input: Vec::new(),
            started: now,
            ready: false,
            answered_at: now,
            stats: Stats::default(),
            killed: false,
        });
    }

    pub(crate) fn link(&mut self) -> Option<&mut UnixStream> {
        self.running.as_mut().map(|r| &mut r.link)
    }

    /// The counters of every worker this slot has had, the current one included.
    pub(crate) fn stats(&self) -> Stats {
        let mut total = self.retired.clone();
        if let Some(running) = &self.running {
            total += &running.stats;
        }
        total
    }

    /// Up: running, ready, and answering (its last answer is recent enough).
    pub(crate) fn is_up(&self, now: Instant) -> bool {
        self.running
            .as_ref()
            .is_some_and(|r| r.ready && !r.killed && now.duration_since(r.answered_at) < LATE_AFTER)
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.child.id())
    }

    /// Reads what the worker said, until the link would block.
    pub(crate) fn hear(&mut self, now: Instant) -> Heard {
        let Some(running) = self.running.as_mut() else {
            return Heard::Nothing;
        };
        let mut heard = Heard::Nothing;
        loop {
            let mut chunk = [0u8; 4096];
            match running.link.read(&mut chunk) {
                Ok(0) => return Heard::Closed,
                Ok(n) => running.input.extend_from_slice(&chunk[..n]),
                Err(err) if would_block(&err) => return heard,
                Err(err) if interrupted(&err) => continue,
                Err(_) => return Heard::Closed,
            }
            if running.input.len() > MAX_LINE {
                return Heard::Closed;
            }
            for line in take_lines(&mut running.input) {
                match Message::parse(&line) {
                    Some(Message::Ready) if !running.ready => {
                        running.ready = true;
                        running.answered_at = now;
                        heard = Heard::Ready;
                    }
                    Some(Message::Stats(stats)) => {
                        running.stats = *stats;
                        running.answered_at = now;
                    }
                    _ => {}
                }
            }
        }
    }

    /// Asks the worker for its counters; true if it has not answered in too long (the
    /// caller kills it).
    pub(crate) fn ask(&mut self, now: Instant) -> bool {
        let Some(running) = self.running.as_mut() else {
            return false;
        };
        if running.killed {
            return false;
        }
        if now.duration_since(running.answered_at) >= ANSWER_WITHIN {
            return true;
        }
        // A six-byte line into an empty socket buffer: it fits, or the worker has not read
        // the last few hundred questions, and will be killed for that soon enough.
        let _ = write_all_or_give_up(&mut running.link, &Message::AskStats.encode());
        false
    }

    /// The worker has exited: keep its counters and say when to start the next one
    /// (`None`: not at all, the master is stopping).
    pub(crate) fn exited(&mut self, now: Instant, refill: bool) -> Option<Duration> {
        let running = self.running.take()?;
        self.retired += &running.stats.counters_only();
        if !refill {
            return None;
        }
        if now.duration_since(running.started) >= STABLE_AFTER {
            self.quick_deaths = 0;
        }
        self.quick_deaths += 1;
        self.restarts += 1;
        // The first death is refilled at once; each quick one after that waits twice as
        // long (100 ms, 200 ms, … up to MAX_BACKOFF), so a worker that cannot start does
        // not become a fork loop.
        let delay = match self.quick_deaths {
            1 => Duration::ZERO,
            n => (Duration::from_millis(100) * 2u32.saturating_pow(n - 2)).min(MAX_BACKOFF),
        };
        self.respawn_at = Some(now + delay);
        Some(delay)
    }
}

impl Running {
    /// Whether the process has exited, reaped if so.
    pub(crate) fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }
}

fn write_all_or_give_up(link: &mut UnixStream, bytes: &[u8]) -> io::Result<()> {
    let mut rest = bytes;
    while !rest.is_empty() {
        match link.write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(err) if interrupted(&err) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit_once(slot: &mut Slot, lived: Duration) -> Duration {
        let now = Instant::now();
        let child = std::process::Command::new("true").spawn().unwrap();
        let (ours, _theirs) = UnixStream::pair().unwrap();
        slot.started(child, ours, now);
        slot.running.as_mut().unwrap().started = now - lived;
        let _ = slot.running.as_mut().unwrap().child.wait();
        slot.exited(now, true).unwrap()
    }

    #[test]
    fn quick_deaths_back_off_and_a_stable_worker_resets_them() {
        let mut slot = Slot::new(0);
        let quick = Duration::from_millis(10);
        assert_eq!(exit_once(&mut slot, quick), Duration::ZERO);
        assert_eq!(exit_once(&mut slot, quick), Duration::from_millis(100));
        assert_eq!(exit_once(&mut slot, quick), Duration::from_millis(200));
        for _ in 0..20 {
            exit_once(&mut slot, quick);
        }
        assert_eq!(exit_once(&mut slot, quick), MAX_BACKOFF);
        assert_eq!(exit_once(&mut slot, STABLE_AFTER), Duration::ZERO);
        assert_eq!(slot.restarts, 25);
    }
}
