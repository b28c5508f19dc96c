//! `--workers N`: the real binary as master and workers, over loopback. Every test ends
//! by checking that no process it started is left.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{BinaryServer, IO_TIMEOUT, echoed, metrics_addr, pattern, round_trip, wait_within};

const ECHOD: &str = env!("CARGO_BIN_EXE_echod");

/// A master with `workers` workers on 127.0.0.1:0, waited on until all serve.
fn start_master(workers: usize, extra: &[&str]) -> BinaryServer {
    let count = workers.to_string();
    let mut args = vec!["--workers", count.as_str()];
    args.extend_from_slice(extra);
    let server = BinaryServer::start(&args);
    server.wait_for_log(&format!("all {workers} workers are serving"));
    server
}

/// The pid of the worker now in `slot`, from the master's log (its latest start).
fn worker_pid(server: &BinaryServer, slot: usize) -> u32 {
    let marker = format!("worker {slot} started (pid ");
    let log = server.wait_for_log(&marker);
    let line = log.lines().rfind(|l| l.contains(&marker)).unwrap();
    let rest = &line[line.find(&marker).unwrap() + marker.len()..];
    rest.trim_end_matches(')').parse().unwrap()
}

/// Whether `pid` is still running. An exited process whose parent died stays a zombie until
/// whoever adopted it reaps it, and some inits (this CI's among them) reap only every second
/// or two: a zombie has stopped, so it counts as gone, and a test does not wait on the reaper.
fn alive(pid: u32) -> bool {
    common::proc_stat_fields(pid)
        .is_some_and(|fields| !matches!(fields.first().map(String::as_str), Some("Z" | "X")))
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) has no memory effects.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
}

#[track_caller]
fn wait_gone(pids: &[u32], within: Duration) {
    wait_within(within, || {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("processes {left:?} are still running"))
        }
    });
}

/// What each worker said it accepted in its exit line.
fn accepted_per_worker(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("exiting:") && l.contains(" worker "))
        .map(|l| {
            let after = l.split("accepted=").nth(1).unwrap();
            after.split_whitespace().next().unwrap().parse().unwrap()
        })
        .collect()
}

#[test]
fn both_workers_serve_one_port_and_the_master_exits_zero() {
    let mut server = start_master(2, &["--listen", "udp:127.0.0.1:0"]);
    let pids = [worker_pid(&server, 0), worker_pid(&server, 1)];
    // Each connection comes from a new source port, and the kernel hashes it to one of
    // the two sockets: 64 of them all landing on one worker would be a 1 in 2^63 chance.
    for i in 0..64u64 {
        let mut stream = server.connect();
        round_trip(&mut stream, &pattern(i, 1000));
    }
    let udp_line = server.wait_for_log("udp:127.0.0.1:");
    let udp_addr: SocketAddr = udp_line
        .split("listening on udp:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    client.send_to(b"datagram", udp_addr).unwrap();
    let mut reply = [0u8; 64];
    let (n, _) = client.recv_from(&mut reply).unwrap();
    assert_eq!(&reply[..n], b"datagram");

    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(IO_TIMEOUT).code(), Some(0));
    wait_gone(&pids, IO_TIMEOUT);
    let log = server.log.wait_for("every worker has exited");
    let accepted = accepted_per_worker(&log);
    assert_eq!(accepted.len(), 2, "{log}");
    assert_eq!(accepted.iter().sum::<u64>(), 64, "{log}");
    assert!(
        accepted.iter().all(|&n| n > 0),
        "one worker took all: {accepted:?}"
    );
}

#[test]
fn a_killed_worker_is_replaced_within_a_second_and_no_client_fails() {
    let server = start_master(2, &[]);
    let addr = server.addr;
    let victim = worker_pid(&server, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    // Connections that failed, with when each was opened.
    let failures = Arc::new(std::sync::Mutex::new(Vec::<(Instant, String)>::new()));
    let client = {
        let (stop, served, failures) = (
            Arc::clone(&stop),
            Arc::clone(&served),
            Arc::clone(&failures),
        );
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let (opened, n) = (Instant::now(), served.load(Ordering::Relaxed));
                match echoed(addr, &pattern(n, 200)) {
                    Ok(()) => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(why) => failures.lock().unwrap().push((opened, why)),
                }
            }
        })
    };
    let served_at_least = |n: u64| {
        wait_within(IO_TIMEOUT, || match served.load(Ordering::Relaxed) {
            done if done >= n => Ok(done),
            done => Err(format!("only {done} connections served")),
        })
    };
    // Kill the worker under a running client loop.
    let before = served_at_least(20);
    let killed_at = Instant::now();
    signal(victim, libc::SIGKILL);
    let log = server.log.wait_until("a replacement for worker 0", |log| {
        log.matches("worker 0 started (pid").count() == 2
            && log.matches("worker 0 (pid").count() >= 3
    });
    let replaced_in = killed_at.elapsed();
    assert!(
        log.contains(&format!("worker 0 (pid {victim}) was killed by signal 9")),
        "{log}"
    );
    assert!(
        replaced_in < Duration::from_secs(1),
        "the replacement served {replaced_in:?} after the kill"
    );
    // Traffic goes on through the replacement too.
    served_at_least(before + 50);
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    // The one connection the dead worker was serving when killed dies with it (its socket
    // was that process's); every connection opened after the kill, including those queued
    // while no worker 0 ran, is answered exactly.
    let failures = failures.lock().unwrap();
    assert!(failures.len() <= 1, "{failures:?}");
    assert!(
        failures.iter().all(|(opened, _)| *opened < killed_at),
        "a connection opened after the kill failed: {failures:?}"
    );
    let replacement = worker_pid(&server, 0);
    assert_ne!(replacement, victim);
    let workers = [replacement, worker_pid(&server, 1)];
    drop(server);
    wait_gone(&workers, Duration::from_secs(2));
}

#[test]
fn sigterm_to_the_master_mid_stream_delivers_every_echo() {
    let mut server = start_master(2, &[]);
    let pids = [worker_pid(&server, 0), worker_pid(&server, 1)];
    let message = pattern(7, 16 * 1024);
    let mut clients: Vec<_> = (0..8)
        .map(|_| {
            let mut stream = server.connect();
            stream.write_all(&message).unwrap();
            // The first bytes back prove its worker read the message before the stop.
            let mut first = [0u8; 1];
            stream.read_exact(&mut first).unwrap();
            assert_eq!(first[0], message[0]);
            stream
        })
        .collect();
    server.signal(libc::SIGTERM);
    for stream in &mut clients {
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, &message[1..], "an echo cut short by the stop");
    }
    assert_eq!(server.wait_exit(IO_TIMEOUT).code(), Some(0));
    wait_gone(&pids, IO_TIMEOUT);
}

#[test]
fn a_killed_master_leaves_no_worker() {
    let server = start_master(3, &[]);
    let pids: Vec<u32> = (0..3).map(|slot| worker_pid(&server, slot)).collect();
    drop(server); // SIGKILL, then reaped
    wait_gone(&pids, Duration::from_secs(2));
}

#[test]
fn a_stopped_worker_fails_health_then_is_replaced() {
    let server = start_master(2, &["--metrics", "127.0.0.1:0"]);
    let metrics = metrics_addr(&server);
    assert_eq!(http_status(metrics, "/health"), 200);
    let frozen = worker_pid(&server, 1);
    signal(frozen, libc::SIGSTOP);
    wait_within(Duration::from_secs(5), || {
        match http_status(metrics, "/health") {
            503 => Ok(()),
            other => Err(format!("/health said {other} with a worker stopped")),
        }
    });
    let log = server.log.wait_until("the stopped worker killed", |log| {
        log.contains(&format!("worker 1 (pid {frozen}) has not answered"))
            && log.matches("worker 1 started (pid").count() == 2
    });
    assert!(
        log.contains(&format!("worker 1 (pid {frozen}) was killed by signal 9")),
        "{log}"
    );
    wait_within(IO_TIMEOUT, || match http_status(metrics, "/health") {
        200 => Ok(()),
        other => Err(format!("/health said {other} after the replacement")),
    });
    let text = http_get(metrics, "/metrics");
    assert!(
        text.contains("echod_worker_restarts_total{worker=\"1\"} 1"),
        "{text}"
    );
    let workers = [worker_pid(&server, 0), worker_pid(&server, 1)];
    drop(server);
    wait_gone(&workers, Duration::from_secs(2));
    assert!(!alive(frozen));
}

#[test]
fn metrics_are_summed_over_the_workers() {
    let server = start_master(2, &["--metrics", "127.0.0.1:0"]);
    let metrics = metrics_addr(&server);
    for i in 0..20u64 {
        round_trip(&mut server.connect(), &pattern(i, 500));
    }
    // Workers answer the master once a second; wait for the totals to catch up.
    let text = wait_within(Duration::from_secs(5), || {
        let text = http_get(metrics, "/metrics");
        if text.contains("echod_connections_accepted_total 20\n")
            && text.contains("echod_received_bytes_total 10000\n")
        {
            Ok(text)
        } else {
            Err(format!("totals not there yet:\n{text}"))
        }
    });
    assert!(text.contains("echod_sent_bytes_total 10000\n"), "{text}");
    assert!(text.contains("echod_worker_up{worker=\"0\"} 1"), "{text}");
    assert!(text.contains("echod_worker_up{worker=\"1\"} 1"), "{text}");
    assert!(text.contains("process_resident_memory_bytes "), "{text}");
}

#[test]
fn a_worker_refusing_its_configuration_stops_the_master_with_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let mut command = Command::new(ECHOD);
    command.args([
        "--workers",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "tls:127.0.0.1:0",
        "--tls-cert",
        missing,
        "--tls-key",
        missing,
    ]);
    let mut server = BinaryServer::spawn(command);
    assert_eq!(server.wait_exit(IO_TIMEOUT).code(), Some(1));
    let log = server.log.wait_for("every worker has exited");
    assert!(log.contains("its configuration is refused"), "{log}");
    assert!(log.contains("missing.pem"), "{log}");
    assert!(!log.contains("replacing it"), "{log}");
}

#[test]
fn a_worker_that_keeps_dying_at_once_is_restarted_with_a_backoff() {
    // A copy of the binary, so that it can be swapped for one that fails at once: the
    // master starts its replacements from the path it started from.
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("echod");
    std::fs::copy(ECHOD, &exe).unwrap();
    let mut server = BinaryServer::start_with(Command::new(&exe), &["--workers", "2"]);
    server.wait_for_log("all 2 workers are serving");
    let first = worker_pid(&server, 0);
    let crashing = dir.path().join("crashing");
    std::fs::write(&crashing, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(
        &crashing,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::rename(&crashing, &exe).unwrap();
    signal(first, libc::SIGKILL);
    let log = server.log.wait_until("three quick deaths", |log| {
        log.matches("exited with status 3; replacing it").count() >= 3
    });
    assert!(
        log.contains("replacing it in 100ms (it keeps dying at once)"),
        "{log}"
    );
    assert!(
        log.contains("replacing it in 200ms (it keeps dying at once)"),
        "{log}"
    );
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(IO_TIMEOUT).code(), Some(0));
}

/// A two-worker master as systemd would start it: `NOTIFY_SOCKET` (and `env`) set, the
/// socket bound by the test. The directory holding the socket lives as long as the tuple.
fn master_under_systemd(env: &[(&str, &str)]) -> (tempfile::TempDir, UnixDatagram, BinaryServer) {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let systemd = UnixDatagram::bind(&notify_path).unwrap();
    let mut command = Command::new(ECHOD);
    command
        .args(["--listen", "127.0.0.1:0", "--workers", "2"])
        .env("NOTIFY_SOCKET", &notify_path)
        .envs(env.iter().copied());
    (dir, systemd, BinaryServer::spawn(command))
}

#[test]
fn ready_is_said_once_by_the_master_alone() {
    let (_dir, systemd, mut server) = master_under_systemd(&[]);
    systemd.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut buf = [0u8; 4096];
    let n = systemd.recv(&mut buf).unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        first.starts_with("READY=1\nSTATUS=serving on 1 sockets with 2 workers"),
        "{first:?}"
    );
    round_trip(&mut server.connect(), b"ready means ready");
    // A replaced worker does not make the service ready again.
    let victim = worker_pid(&server, 0);
    signal(victim, libc::SIGKILL);
    server.log.wait_until("the replacement serving", |log| {
        log.matches("worker 0 started (pid").count() == 2 && log.matches("is serving").count() == 3
    });
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(IO_TIMEOUT).code(), Some(0));
    let mut notifications = vec![first];
    systemd.set_nonblocking(true).unwrap();
    while let Ok(n) = systemd.recv(&mut buf) {
        notifications.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    let readies = notifications
        .iter()
        .filter(|m| m.contains("READY=1"))
        .count();
    assert_eq!(readies, 1, "{notifications:?}");
    assert!(
        notifications.iter().any(|m| m.starts_with("STOPPING=1")),
        "{notifications:?}"
    );
}

#[test]
fn bad_worker_counts_and_a_port_in_use_are_one_line_each() {
    for (count, status) in [("0", 2), ("100000", 2), ("two", 2)] {
        let out = Command::new(ECHOD)
            .args(["--workers", count])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(status), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("--workers"), "{stderr}");
    }
    // A master on a port in use: one line naming it, exit 1.
    let refused_on = |addr: &str| {
        let out = Command::new(ECHOD)
            .args(["--workers", "2", "--listen", addr, "-q"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(
            stderr.trim(),
            format!("echod: cannot listen on {addr}: Address already in use (os error 98)")
        );
    };
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    refused_on(&holder.local_addr().unwrap().to_string());
    drop(holder);
    // A port another master holds is in use too: SO_REUSEPORT would let the second join
    // the first's group, so the master checks with a plain bind first.
    let first = start_master(2, &[]);
    refused_on(&first.addr.to_string());
}

// ---- a little HTTP, enough for /metrics and /health ----

/// The status of `GET path`, or 0 if nothing answered within a second.
fn http_status(addr: SocketAddr, path: &str) -> u16 {
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return 0;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    match stream.read_exact(&mut head) {
        Ok(()) => String::from_utf8_lossy(&head[9..12]).parse().unwrap_or(0),
        Err(_) => 0,
    }
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = common::connect(addr);
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    body.to_string()
}

#[test]
fn a_unix_socket_is_shared_and_outlives_its_workers_but_not_the_master() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.sock");
    let spec = format!("unix:{}", path.display());
    let mut server = start_master(2, &["--listen", &spec]);
    let log = server.wait_for_log("(shared by every worker)");
    assert!(
        log.contains(&format!("listening on {spec} (shared by every worker)")),
        "{log}"
    );
    let path_str = path.to_str().unwrap();
    round_trip(&mut common::connect_unix(path_str), b"over unix");
    // A worker's death leaves the socket (and its file) to the master and the others.
    let victim = worker_pid(&server, 1);
    signal(victim, libc::SIGKILL);
    server.log.wait_until("worker 1 replaced", |log| {
        log.matches("worker 1 started (pid").count() == 2
    });
    assert!(path.exists());
    for i in 0..10u64 {
        round_trip(&mut common::connect_unix(path_str), &pattern(i, 100));
    }
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(IO_TIMEOUT).code(), Some(0));
    assert!(!path.exists(), "the master removes the socket file it made");
}

#[test]
fn the_watchdog_pings_only_while_every_worker_answers_and_status_is_summed() {
    let (_dir, systemd, server) = master_under_systemd(&[("WATCHDOG_USEC", "400000")]);
    // Read every notification as it comes, as systemd does, each with when it came.
    let heard = Arc::new(std::sync::Mutex::new(Vec::<(Instant, String)>::new()));
    {
        let heard = Arc::clone(&heard);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = systemd.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).to_string();
                heard.lock().unwrap().push((Instant::now(), message));
            }
        });
    }
    let pings_since = |since: Instant| -> Vec<(Instant, String)> {
        let heard = heard.lock().unwrap();
        heard
            .iter()
            .filter(|(at, m)| *at >= since && m.starts_with("WATCHDOG=1"))
            .cloned()
            .collect()
    };
    let started = Instant::now();
    for i in 0..6u64 {
        round_trip(&mut server.connect(), &pattern(i, 100));
    }
    // A ping whose status has the counters summed over both workers.
    wait_within(Duration::from_secs(5), || {
        let pings = pings_since(started);
        match pings
            .iter()
            .find(|(_, m)| m.contains("6 accepted, 600 bytes in"))
        {
            Some(_) => Ok(()),
            None => Err(format!("no ping with the summed counters: {pings:?}")),
        }
    });
    // A stopped worker stops the pings (systemd would restart the whole service) until
    // the master has replaced it.
    let frozen = worker_pid(&server, 0);
    let stopped = Instant::now();
    signal(frozen, libc::SIGSTOP);
    let log = server.wait_for_log(&format!("worker 0 (pid {frozen}) has not answered"));
    assert!(log.contains("all 2 workers are serving"), "{log}");
    server
        .log
        .wait_until("worker 0 replaced and serving", |log| {
            log.matches("worker 0 started (pid").count() == 2
                && log.matches("worker 0 (pid").count() >= 4
        });
    // Normally a ping every 200 ms. The longest silence after the SIGSTOP runs from when
    // the worker missed a question (1.5 s after its last answer) until its replacement
    // served (just after the 3 s the master waits before killing it); then pings resume.
    let longest_gap = wait_within(IO_TIMEOUT, || {
        let mut at = stopped;
        let mut longest = Duration::ZERO;
        for (ping, _) in pings_since(stopped) {
            longest = longest.max(ping.duration_since(at));
            at = ping;
        }
        if longest >= Duration::from_millis(1000) && at.elapsed() < Duration::from_secs(1) {
            Ok(longest)
        } else {
            Err(format!(
                "no long silence followed by pings yet (longest {longest:?})"
            ))
        }
    });
    assert!(
        longest_gap < Duration::from_secs(4),
        "no ping for {longest_gap:?}"
    );
}

#[test]
fn sigusr1_to_the_master_reports_the_sum_and_every_worker_reports_its_own() {
    let server = start_master(2, &[]);
    round_trip(&mut server.connect(), b"counted");
    server.signal(libc::SIGUSR1);
    let log = server.log.wait_until("three stats lines", |log| {
        log.contains("stats (all workers)")
            && log.matches(" worker 0] stats ").count() == 1
            && log.matches(" worker 1] stats ").count() == 1
    });
    assert!(
        log.contains("stats (all workers) 0 connections open"),
        "{log}"
    );
}

#[test]
fn a_worker_that_will_not_stop_is_killed_after_the_shutdown_timeout() {
    let mut server = start_master(2, &["--shutdown-timeout", "0.2"]);
    let pids = [worker_pid(&server, 0), worker_pid(&server, 1)];
    // A stopped process cannot act on SIGTERM: only SIGKILL ends it.
    signal(pids[1], libc::SIGSTOP);
    let asked = Instant::now();
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(IO_TIMEOUT).code(), Some(0));
    let took = asked.elapsed();
    wait_gone(&pids, Duration::from_secs(1));
    let log = server.log.wait_for("every worker has exited");
    assert!(
        log.contains("worker 1 did not stop in time: killing it")
            || log.contains("has not answered"),
        "{log}"
    );
    // --shutdown-timeout (0.2 s) plus the 2 s grace, and not much more.
    assert!(took < Duration::from_secs(4), "exited after {took:?}");
}
