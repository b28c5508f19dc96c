//! The master's sockets: bound (or adopted from systemd) once, held for the master's whole
//! life, and handed to each worker it starts as socket-activation descriptors.
//!
//! Each TCP and UDP address gets one `SO_REUSEPORT` socket per worker slot: the kernel
//! hashes every new connection (or datagram's source) to one socket of the group, so the
//! load spreads without the workers competing for one queue, and no worker is woken for a
//! connection another takes. Because the master keeps its own copy of every socket, a
//! worker that dies leaves its queue intact: connections hashed to it wait there until its
//! replacement, started on the same socket, accepts them. None is refused or reset.
//!
//! Unix sockets and sockets systemd passed in cannot be multiplied that way; one of each
//! is shared by every worker (the kernel wakes them in turn).
//!
//! `SO_REUSEPORT` would also let this master join a group another process already holds
//! on the port; each address is therefore bound once without it first, so that a port in
//! use is refused as a single echod would refuse it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use log::info;

use crate::config::{Config, DEFAULT_LISTEN};
use crate::listen::{Datagram, Endpoint, ListenError, Listener, bind_all, inherited};

/// One socket to pass, and the `LISTEN_FDNAMES` name that tells the worker what it serves.
struct Held {
    /// Keeps the socket open (and, for `unix:PATH`, removes the file when the master ends).
    socket: Socket,
    name: String,
}

enum Socket {
    Stream(Listener),
    Datagram(Datagram),
}

impl Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Socket::Stream(listener) => listener.as_fd(),
            Socket::Datagram(datagram) => datagram.socket.as_fd(),
        }
    }
}

/// Every socket the master holds: the shared ones and each slot's own.
pub(crate) struct SocketSets {
    shared: Vec<Held>,
    per_slot: Vec<Vec<Held>>,
}

impl SocketSets {
    /// Adopts what systemd passed and binds every `--listen` address, a socket per slot for
    /// TCP and UDP. An error names the address, as a single echod's does.
    pub(crate) fn bind(config: &Config) -> Result<SocketSets, ListenError> {
        let inherited = if config.inherit_sockets {
            inherited::take_all()?
        } else {
            inherited::Inherited::default()
        };
        let mut shared: Vec<Held> = Vec::new();
        for listener in inherited.listeners {
            let name = listener
                .name
                .clone()
                .unwrap_or_else(|| protocol_name(&listener.endpoint).to_string());
            shared.push(Held {
                socket: Socket::Stream(listener),
                name,
            });
        }
        for datagram in inherited.datagrams {
            let name = datagram.name.clone().unwrap_or_else(|| "udp".to_string());
            shared.push(Held {
                socket: Socket::Datagram(datagram),
                name,
            });
        }
        let default = [DEFAULT_LISTEN.to_string()];
        let specs = if config.listen.is_empty() && inherited.offered == 0 {
            &default[..]
        } else {
            &config.listen[..]
        };
        // First every spec is bound as a single echod would bind it, without
        // SO_REUSEPORT: a port anyone holds, even a reuse-port group (another master),
        // fails here with "Address already in use" instead of being joined. Unix sockets
        // are kept as they are (shared); the TCP and UDP ones only tell the exact address
        // (port 0 gets its port here) and are closed again.
        let probe = bind_all(specs, &config.bind_options())?;
        let mut exact = Vec::new();
        for listener in probe.listeners {
            match listener.endpoint {
                Endpoint::Tcp(_) | Endpoint::Tls(_) | Endpoint::Ws(_) | Endpoint::Wss(_) => {
                    exact.push(listener.endpoint.to_string());
                }
                _ => shared.push(Held {
                    name: protocol_name(&listener.endpoint).to_string(),
                    socket: Socket::Stream(listener),
                }),
            }
        }
        for datagram in probe.datagrams {
            exact.push(Endpoint::Udp(datagram.addr).to_string());
        }
        // Closing a listening socket frees its port at once (no TIME_WAIT for listeners).
        // Then each slot gets its own SO_REUSEPORT socket at each of those addresses.
        let options = crate::listen::BindOptions {
            reuse_port: true,
            ..config.bind_options()
        };
        let mut per_slot: Vec<Vec<Held>> = Vec::with_capacity(config.workers);
        for _ in 0..config.workers {
            let bound = bind_all(&exact, &options)?;
            let streams = bound.listeners.into_iter().map(|listener| Held {
                name: protocol_name(&listener.endpoint).to_string(),
                socket: Socket::Stream(listener),
            });
            let datagrams = bound.datagrams.into_iter().map(|datagram| Held {
                socket: Socket::Datagram(datagram),
                name: "udp".to_string(),
            });
            per_slot.push(streams.chain(datagrams).collect());
        }
        for held in &shared {
            info!("listening on {} (shared by every worker)", held.describe());
        }
        for held in &per_slot[0] {
            info!(
                "listening on {} ({} SO_REUSEPORT sockets, one per worker)",
                held.describe(),
                config.workers
            );
        }
        Ok(SocketSets { shared, per_slot })
    }

    /// How many sockets each worker gets.
    pub(crate) fn count_per_worker(&self) -> usize {
        self.shared.len() + self.per_slot.first().map_or(0, Vec::len)
    }

    /// Fresh copies of the descriptors slot `slot` serves, with their names: what a new
    /// worker in that slot inherits (the master keeps its own).
    pub(crate) fn for_slot(&self, slot: usize) -> io::Result<Vec<(OwnedFd, String)>> {
        self.shared
            .iter()
            .chain(self.per_slot.get(slot).into_iter().flatten())
            .map(|held| Ok((held.socket.as_fd().try_clone_to_owned()?, held.name.clone())))
            .collect()
    }
}

impl Held {
    fn describe(&self) -> String {
        match &self.socket {
            Socket::Stream(listener) => listener.to_string(),
            Socket::Datagram(datagram) => Endpoint::Udp(datagram.addr).to_string(),
        }
    }
}

/// The `FileDescriptorName=` that makes an adopted TCP socket speak `endpoint`'s protocol
/// (see `listen::inherited`): a worker adopts its sockets exactly as from systemd.
fn protocol_name(endpoint: &Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Tls(_) => "tls",
        Endpoint::Ws(_) => "ws",
        Endpoint::Wss(_) => "wss",
        Endpoint::Udp(_) => "udp",
        _ => "echo",
    }
}
