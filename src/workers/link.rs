//! The control link between the master and one worker: a Unix stream socket pair, one end
//! in each process, carrying lines of text.
//!
//! | from | line | meaning |
//! |---|---|---|
//! | worker | `ready` | bound and about to serve (sent once, first) |
//! | master | `stats` | are you alive, and what are your counters? |
//! | worker | `stats {JSON}` | the answer: [`Stats`] as `--stats-json` prints them |
//!
//! Nothing else travels here: stopping, reports and reloads go as the signals a single
//! echod already understands. The link doubles as the worker's lifeline: when the master
//! dies, the kernel closes its end, the worker reads EOF and stops.
//!
//! This file holds the protocol both sides share and the worker's end ([`MasterLink`], a
//! room of the worker's loop under [`Owner::Master`](crate::reactor::tokens::Owner)).

use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd};

use mio::net::UnixStream;
use mio::{Interest, Registry, Token};

use crate::readiness::{interrupted, would_block, write_owed};
use crate::telemetry::stats::Stats;

/// The environment variable naming the worker's end of the link (a descriptor number).
pub const LINK_FD_ENV: &str = "ECHOD_MASTER_FD";
/// The environment variable naming the worker's slot, 0 to N−1.
pub const SLOT_ENV: &str = "ECHOD_WORKER";
/// Unsent answers beyond this are dropped: a master that does not read is not owed more.
const MAX_OUTPUT: usize = 64 * 1024;
/// A line longer than this is a broken link.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// A line from one end, parsed.
#[derive(Debug, PartialEq)]
pub(crate) enum Message {
    Ready,
    AskStats,
    Stats(Box<Stats>),
}

impl Message {
    pub(crate) fn parse(line: &[u8]) -> Option<Message> {
        match line {
            b"ready" => Some(Message::Ready),
            b"stats" => Some(Message::AskStats),
            _ => {
                let json = line.strip_prefix(b"stats ")?;
                serde_json::from_slice(json)
                    .ok()
                    .map(|stats| Message::Stats(Box::new(stats)))
            }
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut line = match self {
            Message::Ready => b"ready".to_vec(),
            Message::AskStats => b"stats".to_vec(),
            Message::Stats(stats) => {
                let mut line = b"stats ".to_vec();
                // Serializing a map of integers cannot fail.
                line.extend(serde_json::to_vec(stats.as_ref()).unwrap_or_default());
                line
            }
        };
        line.push(b'\n');
        line
    }
}

/// Splits whole lines off the front of `input`, leaving a partial one.
pub(crate) fn take_lines(input: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    while let Some(end) = input.iter().position(|&b| b == b'\n') {
        let mut line: Vec<u8> = input.drain(..=end).collect();
        line.pop();
        lines.push(line);
    }
    lines
}

/// What the master's link asked of the worker's loop.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LinkEvent {
    /// Nothing the loop must act on.
    Quiet,
    /// The master is gone (EOF or an error): the worker must stop.
    MasterGone,
}

/// The worker's end of the link.
pub struct MasterLink {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
}

impl MasterLink {
    /// The link the master passed, if this process is a worker (`ECHOD_MASTER_FD` set).
    pub fn from_env() -> Option<io::Result<MasterLink>> {
        let fd = std::env::var(LINK_FD_ENV).ok()?;
        // SAFETY (below): the master mapped its end of a fresh socket pair to this number
        // for us alone, and nothing else in this process has taken it.
        let link = match fd.parse::<i32>() {
            Ok(fd) if fd > 2 => unsafe { OwnedFd::from_raw_fd(fd) },
            _ => {
                return Some(Err(io::Error::other(format!(
                    "{LINK_FD_ENV}={fd} is not a descriptor number"
                ))));
            }
        };
        // SAFETY: none of this process's children should see it.
        unsafe { std::env::remove_var(LINK_FD_ENV) };
        let stream = std::os::unix::net::UnixStream::from(link);
        Some(stream.set_nonblocking(true).map(|()| MasterLink {
            stream: UnixStream::from_std(stream),
            input: Vec::new(),
            output: Message::Ready.encode(),
        }))
    }

    pub(crate) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            &mut self.stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    pub(crate) fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.stream);
    }

    /// Reads the master's questions and answers each with `stats()`, until the socket
    /// would block both ways.
    pub(crate) fn serve(&mut self, mut stats: impl FnMut() -> Stats) -> LinkEvent {
        loop {
            if self.flush().is_err() {
                return LinkEvent::MasterGone;
            }
            let mut chunk = [0u8; 512];
            match self.stream.read(&mut chunk) {
                Ok(0) => return LinkEvent::MasterGone,
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(err) if would_block(&err) => return LinkEvent::Quiet,
                Err(err) if interrupted(&err) => continue,
                Err(_) => return LinkEvent::MasterGone,
            }
            if self.input.len() > MAX_LINE {
                return LinkEvent::MasterGone;
            }
            for line in take_lines(&mut self.input) {
                if Message::parse(&line) == Some(Message::AskStats)
                    && self.output.len() < MAX_OUTPUT
                {
                    self.output
                        .extend(Message::Stats(Box::new(stats())).encode());
                }
            }
        }
    }

    /// Writes what is owed until done or the socket would block.
    fn flush(&mut self) -> io::Result<()> {
        write_owed(&mut self.stream, &mut self.output).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_the_round_trip() {
        let stats = Stats {
            accepted: 7,
            bytes_in: 99,
            ..Stats::default()
        };
        for message in [
            Message::Ready,
            Message::AskStats,
            Message::Stats(Box::new(stats)),
        ] {
            let mut encoded = message.encode();
            let lines = take_lines(&mut encoded);
            assert_eq!(lines.len(), 1);
            assert_eq!(Message::parse(&lines[0]), Some(message));
        }
        assert_eq!(Message::parse(b"nonsense"), None);
    }

    #[test]
    fn a_partial_line_waits() {
        let mut input = b"ready\nsta".to_vec();
        assert_eq!(take_lines(&mut input), vec![b"ready".to_vec()]);
        assert_eq!(input, b"sta");
    }
}
