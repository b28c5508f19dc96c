//! The server: binding every socket, registering it with one `mio::Poll`, and handing
//! them to the event loop (`reactor`) to [`run`](Server::run).
//!
//! Binding is separate from running so that a caller can learn the real addresses (port
//! 0) and take a [`ServerHandle`] before the loop starts: tests bind `127.0.0.1:0`, start
//! the loop on a thread, and stop it deterministically.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::Receiver;

use log::info;
use mio::{Interest, Poll, Waker};

use crate::config::{Config, DEFAULT_LISTEN};
use crate::handle::{Request, ServerHandle};
use crate::listen::{Datagram, Endpoint, Listener, bind_all, bind_metrics, inherited};
use crate::metrics::MetricsEndpoint;
use crate::reactor::tokens::{MAX_LISTENERS, MAX_UDP, Owner};
use crate::reactor::{EventLoop, Rooms};
use crate::telemetry::stats::Stats;
use crate::transport::{Layers, TlsIdentity};
use crate::udp::{Datagrams, UdpEndpoint, UdpSettings};
use crate::workers::link::MasterLink;

/// A bound echo server, ready to [`run`](Server::run).
///
/// ```no_run
/// let server = echod::Server::bind(echod::Config::listening_on(["127.0.0.1:0"]))?;
/// println!("listening on {:?}", server.local_addrs());
/// let handle = server.handle();
/// std::thread::spawn(move || handle.stop());
/// let stats = server.run()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Server {
    /// The one poll instance; listeners and the waker are registered with it already.
    poll: Poll,
    /// Bound, registered listening sockets: inherited first, then in `--listen` order.
    listeners: Vec<Listener>,
    /// Bound, registered UDP sockets, in the same order.
    datagrams: Vec<Datagram>,
    /// What the listeners' protocols need (the TLS certificate), loaded at bind.
    layers: Layers,
    /// `--metrics`: bound and registered.
    metrics: Option<MetricsEndpoint>,
    /// In a worker: the link to its master, registered ([`Server::attach_master`]).
    master: Option<MasterLink>,
    config: Config,
    /// Cloned out to callers by [`Server::handle`].
    handle: ServerHandle,
    /// Where the handles' requests arrive; handed to the loop by [`Server::run`].
    inbox: Receiver<Request>,
    /// The loop's waker, shared with every handle; the loop keeps it registered.
    waker: Arc<Waker>,
}

impl Server {
    /// Adopts the sockets systemd passed (if `inherit_sockets`), binds every `--listen`
    /// address (or, if neither gave any, [`DEFAULT_LISTEN`]), and registers them all with
    /// a new `Poll`. An error names the address that failed and what the OS said.
    pub fn bind(config: Config) -> io::Result<Server> {
        let poll = Poll::new()?;
        let as_io =
            |err: crate::listen::ListenError| io::Error::new(err.source.kind(), err.to_string());
        let inherited = if config.inherit_sockets {
            inherited::take_all().map_err(as_io)?
        } else {
            inherited::Inherited::default()
        };
        let (mut listeners, mut datagrams) = (inherited.listeners, inherited.datagrams);
        let default = [DEFAULT_LISTEN.to_string()];
        let specs = if config.listen.is_empty() && inherited.offered == 0 {
            &default[..]
        } else {
            &config.listen[..]
        };
        let bound = bind_all(specs, &config.bind_options()).map_err(as_io)?;
        listeners.extend(bound.listeners);
        datagrams.extend(bound.datagrams);
        if listeners.is_empty() && datagrams.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "nothing to listen on: every inherited socket was skipped and no --listen given",
            ));
        }
        let layers = layers_for(&listeners, specs, &config)?;
        if listeners.len() > MAX_LISTENERS || datagrams.len() > MAX_UDP {
            return Err(io::Error::other(format!(
                "too many listening addresses (at most {MAX_LISTENERS} stream and {MAX_UDP} UDP)"
            )));
        }
        for (index, listener) in listeners.iter_mut().enumerate() {
            poll.registry().register(
                listener,
                Owner::Listener(index).token(),
                Interest::READABLE,
            )?;
            info!("listening on {listener}");
        }
        for (index, datagram) in datagrams.iter_mut().enumerate() {
            let token = Owner::Udp(index).token();
            poll.registry()
                .register(&mut datagram.socket, token, Interest::READABLE)?;
            match &datagram.name {
                Some(name) => info!("listening on udp:{} (\"{name}\")", datagram.addr),
                None => info!("listening on udp:{}", datagram.addr),
            }
        }
        let metrics = match &config.metrics {
            Some(spec) => {
                let bound = bind_metrics(spec, &config.bind_options()).map_err(as_io)?;
                Some(MetricsEndpoint::new(bound, poll.registry())?)
            }
            None => None,
        };
        let waker = Arc::new(Waker::new(poll.registry(), Owner::Waker.token())?);
        let (handle, inbox) = ServerHandle::new(Arc::clone(&waker));
        Ok(Server {
            poll,
            listeners,
            datagrams,
            layers,
            metrics,
            master: None,
            config,
            handle,
            inbox,
            waker,
        })
    }

    /// Serve as a worker of `link`'s master: answer its questions, stop when it is gone.
    pub fn attach_master(&mut self, mut link: MasterLink) -> io::Result<()> {
        link.register(self.poll.registry(), Owner::Master.token())?;
        self.master = Some(link);
        Ok(())
    }

    /// The `--metrics` addresses actually bound (real ports for port 0).
    pub fn local_metrics_addrs(&self) -> Vec<SocketAddr> {
        self.metrics
            .as_ref()
            .map_or_else(Vec::new, MetricsEndpoint::local_addrs)
    }

    /// The TCP addresses actually bound (real ports for port 0), in `--listen` order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs_where(|endpoint| match endpoint {
            Endpoint::Tcp(addr) => Some(*addr),
            _ => None,
        })
    }

    /// The WebSocket addresses actually bound (`ws:` and `wss:` listeners), with whether
    /// each is over TLS, in `--listen` order.
    pub fn local_ws_addrs(&self) -> Vec<(SocketAddr, bool)> {
        self.addrs_where(|endpoint| match endpoint {
            Endpoint::Ws(addr) => Some((*addr, false)),
            Endpoint::Wss(addr) => Some((*addr, true)),
            _ => None,
        })
    }

    /// The TLS addresses actually bound (`tls:` listeners), in `--listen` order.
    pub fn local_tls_addrs(&self) -> Vec<SocketAddr> {
        self.addrs_where(|endpoint| match endpoint {
            Endpoint::Tls(addr) => Some(*addr),
            _ => None,
        })
    }

    /// What `pick` takes from each stream listener's endpoint, in order.
    fn addrs_where<T>(&self, pick: impl Fn(&Endpoint) -> Option<T>) -> Vec<T> {
        self.listeners
            .iter()
            .filter_map(|l| pick(&l.endpoint))
            .collect()
    }

    /// Everything listened on, TCP and Unix, inherited first, then in `--listen` order;
    /// then the UDP sockets.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let streams = self.listeners.iter().map(|l| l.endpoint.clone());
        streams
            .chain(self.datagrams.iter().map(|d| Endpoint::Udp(d.addr)))
            .collect()
    }

    /// The UDP addresses actually bound (real ports for port 0).
    pub fn local_udp_addrs(&self) -> Vec<SocketAddr> {
        self.datagrams.iter().map(|d| d.addr).collect()
    }

    /// A handle to stop the loop, or read its counters, from another thread.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Serves on the calling thread until stopped; returns the final counters.
    ///
    /// Only a failure of `poll` itself (or of setting up signal handling) ends it with an
    /// error: whatever a client does affects that client's connection alone.
    pub fn run(self) -> io::Result<Stats> {
        let Server {
            poll,
            listeners,
            datagrams,
            layers,
            metrics,
            master,
            config,
            handle: _,
            inbox,
            waker,
        } = self;
        let udp = Datagrams::new(
            datagrams
                .into_iter()
                .map(|d| UdpEndpoint::new(d.socket, d.addr))
                .collect(),
            UdpSettings::from(&config),
        );
        let rooms = Rooms {
            listeners,
            layers,
            udp,
            metrics,
            master,
        };
        EventLoop::new(poll, rooms, &config, inbox, waker)?.run()
    }
}

/// Loads what the listeners' protocols need: a certificate if any listener speaks TLS (the
/// files of `--tls-cert`/`--tls-key`, or a self-signed one naming the `tls:` hosts).
fn layers_for(listeners: &[Listener], specs: &[String], config: &Config) -> io::Result<Layers> {
    let mut layers = Layers {
        mode: config.mode,
        ws_max_message: config.ws_max_message,
        ..Layers::default()
    };
    let needs_tls = |l: &Listener| matches!(l.endpoint, Endpoint::Tls(_) | Endpoint::Wss(_));
    if !listeners.iter().any(needs_tls) {
        return Ok(layers);
    }
    let hosts: Vec<String> = specs
        .iter()
        .filter_map(|spec| {
            spec.strip_prefix("tls:")
                .or_else(|| spec.strip_prefix("wss:"))
        })
        .filter_map(|host_port| host_port.rsplit_once(':').map(|(host, _)| host.to_string()))
        .collect();
    layers.tls = Some(TlsIdentity::new(config.tls_files.clone(), &hosts)?);
    Ok(layers)
}
