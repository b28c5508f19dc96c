//! Talking to a running server from another thread: stop it, or ask for its counters.
//!
//! The loop sleeps in `poll`, so a message alone would go unnoticed: the handle queues the
//! request on a channel and then pokes the loop's [`mio::Waker`], which `poll` reports like
//! any other event. The loop answers in its dispatch phase.

use std::io;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use mio::Waker;

use crate::readiness::REWAKE_INTERVAL;
use crate::telemetry::stats::Stats;

/// How long [`ServerHandle::stats`] and [`ServerHandle::stop`] wait for the loop to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// A request for the loop, queued by a [`ServerHandle`].
#[derive(Debug)]
pub(crate) enum Request {
    /// Stop: gracefully the first time, at once the second. The loop acknowledges on the
    /// channel as soon as it has seen the request.
    Stop(Sender<()>),
    /// Send a copy of the counters back on this channel.
    Stats(Sender<Stats>),
}

/// A cloneable, thread-safe way to reach a running [`Server`](crate::Server).
#[derive(Clone, Debug)]
pub struct ServerHandle {
    waker: Arc<Waker>,
    requests: Sender<Request>,
}

impl ServerHandle {
    pub(crate) fn new(waker: Arc<Waker>) -> (Self, Receiver<Request>) {
        let (requests, inbox) = mpsc::channel();
        (ServerHandle { waker, requests }, inbox)
    }

    /// Asks the loop to stop and returns once the loop has seen the request (not once it
    /// has exited). The first request is graceful (as SIGTERM is): stop accepting and
    /// reading, flush what clients are owed for up to `--shutdown-timeout`, close. A second
    /// one closes everything at once.
    pub fn stop(&self) -> io::Result<()> {
        match self.ask(Request::Stop) {
            // Gone before it could answer: the second stop ends the loop at once.
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
    }

    /// The server's counters as of the loop's next turn.
    pub fn stats(&self) -> io::Result<Stats> {
        self.ask(Request::Stats)
    }

    /// Queues a request, wakes the loop, and waits for its answer, waking it again now
    /// and then (mio's poll(2) selector can lose a wake: see [`REWAKE_INTERVAL`]).
    fn ask<T>(&self, request: impl FnOnce(Sender<T>) -> Request) -> io::Result<T> {
        let (reply_to, reply) = mpsc::channel();
        self.requests
            .send(request(reply_to))
            .map_err(|_| io::Error::other("the server has stopped"))?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            self.waker.wake()?;
            match reply.recv_timeout(REWAKE_INTERVAL) {
                Ok(answer) => return Ok(answer),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the server stopped before answering",
                    ));
                }
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(io::Error::other(
                        "the server did not answer (has it stopped?)",
                    ));
                }
            }
        }
    }
}
