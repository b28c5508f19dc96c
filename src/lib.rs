//! # echod: a single-threaded, readiness-based echo server (TCP, UDP and Unix sockets)
//!
//! Every byte a client sends comes back on the same connection, in order, untouched
//! (RFC 862), for thousands of clients at once on one thread, with bounded memory.
//!
//! ## Layout
//! - [`server`]: the event loop: one `mio::Poll`, phases per turn, accept, timers, shutdown.
//! - `connection`: one client's state machine: drain, write straight back, owe the rest.
//! - [`stream`]: the one seam between transports: a TCP or Unix stream, and who the peer is.
//! - `pending`: a connection's unsent bytes; no buffer at all while nothing is owed.
//! - `timers`: idle and stall timeouts as intrusive lists, O(1) per event.
//! - [`listen`]: where sockets come from: `HOST:PORT`, `udp:HOST:PORT`, `unix:PATH`, `unix:@NAME`, or
//!   sockets inherited from systemd; all end as the same non-blocking [`listen::Listener`].
//! - `notify`: readiness, status, stopping and watchdog messages to systemd.
//! - `udp`: datagram echo on the same loop: batched receive and GSO send (`udp::batch`),
//!   the guards against loops and reflection (`udp::guard`).
//! - [`config`]: validated settings and their defaults; [`cli`]: the flags that build them.
//! - [`stats`]: the counters the loop keeps and returns.
//! - [`handle`]: stopping the loop, or reading its counters, from another thread.
//!
//! ## Invariants
//! - One thread does all the I/O; nothing blocks it but `poll`.
//! - A client's behaviour (never reading, resetting, flooding, idling) affects only that
//!   client's connection. Only a failure of `poll` itself ends [`Server::run`].
//! - Memory per connection is bounded by `--max-pending`; an idle connection holds no buffer.
//! - A slab key *is* the connection's `Token`; keys are freed only at the end of a turn, so
//!   an event can never reach a connection other than the one it was meant for.

pub mod cli;
pub mod config;
mod connection;
pub mod fdlimit;
pub mod handle;
pub mod listen;
mod notify;
mod pending;
mod print;
pub mod server;
pub mod stats;
pub mod stream;
mod timers;
mod udp;

pub use config::{Config, Mode};
pub use handle::ServerHandle;
pub use server::Server;
pub use stats::{CloseReason, Stats};
