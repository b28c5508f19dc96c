//! The tutorial's pieces: the example client against the real server, and the server's
//! `ack`, `discard` and `--print` modes.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::process::{Output, Stdio};

use common::{BinaryServer, TestServer, read_to_end, round_trip};
use echod::{Config, Mode};

fn run_client(server_port: u16, args: &[&str], stdin: &str) -> Output {
    let mut child = common::example("client")
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &server_port.to_string(),
            "--timeout",
            "20",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap()
}

#[test]
fn client_sends_the_tutorial_greetings_by_default() {
    let server = TestServer::start();
    let out = run_client(server.addr().port(), &[], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "Received: Hello, world\nReceived: 汉语/漢語 Hànyǔ\n"
    );
}

#[test]
fn client_talks_over_unix_sockets_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tutorial.sock");
    let name = format!("echod-client-{}", std::process::id());
    let server = TestServer::with(Config::listening_on([
        format!("unix:{}", path.display()),
        format!("unix:@{name}"),
    ]));
    for host in [format!("unix:{}", path.display()), format!("unix:@{name}")] {
        let out = common::example("client")
            .args([
                "--host",
                &host,
                "--timeout",
                "20",
                "Hello, world",
                "汉语/漢語 Hànyǔ",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout),
            "Received: Hello, world\nReceived: 汉语/漢語 Hànyǔ\n"
        );
    }
    drop(server);
    let out = common::example("client")
        .args(["--host", &format!("unix:{}", path.display())])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "client: cannot connect to unix:{}: No such file or directory (os error 2)\n",
            path.display()
        )
    );
}

#[test]
fn client_round_trips_given_messages_and_hex() {
    let server = TestServer::start();
    let out = run_client(server.addr().port(), &["one", "two words", "ünï"], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "Received: one\nReceived: two words\nReceived: ünï\n"
    );
    let out = run_client(server.addr().port(), &["--hex", "AB\u{1}"], "");
    assert_eq!(text(&out.stdout), "Received: 41 42 01\n");
}

#[test]
fn client_interactive_through_a_pipe_sends_a_message_per_line() {
    let server = TestServer::start();
    let out = run_client(
        server.addr().port(),
        &["--interactive"],
        "first\n汉语\n\nlast\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let p = "Type your msg here: ";
    assert_eq!(
        text(&out.stdout),
        format!("{p}Received: first\n{p}Received: 汉语\n{p}{p}Received: last\n{p}\n")
    );
}

/// A broken "echo" server for the client to catch: it flips the case of ASCII letters.
fn corrupting_server() -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let thread = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = [0; 1024];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            let flipped: Vec<u8> = buf[..n].iter().map(|b| b ^ 0x20).collect();
            if stream.write_all(&flipped).is_err() {
                break;
            }
        }
    });
    (port, thread)
}

#[test]
fn client_fails_when_the_echo_differs() {
    let (port, server) = corrupting_server();
    let out = run_client(port, &["Hello"], "");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "client: the echo differs: sent \"Hello\", received \"hELLO\"\n"
    );
    assert_eq!(text(&out.stdout), "");
    server.join().unwrap();
}

#[test]
fn client_fails_clearly_when_nobody_listens() {
    // Bind then drop: a port that was just free and has no listener now.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = run_client(port, &["hi"], "");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "client: cannot connect to 127.0.0.1:{port} (tried 127.0.0.1:{port}: Connection refused"
        )),
        "{stderr}"
    );
}

#[test]
fn ack_mode_answers_got_it_for_each_read() {
    let mut config = Config::listening_on(["127.0.0.1:0"]);
    config.mode = Mode::Ack;
    let server = TestServer::with(config);
    let mut client = server.connect();
    for message in ["first", "a much longer second message", "汉语"] {
        client.write_all(message.as_bytes()).unwrap();
        let mut reply = [0; 7];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"Got it!");
    }
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        read_to_end(&mut client),
        b"",
        "one reply per read, nothing more"
    );
    let stats = server.stop();
    assert_eq!(stats.bytes_out, 3 * 7);
}

#[test]
fn discard_mode_returns_nothing_and_closes_cleanly() {
    let mut config = Config::listening_on(["127.0.0.1:0"]);
    config.mode = Mode::Discard;
    let server = TestServer::with(config);
    let mut client = server.connect();
    let sent = common::pattern(9, 5 << 20);
    client.write_all(&sent).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut client), b"");
    let stats = server.wait_for("the close", |s| s.closed_total() == 1);
    assert_eq!(
        (stats.bytes_in, stats.bytes_out, stats.closed_eof),
        (sent.len() as u64, 0, 1)
    );
}

#[test]
fn print_shows_what_the_server_heard() {
    let mut server = BinaryServer::start(&["--print"]);
    let mut client = server.connect();
    round_trip(&mut client, "汉语 \"quoted\"\r\n".as_bytes());
    let peer = client.local_addr().unwrap();
    drop(client);
    let stdout = server.stop_for_stdout();
    assert_eq!(
        stdout,
        format!("Server heard \"汉语 \\\"quoted\\\"\\r\\n\" from {peer}\n")
    );
}
