//! The rules of readiness, and every place where mio's selectors differ, stated once.
//!
//! mio promises the same thing on all of its selectors (epoll, kqueue, poll(2), …):
//! an event is a hint, it may be spurious, and after one the operation is performed until
//! it says `WouldBlock`. Only then is the socket sure to report again. Everything echod
//! does beyond that promise is confined to this file, with the selectors it holds on:
//!
//! - [`SHORT_READ_MEANS_DRAINED`]: on kernel-edge selectors a short read is as good as
//!   `WouldBlock`, saving one system call per message.
//! - `rearm_after_foreign_drain`: a descriptor emptied by someone else's reads (the
//!   signal pipe) never showed mio its `WouldBlock`, so poll(2) must be re-armed by hand.
//! - [`REWAKE_INTERVAL`]: poll(2) can swallow a wake from another thread.
//!
//! Plus the small named helpers that make `match` arms read as prose, and `Ready`, what
//! an event said about a socket.

use std::io;
use std::time::Duration;

use mio::event::{Event, Source};
use mio::{Interest, Registry, Token};

/// The socket has nothing more for now; an event will say when it has.
pub fn would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

/// A signal landed during the call: simply make it again.
pub fn interrupted(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Interrupted
}

/// Writes `owed` until it is all out (`Ok(true)`) or the socket would block (`Ok(false)`,
/// the rest kept): the small buffers of replies that are not the echo's own (an HTTP
/// response, an upgrade answer, a control line). A write of nothing is an error.
pub(crate) fn write_owed(stream: &mut impl io::Write, owed: &mut Vec<u8>) -> io::Result<bool> {
    while !owed.is_empty() {
        match stream.write(owed) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                owed.drain(..n);
            }
            Err(err) if would_block(&err) => return Ok(false),
            Err(err) if interrupted(&err) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(true)
}

/// A libc call's return value as a result: negative means `errno` says what went wrong.
pub fn syscall_result(rc: isize) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// Whether a read that returned less than asked may be taken as "drained", saving the
/// confirming read that would say `WouldBlock` (one syscall per message).
///
/// That holds where readiness is a kernel edge: epoll and kqueue raise a fresh event when
/// more data arrives, whatever we did before. mio's other selectors (poll(2), forced on
/// Linux with `--cfg mio_unsupported_force_poll_poll`, and the default on AIX, Haiku, …)
/// emulate edges: a socket that has reported an event is re-armed only when an operation
/// on it returns `WouldBlock`. There a short read must be followed by one more read, or the
/// connection never hears from its client again. Decided at compile time from the same
/// conditions mio uses to pick its selector.
pub const SHORT_READ_MEANS_DRAINED: bool = cfg!(all(
    not(mio_unsupported_force_poll_poll),
    any(
        target_os = "android",
        target_os = "illumos",
        target_os = "linux",
        target_os = "redox",
        target_os = "dragonfly",
        target_os = "freebsd",
        target_os = "ios",
        target_os = "macos",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "tvos",
        target_os = "visionos",
        target_os = "watchos",
    )
));

/// How often an unanswered request to the loop pokes its waker again.
///
/// On epoll and kqueue one wake is enough. mio's poll(2) selector can lose one: when the
/// loop thread registers or re-registers a socket, mio pokes and then empties the same
/// wake-up descriptor, swallowing a wake from another thread that landed in between
/// (tokio-rs/mio#1874). A wake is idempotent, so the asker simply repeats it.
pub const REWAKE_INTERVAL: Duration = Duration::from_millis(20);

/// Re-arms a source whose descriptor was drained by reads mio did not see.
///
/// signal-hook empties its pipe with its own reads, so mio's poll(2) selector never sees
/// the `WouldBlock` that would re-arm it. Harmless on epoll and kqueue; used only for rare
/// sources (signals), so the extra system call does not matter.
pub(crate) fn rearm_after_foreign_drain(
    registry: &Registry,
    source: &mut impl Source,
    token: Token,
) -> io::Result<()> {
    registry.reregister(source, token, Interest::READABLE)
}

/// What `poll` said about a socket, or nothing at all when the loop revisits it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ready {
    /// Bytes (or an EOF, or an error) can be read without blocking.
    pub readable: bool,
    /// The send buffer has room again.
    pub writable: bool,
    /// The peer sent FIN (EPOLLRDHUP): data may still be queued before the EOF.
    pub read_closed: bool,
    /// The socket has a pending error (EPOLLERR), e.g. a reset.
    pub error: bool,
}

impl Ready {
    pub(crate) fn from_event(event: &Event) -> Self {
        Ready {
            readable: event.is_readable(),
            writable: event.is_writable(),
            read_closed: event.is_read_closed(),
            error: event.is_error(),
        }
    }
}

/// How serving a socket ended, for whoever schedules the next go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Drain {
    /// Drained (or waiting for WRITABLE): the next event will say when there is more.
    Drained,
    /// Stopped early at a budget with work perhaps still queued. Under edge triggering no
    /// new event will say so: the loop must come back next turn (its revisit list).
    ComeBack,
}
