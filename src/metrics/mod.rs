//! `--metrics HOST:PORT`: a small HTTP/1.1 endpoint on the same loop as the echo.
//!
//! `GET /metrics` answers with the counters in Prometheus's text format (OpenMetrics when
//! the `Accept` header asks for it); `GET /health` answers 200 from the loop itself, so a
//! wedged or stopped loop fails its liveness probe by not answering at all. Everything
//! else is 404 (405 for other methods), and a malformed request gets 400 and a close.
//!
//! The endpoint is its own room: its listeners and its few clients have tokens of their
//! own ([`Owner::MetricsListener`], [`Owner::MetricsClient`]), and the loop only hands it
//! their events. Each client is a small state machine much like an echo session: read a
//! request head (at most [`http::MAX_REQUEST_HEAD`] bytes), answer it, flush the answer,
//! then read the next. One request is answered at a time, so pipelined requests wait in
//! the kernel rather than in memory. A client that does not finish its request, or read
//! its answer, within [`REQUEST_TIMEOUT`] is closed, and at most [`MAX_CLIENTS`] are open.

mod http;

use std::io::{self, Read};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, trace};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry};
use slab::Slab;

use crate::reactor::tokens::{MAX_METRICS_CLIENTS, MAX_METRICS_LISTENERS, Owner};
use crate::readiness::{interrupted, would_block, write_owed};
use crate::telemetry::exposition::{Format, Snapshot};
use http::{Parsed, Request, Route, Status};

/// A request must arrive whole, and its answer be read, within this long; a kept-alive
/// connection may also sit idle this long between requests.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Metrics clients open at once; more are accepted and closed at once.
pub const MAX_CLIENTS: usize = MAX_METRICS_CLIENTS;

/// Where a scrape's numbers come from: the loop (one process) or the master (summed).
pub(crate) trait Exporter {
    /// The numbers as they are now.
    fn snapshot(&mut self) -> Snapshot;
    /// Whether `/health` should answer 200 (the master: every worker answered in time).
    fn healthy(&self) -> bool;
}

/// The metrics listeners and their clients.
pub(crate) struct MetricsEndpoint {
    listeners: Vec<(TcpListener, SocketAddr)>,
    clients: Slab<Client>,
}

/// One HTTP connection.
struct Client {
    stream: TcpStream,
    /// What has arrived of the next request head (empty, unallocated, between requests).
    input: Vec<u8>,
    /// What is left of the answer being sent.
    output: Vec<u8>,
    /// Close once `output` is sent.
    closing: bool,
    /// When this client is closed if it has not moved on.
    deadline: Instant,
}

/// Whether a client stays after being served.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Keep,
    Close,
}

impl MetricsEndpoint {
    /// An endpoint on sockets already bound ([`crate::listen::bind_metrics`]); registers them.
    pub(crate) fn new(
        mut listeners: Vec<(TcpListener, SocketAddr)>,
        registry: &Registry,
    ) -> io::Result<MetricsEndpoint> {
        if listeners.len() > MAX_METRICS_LISTENERS {
            return Err(io::Error::other(format!(
                "--metrics resolves to more than {MAX_METRICS_LISTENERS} addresses"
            )));
        }
        for (index, (listener, addr)) in listeners.iter_mut().enumerate() {
            registry.register(
                listener,
                Owner::MetricsListener(index).token(),
                Interest::READABLE,
            )?;
            info!("metrics on http://{addr}/metrics");
        }
        Ok(MetricsEndpoint {
            listeners,
            clients: Slab::new(),
        })
    }

    /// The addresses bound (real ports for port 0).
    pub(crate) fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|(_, addr)| *addr).collect()
    }

    /// An event for one of the endpoint's tokens: a listener to accept from, or a client
    /// to move along (`exporter` answers its scrape).
    pub(crate) fn on_event(
        &mut self,
        owner: Owner,
        registry: &Registry,
        now: Instant,
        exporter: &mut dyn Exporter,
    ) {
        match owner {
            Owner::MetricsListener(index) => self.accept(index, registry, now),
            Owner::MetricsClient(key) => self.serve(key, registry, now, exporter),
            _ => {}
        }
    }

    /// Listener `index` is readable: take every waiting client.
    fn accept(&mut self, index: usize, registry: &Registry, now: Instant) {
        let Some((listener, _)) = self.listeners.get(index) else {
            return;
        };
        loop {
            let (mut stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(err) if would_block(&err) => return,
                Err(err) if interrupted(&err) => continue,
                Err(err) => {
                    // Out of descriptors, most likely: the echo's own accept path reports
                    // that; the scraper will retry.
                    debug!("metrics: accept failed: {err}");
                    return;
                }
            };
            if self.clients.len() >= MAX_CLIENTS {
                debug!("metrics: {MAX_CLIENTS} clients open already; closing {peer}");
                continue;
            }
            let entry = self.clients.vacant_entry();
            let token = Owner::MetricsClient(entry.key()).token();
            if let Err(err) =
                registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            {
                debug!("metrics: cannot register {peer}: {err}");
                continue;
            }
            trace!("metrics: accepted {peer}");
            entry.insert(Client {
                stream,
                input: Vec::new(),
                output: Vec::new(),
                closing: false,
                deadline: now + REQUEST_TIMEOUT,
            });
        }
    }

    /// Client `key` is readable or writable: move it along.
    fn serve(
        &mut self,
        key: usize,
        registry: &Registry,
        now: Instant,
        exporter: &mut dyn Exporter,
    ) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        if client.drive(now, exporter) == Next::Close {
            self.close(key, registry);
        }
    }

    /// The nearest client deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.clients.iter().map(|(_, c)| c.deadline).min()
    }

    /// Closes every client whose deadline has passed.
    pub(crate) fn expire(&mut self, now: Instant, registry: &Registry) {
        let late: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(key, _)| key)
            .collect();
        for key in late {
            debug!("metrics: client {key} too slow; closed");
            self.close(key, registry);
        }
    }

    fn close(&mut self, key: usize, registry: &Registry) {
        let mut client = self.clients.remove(key);
        // Closing the descriptor would drop it from epoll anyway; poll(2) needs telling.
        let _ = registry.deregister(&mut client.stream);
    }
}

impl Client {
    /// Flush what is owed; answer the next whole request; read more; until the socket
    /// would block (mio's contract on every selector) or the client is done.
    fn drive(&mut self, now: Instant, exporter: &mut dyn Exporter) -> Next {
        loop {
            match write_owed(&mut self.stream, &mut self.output) {
                Ok(true) => self.output = Vec::new(),
                Ok(false) => return Next::Keep,
                Err(_) => return Next::Close,
            }
            if self.closing {
                return Next::Close;
            }
            match http::parse(&self.input) {
                Parsed::Request { request, length } => {
                    self.input.drain(..length);
                    trace!("metrics: {:?}", request.route);
                    self.output = answer(&request, exporter);
                    self.closing = request.close || request.route == Route::MethodNotAllowed;
                    self.deadline = now + REQUEST_TIMEOUT;
                    continue;
                }
                Parsed::Bad(status) => {
                    debug!("metrics: bad request ({status:?}); closing");
                    self.output = http::plain(status, "bad request\n", false, true);
                    self.closing = true;
                    continue;
                }
                Parsed::Partial => {}
            }
            let mut chunk = [0u8; 4096];
            let room = http::MAX_REQUEST_HEAD - self.input.len();
            let want = room.min(chunk.len());
            match self.stream.read(&mut chunk[..want]) {
                Ok(0) => return Next::Close,
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(err) if would_block(&err) => {
                    if self.input.is_empty() {
                        self.input = Vec::new();
                    }
                    return Next::Keep;
                }
                Err(err) if interrupted(&err) => {}
                Err(_) => return Next::Close,
            }
        }
    }
}

/// The response to one request.
fn answer(request: &Request, exporter: &mut dyn Exporter) -> Vec<u8> {
    let (head_only, close) = (request.head_only, request.close);
    match request.route {
        Route::Metrics => {
            let format = Format::from_accept(request.accept.as_deref());
            let body = exporter.snapshot().encode(format);
            http::response(Status::Ok, format.content_type(), &body, head_only, close)
        }
        Route::Health if exporter.healthy() => http::plain(Status::Ok, "ok\n", head_only, close),
        Route::Health => http::plain(
            Status::Unavailable,
            "a worker is not answering\n",
            head_only,
            close,
        ),
        Route::NotFound => http::plain(
            Status::NotFound,
            "not found: try /metrics or /health\n",
            head_only,
            close,
        ),
        Route::MethodNotAllowed => {
            http::plain(Status::MethodNotAllowed, "only GET and HEAD\n", false, true)
        }
    }
}
