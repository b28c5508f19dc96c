//! What a load-generator connection speaks: the raw stream, TLS over it (`--tls`, through
//! echod's own `TlsStream` pump, client side), WebSocket (`--ws`), or both.

use std::io;
use std::sync::Arc;

use echod::transport::{Stream as Socket, TlsStream};
use rustls::{ClientConfig, ClientConnection};

use crate::ws::WsClient;

/// A connection's byte stream, plain or inside TLS.
pub enum Link {
    Plain(Socket),
    Tls(Box<TlsStream>),
    Ws(Box<WsClient<Socket>>),
    Wss(Box<WsClient<TlsStream>>),
}

/// What a connection speaks above TCP: the generator's --tls and --ws.
#[derive(Clone, Debug)]
pub struct Layers {
    /// Whom to trust and which name to ask for, with TLS.
    pub tls: Option<(Arc<ClientConfig>, rustls::pki_types::ServerName<'static>)>,
    /// The `Host` of the WebSocket upgrade, with WebSocket.
    pub ws: Option<String>,
}

impl Link {
    /// `socket`, inside the layers asked for.
    pub fn new(socket: Socket, layers: &Layers) -> io::Result<Link> {
        let Some((config, name)) = &layers.tls else {
            return Ok(match &layers.ws {
                None => Link::Plain(socket),
                Some(host) => Link::Ws(Box::new(WsClient::new(socket, host))),
            });
        };
        let session =
            ClientConnection::new(Arc::clone(config), name.clone()).map_err(io::Error::other)?;
        let tls = TlsStream::client(session, socket);
        Ok(match &layers.ws {
            None => Link::Tls(Box::new(tls)),
            Some(host) => Link::Wss(Box::new(WsClient::new(tls, host))),
        })
    }

    fn socket(&self) -> &Socket {
        match self {
            Link::Plain(socket) => socket,
            Link::Tls(tls) => tls.socket(),
            Link::Ws(ws) => ws.wire(),
            Link::Wss(ws) => ws.wire().socket(),
        }
    }

    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Plain(socket) => io::Read::read(socket, buf),
            Link::Tls(tls) => tls.read(buf),
            Link::Ws(ws) => ws.read(buf),
            Link::Wss(ws) => ws.read(buf),
        }
    }

    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Link::Plain(socket) => io::Write::write(socket, buf),
            Link::Tls(tls) => tls.write(buf),
            Link::Ws(ws) => ws.write(buf),
            Link::Wss(ws) => ws.write(buf),
        }
    }

    /// Sends what the TLS layer still holds (nothing, for a plain stream).
    pub fn flush_layer(&mut self) -> io::Result<()> {
        match self {
            Link::Plain(_) => Ok(()),
            Link::Tls(tls) => tls.flush_layer(),
            Link::Ws(ws) => ws.flush_layer(),
            Link::Wss(ws) => ws.flush_layer(),
        }
    }

    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.socket().take_error()
    }

    pub fn is_connected(&self) -> io::Result<bool> {
        self.socket().is_connected()
    }

    pub fn set_nodelay(&self) -> io::Result<()> {
        self.socket().set_nodelay()
    }
}
