//! The load generator against real servers: it must count what it should and catch what
//! it must (its speed is measured by `examples/bench.py`, not here).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use common::{TestServer, json_field, loadgen};

#[test]
fn a_clean_run_checks_every_byte_and_counts_what_the_server_counts() {
    let server = TestServer::start();
    let (out, json) = loadgen(
        server.addr(),
        &[
            "--conns",
            "20",
            "--size",
            "100",
            "--pipeline",
            "4",
            "--threads",
            "2",
            "--duration",
            "0.5",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{json}");
    assert_eq!(json_field(&json, "conns"), 20);
    assert_eq!(json_field(&json, "errors"), 0);
    assert_eq!(json_field(&json, "connect_failures"), 0);
    let msgs = json_field(&json, "msgs");
    assert!(msgs > 0, "{json}");
    let stats = server.wait_for("the load generator's connections to close", |s| {
        s.closed_total() == 20
    });
    assert_eq!(stats.accepted, 20);
    // Every message the load generator counted came back whole through the server.
    assert!(stats.bytes_out >= msgs * 100);
    assert_eq!(stats.bytes_in % 100, 0, "only whole messages are sent");
}

#[test]
fn busy_polling_never_sleeps_and_still_checks_every_byte() {
    let server = TestServer::start();
    let args = ["--conns", "2", "--size", "64", "--duration", "0.3"];
    let (out, json) = loadgen(server.addr(), &[&args[..], &["--busy-poll"]].concat());
    assert_eq!(out.status.code(), Some(0), "{json}");
    assert_eq!(json_field(&json, "errors"), 0);
    // None at all, but for what a loaded machine may force on any thread (a fault).
    let (msgs, sleeps) = (
        json_field(&json, "msgs"),
        json_field(&json, "loadgen_sleeps"),
    );
    assert!(msgs > 0 && sleeps * 100 < msgs, "{json}");
    // Without it, the generator waits for the echoes.
    let (out, json) = loadgen(server.addr(), &args);
    assert_eq!(out.status.code(), Some(0), "{json}");
    assert!(json_field(&json, "loadgen_sleeps") > 0, "{json}");
}

#[test]
fn unix_sockets_are_loaded_and_checked_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("load.sock");
    let name = format!("echod-loadgen-{}", std::process::id());
    let server = TestServer::with(echod::Config::listening_on([
        format!("unix:{}", path.display()),
        format!("unix:@{name}"),
    ]));
    let mut msgs = 0;
    for spec in [format!("unix:{}", path.display()), format!("unix:@{name}")] {
        let (out, json) = loadgen(
            &spec,
            &[
                "--conns",
                "10",
                "--size",
                "64",
                "--pipeline",
                "2",
                "--duration",
                "0.3",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{spec}: {json}");
        assert_eq!(json_field(&json, "conns"), 10);
        assert_eq!(json_field(&json, "errors"), 0);
        assert!(json_field(&json, "msgs") > 0, "{json}");
        msgs += json_field(&json, "msgs");
    }
    let stats = server.wait_for("both runs' connections to close", |s| {
        s.closed_total() == 20
    });
    assert_eq!(stats.accepted, 20);
    // Every message counted came back whole (messages still in flight when the load
    // generator hung up may have been read but not written back).
    assert!(stats.bytes_out >= msgs * 64);
    assert_eq!(stats.bytes_in % 64, 0, "only whole messages are sent");
}

#[test]
fn idle_mode_holds_every_connection_and_pings_each_once() {
    let server = TestServer::start();
    let (out, json) = loadgen(
        server.addr(),
        &["--conns", "300", "--idle", "--duration", "0.3"],
    );
    assert_eq!(out.status.code(), Some(0), "{json}");
    assert_eq!(json_field(&json, "answered"), 300);
    let stats = server.wait_for("all closed", |s| s.closed_total() == 300);
    assert_eq!(stats.peak_active, 300);
    assert_eq!((stats.bytes_in, stats.bytes_out), (300 * 64, 300 * 64));
}

#[test]
fn a_corrupting_server_is_caught_and_fails_the_run() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = [0; 4096];
        let mut total = 0usize;
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            // Echo faithfully, except one byte of the second message.
            for (i, byte) in buf[..n].iter_mut().enumerate() {
                if total + i == 64 + 20 {
                    *byte ^= 1;
                }
            }
            total += n;
            if stream.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let (out, json) = loadgen(addr, &["--conns", "1", "--duration", "0.3"]);
    assert_eq!(out.status.code(), Some(1), "{json}");
    assert_eq!(json_field(&json, "mismatches"), 1);
}

#[test]
fn nobody_listening_is_a_counted_connect_failure() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (out, json) = loadgen(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        &["--conns", "5", "--duration", "0.1"],
    );
    assert_eq!(out.status.code(), Some(1), "{json}");
    assert_eq!(json_field(&json, "connect_failures"), 5);
    assert_eq!(json_field(&json, "conns"), 0);
    assert_eq!(
        json_field(&json, "errors"),
        0,
        "a failed connect is not also a reset"
    );
}

#[test]
fn churn_counts_every_connection_the_server_counts() {
    let server = TestServer::start();
    let (out, json) = loadgen(
        server.addr(),
        &["--churn", "--conns", "8", "--duration", "0.5"],
    );
    assert_eq!(out.status.code(), Some(0), "{json}");
    assert_eq!(json_field(&json, "errors"), 0);
    assert_eq!(json_field(&json, "connect_failures"), 0);
    let cycles = json_field(&json, "cycles");
    assert!(cycles > 0, "{json}");
    assert!(json_field(&json, "connect_p99_us") > 0, "{json}");
    // Every connection made (warm-up and measured window alike) reached the server (and
    // some more, begun as the run ended), and the server closed them all; each that
    // finished its cycle sent one whole message and got it back.
    let made = json_field(&json, "conns");
    let stats = server.wait_for("every churned connection to close", |s| {
        s.active == 0 && s.accepted >= made
    });
    assert_eq!(stats.closed_total(), stats.accepted);
    assert!(stats.bytes_out >= cycles * 64);
    assert_eq!(stats.bytes_in % 64, 0);
}

#[test]
fn bind_spreads_connections_over_the_source_addresses_given() {
    let mut config = echod::Config::listening_on(["127.0.0.1:0"]);
    config.max_connections_per_ip = Some(1); // one per source: a second from one is refused
    let server = TestServer::with(config);
    let (out, json) = loadgen(
        server.addr(),
        &[
            "--idle",
            "--conns",
            "3",
            "--bind",
            "127.0.0.2,127.0.0.3,127.0.0.4",
            "--duration",
            "0.2",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{json}");
    assert_eq!(json_field(&json, "answered"), 3);
    let stats = server.stop();
    assert_eq!(stats.rejected_per_ip, 0);
    assert_eq!(stats.peak_active, 3);

    // Churn from chosen sources works the same way.
    let server = TestServer::start();
    let (out, json) = loadgen(
        server.addr(),
        &[
            "--churn",
            "--conns",
            "4",
            "--bind",
            "127.0.0.2,127.0.0.3",
            "--duration",
            "0.2",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{json}");
    assert!(json_field(&json, "cycles") > 0, "{json}");
}

#[test]
fn churn_catches_a_corrupting_server() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        // Every connection's echo has its 21st byte flipped.
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut buf = [0; 64];
            if stream.read_exact(&mut buf).is_ok() {
                buf[20] ^= 1;
                let _ = stream.write_all(&buf);
            }
        }
    });
    let (out, json) = loadgen(addr, &["--churn", "--conns", "1", "--duration", "0.2"]);
    assert_eq!(out.status.code(), Some(1), "{json}");
    assert!(json_field(&json, "mismatches") >= 1, "{json}");
    assert_eq!(json_field(&json, "cycles"), 0);
}

#[test]
fn over_tls_every_byte_is_checked_and_churn_shakes_hands_each_time() {
    let config = echod::Config::listening_on(["127.0.0.1:0", "tls:127.0.0.1:0"]);
    let server = TestServer::with(config);
    let tls = format!("tls:{}", server.tls_addrs[0]);
    let (out, json) = loadgen(
        &tls,
        &[
            "--conns",
            "10",
            "--size",
            "5000",
            "--pipeline",
            "2",
            "--duration",
            "0.5",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{json}");
    assert_eq!(json_field(&json, "errors"), 0);
    let msgs = json_field(&json, "msgs");
    assert!(msgs > 0, "{json}");
    // Held idle: each handshake completes while it waits, and each answers its ping.
    let (out, json) = loadgen(&tls, &["--idle", "--conns", "30", "--duration", "0.3"]);
    assert_eq!(out.status.code(), Some(0), "{json}");
    assert_eq!(json_field(&json, "answered"), 30, "{json}");
    let (out, json) = loadgen(&tls, &["--churn", "--conns", "4", "--duration", "0.5"]);
    assert_eq!(out.status.code(), Some(0), "{json}");
    let cycles = json_field(&json, "cycles");
    assert!(cycles > 0, "{json}");
    let stats = server.stats();
    // One handshake per connection: the ten loaded, the thirty held, every churned one.
    assert!(stats.handshakes >= 40 + cycles, "{stats:?} {json}");
    // Only the churn slots cut off mid-handshake when the window closed may have failed.
    assert!(stats.handshakes_failed <= 4, "{stats:?}");
}

#[test]
fn over_websocket_and_wss_every_byte_is_checked() {
    let config = echod::Config::listening_on(["ws:127.0.0.1:0", "wss:127.0.0.1:0"]);
    let server = TestServer::with(config);
    for (addr, tls) in server.ws_addrs.clone() {
        let spec = format!("{}:{addr}", if tls { "wss" } else { "ws" });
        let (out, json) = loadgen(
            &spec,
            &[
                "--conns",
                "10",
                "--size",
                "3000",
                "--pipeline",
                "2",
                "--duration",
                "0.5",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{spec}: {json}");
        assert_eq!(json_field(&json, "errors"), 0, "{spec}");
        assert!(json_field(&json, "msgs") > 0, "{spec}: {json}");
        let (out, json) = loadgen(&spec, &["--idle", "--conns", "20", "--duration", "0.3"]);
        assert_eq!(out.status.code(), Some(0), "{spec}: {json}");
        assert_eq!(json_field(&json, "answered"), 20, "{spec}: {json}");
    }
    let stats = server.stats();
    assert!(stats.handshakes >= 60, "every upgrade counted: {stats:?}");
}
