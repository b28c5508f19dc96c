//! What a `Token` names. The one place tokens are made and read back.
//!
//! Connections are slab keys, counted up from 0 (so slab key == token). Everything else
//! has a named token counted down from the top of the token space, far above any key:
//!
//! | token | names |
//! |---|---|
//! | `usize::MAX` | the waker (requests from a [`ServerHandle`](crate::ServerHandle)) |
//! | `usize::MAX - 1` | the signal pipe |
//! | the next [`MAX_LISTENERS`] below | stream listener 0, 1, … |
//! | the next [`MAX_UDP`] below | UDP socket 0, 1, … |
//! | everything lower | a session (its slab key) |

use std::fmt;

use mio::Token;

/// Stream listeners at most (their tokens are a range of their own).
pub(crate) const MAX_LISTENERS: usize = 1024;
/// UDP sockets at most.
pub(crate) const MAX_UDP: usize = 1024;

const WAKER: usize = usize::MAX;
const SIGNALS: usize = usize::MAX - 1;
const FIRST_LISTENER: usize = usize::MAX - 2;
const FIRST_UDP: usize = FIRST_LISTENER - MAX_LISTENERS;
/// Tokens at or below this are sessions.
const LAST_SESSION: usize = FIRST_UDP - MAX_UDP;

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
            t if t > FIRST_UDP => Owner::Listener(FIRST_LISTENER - t),
            t => Owner::Udp(FIRST_UDP - t),
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
