//! `--metrics`: the HTTP endpoint over loopback, its output read by real parsers (PyPI's
//! `prometheus-client`, both formats, and `promtool check metrics` from Debian's
//! `prometheus`), and the bad requests it must survive.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    BinaryServer, TestServer, metrics_addr, pattern, peer_tool, round_trip, run_with_stdin,
    wait_within,
};
use echod::Config;

fn server_with_metrics() -> (TestServer, SocketAddr) {
    let config = Config {
        metrics: Some("127.0.0.1:0".to_string()),
        ..Config::listening_on(["127.0.0.1:0", "udp:127.0.0.1:0"])
    };
    let server = TestServer::with(config);
    let metrics = server.metrics_addrs[0];
    (server, metrics)
}

/// Sends `request` on a new connection and reads until the server closes it.
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = common::connect(addr);
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    String::from_utf8(response).unwrap()
}

fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (String, String) {
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n{accept}Connection: close\r\n\r\n");
    let response = exchange(addr, request.as_bytes());
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    (head.to_string(), body.to_string())
}

/// A Python that can import PyPI's `prometheus-client`: the venv CI makes, or any `python`
/// on `PATH` that has it. Without one the parsing fails under CI (which installs it) and is
/// skipped elsewhere, saying so: a fresh machine's `cargo test` has no venv.
fn python_with_prometheus_client() -> Option<std::path::PathBuf> {
    let python = peer_tool("python")?;
    let importable = Command::new(&python)
        .args(["-c", "import prometheus_client"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !importable {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have prometheus-client in {} (.ci/run installs it)",
            python.display()
        );
        eprintln!(
            "skipped: {} cannot import prometheus_client",
            python.display()
        );
        return None;
    }
    Some(python)
}

/// Runs that Python with `script`, `text` on stdin; its stdout.
fn python(script: &str, text: &str) -> Option<String> {
    let mut command = Command::new(python_with_prometheus_client()?);
    command.args(["-c", script]);
    let out = run_with_stdin(command, text);
    assert!(
        out.status.success(),
        "the parser refused it: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

/// Every sample the parser found, as `name{labels} value` lines.
const PARSE_TEXT: &str = "
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ','.join('%s=%s' % kv for kv in sorted(s.labels.items()))
        print('%s{%s} %r' % (s.name, labels, float(s.value)))
";

const PARSE_OPENMETRICS: &str = "
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ','.join('%s=%s' % kv for kv in sorted(s.labels.items()))
        print('%s{%s} %r' % (s.name, labels, float(s.value)))
";

#[test]
fn counters_equal_the_traffic_and_real_parsers_accept_both_formats() {
    let (server, metrics) = server_with_metrics();
    for i in 0..5u64 {
        round_trip(&mut server.connect(), &pattern(i, 1000));
    }
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(common::IO_TIMEOUT)).unwrap();
    for _ in 0..3 {
        udp.send_to(b"twelve bytes", server.udp_addrs[0]).unwrap();
        let mut reply = [0u8; 64];
        udp.recv_from(&mut reply).unwrap();
    }
    server.wait_for("five closed", |s| s.closed_eof == 5);

    let (head, text) = get(metrics, "/metrics", None);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    for expected in [
        "echod_connections_accepted_total 5\n",
        "echod_connections_closed_total{reason=\"eof\"} 5\n",
        "echod_received_bytes_total 5000\n",
        "echod_sent_bytes_total 5000\n",
        "echod_connections_open 0\n",
        "echod_udp_datagrams_received_total 3\n",
        "echod_udp_sent_bytes_total 36\n",
    ] {
        assert!(text.contains(expected), "no {expected:?} in\n{text}");
    }
    if let Some(samples) = python(PARSE_TEXT, &text) {
        assert!(
            samples.contains("echod_received_bytes_total{} 5000.0"),
            "{samples}"
        );
        assert!(samples.contains("process_open_fds{} "), "{samples}");
        assert!(
            samples.contains("process_start_time_seconds{} "),
            "{samples}"
        );
    }

    let openmetrics = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (head, text) = get(metrics, "/metrics", Some(openmetrics));
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    if let Some(samples) = python(PARSE_OPENMETRICS, &text) {
        // OpenMetrics names a counter's sample `_total`; its family has no suffix.
        assert!(
            samples.contains("echod_connections_accepted_total{} 5.0"),
            "{samples}"
        );
        assert!(
            samples.contains("echod_udp_dropped_total{reason=guard} 0.0"),
            "{samples}"
        );
    }
}

/// A WebSocket upgrade is a handshake like TLS's, and is counted under the same
/// protocol-neutral name; so is an upgrade refused.
#[test]
fn handshakes_and_websocket_messages_are_counted() {
    let config = Config {
        metrics: Some("127.0.0.1:0".to_string()),
        ..Config::listening_on(["ws:127.0.0.1:0"])
    };
    let server = TestServer::with(config);
    let (addr, metrics) = (server.ws_addrs[0].0, server.metrics_addrs[0]);
    let url = format!("ws://{addr}/");
    let (mut socket, _) = tungstenite::client(url, common::connect(addr)).expect("upgrade");
    socket
        .send(tungstenite::Message::text("汉语/漢語 Hànyǔ"))
        .unwrap();
    match socket.read().unwrap() {
        tungstenite::Message::Text(text) => assert_eq!(text.as_str(), "汉语/漢語 Hànyǔ"),
        other => panic!("expected the text back, got {other:?}"),
    }
    drop(socket);
    let refused = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(refused.starts_with("HTTP/1.1 426 "), "{refused}");
    server.wait_for("both closed", |s| s.closed_total() == 2);

    let (_, text) = get(metrics, "/metrics", None);
    for expected in [
        "echod_handshakes_total 1\n",
        "echod_handshake_failures_total 1\n",
        "echod_ws_messages_received_total 1\n",
        "echod_ws_messages_sent_total 1\n",
    ] {
        assert!(text.contains(expected), "no {expected:?} in\n{text}");
    }
    assert!(!text.contains("echod_tls_"), "{text}");
}

#[test]
fn promtool_accepts_the_exposition() {
    let Some(promtool) = peer_tool("promtool") else {
        return;
    };
    let (server, metrics) = server_with_metrics();
    round_trip(&mut server.connect(), b"so that something was counted");
    let (_, text) = get(metrics, "/metrics", None);
    let mut command = Command::new(promtool);
    command.args(["check", "metrics"]);
    let out = run_with_stdin(command, &text);
    let said = common::all_it_said(&out);
    assert!(out.status.success(), "promtool: {said}\n{text}");
    // promtool's lint also warns (and still exits 0) on naming problems: there are none.
    assert!(said.trim().is_empty(), "promtool: {said}");
}

#[test]
fn health_routes_and_methods() {
    let (_server, metrics) = server_with_metrics();
    let (head, body) = get(metrics, "/health", None);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert_eq!(body, "ok\n");
    let (head, _) = get(metrics, "/nowhere", None);
    assert!(head.starts_with("HTTP/1.1 404 Not Found"), "{head}");
    let response = exchange(metrics, b"POST /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(response.starts_with("HTTP/1.1 405"), "{response}");
    let response = exchange(
        metrics,
        b"HEAD /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.ends_with("\r\n\r\n"),
        "HEAD has no body: {response}"
    );
}

#[test]
fn malformed_and_huge_requests_are_refused_and_closed() {
    let (server, metrics) = server_with_metrics();
    let response = exchange(metrics, b"\x16\x03\x01\x02\x00garbage\r\n\r\n");
    assert!(
        response.starts_with("HTTP/1.1 400 Bad Request"),
        "{response}"
    );
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let mut stream = common::connect(metrics);
    // The server answers and closes before taking it all: the write may be cut short.
    let _ = stream.write_all(huge.as_bytes());
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    let with_body = exchange(
        metrics,
        b"GET /metrics HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody",
    );
    assert!(with_body.starts_with("HTTP/1.1 400"), "{with_body}");
    // The echo never noticed.
    round_trip(&mut server.connect(), b"still echoing");
}

#[test]
fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (_server, metrics) = server_with_metrics();
    let response = exchange(
        metrics,
        b"GET /health HTTP/1.1\r\n\r\nGET /nowhere HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    let statuses: Vec<&str> = response
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|r| &r[..3])
        .collect();
    assert_eq!(statuses, ["200", "404", "200"], "{response}");
}

#[test]
fn an_unfinished_request_is_closed_after_the_timeout() {
    let (server, metrics) = server_with_metrics();
    let mut slow = common::connect(metrics);
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.write_all(b"GET /metr").unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    slow.read_to_end(&mut rest).unwrap();
    let waited = started.elapsed();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(8),
        "closed after {waited:?}"
    );
    // Meanwhile (and after) both the echo and the endpoint answer others.
    round_trip(&mut server.connect(), b"unaffected");
    assert!(get(metrics, "/health", None).0.starts_with("HTTP/1.1 200"));
}

#[test]
fn clients_beyond_the_cap_are_turned_away_and_the_rest_served() {
    let (_server, metrics) = server_with_metrics();
    // Hold more idle connections than the endpoint keeps: the extra ones are closed at once.
    let held: Vec<TcpStream> = (0..80).map(|_| common::connect(metrics)).collect();
    let closed = wait_within(common::IO_TIMEOUT, || {
        let mut closed = 0;
        for stream in &held {
            stream.set_nonblocking(true).unwrap();
            let mut byte = [0u8; 1];
            if let Ok(0) = (&*stream).read(&mut byte) {
                closed += 1;
            }
        }
        if closed >= 16 {
            Ok(closed)
        } else {
            Err(format!("only {closed} of 80 turned away"))
        }
    });
    assert_eq!(closed, 16);
    drop(held);
    wait_within(common::IO_TIMEOUT, || {
        match std::panic::catch_unwind(|| get(metrics, "/health", None)) {
            Ok((head, _)) if head.starts_with("HTTP/1.1 200") => Ok(()),
            _ => Err("no answer after the crowd left".to_string()),
        }
    });
}

#[test]
fn a_stopped_loop_fails_its_health_check() {
    let server = BinaryServer::start(&["--metrics", "127.0.0.1:0"]);
    let metrics = metrics_addr(&server);
    let probe = |within: Duration| -> Option<String> {
        let mut stream = TcpStream::connect(metrics).ok()?;
        stream.set_read_timeout(Some(within)).unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        Some(response)
    };
    assert!(
        probe(Duration::from_secs(5))
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    server.signal(libc::SIGSTOP);
    // The kernel still completes the TCP handshake; nothing answers the request.
    assert_eq!(probe(Duration::from_secs(1)), None);
    server.signal(libc::SIGCONT);
    assert!(
        probe(Duration::from_secs(5))
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
}

#[test]
fn a_metrics_address_that_is_an_echo_address_or_not_tcp_is_one_line() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    drop(holder);
    let same = format!("127.0.0.1:{port}");
    let out = Command::new(env!("CARGO_BIN_EXE_echod"))
        .args(["-q", "--listen", &same, "--metrics", &same])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!("echod: cannot listen on --metrics {same}: Address already in use (os error 98)")
    );
    let out = Command::new(env!("CARGO_BIN_EXE_echod"))
        .args(["--metrics", "unix:/tmp/metrics.sock"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("plain HTTP over TCP"), "{stderr}");
}
