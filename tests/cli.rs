//! The binary as a user meets it: flags, errors and exit codes.

mod common;

use std::net::TcpListener;
use std::process::Command;

use common::{BinaryServer, round_trip};

fn echod() -> Command {
    Command::new(env!("CARGO_BIN_EXE_echod"))
}

#[test]
fn a_bad_flag_is_one_line_and_exit_2() {
    let out = echod().arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
}

#[test]
fn a_bad_value_is_one_line_and_exit_2() {
    for args in [
        &["--max-pending", "lots"][..],
        &["--backlog", "0"],
        &["--idle-timeout=-3"],
        &["--mode", "shout"],
    ] {
        let out = echod().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        let flag = args[0].split('=').next().unwrap();
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

#[test]
fn a_malformed_address_is_one_line_naming_what_is_wrong_and_exit_2() {
    let long_path = format!("unix:/tmp/{}", "x".repeat(120));
    let cases = [
        ("nonsense", "no port (HOST:PORT"),
        ("localhost:99999", "port 99999 is out of range (0 to 65535)"),
        ("udp:", "names no address (udp:HOST:PORT"),
        ("udp:localhost", "no port (udp:HOST:PORT"),
        ("::1:7", "an IPv6 address goes in brackets"),
        ("unix:", "names no socket"),
        (
            &long_path,
            "too long (125 bytes; a Unix socket address holds at most 107)",
        ),
    ];
    for (spec, why) in cases {
        let out = echod().args(["--listen", spec]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{spec}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{spec}: {stderr}");
        let expected = format!("echod: invalid value '{spec}' for '--listen <ADDR>': {why}");
        assert!(stderr.starts_with(&expected), "{spec}: {stderr}");
    }
}

#[test]
fn a_negative_duration_is_a_bad_value_not_an_unknown_flag() {
    let out = echod().args(["--idle-timeout", "-1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with(
            "echod: invalid value '-1' for '--idle-timeout <SECS>': must be more than 0 seconds"
        ),
        "{stderr}"
    );
}

#[test]
fn more_connections_than_descriptors_is_a_warning_and_a_clamp() {
    let server = BinaryServer::start(&["--max-connections", "1000000000"]);
    let log = server.wait_for_log("max connections:");
    assert!(
        log.contains("--max-connections 1000000000 is more than the descriptor limit"),
        "{log}"
    );
    assert!(!log.contains("max connections: 1000000000"), "{log}");
}

#[test]
fn a_taken_address_names_itself_and_the_os_error_and_exits_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = echod()
        .args(["--listen", &addr, "--quiet"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.trim_end(),
        format!("echod: cannot listen on {addr}: Address already in use (os error 98)")
    );
}

#[test]
fn an_unresolvable_host_is_named_and_exits_1() {
    let out = echod()
        .args(["--listen", "no-such-host.invalid:5000", "--quiet"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("echod: cannot listen on no-such-host.invalid:5000: "),
        "{stderr}"
    );
}

#[test]
fn help_documents_every_flag() {
    let out = echod().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--ipv6-only",
        "--reuse-port",
        "--unix-mode",
        "--backlog",
        "--max-pending",
        "--max-pending-total",
        "--max-connections",
        "--max-connections-per-ip",
        "--idle-timeout",
        "--stall-timeout",
        "--shutdown-timeout",
        "--mode",
        "--print",
        "--stats-interval",
        "--stats-json",
        "--verbose",
        "--quiet",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    assert!(help.contains("[default: localhost:50007, unless systemd passed sockets]"));
    assert!(help.contains("[default: 0660]"));
}

#[test]
fn the_binary_echoes_and_exits_0_on_sigterm() {
    let mut server = BinaryServer::start(&[]);
    let mut client = server.connect();
    round_trip(&mut client, "Hello, world / 汉语/漢語 Hànyǔ".as_bytes());
    drop(client);
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(common::IO_TIMEOUT);
    assert_eq!(status.code(), Some(0));
    let log = server.wait_for_log("exiting:");
    assert!(log.contains("accepted=1 "), "{log}");
}
