//! Running as a service, tested against the real things: sockets passed by Debian's
//! `systemd-socket-activate`, notifications read off a real `NOTIFY_SOCKET`, two processes
//! on one port with SO_REUSEPORT, and the shipped units checked by `systemd-analyze`.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{BinaryServer, IO_TIMEOUT, Spawned, connect, connect_unix, round_trip, wait_until};

const ECHOD: &str = env!("CARGO_BIN_EXE_echod");

/// A systemd tool by name. Missing, it fails the test under CI (which installs Debian's
/// `systemd` package) and skips it, loudly, elsewhere.
fn systemd_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is missing: .ci/run installs Debian's systemd package"
        );
        eprintln!("SKIPPED: {name} is not installed (apt-get install systemd)");
    }
    found
}

/// A port nobody listens on right now, for tools that cannot take port 0.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `systemd-socket-activate ARGS… echod ECHOD_ARGS…` on a TCP port it binds itself (it
/// cannot take port 0, so a free one is picked, and picked again should it be taken).
fn activate(
    tool: &Path,
    sockets: &[&str],
    echod_args: &[&str],
    ready_line: &str,
) -> (Spawned, u16) {
    for _ in 0..5 {
        let port = free_port();
        let mut command = Command::new(tool);
        for socket in sockets {
            command.arg(socket.replace("PORT", &port.to_string()));
        }
        command
            .args(["-E", "RUST_LOG=info", ECHOD])
            .args(echod_args);
        let mut running = Spawned::spawn(command);
        let ready = ready_line.replace("PORT", &port.to_string());
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            if running.log.text().contains(&ready) {
                return (running, port);
            }
            if running.child.try_wait().unwrap().is_some() {
                break; // the port was taken after all: pick another
            }
            assert!(Instant::now() < deadline, "{}", running.log.text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    panic!("systemd-socket-activate never started listening");
}

#[test]
fn socket_activation_serves_the_tcp_and_unix_sockets_systemd_passes() {
    let Some(tool) = systemd_tool("systemd-socket-activate") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("activated.sock");
    let path_text = path.to_str().unwrap();
    let (mut running, port) = activate(
        &tool,
        &[
            "--listen=127.0.0.1:PORT",
            &format!("--listen={path_text}"),
            "--fdname=echo-tcp:echo-unix",
        ],
        // --listen adds a socket of echod's own beside the inherited ones.
        &["--listen", "127.0.0.1:0"],
        &format!("Listening on {path_text} as 4."),
    );
    // The first connection is what makes systemd-socket-activate start echod.
    let mut tcp = connect(SocketAddr::from(([127, 0, 0, 1], port)));
    round_trip(&mut tcp, b"Hello, world");
    let mut unix = connect_unix(path_text);
    round_trip(&mut unix, "汉语/漢語 Hànyǔ".as_bytes());
    // echod logs each listener in turn; its own comes after the two it inherited.
    let own_listener = |line: &str| {
        line.split_once("listening on ")
            .and_then(|(_, rest)| rest.parse::<SocketAddr>().ok())
            .filter(|addr| addr.port() != port)
    };
    let log = running
        .log
        .wait_until("line for echod's own listener", |text| {
            text.lines().any(|line| own_listener(line).is_some())
        });
    assert!(
        log.contains(&format!(
            "adopted inherited socket 0 (\"echo-tcp\"): 127.0.0.1:{port}"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "adopted inherited socket 1 (\"echo-unix\"): unix:{path_text}"
        )),
        "{log}"
    );
    let own = log
        .lines()
        .find_map(own_listener)
        .expect("echod's own --listen socket");
    round_trip(&mut connect(own), b"and its own socket too");
    drop((tcp, unix));
    running.signal(libc::SIGTERM);
    assert_eq!(running.wait_exit().code(), Some(0));
    assert!(
        path.exists(),
        "echod removed a socket file it did not create"
    );
}

#[test]
fn an_inherited_udp_socket_is_served() {
    let Some(tool) = systemd_tool("systemd-socket-activate") else {
        return;
    };
    let (running, port) = activate(
        &tool,
        &["--datagram", "--listen=127.0.0.1:PORT", "--fdname=echo-udp"],
        &[],
        "Listening on 127.0.0.1:PORT as 3.",
    );
    // The first datagram makes systemd-socket-activate start echod, and is answered.
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    for message in [&b"wake up"[..], "汉语/漢語 Hànyǔ".as_bytes()] {
        client.send_to(message, server).unwrap();
        let mut buf = [0; 64];
        let (n, from) = client.recv_from(&mut buf).expect("an echo");
        assert_eq!((&buf[..n], from), (message, server));
    }
    let log = running.log.wait_for("listening on udp:");
    assert!(
        log.contains(&format!(
            "adopted inherited socket 0 (\"echo-udp\"): udp:127.0.0.1:{port}"
        )),
        "{log}"
    );
}

#[test]
fn an_inherited_socket_of_a_kind_not_served_is_skipped_and_alone_is_an_error() {
    let Some(tool) = systemd_tool("systemd-socket-activate") else {
        return;
    };
    // A Unix datagram socket: a warning, and with nothing else to serve, exit status 1.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dgram.sock");
    let path_text = path.to_str().unwrap();
    let (mut running, _) = activate(
        &tool,
        &["--datagram", &format!("--listen={path_text}")],
        &[],
        &format!("Listening on {path_text} as 3."),
    );
    let nudge = UnixDatagram::unbound().unwrap();
    nudge.send_to(b"wake up", &path).unwrap();
    assert_eq!(running.wait_exit().code(), Some(1));
    // The process has exited, but its last stderr lines may still be on their way to the
    // thread collecting them: wait for the last one, with a deadline.
    let log = running
        .log
        .wait_for("echod: nothing to listen on: every inherited socket was skipped");
    assert!(
        log.contains(
            "inherited socket 0: is a Unix datagram socket, which echod does not serve; skipped"
        ),
        "{log}"
    );
}

#[test]
fn an_inherited_descriptor_that_is_not_a_socket_is_an_error() {
    // LISTEN_PID must be echod's own pid: the shell's, which `exec` keeps.
    let mut command = Command::new("sh");
    command.args([
        "-c",
        "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" 3</dev/null",
        ECHOD,
    ]);
    let out = command.env("RUST_LOG", "warn").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.trim_end(),
        "echod: cannot listen on inherited socket 0: fd 3 is not a socket"
    );
}

#[test]
fn listen_fds_meant_for_another_process_are_ignored() {
    let mut command = Command::new("sh");
    command.args([
        "-c",
        "LISTEN_PID=1 LISTEN_FDS=1 exec \"$0\" --listen 127.0.0.1:0 3</dev/null",
        ECHOD,
    ]);
    let server = BinaryServer::spawn(command);
    round_trip(&mut server.connect(), b"served all the same");
    let log = server.wait_for_log("is meant for process 1, not this one");
    assert!(log.contains("LISTEN_FDS=1 is meant for process 1"), "{log}");
}

/// Reads one notification datagram, as systemd would, within `within`.
fn next_notification(socket: &UnixDatagram, within: Duration) -> String {
    socket.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification in time");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[test]
fn notify_says_ready_after_binding_pings_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let systemd = UnixDatagram::bind(&notify_path).unwrap();
    // 400 ms: echod must ping every 200 ms, and never leave a gap systemd would punish.
    const WATCHDOG: Duration = Duration::from_millis(400);
    let mut command = Command::new(ECHOD);
    command
        .args(["--listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string());
    let mut server = BinaryServer::spawn(command);

    let first = next_notification(&systemd, IO_TIMEOUT);
    assert!(
        first.starts_with("READY=1\nSTATUS=serving on 1 sockets"),
        "{first:?}"
    );
    // Ready means ready: the port answers now.
    round_trip(&mut server.connect(), b"ready?");

    let mut last = Instant::now();
    for ping in 0..5 {
        let message = next_notification(&systemd, WATCHDOG);
        let gap = last.elapsed();
        last = Instant::now();
        assert!(message.starts_with("WATCHDOG=1\nSTATUS="), "{message:?}");
        assert!(message.contains("connections open"), "{message:?}");
        // The first gap includes the round trip above; after it, no ping comes early.
        assert!(
            ping == 0 || gap >= WATCHDOG / 4,
            "ping {ping} came after only {gap:?}"
        );
    }

    server.signal(libc::SIGTERM);
    let stopping = loop {
        let message = next_notification(&systemd, IO_TIMEOUT);
        if !message.starts_with("WATCHDOG=1") {
            break message;
        }
    };
    assert!(
        stopping.starts_with("STOPPING=1\nSTATUS=SIGTERM: stopping"),
        "{stopping:?}"
    );
    assert_eq!(server.wait_exit(IO_TIMEOUT).code(), Some(0));
}

#[test]
fn a_notify_socket_pointing_nowhere_is_a_warning_not_a_failure() {
    let mut command = Command::new(ECHOD);
    command
        .args(["--listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", "/nonexistent/notify");
    let mut server = BinaryServer::spawn(command);
    round_trip(&mut server.connect(), b"still serving");
    server.wait_for_log("cannot notify systemd (NOTIFY_SOCKET)");
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(IO_TIMEOUT).code(), Some(0));
}

/// The `accepted=` counter from a SIGUSR1 stats line.
fn accepted_so_far(server: &BinaryServer, nth_line: usize) -> u64 {
    server.signal(libc::SIGUSR1);
    let line = wait_until(|| {
        let log = server.log.text();
        log.lines()
            .filter(|l| l.contains(" stats accepted="))
            .nth(nth_line)
            .map(str::to_owned)
            .ok_or_else(|| format!("no stats line:\n{log}"))
    });
    let value = line.split("accepted=").nth(1).unwrap();
    value.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn reuse_port_shares_one_port_between_two_processes() {
    let mut first = BinaryServer::start(&["--reuse-port"]);
    let port = first.addr.port();
    let mut command = Command::new(ECHOD);
    command.args(["--reuse-port", "--listen", &format!("127.0.0.1:{port}")]);
    let second = BinaryServer::spawn(command);
    assert_eq!(second.addr, first.addr);

    // 200 clients, all held open: each gets exactly its own bytes back.
    let mut clients: Vec<_> = (0..200).map(|_| connect(first.addr)).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        round_trip(client, format!("client {i} over a shared port").as_bytes());
    }
    let (a, b) = (accepted_so_far(&first, 0), accepted_so_far(&second, 0));
    assert_eq!(a + b, 200, "every connection was accepted exactly once");
    assert!(a > 0 && b > 0, "the kernel spread them: {a} and {b}");

    // One process leaves; from then on the other serves every newcomer.
    first.signal(libc::SIGTERM);
    drop(clients); // lets the first drain and exit
    assert_eq!(first.wait_exit(IO_TIMEOUT).code(), Some(0));
    for i in 0..50 {
        round_trip(
            &mut connect(second.addr),
            format!("newcomer {i}").as_bytes(),
        );
    }
    assert_eq!(accepted_so_far(&second, 1), b + 50);
}

#[test]
fn reuse_port_against_a_port_held_without_it_is_one_clear_line() {
    let holder = BinaryServer::start(&[]);
    let out = Command::new(ECHOD)
        .args(["--reuse-port", "--listen", &holder.addr.to_string()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.trim_end(),
        format!(
            "echod: cannot listen on {}: Address already in use (os error 98) \
             (--reuse-port shares a port only with sockets that also set it)",
            holder.addr
        )
    );
}

#[test]
fn the_shipped_units_verify_without_a_warning() {
    let Some(analyze) = systemd_tool("systemd-analyze") else {
        return;
    };
    // `verify` checks that ExecStart= exists, so the units are checked inside a root that
    // holds them, the built binary at /usr/local/bin/echod, and systemd's own units.
    let root = tempfile::tempdir().unwrap();
    let units = root.path().join("etc/systemd/system");
    let bin = root.path().join("usr/local/bin");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(ECHOD, bin.join("echod")).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if name.ends_with(".service") || name.ends_with(".socket") {
            std::fs::copy(entry.path(), units.join(&name)).unwrap();
            names.push(name.replace("@.", "@1."));
        }
    }
    names.sort();
    assert_eq!(names, ["echod.service", "echod.socket", "echod@1.service"]);
    let system_units = root.path().join("usr/lib/systemd");
    std::fs::create_dir_all(&system_units).unwrap();
    let copied = Command::new("cp")
        .args(["-r", "/usr/lib/systemd/system"])
        .arg(&system_units)
        .status()
        .unwrap();
    assert!(copied.success());
    let out = Command::new(analyze)
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .args(&names)
        .output()
        .unwrap();
    let said = common::all_it_said(&out);
    assert!(out.status.success(), "{said}");
    assert_eq!(said, "", "systemd-analyze verify had something to say");
}

#[test]
fn an_inherited_socket_named_tls_is_served_as_tls() {
    let Some(tool) = systemd_tool("systemd-socket-activate") else {
        return;
    };
    let (running, port) = activate(
        &tool,
        &["--listen=127.0.0.1:PORT", "--fdname=tls-echo"],
        &[],
        "Listening on 127.0.0.1:PORT as 3.",
    );
    // Python's ssl module, not verifying echod's self-signed certificate.
    const SCRIPT: &str = r#"
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
with ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20)) as tls:
    tls.sendall(b"activated over TLS")
    print(tls.recv(64).decode())
"#;
    let out = Command::new("python3")
        .args(["-c", SCRIPT, &port.to_string()])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "activated over TLS",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = running.log.wait_for("listening on tls:");
    assert!(
        log.contains(&format!(
            "adopted inherited socket 0 (\"tls-echo\"): tls:127.0.0.1:{port}"
        )),
        "{log}"
    );
}
