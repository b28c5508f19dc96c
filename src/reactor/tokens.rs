//! What a `Token` names. The one place tokens are made and read back.
//!
//! Connections are slab keys, counted up from 0 (so slab key == token). Everything else
//! has a named token counted down from the top of the token space, far above any key:
//!
//! | token | names |
//! |---|---|
//! | `usize::MAX` | the waker (requests from a [`ServerHandle`](crate::ServerHandle)) |
//! | `usize::MAX - 1` | the signal pipe |
//! | `usize::MAX - 2` | a worker's control link to its master (`--workers`) |
//! | the next [`MAX_METRICS_LISTENERS`] below | metrics listener 0, 1, … |
//! | the next [`MAX_METRICS_CLIENTS`] below | a metrics client (its slab key) |
//! | the next [`MAX_LISTENERS`] below | stream listener 0, 1, … |
//! | the next [`MAX_UDP`] below | UDP socket 0, 1, … |
//! | the next [`MAX_WORKERS`] below | in the master: worker slot 0, 1, … |
//! | everything lower | a session (its slab key) |

use std::fmt;

use mio::Token;

/// Stream listeners at most (their tokens are a range of their own).
pub(crate) const MAX_LISTENERS: usize = 1024;
/// UDP sockets at most.
pub(crate) const MAX_UDP: usize = 1024;
/// Addresses `--metrics` may resolve to.
pub(crate) const MAX_METRICS_LISTENERS: usize = 8;
/// Metrics clients open at once.
pub(crate) const MAX_METRICS_CLIENTS: usize = 64;
pub(crate) use crate::config::MAX_WORKERS;

const WAKER: usize = usize::MAX;
const SIGNALS: usize = usize::MAX - 1;
const MASTER: usize = usize::MAX - 2;
const FIRST_METRICS_LISTENER: usize = usize::MAX - 3;
const FIRST_METRICS_CLIENT: usize = FIRST_METRICS_LISTENER - MAX_METRICS_LISTENERS;
const FIRST_LISTENER: usize = FIRST_METRICS_CLIENT - MAX_METRICS_CLIENTS;
const FIRST_UDP: usize = FIRST_LISTENER - MAX_LISTENERS;
const FIRST_WORKER: usize = FIRST_UDP - MAX_UDP;
/// Tokens at or below this are sessions.
const LAST_SESSION: usize = FIRST_WORKER - MAX_WORKERS;

/// Who an event is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    /// A [`ServerHandle`](crate::ServerHandle) queued a request.
    Waker,
    /// A signal arrived.
    Signals,
    /// Stream listener `i`: clients to accept.
    Listener(usize),
    /// UDP socket `i`: datagrams to answer.
    Udp(usize),
    /// A worker's link to its master: questions to answer, or the master gone.
    Master,
    /// Metrics listener `i`: scrapers to accept.
    MetricsListener(usize),
    /// The metrics client in slot `key`.
    MetricsClient(usize),
    /// In the master: the control link of the worker in slot `i`.
    Worker(usize),
    /// The session in slab slot `key`.
    Session(usize),
}

impl Owner {
    /// The token this owner is registered under.
    pub(crate) fn token(self) -> Token {
        Token(match self {
            Owner::Waker => WAKER,
            Owner::Signals => SIGNALS,
            Owner::Listener(index) => FIRST_LISTENER - index,
            Owner::Udp(index) => FIRST_UDP - index,
            Owner::Master => MASTER,
            Owner::MetricsListener(index) => FIRST_METRICS_LISTENER - index,
            Owner::MetricsClient(key) => FIRST_METRICS_CLIENT - key,
            Owner::Worker(slot) => FIRST_WORKER - slot,
            Owner::Session(key) => key,
        })
    }

    /// Whom a token names. Sessions are tested first: they are nearly every event.
    #[inline]
    pub(crate) fn of(token: Token) -> Owner {
        match token.0 {
            key if key <= LAST_SESSION => Owner::Session(key),
            WAKER => Owner::Waker,
            SIGNALS => Owner::Signals,
            MASTER => Owner::Master,
            t if t > FIRST_METRICS_CLIENT => Owner::MetricsListener(FIRST_METRICS_LISTENER - t),
            t if t > FIRST_LISTENER => Owner::MetricsClient(FIRST_METRICS_CLIENT - t),
            t if t > FIRST_UDP => Owner::Listener(FIRST_LISTENER - t),
            t if t > FIRST_WORKER => Owner::Udp(FIRST_UDP - t),
            t => Owner::Worker(FIRST_WORKER - t),
        }
    }
}

/// How a token reads in the trace narration: `listener 0`, `udp 1`, `waker`, `token 17`.
impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Waker => write!(f, "waker"),
            Owner::Signals => write!(f, "signals"),
            Owner::Listener(index) => write!(f, "listener {index}"),
            Owner::Udp(index) => write!(f, "udp {index}"),
            Owner::Master => write!(f, "master"),
            Owner::MetricsListener(index) => write!(f, "metrics listener {index}"),
            Owner::MetricsClient(key) => write!(f, "metrics client {key}"),
            Owner::Worker(slot) => write!(f, "worker {slot}"),
            Owner::Session(key) => write!(f, "token {key}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_owner_survives_the_round_trip() {
        let owners = [
            Owner::Waker,
            Owner::Signals,
            Owner::Listener(0),
            Owner::Listener(MAX_LISTENERS - 1),
            Owner::Udp(0),
            Owner::Udp(MAX_UDP - 1),
            Owner::Master,
            Owner::MetricsListener(0),
            Owner::MetricsListener(MAX_METRICS_LISTENERS - 1),
            Owner::MetricsClient(0),
            Owner::MetricsClient(MAX_METRICS_CLIENTS - 1),
            Owner::Worker(0),
            Owner::Worker(MAX_WORKERS - 1),
            Owner::Session(0),
            Owner::Session(LAST_SESSION),
        ];
        for owner in owners {
            assert_eq!(Owner::of(owner.token()), owner, "{owner}");
        }
        assert_eq!(Owner::Listener(3).to_string(), "listener 3");
        assert_eq!(Owner::Session(17).to_string(), "token 17");
    }
}
