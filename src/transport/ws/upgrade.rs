//! The HTTP upgrade: a request judged with `httparse`, answered `101 Switching Protocols`
//! or refused with a 4xx that says why.

/// The largest upgrade request accepted (headers included).
const REQUEST_LIMIT: usize = 8 * 1024;

/// What a request read so far deserves.
pub(super) enum Verdict {
    /// Not all of it has arrived (and it is still under `REQUEST_LIMIT`).
    Partial,
    /// A valid upgrade: the `101` to send, and how many bytes the request took (what
    /// follows is the client's first frames).
    Accept { response: Vec<u8>, used: usize },
    /// Anything else: the 4xx to send before closing.
    Refuse { response: Vec<u8> },
}

pub(super) fn judge(request: &[u8]) -> Verdict {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    let verdict = match parsed.parse(request) {
        Ok(httparse::Status::Partial) if request.len() <= REQUEST_LIMIT => return Verdict::Partial,
        Ok(httparse::Status::Partial) => Err((431, "Request Header Fields Too Large")),
        Err(httparse::Error::TooManyHeaders) => Err((431, "Request Header Fields Too Large")),
        Err(_) => Err((400, "Bad Request")),
        Ok(httparse::Status::Complete(used)) => upgrade_key(&parsed).map(|key| (key, used)),
    };
    match verdict {
        Ok((key, used)) => {
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            Verdict::Accept {
                response: response.into_bytes(),
                used,
            }
        }
        Err((status, reason)) => {
            let body = "a WebSocket echo: connect with a WebSocket client\n";
            // 426 says what would be accepted instead.
            let upgrade = if status == 426 {
                "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            } else {
                ""
            };
            let response = format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n\
                 Content-Length: {}\r\nConnection: close\r\n{upgrade}\r\n{body}",
                body.len(),
            );
            Verdict::Refuse {
                response: response.into_bytes(),
            }
        }
    }
}

/// The `Sec-WebSocket-Key` of a valid upgrade request, or the response it deserves.
fn upgrade_key(request: &httparse::Request) -> Result<String, (u16, &'static str)> {
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|value| {
            value
                .split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    };
    if request.method != Some("GET") {
        return Err((405, "Method Not Allowed"));
    }
    if !has_token("Upgrade", "websocket") || !has_token("Connection", "upgrade") {
        return Err((426, "Upgrade Required"));
    }
    if header("Sec-WebSocket-Version").map(str::trim) != Some("13") {
        return Err((426, "Upgrade Required"));
    }
    let key = header("Sec-WebSocket-Key").map(str::trim).unwrap_or("");
    // A key is 16 random bytes in base64: 24 characters, the last two "==".
    let valid = key.len() == 24
        && key.ends_with("==")
        && key[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if !valid {
        return Err((400, "Bad Request"));
    }
    Ok(key.to_string())
}
