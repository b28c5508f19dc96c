//! Limits and lifecycle: caps, descriptor exhaustion, timeouts, signals and stats. Where
//! process limits or signals matter, these run the real binary.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{BinaryServer, IO_TIMEOUT, TestServer, connect, pattern, read_to_end, round_trip};
use echod::Config;

/// Reads until EOF or error; true if the server closed the connection on us.
#[track_caller]
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("expected EOF, got {n} bytes"),
        Err(err) if err.kind() == ErrorKind::ConnectionReset => true,
        Err(err) => panic!("expected EOF, got {err}"),
    }
}

/// Connects from a chosen loopback source address (127.0.0.0/8 is all ours).
fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let source: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&source.into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

#[test]
fn the_connection_cap_turns_away_the_extra_client_only() {
    let mut config = Config::listening_on(["127.0.0.1:0"]);
    config.max_connections = 3;
    let server = TestServer::with(config);
    let mut clients: Vec<_> = (0..3).map(|_| server.connect()).collect();
    for client in &mut clients {
        round_trip(client, b"in");
    }
    let mut extra = server.connect();
    assert!(closed_by_server(&mut extra), "the fourth client sees EOF");
    for client in &mut clients {
        round_trip(client, b"still served");
    }
    // Once one leaves, a newcomer gets its place.
    drop(clients.pop());
    server.wait_for("the leaver to be closed", |s| s.active == 2);
    let mut newcomer = server.connect();
    round_trip(&mut newcomer, b"my turn");
    let stats = server.stop();
    assert_eq!(stats.rejected_max_connections, 1);
    assert_eq!(stats.accepted, 4);
}

#[test]
fn the_per_ip_cap_counts_each_address_separately() {
    let mut config = Config::listening_on(["127.0.0.1:0"]);
    config.max_connections_per_ip = Some(2);
    let server = TestServer::with(config);
    let mut first = connect_from("127.0.0.1", server.addr());
    let mut second = connect_from("127.0.0.1", server.addr());
    round_trip(&mut first, b"1");
    round_trip(&mut second, b"2");
    let mut third = connect_from("127.0.0.1", server.addr());
    assert!(closed_by_server(&mut third));
    let mut elsewhere = connect_from("127.0.0.2", server.addr());
    round_trip(&mut elsewhere, b"another address has its own quota");
    round_trip(&mut first, b"unaffected");
    let stats = server.stop();
    assert_eq!(stats.rejected_per_ip, 1);
    assert_eq!(stats.accepted, 3);
}

#[test]
fn idle_timeout_closes_the_silent_client_and_spares_the_chatty_one() {
    let mut config = Config::listening_on(["127.0.0.1:0"]);
    config.idle_timeout = Some(Duration::from_millis(800));
    let server = TestServer::with(config);
    let mut silent = server.connect();
    let mut chatty = server.connect();
    silent.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + IO_TIMEOUT;
    // The chatty client talks without pause until the silent one is dropped.
    loop {
        round_trip(&mut chatty, b"still here");
        let mut buf = [0; 1];
        match silent.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => panic!("the silent client was sent data"),
            Err(err) if err.kind() == ErrorKind::WouldBlock => {}
            Err(err) => panic!("{err}"),
        }
        assert!(
            Instant::now() < deadline,
            "the silent client was never closed"
        );
    }
    round_trip(&mut chatty, b"survived");
    let stats = server.stats();
    assert_eq!((stats.closed_idle, stats.closed_total()), (1, 1));
}

#[test]
fn stall_timeout_closes_the_client_that_never_reads_and_only_it() {
    let mut config = Config::listening_on(["127.0.0.1:0"]);
    config.stall_timeout = Some(Duration::from_millis(500));
    let server = TestServer::with(config);
    let mut quiet = server.connect(); // owes nothing: never stalled
    let mut hog = server.connect();
    hog.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut reader = server.connect();
    // The hog writes until the kernel will take no more, and never reads.
    let chunk = vec![7u8; 1 << 16];
    let stats = loop {
        if hog.write(&chunk).is_err() {
            break server.wait_for("the hog to be closed", |s| s.closed_stall == 1);
        }
        // Meanwhile a well-behaved client moves real volume.
        round_trip(&mut reader, &pattern(3, 100_000));
    };
    assert_eq!(stats.closed_total(), 1);
    round_trip(&mut reader, b"unaffected");
    round_trip(&mut quiet, b"unaffected too");
}

#[test]
fn sigterm_flushes_a_client_mid_transfer_and_exits_0() {
    let mut server = BinaryServer::start(&["--shutdown-timeout", "10"]);
    let mut client = server.connect();
    let mut reader = client.try_clone().unwrap();
    let sent = pattern(11, 8 << 20);
    let to_send = sent.clone();
    // Mid-transfer: the client is still sending when the signal arrives and reads nothing
    // until then, so the server holds output it owes.
    let writer = thread::spawn(move || {
        let _ = client.write_all(&to_send);
        client
    });
    // The first echoed bytes prove the transfer is under way.
    let mut received = vec![0; 1000];
    reader.read_exact(&mut received).unwrap();
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    server.wait_for_log("SIGTERM: stopping");
    received.extend(read_to_end(&mut reader));
    assert!(
        received[..] == sent[..received.len()],
        "what came back is not a prefix of what was sent"
    );
    let client = writer.join().unwrap();
    let _ = client.shutdown(Shutdown::Write);
    let status = server.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(10));
    let log = server.wait_for_log("exiting:");
    assert!(log.contains("closed_shutdown=1"), "{log}");
    let bytes_out = format!(" bytes_out={} ", received.len());
    assert!(
        log.contains(&bytes_out),
        "every byte written arrived: {log}"
    );
}

/// A client that has sent until the kernel would take no more, and never reads, so the
/// server holds output it cannot deliver.
fn hog_that_never_reads(server: &BinaryServer) -> TcpStream {
    let mut hog = server.connect();
    hog.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let chunk = vec![1u8; 1 << 16];
    while hog.write(&chunk).is_ok() {} // a write that times out means everything is full
    hog
}

#[test]
fn a_client_that_never_reads_cannot_keep_the_server_from_exiting() {
    let mut server = BinaryServer::start(&["--shutdown-timeout", "0.5"]);
    let _hog = hog_that_never_reads(&server);
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
    let log = server.wait_for_log("exiting:");
    assert!(
        log.contains("shutdown timeout: closing 1 connections"),
        "{log}"
    );
}

#[test]
fn a_second_signal_stops_at_once() {
    let mut server = BinaryServer::start(&["--shutdown-timeout", "60"]);
    let _hog = hog_that_never_reads(&server);
    server.signal(libc::SIGINT);
    server.wait_for_log("SIGINT: stopping");
    server.signal(libc::SIGINT);
    let status = server.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
    server.wait_for_log("SIGINT again: stopping now");
}

/// Parses the integer counters of a `--stats-json` line.
fn json_counters(line: &str) -> std::collections::HashMap<String, u64> {
    serde_json::from_str(line.trim()).expect("a JSON object of integers")
}

#[test]
fn sigusr1_stats_json_parses_and_adds_up() {
    let mut server = BinaryServer::start(&["--stats-json"]);
    let mut finished = server.connect();
    round_trip(&mut finished, &pattern(5, 10_000));
    finished.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_end(&mut finished).is_empty());
    let mut open = server.connect();
    round_trip(&mut open, b"still open");

    let mut stdout = std::io::BufReader::new(server.child.stdout.take().unwrap());
    let mut line = String::new();
    // Ask until the finished client's close has been counted (it may lag one turn).
    let deadline = Instant::now() + IO_TIMEOUT;
    let counters = loop {
        server.signal(libc::SIGUSR1);
        line.clear();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        let counters = json_counters(&line);
        if counters["closed"] == 1 {
            break counters;
        }
        assert!(Instant::now() < deadline, "{line}");
    };
    assert_eq!(counters["accepted"], 2);
    assert_eq!(
        counters["accepted"],
        counters["closed"] + counters["active"]
    );
    assert_eq!(counters["closed_eof"], 1);
    assert_eq!(counters["bytes_in"], 10_000 + 10);
    assert_eq!(counters["bytes_out"], counters["bytes_in"]);
    assert!((1..=2).contains(&counters["peak_active"]));
    assert!(counters["events"] >= counters["loop_iterations"]);
    drop(open);
}

#[test]
fn stats_interval_logs_periodically() {
    let server = BinaryServer::start(&["--stats-interval", "0.2"]);
    let log = server.wait_for_log("stats accepted=0 ");
    assert!(log.contains("active=0"));
}

/// Runs echod under `ulimit -n 64` with a connection cap far above what 64 descriptors allow,
/// so `accept` itself runs out of descriptors.
#[test]
fn out_of_descriptors_the_server_stays_up_stays_idle_and_recovers() {
    let mut shell = Command::new("sh");
    shell.args([
        "-c",
        "ulimit -n 64 && exec \"$0\" \"$@\"",
        env!("CARGO_BIN_EXE_echod"),
        "--max-connections",
        "1000",
    ]);
    let server = BinaryServer::start_with(shell, &[]);
    let pid = server.child.id();

    // 200 clients: about 55 fit, the rest are told no (EOF or reset) or wait in the backlog.
    let mut served = Vec::new();
    let mut turned_away = 0;
    for _ in 0..200 {
        let mut client = connect(server.addr);
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        client.write_all(b"hi").unwrap_or(());
        let mut reply = [0; 2];
        match client.read(&mut reply) {
            Ok(2) if &reply == b"hi" => served.push(client),
            _ => turned_away += 1,
        }
    }
    assert!(served.len() >= 20, "only {} served", served.len());
    assert!(turned_away >= 100, "only {turned_away} turned away");

    // Saturated, it must not spin: CPU over a quiet half second stays near zero.
    let cpu_before = cpu_ticks(pid);
    thread::sleep(Duration::from_millis(500)); // a measurement window, not synchronisation
    let cpu_used = cpu_ticks(pid) - cpu_before;
    assert!(
        cpu_used <= 10,
        "{cpu_used} ticks of CPU while saturated: busy loop?"
    );

    // Everyone served is still served.
    for client in &mut served {
        round_trip(client, b"ok");
    }
    // Free some descriptors; new clients get in as soon as the server has closed them.
    served.truncate(served.len() - 10);
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut newcomer = loop {
        let mut client = connect(server.addr);
        client.write_all(b"new").unwrap_or(());
        let mut reply = [0; 3];
        if matches!(client.read(&mut reply), Ok(3)) && &reply == b"new" {
            break client;
        }
        assert!(Instant::now() < deadline, "no newcomer was ever served");
    };
    round_trip(&mut newcomer, b"and again");
    let log = server.wait_for_log("accept on listener 0: Too many open files");
    assert!(log.contains("out-of-descriptors"), "{log}");
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let fields = common::proc_stat_fields(pid).expect("the server is running");
    // utime and stime are fields 14 and 15.
    fields[14 - 3].parse::<u64>().unwrap() + fields[15 - 3].parse::<u64>().unwrap()
}

#[test]
fn the_global_pending_cap_holds_hogs_back_without_stalling_others() {
    const HOGS: usize = 6;
    const EACH: usize = 8 << 20;
    let cap = 128 * 1024;
    let mut config = Config::listening_on(["127.0.0.1:0"]);
    config.max_pending_total = Some(cap);
    let server = TestServer::with(config);

    // Hogs send 8 MiB each and read nothing (yet).
    let hogs: Vec<_> = (0..HOGS)
        .map(|i| {
            let mut writer = server.connect();
            let reader = writer.try_clone().unwrap();
            let thread = thread::spawn(move || writer.write_all(&pattern(i as u64, EACH)).unwrap());
            (reader, thread)
        })
        .collect();
    server.wait_for("the global cap to be reached", |s| {
        s.pending_bytes >= cap as u64
    });

    // A well-behaved client still gets its megabyte back at once.
    let mut polite = server.connect();
    let mut polite_reader = polite.try_clone().unwrap();
    let message = pattern(99, 1 << 20);
    let expected = message.clone();
    let echo = thread::spawn(move || {
        let mut back = vec![0; expected.len()];
        polite_reader.read_exact(&mut back).unwrap();
        back == expected
    });
    polite.write_all(&message).unwrap();
    assert!(echo.join().unwrap(), "the polite client's echo differs");
    drop(polite);

    // Now the hogs read, and lose nothing.
    for (i, (mut reader, thread)) in hogs.into_iter().enumerate() {
        let mut back = vec![0; EACH];
        reader.read_exact(&mut back).unwrap();
        assert!(back == pattern(i as u64, EACH), "hog {i} lost bytes");
        thread.join().unwrap();
    }
    let stats = server.stop();
    // Over the cap, a connection owing nothing may still read 4 KiB bites (see read_room).
    let bound = (cap + (HOGS + 1) * 4096) as u64;
    assert!(
        stats.peak_pending_bytes <= bound,
        "peak {} over {bound}",
        stats.peak_pending_bytes
    );
}
