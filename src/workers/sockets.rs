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
        let options = crate::listen::BindOptions {
            reuse_port: true,
            ..config.bind_options()
        };
        // The first slot's sockets come from the specs as written; the others are bound at
        // the very addresses those got (so port 0 means one port for all).
        let first = bind_all(specs, &options)?;
        let mut own = Vec::new();
        let mut exact = Vec::new();
        for listener in first.listeners {
            let name = protocol_name(&listener.endpoint).to_string();
            match listener.endpoint {
                Endpoint::Tcp(_) | Endpoint::Tls(_) | Endpoint::Ws(_) | Endpoint::Wss(_) => {
                    exact.push(listener.endpoint.to_string());
                    own.push(Held {
                        socket: Socket::Stream(listener),
                        name,
                    });
                }
                _ => shared.push(Held {
                    socket: Socket::Stream(listener),
                    name,
                }),
            }
        }
        for datagram in first.datagrams {
            exact.push(Endpoint::Udp(datagram.addr).to_string());
            own.push(Held {
                socket: Socket::Datagram(datagram),
                name: "udp".to_string(),
            });
        }
        let mut per_slot = vec![own];
        for _ in 1..config.workers {
            let more = bind_all(&exact, &options)?;
            let streams = more.listeners.into_iter().map(|listener| Held {
                name: protocol_name(&listener.endpoint).to_string(),
                socket: Socket::Stream(listener),
            });
            let datagrams = more.datagrams.into_iter().map(|datagram| Held {
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
