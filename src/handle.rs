//! Talking to a running server from another thread: stop it, or ask for its counters.
//!
//! The loop sleeps in `poll`, so a message alone would go unnoticed: the handle queues the
//! request on a channel and then pokes the loop's [`mio::Waker`], which `poll` reports like
//! any other event. The loop answers in its dispatch phase.

use std::io;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use mio::Waker;

use crate::stats::Stats;

/// How long [`ServerHandle::stats`] waits for the loop to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A request for the loop, queued by a [`ServerHandle`].
#[derive(Debug)]
pub(crate) enum Request {
    /// Stop: gracefully the first time, at once the second.
    Stop,
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

    /// Asks the loop to stop and returns at once. The first request is graceful (as
    /// SIGTERM is): stop accepting and reading, flush what clients are owed for up to
    /// `--shutdown-timeout`, close. A second one closes everything at once.
    pub fn stop(&self) -> io::Result<()> {
        self.send(Request::Stop)
    }

    /// The server's counters as of the loop's next turn.
    pub fn stats(&self) -> io::Result<Stats> {
        let (reply_to, reply) = mpsc::channel();
        self.send(Request::Stats(reply_to))?;
        reply
            .recv_timeout(ANSWER_TIMEOUT)
            .map_err(|_| io::Error::other("the server did not answer (has it stopped?)"))
    }

    fn send(&self, request: Request) -> io::Result<()> {
        self.requests
            .send(request)
            .map_err(|_| io::Error::other("the server has stopped"))?;
        self.waker.wake()
    }
}
