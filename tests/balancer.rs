//! The shipped contrib/ configurations, checked by the real tools and run for real:
//! Debian's HAProxy in front of two echod (one killed, one frozen), nginx's stream module
//! for TCP and UDP, and the Kubernetes YAML through `kubernetes-validate --strict`.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{BinaryServer, IO_TIMEOUT, Spawned, echoed, pattern, peer_tool, wait_within};

fn contrib(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// The shipped file with its example addresses swapped for the test's.
fn with_addresses(config: &str, front: u16, backends: [SocketAddr; 2]) -> String {
    config
        .replace("127.0.0.1:7007", &format!("127.0.0.1:{front}"))
        .replace("127.0.0.1:50007", &backends[0].to_string())
        .replace("127.0.0.1:50008", &backends[1].to_string())
}

/// Two echod and HAProxy with the shipped config in front of them.
fn haproxy_in_front() -> Option<(Spawned, SocketAddr, [BinaryServer; 2])> {
    let haproxy = peer_tool("haproxy")?;
    let backends = [BinaryServer::start(&[]), BinaryServer::start(&[])];
    let front = free_port();
    let dir = tempfile::tempdir().unwrap().keep();
    let config = dir.join("echod.cfg");
    let text = with_addresses(
        &contrib("haproxy/echod.cfg"),
        front,
        [backends[0].addr, backends[1].addr],
    );
    std::fs::write(&config, text).unwrap();
    let mut command = Command::new(haproxy);
    command.arg("-db").arg("-f").arg(&config);
    let proxy = Spawned::spawn(command);
    let front: SocketAddr = format!("127.0.0.1:{front}").parse().unwrap();
    wait_within(IO_TIMEOUT, || echoed(front, b"through haproxy"));
    Some((proxy, front, backends))
}

#[test]
fn the_shipped_configs_pass_their_own_checkers() {
    if let Some(haproxy) = peer_tool("haproxy") {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/haproxy/echod.cfg");
        let out = Command::new(haproxy)
            .arg("-c")
            .arg("-f")
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if let Some(nginx) = peer_tool("nginx") {
        let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/nginx/nginx.conf");
        let prefix = tempfile::tempdir().unwrap();
        let out = Command::new(nginx)
            .arg("-t")
            .arg("-e")
            .arg("stderr")
            .arg("-p")
            .arg(prefix.path())
            .arg("-c")
            .arg(conf)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{said}");
        assert!(said.contains("test is successful"), "{said}");
    }
    if let Some(validate) = peer_tool("kubernetes-validate") {
        let yaml = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/kubernetes/echod.yaml");
        let out = Command::new(validate)
            .arg("--strict")
            .arg(yaml)
            .output()
            .unwrap();
        let said = common::all_it_said(&out);
        assert!(out.status.success(), "{said}");
        assert_eq!(said.matches("passed for resource").count(), 2, "{said}");
    }
}

#[test]
fn haproxy_routes_around_a_killed_instance() {
    let Some((_proxy, front, mut backends)) = haproxy_in_front() else {
        return;
    };
    for i in 0..10u64 {
        echoed(front, &pattern(i, 300)).unwrap();
    }
    backends[0].child.kill().unwrap();
    backends[0].child.wait().unwrap();
    // Every connection after the kill is answered: a refused connect is retried on the
    // other instance (`retries` with `redispatch`), so clients never see the dead one.
    for i in 0..50u64 {
        echoed(front, &pattern(100 + i, 300)).unwrap_or_else(|e| panic!("connection {i}: {e}"));
    }
}

#[test]
fn haproxy_marks_a_frozen_instance_down_by_its_echo_check() {
    let Some((proxy, front, backends)) = haproxy_in_front() else {
        return;
    };
    backends[1].signal(libc::SIGSTOP);
    // A frozen process still completes TCP handshakes; only the L7 check notices.
    proxy.log.wait_for("echod/echod2 is DOWN");
    let started = Instant::now();
    for i in 0..50u64 {
        echoed(front, &pattern(i, 300)).unwrap_or_else(|e| panic!("connection {i}: {e}"));
    }
    assert!(started.elapsed() < IO_TIMEOUT);
    backends[1].signal(libc::SIGCONT);
    proxy.log.wait_for("echod/echod2 is UP");
    // The checks end with resets; echod does not warn about each one.
    for backend in &backends {
        let log = backend.log.text();
        assert!(
            !log.contains(" WARN "),
            "a warning per health check:\n{log}"
        );
    }
}

#[test]
fn nginx_stream_balances_tcp_and_udp() {
    let Some(nginx) = peer_tool("nginx") else {
        return;
    };
    let backends = [
        BinaryServer::start(&["--listen", "udp:127.0.0.1:0"]),
        BinaryServer::start(&["--listen", "udp:127.0.0.1:0"]),
    ];
    // Each echod's UDP socket is on a port of its own; nginx's upstreams name one address
    // per server, so point the UDP upstream at them.
    let udp_addr = |server: &BinaryServer| -> SocketAddr {
        let log = server.wait_for_log("listening on udp:");
        log.split("listening on udp:")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap()
    };
    let front = free_port();
    let shipped = contrib("nginx/nginx.conf");
    let (tcp_part, udp_part) = shipped.split_at(shipped.find("upstream echod_udp").unwrap());
    let tcp_part = with_addresses(tcp_part, front, [backends[0].addr, backends[1].addr]);
    let udp_part = with_addresses(
        udp_part,
        front,
        [udp_addr(&backends[0]), udp_addr(&backends[1])],
    );
    let prefix = tempfile::tempdir().unwrap();
    let pid = prefix.path().join("nginx.pid");
    let config = format!("{tcp_part}{udp_part}").replace(
        "pid /tmp/echod-nginx.pid;",
        &format!("pid {};", pid.display()),
    );
    let conf = prefix.path().join("nginx.conf");
    std::fs::write(&conf, config).unwrap();
    let mut command = Command::new(nginx);
    command
        .args(["-e", "stderr", "-g", "daemon off;", "-p"])
        .arg(prefix.path())
        .arg("-c")
        .arg(&conf);
    let _proxy = Spawned::spawn(command);
    let front: SocketAddr = format!("127.0.0.1:{front}").parse().unwrap();
    wait_within(IO_TIMEOUT, || echoed(front, b"through nginx"));
    for i in 0..20u64 {
        echoed(front, &pattern(i, 1000)).unwrap();
    }
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    for i in 0..5u8 {
        let datagram = [b'u', b'd', b'p', i];
        client.send_to(&datagram, front).unwrap();
        let mut reply = [0u8; 16];
        let (n, _) = client.recv_from(&mut reply).unwrap();
        assert_eq!(&reply[..n], &datagram);
    }
}
