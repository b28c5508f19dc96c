//! `--ws`: the load generator's WebSocket client, over the raw stream or over TLS. Its
//! upgrade request is written by hand; frames go through tungstenite's `WebSocketContext`
//! (client role: every frame masked). Each write is one binary message, and the echo's
//! messages are read back as a byte stream, so the generator's usual byte-for-byte check
//! applies unchanged.

use std::io::{self, Read, Write};

use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Bytes, Message};

/// Bytes per message at most (one write of the generator is one message).
const MESSAGE_LIMIT: usize = 64 * 1024;

enum Stage {
    /// The upgrade request is being written (`out`), then the response read.
    Upgrading {
        response: Vec<u8>,
    },
    Open(Box<WebSocketContext>),
}

/// A WebSocket client session over `W`.
pub struct WsClient<W: Read + Write> {
    wire: W,
    stage: Stage,
    /// Request bytes not yet written.
    out: Vec<u8>,
    /// The payload of the message being read, and how much has been handed over.
    reading: Option<(Bytes, usize)>,
    /// tungstenite holds frames it could not flush yet.
    flush_pending: bool,
}

impl<W: Read + Write> WsClient<W> {
    pub fn new(wire: W, host: &str) -> WsClient<W> {
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            tungstenite::handshake::client::generate_key()
        );
        WsClient {
            wire,
            stage: Stage::Upgrading {
                response: Vec::new(),
            },
            out: request.into_bytes(),
            reading: None,
            flush_pending: false,
        }
    }

    pub fn wire(&self) -> &W {
        &self.wire
    }

    /// Writes the request's rest, then whatever tungstenite and the wire hold.
    pub fn flush_layer(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            match self.wire.write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) => return Err(err),
            }
        }
        if let Stage::Open(ctx) = &mut self.stage
            && self.flush_pending
        {
            match ctx.flush(&mut self.wire) {
                Ok(()) => self.flush_pending = false,
                Err(tungstenite::Error::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(io::Error::other(err.to_string())),
            }
        }
        self.wire.flush()
    }

    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.flush_layer()?;
        let Stage::Open(ctx) = &mut self.stage else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        if self.flush_pending {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let taken = buf.len().min(MESSAGE_LIMIT);
        let message = Message::Binary(Bytes::copy_from_slice(&buf[..taken]));
        match ctx.write(&mut self.wire, message) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(io::Error::other(err.to_string())),
        }
        self.flush_pending = true;
        self.flush_layer()?;
        Ok(taken)
    }

    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some((payload, at)) = &mut self.reading {
                let n = (payload.len() - *at).min(buf.len());
                buf[..n].copy_from_slice(&payload[*at..*at + n]);
                *at += n;
                if *at == payload.len() {
                    self.reading = None;
                }
                return Ok(n);
            }
            match &mut self.stage {
                Stage::Upgrading { response } => {
                    let mut byte = [0u8; 512];
                    let n = self.wire.read(&mut byte)?;
                    if n == 0 {
                        return Ok(0);
                    }
                    response.extend_from_slice(&byte[..n]);
                    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
                        if response.len() > 8192 {
                            return Err(io::Error::other("an endless upgrade response"));
                        }
                        continue;
                    };
                    if !response.starts_with(b"HTTP/1.1 101") {
                        let head = String::from_utf8_lossy(&response[..end]).into_owned();
                        return Err(io::Error::other(format!("upgrade refused: {head}")));
                    }
                    let rest = response[end + 4..].to_vec();
                    let config = WebSocketConfig::default()
                        .read_buffer_size(4096)
                        .write_buffer_size(0);
                    self.stage = Stage::Open(Box::new(WebSocketContext::from_partially_read(
                        rest,
                        Role::Client,
                        Some(config),
                    )));
                    // The generator may have been waiting for the upgrade to write.
                }
                Stage::Open(ctx) => match ctx.read(&mut self.wire) {
                    Ok(Message::Binary(payload)) => self.reading = Some((payload, 0)),
                    Ok(Message::Text(text)) => self.reading = Some((Bytes::from(text), 0)),
                    Ok(Message::Close(_)) => return Ok(0),
                    Ok(_) => self.flush_pending = true, // a pong queued for a ping
                    Err(tungstenite::Error::Io(err)) => return Err(err),
                    Err(tungstenite::Error::ConnectionClosed) => return Ok(0),
                    Err(err) => return Err(io::Error::other(err.to_string())),
                },
            }
        }
    }
}
