//! The echo contract over real loopback sockets: exact bytes back, in order, on the same
//! connection, whatever the framing, size or number of clients.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::thread;

use common::{TestServer, connect, flood_without_reading, pattern, read_to_end, round_trip};
use echod::Config;

#[test]
fn hello_world_and_unicode_come_back_unchanged() {
    let server = TestServer::start();
    let mut client = server.connect();
    round_trip(&mut client, b"Hello, world");
    round_trip(&mut client, "汉语/漢語 Hànyǔ".as_bytes());
    drop(client);
    let stats = server.stop();
    let sent = ("Hello, world".len() + "汉语/漢語 Hànyǔ".len()) as u64;
    assert_eq!((stats.bytes_in, stats.bytes_out), (sent, sent));
    assert_eq!(stats.accepted, 1);
}

#[test]
fn all_256_byte_values_survive() {
    let server = TestServer::start();
    let mut client = server.connect();
    let every_byte: Vec<u8> = (0..=255).collect();
    round_trip(&mut client, &every_byte);
    let reversed: Vec<u8> = (0..=255).rev().collect();
    round_trip(&mut client, &reversed);
}

#[test]
fn a_message_dribbled_in_tiny_writes_comes_back_whole() {
    let server = TestServer::start();
    let mut client = server.connect();
    client.set_nodelay(true).unwrap();
    let message = b"dribbled one byte at a time, then read back whole";
    for byte in message {
        client.write_all(&[*byte]).unwrap();
    }
    let mut echoed = vec![0; message.len()];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, message);
}

#[test]
fn many_messages_coalesced_in_one_write_come_back_in_order() {
    let server = TestServer::start();
    let mut client = server.connect();
    let batch: Vec<u8> = (0..500)
        .flat_map(|i| format!("message {i:03}\n").into_bytes())
        .collect();
    round_trip(&mut client, &batch);
}

#[test]
fn thirty_two_mib_with_a_concurrent_reader() {
    const TOTAL: usize = 32 << 20;
    let server = TestServer::start();
    let mut writer = server.connect();
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
    let received = reading.join().unwrap();
    assert!(received == expected, "32 MiB echo differs");
    writer.shutdown(Shutdown::Write).unwrap();
    assert!(
        read_to_end(&mut writer).is_empty(),
        "nothing after the echo"
    );
    let stats = server.stop();
    assert_eq!(stats.bytes_in, TOTAL as u64);
    assert_eq!(stats.bytes_out, TOTAL as u64);
    assert_eq!(stats.closed_eof, 1);
    assert!(stats.peak_pending_connection <= echod::config::DEFAULT_MAX_PENDING as u64);
}

#[test]
fn a_thousand_concurrent_clients_each_get_only_their_own_bytes() {
    const CLIENTS: usize = 1000;
    let server = TestServer::start();
    let mut clients: Vec<_> = (0..CLIENTS).map(|_| server.connect()).collect();
    // Everyone sends before anyone reads, so the server juggles all of them at once.
    let payload = |i: usize| format!("client {i:04} says {}", "x".repeat(i % 97)).into_bytes();
    for (i, client) in clients.iter_mut().enumerate() {
        client.write_all(&payload(i)).unwrap();
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let expected = payload(i);
        let mut echoed = vec![0; expected.len()];
        client.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, expected, "client {i} got someone else's bytes");
    }
    server.wait_for("all clients accepted", |s| s.accepted == CLIENTS as u64);
    drop(clients);
    let stats = server.wait_for("all clients closed", |s| s.active == 0);
    assert_eq!(stats.closed_total(), CLIENTS as u64);
    assert_eq!(stats.bytes_in, stats.bytes_out);
}

#[test]
fn half_close_gets_every_byte_then_eof() {
    let server = TestServer::start();
    let mut client = server.connect();
    let message = pattern(7, 300_000);
    client.write_all(&message).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    // Everything owed arrives, then the server's own FIN.
    assert!(read_to_end(&mut client) == message);
    let stats = server.wait_for("the connection to close", |s| s.closed_total() == 1);
    assert_eq!(stats.closed_eof, 1);
}

#[test]
fn a_peer_reset_mid_stream_closes_only_that_connection() {
    let server = TestServer::start();
    let mut bystander = server.connect();
    round_trip(&mut bystander, b"before");

    let mut rude = server.connect();
    // Send plenty and never read, so echoes are still in flight; then reset (linger 0).
    rude.write_all(&pattern(1, 4 << 20)[..]).unwrap_or(());
    socket2::SockRef::from(&rude)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(rude);

    let stats = server.wait_for("the reset to be noticed", |s| s.closed_total() == 1);
    assert_eq!(stats.closed_reset + stats.closed_error, 1);
    round_trip(&mut bystander, b"after");
    let mut newcomer = server.connect();
    round_trip(&mut newcomer, b"newcomer");
}

#[test]
fn a_client_that_floods_without_reading_is_held_at_the_cap_and_loses_nothing() {
    const TOTAL: usize = 64 << 20;
    let server = TestServer::start();
    let writer = server.connect();
    let reader = writer.try_clone().unwrap();
    let stats = flood_without_reading(server, writer, reader, 64, TOTAL, || {});
    assert_eq!(stats.bytes_out, TOTAL as u64);
}

#[test]
fn ipv6_loopback_echoes() {
    let server = TestServer::with(Config::listening_on(["[::1]:0"]));
    assert!(server.addr().is_ipv6());
    let mut client = server.connect();
    round_trip(&mut client, "汉语/漢語 Hànyǔ over ::1".as_bytes());
}

#[test]
fn a_dual_stack_listener_serves_ipv4_clients() {
    let server = TestServer::with(Config::listening_on(["[::]:0"]));
    let port = server.addr().port();
    let mut client = connect(([127, 0, 0, 1], port).into());
    round_trip(&mut client, b"IPv4 via a dual-stack socket");
}

#[test]
fn ipv6_only_refuses_ipv4_clients() {
    let mut config = Config::listening_on(["[::]:0"]);
    config.ipv6_only = true;
    let server = TestServer::with(config);
    let port = server.addr().port();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    let mut client = connect((std::net::Ipv6Addr::LOCALHOST, port).into());
    round_trip(&mut client, b"IPv6 still welcome");
}

#[test]
fn localhost_means_both_loopbacks() {
    let server = TestServer::with(Config::listening_on(["localhost:0"]));
    assert!(server.addrs.iter().any(|a| a.is_ipv4()));
    assert!(server.addrs.iter().any(|a| a.is_ipv6()));
    for &addr in &server.addrs {
        let mut client = connect(addr);
        round_trip(&mut client, format!("via {addr}").as_bytes());
    }
}
