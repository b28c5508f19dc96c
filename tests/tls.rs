//! `tls:` listeners: the TCP echo contract inside a TLS session, the handshake's bounds,
//! certificates from files (and SIGHUP), and real peers nobody here wrote: Python's `ssl`
//! module and `openssl s_client`, on TLS 1.2 and 1.3.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use common::{BinaryServer, IO_TIMEOUT, TestServer, connect, pattern, round_trip};
use echod::Config;

/// A certificate for `localhost` and its key, as PEM files in a fresh directory.
struct Identity {
    dir: tempfile::TempDir,
    cert: CertificateDer<'static>,
}

impl Identity {
    fn new() -> Identity {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), made.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), made.signing_key.serialize_pem()).unwrap();
        Identity {
            dir,
            cert: made.cert.der().clone(),
        }
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    fn files(&self) -> Option<(PathBuf, PathBuf)> {
        Some((self.cert_path(), self.key_path()))
    }
}

/// An in-process server on `tls:127.0.0.1:0` presenting `identity`.
fn tls_server(identity: &Identity, tune: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = Config::listening_on(["127.0.0.1:0", "tls:127.0.0.1:0"]);
    config.tls_files = identity.files();
    tune(&mut config);
    TestServer::with(config)
}

/// A client trusting only `cert`, speaking only `version`.
fn client_config(
    cert: &CertificateDer<'static>,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A blocking TLS client for `localhost` at `addr` (the handshake runs on first use).
fn tls_connect(addr: SocketAddr, config: Arc<ClientConfig>) -> Tls {
    let socket = connect(addr);
    let name = ServerName::try_from("localhost").unwrap();
    StreamOwned::new(ClientConnection::new(config, name).unwrap(), socket)
}

/// Reads until the server's close_notify; a FIN without one is a failure.
fn read_to_close_notify(stream: &mut Tls) -> Vec<u8> {
    let mut all = Vec::new();
    stream
        .read_to_end(&mut all)
        .expect("the server ends with close_notify");
    all
}

#[test]
fn bytes_come_back_exactly_over_tls_1_2_and_1_3() {
    let identity = Identity::new();
    let server = tls_server(&identity, |_| {});
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut client = tls_connect(server.tls_addrs[0], client_config(&identity.cert, version));
        round_trip(&mut client, "Hello, world".as_bytes());
        round_trip(&mut client, "汉语/漢語 Hànyǔ".as_bytes());
        let every_byte: Vec<u8> = (0..=255).collect();
        round_trip(&mut client, &every_byte);
        assert_eq!(client.conn.protocol_version(), Some(version.version));
    }
    // The plain listener beside it is unaffected.
    round_trip(&mut server.connect(), b"plain still");
    let stats = server.stop();
    assert_eq!(stats.handshakes, 2);
    assert_eq!(stats.handshakes_failed, 0);
}

#[test]
fn close_notify_mid_stream_gets_everything_owed_then_close_notify() {
    let identity = Identity::new();
    let server = tls_server(&identity, |_| {});
    let config = client_config(&identity.cert, &rustls::version::TLS13);
    let mut client = tls_connect(server.tls_addrs[0], config);
    // Written without reading (small enough for the socket buffers to hold its echo):
    // the server still owes some of it when the client ends.
    let sent = pattern(7, 128 << 10);
    client.write_all(&sent).unwrap();
    client.conn.send_close_notify();
    client.flush().unwrap();
    let received = read_to_close_notify(&mut client);
    assert!(
        received == sent,
        "{} of {} bytes back",
        received.len(),
        sent.len()
    );
    let stats = server.wait_for("the close", |s| s.closed_total() == 1);
    assert_eq!(stats.closed_eof, 1);
    assert_eq!(stats.bytes_out, sent.len() as u64);
}

#[test]
fn a_fin_without_close_notify_is_an_ordinary_end() {
    let identity = Identity::new();
    let server = tls_server(&identity, |_| {});
    let mut client = tls_connect(
        server.tls_addrs[0],
        client_config(&identity.cert, &rustls::version::TLS13),
    );
    round_trip(&mut client, b"then a bare FIN");
    client.sock.shutdown(Shutdown::Write).unwrap();
    let stats = server.wait_for("the close", |s| s.closed_total() == 1);
    assert_eq!(stats.closed_eof, 1, "{stats:?}");
    assert_eq!(stats.closed_error, 0, "{stats:?}");
}

/// Waits until `socket` is readable or writable (as asked), or a short while passes.
fn wait_ready(socket: &TcpStream, write: bool) {
    use std::os::fd::AsRawFd;
    let mut poll = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN | if write { libc::POLLOUT } else { 0 },
        revents: 0,
    };
    // SAFETY: one valid pollfd for the length of the call.
    unsafe { libc::poll(&mut poll, 1, 50) };
}

#[test]
fn a_client_that_never_reads_is_held_at_the_cap_and_loses_nothing() {
    const TOTAL: usize = 16 << 20;
    let cap = echod::config::DEFAULT_MAX_PENDING as u64;
    let identity = Identity::new();
    let server = tls_server(&identity, |_| {});
    let config = client_config(&identity.cert, &rustls::version::TLS13);
    let mut client = tls_connect(server.tls_addrs[0], config);
    round_trip(&mut client, b"handshake first");
    // From here the session is pumped by hand on a non-blocking socket, so that writing
    // and reading are separate choices (rustls is sans-I/O).
    let StreamOwned { mut conn, mut sock } = client;
    conn.set_buffer_limit(Some(64 << 10));
    sock.set_nonblocking(true).unwrap();
    let data = pattern(16, TOTAL);
    let mut sent = 0;
    let mut received = Vec::with_capacity(TOTAL);
    let mut buf = vec![0; 1 << 16];
    let mut reading = false;
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    while received.len() < TOTAL {
        assert!(
            std::time::Instant::now() < deadline,
            "stuck at {sent} sent, {} back",
            received.len()
        );
        if sent < TOTAL {
            sent += conn.writer().write(&data[sent..]).unwrap();
        }
        while conn.wants_write() {
            match conn.write_tls(&mut sock) {
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(err) => panic!("write: {err}"),
            }
        }
        if !reading {
            // Never reading: the server must stop at the cap. Once it has, a bystander
            // is served meanwhile, over TLS and plain TCP; then the client starts reading.
            if server.stats().peak_pending_connection < cap {
                wait_ready(&sock, true);
                continue;
            }
            let mut bystander = tls_connect(
                server.tls_addrs[0],
                client_config(&identity.cert, &rustls::version::TLS12),
            );
            round_trip(&mut bystander, b"not starved");
            round_trip(&mut server.connect(), b"nor this one");
            reading = true;
        }
        match conn.read_tls(&mut sock) {
            Ok(0) => panic!("closed early at {}", received.len()),
            Ok(_) => {
                conn.process_new_packets().unwrap();
                loop {
                    match conn.reader().read(&mut buf) {
                        Ok(n) if n > 0 => received.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                wait_ready(&sock, sent < TOTAL)
            }
            Err(err) => panic!("read: {err}"),
        }
    }
    assert!(received == data, "the 16 MiB echo differs");
    drop((conn, sock));
    let stats = server.stop();
    assert_eq!(stats.peak_pending_connection, cap, "pending passed the cap");
}

#[test]
fn garbage_and_plain_http_on_a_tls_port_close_only_themselves() {
    let identity = Identity::new();
    let server = tls_server(&identity, |_| {});
    let config = client_config(&identity.cert, &rustls::version::TLS13);
    let mut good = tls_connect(server.tls_addrs[0], Arc::clone(&config));
    round_trip(&mut good, b"before");
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3][..],
        &pattern(3, 10_000)[..],
    ] {
        let mut bad = connect(server.tls_addrs[0]);
        let _ = bad.write_all(junk);
        // The server answers with an alert (or nothing) and closes.
        let mut rest = Vec::new();
        let _ = bad.read_to_end(&mut rest);
        assert!(rest.len() < 64, "{} bytes back for garbage", rest.len());
    }
    round_trip(&mut good, b"after");
    let stats = server.wait_for("three failed handshakes", |s| s.handshakes_failed == 3);
    assert_eq!(stats.handshakes, 1);
}

#[test]
fn half_a_client_hello_then_silence_is_closed_at_the_handshake_timeout() {
    let identity = Identity::new();
    let server = tls_server(&identity, |config| {
        config.handshake_timeout = Duration::from_millis(300);
    });
    let mut slow = connect(server.tls_addrs[0]);
    slow.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap(); // a record header, a byte
    let mut silent = connect(server.tls_addrs[0]);
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest); // returns when the server closes
    let _ = silent.read_to_end(&mut rest);
    let stats = server.wait_for("both timed out", |s| s.closed_handshake_timeout == 2);
    assert_eq!(
        stats.handshakes_failed, 0,
        "a timeout is counted as a timeout"
    );
    // A plain connection is never subject to it.
    let mut plain = server.connect();
    round_trip(&mut plain, b"plain has no handshake");
    drop(plain);
    let stats = server.stop();
    assert_eq!(stats.closed_handshake_timeout, 2, "{stats:?}");
}

/// The TLS address a binary echod printed (`listening on tls:ADDR`).
fn tls_addr_of(server: &BinaryServer) -> SocketAddr {
    let line = server.wait_for_log("listening on tls:");
    let after = line.split("listening on tls:").nth(1).unwrap();
    after.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn without_certificate_files_a_self_signed_one_is_made_and_its_fingerprint_logged() {
    let server = BinaryServer::start(&["--listen", "tls:127.0.0.1:0"]);
    let addr = tls_addr_of(&server);
    let log = server.wait_for_log("ephemeral self-signed certificate");
    assert!(log.contains("localhost, 127.0.0.1, ::1"), "{log}");
    let fingerprint = log
        .split("SHA-256 ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap();
    assert_eq!(fingerprint.len(), 32 * 3 - 1, "{fingerprint}");
    // Python's ssl, told not to verify, as a client of a self-signed peer would be.
    let out = python_client(addr, None, "TLSv1_3", b"self-signed works");
    assert_eq!(out, "TLSv1.3 self-signed works");
}

#[test]
fn bad_certificate_files_are_one_line_and_exit_1() {
    let identity = Identity::new();
    let other = Identity::new();
    let missing = identity.dir.path().join("missing.pem");
    let cases: [(&Path, &Path, &str); 3] = [
        (&missing, &identity.key_path(), "cannot load"),
        (&identity.cert_path(), &identity.cert_path(), "cannot load"),
        (
            &identity.cert_path(),
            &other.key_path(),
            "do not make a usable certificate",
        ),
    ];
    for (cert, key, why) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_echod"))
            .args(["--listen", "tls:127.0.0.1:0", "--quiet", "--tls-cert"])
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{cert:?} {key:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("echod: ") && stderr.contains(why),
            "{stderr}"
        );
    }
}

#[test]
fn sighup_rereads_the_files_and_a_bad_file_keeps_the_old_certificate() {
    let first = Identity::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(first.cert_path(), &cert).unwrap();
    std::fs::copy(first.key_path(), &key).unwrap();
    let server = BinaryServer::start(&[
        "--listen",
        "tls:127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let addr = tls_addr_of(&server);
    let trusting_first = client_config(&first.cert, &rustls::version::TLS13);
    let mut open = tls_connect(addr, Arc::clone(&trusting_first));
    round_trip(&mut open, b"on the first certificate");

    // A broken file: an error line, and new clients still get the first certificate.
    std::fs::write(&cert, "not a certificate").unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("keeping the certificate already loaded");
    round_trip(
        &mut tls_connect(addr, Arc::clone(&trusting_first)),
        b"still first",
    );

    // A new pair: new handshakes get it, the open connection goes on.
    let second = Identity::new();
    std::fs::copy(second.cert_path(), &cert).unwrap();
    std::fs::copy(second.key_path(), &key).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("certificate re-read from");
    let trusting_second = client_config(&second.cert, &rustls::version::TLS13);
    round_trip(&mut tls_connect(addr, trusting_second), b"on the second");
    // A client that trusts only the first certificate now fails its handshake.
    let mut refused = tls_connect(addr, trusting_first);
    let err = refused
        .write_all(b"x")
        .and_then(|()| refused.flush())
        .and_then(|()| refused.read(&mut [0]).map(drop))
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    round_trip(&mut open, b"the old session goes on");
}

/// Runs Python's `ssl` client against `addr`: one message, its echo, then the version and
/// the echo printed. `ca`: the certificate to verify against, or none (no verification).
fn python_client(addr: SocketAddr, ca: Option<&Path>, version: &str, message: &[u8]) -> String {
    python_client_naming(addr, ca, "localhost", version, message)
}

/// As `python_client`, sending `name` as the SNI. A name other than `localhost` is not
/// checked against the certificate, but the certificate still must verify against `ca`.
fn python_client_naming(
    addr: SocketAddr,
    ca: Option<&Path>,
    name: &str,
    version: &str,
    message: &[u8],
) -> String {
    const SCRIPT: &str = r#"
import socket, ssl, sys
addr, port, ca, version, message, name = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5].encode(), sys.argv[6]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
if ca:
    ctx.load_verify_locations(ca)
    ctx.check_hostname = name == "localhost"
else:
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)
with socket.create_connection((addr, port), timeout=20) as raw:
    with ctx.wrap_socket(raw, server_hostname=name) as tls:
        tls.sendall(message)
        got = b""
        while len(got) < len(message):
            chunk = tls.recv(65536)
            if not chunk:
                break
            got += chunk
        print(tls.version(), got.decode())
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            SCRIPT,
            &addr.ip().to_string(),
            &addr.port().to_string(),
        ])
        .arg(ca.map_or(String::new(), |p| p.display().to_string()))
        .arg(version)
        .arg(String::from_utf8_lossy(message).as_ref())
        .arg(name)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Python's `ssl` client on TLS 1.2, then 1.3, naming `name` (SNI) and verifying against
/// `ca`: each must get `message` back and say which version it spoke.
fn python_is_answered_on_both_versions(addr: SocketAddr, ca: &Path, name: &str, message: &str) {
    for (version, shown) in [("TLSv1_2", "TLSv1.2"), ("TLSv1_3", "TLSv1.3")] {
        let out = python_client_naming(addr, Some(ca), name, version, message.as_bytes());
        assert_eq!(out, format!("{shown} {message}"), "{version}, SNI {name}");
    }
}

#[test]
fn pythons_ssl_module_is_answered_on_tls_1_2_and_1_3() {
    let identity = Identity::new();
    let server = tls_server(&identity, |_| {});
    python_is_answered_on_both_versions(
        server.tls_addrs[0],
        &identity.cert_path(),
        "localhost",
        "汉语/漢語 Hànyǔ",
    );
    let stats = server.stop();
    assert_eq!(stats.handshakes, 2);
}

/// echod has one certificate: a client naming a host it does not know (SNI) still gets it
/// (verified against it) and its echo, on both versions.
#[test]
fn an_unknown_sni_gets_the_one_certificate_and_its_echo() {
    let identity = Identity::new();
    let server = tls_server(&identity, |_| {});
    python_is_answered_on_both_versions(
        server.tls_addrs[0],
        &identity.cert_path(),
        "no-such-host.example",
        "who am I talking to",
    );
    let stats = server.stop();
    assert_eq!((stats.handshakes, stats.handshakes_failed), (2, 0));
}

#[test]
fn openssl_s_client_is_answered_on_tls_1_2_and_1_3() {
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI must have openssl");
        eprintln!("SKIPPED: no openssl on this machine");
        return;
    }
    let identity = Identity::new();
    let server = tls_server(&identity, |_| {});
    for flag in ["-tls1_2", "-tls1_3"] {
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-no_ign_eof",
                "-verify_return_error",
                flag,
            ])
            .args(["-connect", &server.tls_addrs[0].to_string()])
            .args(["-servername", "localhost", "-CAfile"])
            .arg(identity.cert_path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"Hello from s_client\n").unwrap();
        // Read the echo before closing stdin: on TLS 1.2 (no half-close) s_client ends the
        // whole session at EOF on its input, without waiting for what is owed.
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let (line_tx, line_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut stdout, &mut line);
            let _ = line_tx.send(line);
        });
        let line = line_rx.recv_timeout(IO_TIMEOUT);
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            line.as_deref(),
            Ok("Hello from s_client\n"),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stats = server.stop();
    assert_eq!(stats.handshakes, 2);
}

#[test]
fn the_tutorial_client_speaks_tls_verified_or_insecure() {
    let identity = Identity::new();
    let server = tls_server(&identity, |_| {});
    let port = server.tls_addrs[0].port().to_string();
    let verified = common::example("client")
        .args(["--tls", "--host", "127.0.0.1", "--port", &port, "--ca"])
        .arg(identity.cert_path())
        .output()
        .unwrap();
    // The certificate names localhost, not 127.0.0.1: a verifying client refuses it.
    assert_eq!(verified.status.code(), Some(1));
    let verified = common::example("client")
        .args(["--host", &format!("tls://localhost:{port}"), "--ca"])
        .arg(identity.cert_path())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&verified.stdout),
        "Received: Hello, world\nReceived: 汉语/漢語 Hànyǔ\n",
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let insecure = common::example("client")
        .args([
            "--host",
            &format!("tls://127.0.0.1:{port}"),
            "--insecure",
            "no verification",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&insecure.stdout),
        "Received: no verification\n"
    );
}

#[test]
fn data_and_a_bare_fin_together_still_get_their_echo() {
    let identity = Identity::new();
    let server = tls_server(&identity, |_| {});
    for _ in 0..20 {
        let mut client = tls_connect(
            server.tls_addrs[0],
            client_config(&identity.cert, &rustls::version::TLS13),
        );
        round_trip(&mut client, b"handshake done");
        // The last records and the FIN leave together: the server must read past the
        // short read to the EOF behind it, and still answer everything first.
        client.write_all(b"last words").unwrap();
        client.flush().unwrap();
        client.sock.shutdown(Shutdown::Write).unwrap();
        let mut reply = [0; 10];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"last words");
    }
    let stats = server.wait_for("every close", |s| s.closed_total() == 20);
    assert_eq!(stats.closed_eof, 20, "{stats:?}");
}
