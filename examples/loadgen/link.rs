//! What a load-generator connection speaks: the raw stream, or TLS over it (`--tls`), the
//! latter through echod's own `TlsStream` pump, the same one the server runs, client side.

use std::io;
use std::sync::Arc;

use echod::transport::{Stream as Socket, TlsStream};
use rustls::{ClientConfig, ClientConnection};

/// A connection's byte stream, plain or inside TLS.
pub enum Link {
    Plain(Socket),
    Tls(Box<TlsStream>),
}

impl Link {
    /// `socket`, inside a TLS session for `server_name` when `tls` is given.
    pub fn new(
        socket: Socket,
        tls: Option<&(Arc<ClientConfig>, rustls::pki_types::ServerName<'static>)>,
    ) -> io::Result<Link> {
        Ok(match tls {
            None => Link::Plain(socket),
            Some((config, name)) => {
                let session = ClientConnection::new(Arc::clone(config), name.clone())
                    .map_err(io::Error::other)?;
                Link::Tls(Box::new(TlsStream::client(session, socket)))
            }
        })
    }

    fn socket(&self) -> &Socket {
        match self {
            Link::Plain(socket) => socket,
            Link::Tls(tls) => tls.socket(),
        }
    }

    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Plain(socket) => io::Read::read(socket, buf),
            Link::Tls(tls) => tls.read(buf),
        }
    }

    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Link::Plain(socket) => io::Write::write(socket, buf),
            Link::Tls(tls) => tls.write(buf),
        }
    }

    /// Sends what the TLS layer still holds (nothing, for a plain stream).
    pub fn flush_layer(&mut self) -> io::Result<()> {
        match self {
            Link::Plain(_) => Ok(()),
            Link::Tls(tls) => tls.flush_layer(),
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
