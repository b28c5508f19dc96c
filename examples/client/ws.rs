//! `--host ws://HOST:PORT/PATH` (or `wss://…`): each message one WebSocket text message
//! (binary with `--hex`), its echo checked: the same kind, the same bytes.

use std::net::TcpStream;
use std::path::Path;

use tungstenite::{Message, WebSocket};

/// Sends each message and checks its echo; prints what came back.
pub fn run(
    url: &str,
    socket: TcpStream,
    tls: Option<(&str, Option<&Path>, bool)>,
    messages: &[&str],
    hex: bool,
) -> Result<(), String> {
    match tls {
        None => {
            let (ws, _) = tungstenite::client(url, socket).map_err(|e| format!("{url}: {e}"))?;
            converse(ws, messages, hex)
        }
        Some((host, ca, insecure)) => {
            let stream = crate::tls::wrap(socket, host, ca, insecure)?;
            let (ws, _) = tungstenite::client(url, stream).map_err(|e| format!("{url}: {e}"))?;
            converse(ws, messages, hex)
        }
    }
}

fn converse<S: std::io::Read + std::io::Write>(
    mut ws: WebSocket<S>,
    messages: &[&str],
    hex: bool,
) -> Result<(), String> {
    for text in messages {
        let sent = if hex {
            Message::binary(text.as_bytes().to_vec())
        } else {
            Message::text(*text)
        };
        ws.send(sent.clone())
            .map_err(|e| format!("send failed: {e}"))?;
        let back = loop {
            match ws.read().map_err(|e| format!("receive failed: {e}"))? {
                Message::Ping(_) | Message::Pong(_) => {}
                other => break other,
            }
        };
        if back != sent {
            return Err(format!(
                "the echo differs: sent {sent:?}, received {back:?}"
            ));
        }
        println!("Received: {}", crate::show(&back.into_data(), hex));
    }
    let _ = ws.close(None);
    while ws.read().is_ok() {} // the server's close frame, then the end
    Ok(())
}
