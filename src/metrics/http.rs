//! Just enough HTTP/1.1 for a scraper and a probe: a request head parsed by `httparse`,
//! what it asks for, and the response bytes.
//!
//! Only requests without a body are served (scrapers and probes send none); anything with
//! one, or that `httparse` rejects, gets 400 and a close, since the stream can no longer
//! be trusted to be at a request boundary.

/// Request heads longer than this get 431 and a close (bounded memory per connection).
pub(crate) const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Headers one request may carry.
const MAX_HEADERS: usize = 32;

/// What the bytes received so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Not a whole request head yet.
    Partial,
    /// A whole request, `length` bytes of the buffer.
    Request { request: Request, length: usize },
    /// Not HTTP we serve: answer with this status and close.
    Bad(Status),
}

/// One request, reduced to what the endpoint acts on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) route: Route,
    /// `HEAD`: the same headers, no body.
    pub(crate) head_only: bool,
    /// The `Accept` header, for the metrics format.
    pub(crate) accept: Option<String>,
    /// The client asked to close after this response (`Connection: close`, or HTTP/1.0
    /// without keep-alive).
    pub(crate) close: bool,
}

/// Which resource a request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Metrics,
    Health,
    NotFound,
    /// A method other than GET or HEAD.
    MethodNotAllowed,
}

/// The statuses the endpoint answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    HeadersTooLarge,
    Unavailable,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Status::Ok => "200 OK",
            Status::BadRequest => "400 Bad Request",
            Status::NotFound => "404 Not Found",
            Status::MethodNotAllowed => "405 Method Not Allowed",
            Status::HeadersTooLarge => "431 Request Header Fields Too Large",
            Status::Unavailable => "503 Service Unavailable",
        }
    }
}

/// Parses the start of `buffer` as one request head.
pub(crate) fn parse(buffer: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let length = match head.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buffer.len() >= MAX_REQUEST_HEAD => {
            return Parsed::Bad(Status::HeadersTooLarge);
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Bad(Status::HeadersTooLarge),
        Err(_) => return Parsed::Bad(Status::BadRequest),
    };
    let header = |name: &str| {
        head.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let has_body = header("transfer-encoding").is_some()
        || header("content-length").is_some_and(|length| length != "0");
    if has_body {
        return Parsed::Bad(Status::BadRequest);
    }
    let method = head.method.unwrap_or("");
    // The path without a query string: `/metrics?x=1` is still the metrics.
    let path = head.path.unwrap_or("").split('?').next().unwrap_or("");
    let route = match (method, path) {
        ("GET" | "HEAD", "/metrics") => Route::Metrics,
        ("GET" | "HEAD", "/health" | "/healthz") => Route::Health,
        ("GET" | "HEAD", _) => Route::NotFound,
        _ => Route::MethodNotAllowed,
    };
    let connection = header("connection").map(|c| c.to_ascii_lowercase());
    let close = match head.version {
        Some(0) => connection.as_deref() != Some("keep-alive"),
        _ => connection.as_deref() == Some("close"),
    };
    Parsed::Request {
        request: Request {
            route,
            head_only: method == "HEAD",
            accept: header("accept"),
            close,
        },
        length,
    }
}

/// A whole response: status line, headers and (unless `head_only`) the body.
pub(crate) fn response(
    status: Status,
    content_type: &str,
    body: &str,
    head_only: bool,
    close: bool,
) -> Vec<u8> {
    let connection = if close { "close" } else { "keep-alive" };
    let mut bytes = format!(
        "HTTP/1.1 {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: {connection}\r\nCache-Control: no-store\r\n\r\n",
        status.line(),
        body.len()
    )
    .into_bytes();
    if !head_only {
        bytes.extend_from_slice(body.as_bytes());
    }
    bytes
}

/// A short plain-text response (health, errors).
pub(crate) fn plain(status: Status, body: &str, head_only: bool, close: bool) -> Vec<u8> {
    response(status, "text/plain; charset=utf-8", body, head_only, close)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Request {
        match parse(text.as_bytes()) {
            Parsed::Request { request, length } => {
                assert_eq!(length, text.len());
                request
            }
            other => panic!("{text:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn routes_and_methods() {
        let get = request("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            (get.route, get.head_only, get.close),
            (Route::Metrics, false, false)
        );
        assert_eq!(
            request("HEAD /health HTTP/1.1\r\n\r\n").route,
            Route::Health
        );
        assert!(request("HEAD /health HTTP/1.1\r\n\r\n").head_only);
        assert_eq!(
            request("GET /metrics?x=1 HTTP/1.1\r\n\r\n").route,
            Route::Metrics
        );
        assert_eq!(request("GET / HTTP/1.1\r\n\r\n").route, Route::NotFound);
        assert_eq!(
            request("DELETE /metrics HTTP/1.1\r\n\r\n").route,
            Route::MethodNotAllowed
        );
    }

    #[test]
    fn keep_alive_follows_the_version_and_the_connection_header() {
        assert!(request("GET /metrics HTTP/1.0\r\n\r\n").close);
        assert!(!request("GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").close);
        assert!(request("GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n").close);
    }

    #[test]
    fn bad_input_is_refused() {
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\n"), Parsed::Partial);
        assert_eq!(
            parse(b"\x16\x03\x01garbage\r\n\r\n"),
            Parsed::Bad(Status::BadRequest)
        );
        let with_body = b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse(with_body), Parsed::Bad(Status::BadRequest));
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nX: {}",
            "a".repeat(MAX_REQUEST_HEAD)
        );
        assert_eq!(parse(huge.as_bytes()), Parsed::Bad(Status::HeadersTooLarge));
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        let many = format!("GET /metrics HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse(many.as_bytes()), Parsed::Bad(Status::HeadersTooLarge));
    }

    #[test]
    fn responses_carry_their_length() {
        let bytes = plain(Status::Ok, "ok\n", false, true);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nok\n"));
        let head = String::from_utf8(plain(Status::Ok, "ok\n", true, false)).unwrap();
        assert!(head.ends_with("\r\n\r\n") && head.contains("Content-Length: 3"));
    }
}
