//! Unix domain sockets: the same echo contract as TCP through the same state machine, plus
//! what only a socket *file* has: permissions, stale leftovers, and cleaning up.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::thread;

use common::{TestServer, connect_unix, flood_without_reading, pattern, read_to_end, round_trip};
use echod::{Config, Server};

/// A fresh directory for this test's socket files, removed afterwards.
fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

fn spec(path: &Path) -> String {
    format!("unix:{}", path.display())
}

fn server_at(path: &Path) -> TestServer {
    TestServer::with(Config::listening_on([spec(path)]))
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn a_unix_path_echoes_exact_bytes_and_half_closes() {
    let dir = scratch_dir();
    let path = dir.path().join("echo.sock");
    let server = server_at(&path);
    let mut client = connect_unix(path_str(&path));
    round_trip(&mut client, b"Hello, world");
    round_trip(&mut client, "汉语/漢語 Hànyǔ".as_bytes());
    let every_byte: Vec<u8> = (0..=255).collect();
    round_trip(&mut client, &every_byte);
    // Half-close: everything owed arrives, then the server's own EOF.
    let tail = pattern(9, 300_000);
    client.write_all(&tail).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_end(&mut client) == tail);
    let stats = server.wait_for("the connection to close", |s| s.closed_total() == 1);
    assert_eq!(stats.closed_eof, 1);
    let sent = (12 + "汉语/漢語 Hànyǔ".len() + 256 + tail.len()) as u64;
    assert_eq!((stats.bytes_in, stats.bytes_out), (sent, sent));
}

#[test]
fn thirty_two_mib_over_an_abstract_name() {
    const TOTAL: usize = 32 << 20;
    let name = format!("echod-test-{}", std::process::id());
    let server = TestServer::with(Config::listening_on([format!("unix:@{name}")]));
    let mut writer = connect_unix(&format!("@{name}"));
    let mut reader = writer.try_clone().unwrap();
    let data = pattern(32, TOTAL);
    let expected = data.clone();
    let reading = thread::spawn(move || {
        let mut received = vec![0; TOTAL];
        reader.read_exact(&mut received).unwrap();
        received
    });
    for chunk in data.chunks(100_003) {
        writer.write_all(chunk).unwrap();
    }
    assert!(reading.join().unwrap() == expected, "32 MiB echo differs");
    drop(writer);
    let stats = server.stop();
    assert_eq!(stats.bytes_out, TOTAL as u64);
}

#[test]
fn a_unix_client_that_never_reads_is_held_at_the_cap_and_loses_nothing() {
    const TOTAL: usize = 16 << 20;
    let dir = scratch_dir();
    let path = dir.path().join("flood.sock");
    let server = server_at(&path);
    let writer = connect_unix(path_str(&path));
    let reader = writer.try_clone().unwrap();
    let stats = flood_without_reading(server, writer, reader, 16, TOTAL, || {
        // A bystander is served meanwhile.
        let mut bystander = connect_unix(path_str(&path));
        round_trip(&mut bystander, b"not starved");
    });
    assert_eq!(stats.bytes_out, TOTAL as u64 + 11);
}

#[test]
fn the_socket_file_gets_the_mode_asked_and_is_removed_at_exit() {
    let dir = scratch_dir();
    let path = dir.path().join("mode.sock");
    let mut config = Config::listening_on([spec(&path)]);
    config.unix_mode = 0o604; // an odd mode no umask would give by accident
    let server = TestServer::with(config);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o604);
    // Nothing but the socket is left behind in the directory (no private bind directory).
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("mode.sock")]);
    round_trip(&mut connect_unix(path_str(&path)), b"mode");
    server.stop();
    assert!(!path.exists(), "socket file left behind at exit");
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = scratch_dir();
    let path = dir.path().join("stale.sock");
    drop(UnixListener::bind(&path).unwrap()); // a crashed server's leftover
    assert!(path.exists());
    let server = server_at(&path);
    round_trip(&mut connect_unix(path_str(&path)), b"fresh");
    server.stop();
}

#[test]
fn a_live_socket_is_refused_and_left_alone() {
    let dir = scratch_dir();
    let path = dir.path().join("live.sock");
    let live = UnixListener::bind(&path).unwrap();
    let err = Server::bind(Config::listening_on([spec(&path)]))
        .err()
        .unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert_eq!(
        err.to_string(),
        format!(
            "cannot listen on {}: another server is listening on this socket",
            spec(&path)
        )
    );
    // The other server's socket still works.
    let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
    live.accept().unwrap();
}

#[test]
fn a_regular_file_is_refused_and_kept() {
    let dir = scratch_dir();
    let path = dir.path().join("precious.txt");
    std::fs::write(&path, b"keep me").unwrap();
    let err = Server::bind(Config::listening_on([spec(&path)]))
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot listen on {}: the path exists and is not a socket; echod will not remove it",
            spec(&path)
        )
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

#[test]
fn a_missing_directory_is_named() {
    let dir = scratch_dir();
    let path: PathBuf = dir.path().join("no-such-dir").join("x.sock");
    let err = Server::bind(Config::listening_on([spec(&path)]))
        .err()
        .unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(
        err.to_string().contains(&format!(
            "directory {}: No such file or directory",
            dir.path().join("no-such-dir").display()
        )),
        "{err}"
    );
}

#[test]
fn the_connection_cap_applies_to_unix_clients_and_the_per_ip_cap_does_not() {
    let dir = scratch_dir();
    let path = dir.path().join("caps.sock");
    let mut config = Config::listening_on([spec(&path)]);
    config.max_connections = 3;
    config.max_connections_per_ip = Some(1);
    let server = TestServer::with(config);
    let mut clients: Vec<_> = (0..3).map(|_| connect_unix(path_str(&path))).collect();
    for client in &mut clients {
        round_trip(client, b"in"); // three from one machine, despite the per-IP cap of 1
    }
    let mut extra = connect_unix(path_str(&path));
    assert!(read_to_end(&mut extra).is_empty(), "the fourth sees EOF");
    let stats = server.stop();
    assert_eq!(stats.rejected_max_connections, 1);
    assert_eq!(stats.rejected_per_ip, 0);
}

#[test]
fn tcp_and_unix_listeners_serve_side_by_side() {
    let dir = scratch_dir();
    let path = dir.path().join("mixed.sock");
    let server = TestServer::with(Config::listening_on([
        "127.0.0.1:0".to_string(),
        spec(&path),
    ]));
    let mut tcp = server.connect();
    let mut unix = connect_unix(path_str(&path));
    round_trip(&mut tcp, b"over tcp");
    round_trip(&mut unix, b"over unix");
    round_trip(&mut tcp, b"still tcp");
    drop((tcp, unix));
    let stats = server.stop();
    assert_eq!(stats.accepted, 2);
}
