//! # echod: a single-threaded, readiness-based echo server (TCP, TLS, WebSocket, UDP, Unix)
//!
//! Every byte a client sends comes back on the same connection, in order, untouched
//! (RFC 862), for thousands of clients at once on one thread, with bounded memory.
//!
//! ## Layout
//! Each room owns one thing; the loop knows the rooms, never what is inside them.
//!
//! - [`server`]: binding every socket and registering it with one `mio::Poll`; [`Server::run`].
//! - `reactor`: the loop. One turn is a fixed list of named phases (next wake, wait,
//!   dispatch, revisit, expire, close finished, housekeeping); `reactor::tokens` says
//!   what each `Token` names, `reactor::control` turns the waker and signals into
//!   commands, `reactor::lifecycle` is serving or draining.
//! - `accept`: admission: the accept budget, the global and per-IP caps, the spare
//!   descriptor, the retry after `EMFILE`; and where a connection's protocol is chosen.
//! - `session`: the slab of connections and what they share (the read buffer, the close
//!   list, the idle and stall lists); `session::connection` is one client's echo state
//!   machine, `session::pending` its unsent bytes, `session::timers` the deadline lists.
//! - [`transport`]: the seam between a socket and the echo: the `Transport` trait, and
//!   the plain TCP or Unix [`transport::Stream`], TLS ([`transport::TlsStream`], rustls),
//!   WebSocket (`transport::ws`, tungstenite), and where their certificates come from.
//! - `udp`: datagram echo on the same loop: batched receive and GSO send (`udp::batch`),
//!   the guards against loops and reflection (`udp::guard`).
//! - [`listen`]: where sockets come from: `HOST:PORT`, `udp:HOST:PORT`, `unix:PATH`,
//!   `unix:@NAME`, or sockets inherited from systemd; all end as the same non-blocking
//!   [`listen::Listener`] or [`listen::Datagram`].
//! - [`telemetry`]: the counters ([`Stats`]), the report lines, systemd's notifications,
//!   the Prometheus exposition (`telemetry::exposition`) and `process_*` readings.
//! - `metrics`: `--metrics`, a small HTTP/1.1 endpoint (`/metrics`, `/health`) on the
//!   same loop, with its own tokens and a bounded state machine per client.
//! - [`workers`]: `--workers N`: the master (binds, starts, replaces and signals the
//!   workers; serves their summed metrics) and the control link each worker answers on.
//! - [`readiness`]: `would_block`, `interrupted`, and every way mio's selectors differ.
//! - `ratelimit`: one warning a second for floods of the same complaint.
//! - [`config`]: validated settings and their defaults; [`cli`]: the flags that build them.
//! - [`handle`]: stopping the loop, or reading its counters, from another thread.
//! - [`fdlimit`]: raising the descriptor limit (one descriptor per client); `print`:
//!   `--print`'s `Server heard …` lines.
//!
//! ## Invariants
//! - One thread does all the I/O; nothing blocks it but `poll`.
//! - A client's behaviour (never reading, resetting, flooding, idling) affects only that
//!   client's connection. Only a failure of `poll` itself ends [`Server::run`].
//! - Memory per connection is bounded by `--max-pending`; an idle connection holds no buffer.
//! - A slab key *is* the connection's `Token`; keys are freed only at the end of a turn, so
//!   an event can never reach a connection other than the one it was meant for.
//! - No room imports the loop, and the loop never names a protocol.

mod accept;
pub mod cli;
pub mod config;
mod delegate;
pub mod fdlimit;
pub mod handle;
pub mod listen;
mod metrics;
mod print;
mod ratelimit;
mod reactor;
pub mod readiness;
pub mod server;
mod session;
pub mod telemetry;
pub mod transport;
mod udp;
pub mod workers;

pub use config::{Config, Mode};
pub use handle::ServerHandle;
pub use server::Server;
pub use telemetry::stats::{CloseReason, Stats};
