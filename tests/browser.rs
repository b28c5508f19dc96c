//! A real browser as the WebSocket client: Debian's Chromium, headless, runs a page whose
//! script opens `ws://` and `wss://` (echod's self-signed certificate, accepted with
//! `--ignore-certificate-errors`), sends text and binary messages, and checks each echo.
//! The page reports its verdict over one more WebSocket, to a listener of the test's own.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{IO_TIMEOUT, TestServer};
use echod::Config;

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
}

/// The page: for each URL, text and binary out, the same back; then the verdict.
const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<script>
const [ws, wss, report] = location.hash.slice(1).split(",");
function echo(url) {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    const sent = ["Hello, world", "汉语/漢語 Hànyǔ", new Uint8Array([0, 1, 2, 253, 254, 255])];
    const back = [];
    socket.onopen = () => sent.forEach((m) => socket.send(m));
    socket.onerror = () => reject(url + ": error");
    socket.onmessage = (event) => {
      back.push(event.data);
      if (back.length < sent.length) return;
      const same = (a, b) => typeof a === "string"
        ? a === b
        : b instanceof ArrayBuffer && a.length === b.byteLength
          && a.every((x, i) => x === new Uint8Array(b)[i]);
      socket.close(1000);
      sent.every((m, i) => same(m, back[i])) ? resolve(url) : reject(url + ": differs");
    };
  });
}
Promise.all([echo(ws), echo(wss)])
  .then(() => "PASS")
  .catch((why) => "FAIL " + why)
  .then((verdict) => {
    const out = new WebSocket(report);
    out.onopen = () => { out.send(verdict); };
  });
</script>
"#;

#[test]
fn headless_chromium_echoes_over_ws_and_wss() {
    let Some(browser) = chromium() else {
        assert!(std::env::var_os("CI").is_none(), "CI must have chromium");
        eprintln!("SKIPPED: no chromium on this machine");
        return;
    };
    let server = TestServer::with(Config::listening_on(["ws:127.0.0.1:0", "wss:127.0.0.1:0"]));
    let (ws, _) = server.ws_addrs[0];
    let (wss, _) = server.ws_addrs[1];
    let report = TcpListener::bind("127.0.0.1:0").unwrap();
    let report_addr = report.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("echo.html");
    std::fs::write(&page, PAGE).unwrap();
    let url = format!(
        "file://{}#ws://{ws}/,wss://{wss}/,ws://{report_addr}/",
        page.display()
    );
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--ignore-certificate-errors",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    // The verdict arrives as the first message on the report listener: wait for a
    // connection there (poll(2) on the listener, a deadline, chromium still running).
    let deadline = Instant::now() + IO_TIMEOUT * 3;
    let socket = loop {
        assert!(Instant::now() < deadline, "the page never reported");
        assert!(child.try_wait().unwrap().is_none(), "chromium exited early");
        let mut ready = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&report),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the length of the call.
        if unsafe { libc::poll(&mut ready, 1, 100) } == 1 {
            break report.accept().unwrap().0;
        }
    };
    socket.set_nonblocking(false).unwrap();
    socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut reporter = tungstenite::accept(socket).expect("the page's report socket");
    let verdict = reporter.read().expect("a verdict").into_text().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(verdict.as_str(), "PASS");
    let stats = server.wait_for("both closes", |s| s.closed_total() >= 2);
    assert!(stats.handshakes >= 2, "the ws and wss upgrades: {stats:?}");
}
