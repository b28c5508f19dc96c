//! Helpers shared by the integration tests: start the real server in-process on port 0,
//! talk to it over loopback, stop it deterministically and get its final counters back.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use echod::{Config, Server, ServerHandle, Stats};

/// Every blocking read or write in a test gives up after this long instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A server running on its own thread.
pub struct TestServer {
    pub addrs: Vec<SocketAddr>,
    /// The UDP sockets' addresses, if any were asked for (`udp:HOST:0`).
    pub udp_addrs: Vec<SocketAddr>,
    /// The TLS listeners' addresses, if any were asked for (`tls:HOST:0`).
    pub tls_addrs: Vec<SocketAddr>,
    /// The WebSocket listeners' addresses, and whether each is `wss:`.
    pub ws_addrs: Vec<(SocketAddr, bool)>,
    /// The `--metrics` endpoint's addresses, if one was asked for.
    pub metrics_addrs: Vec<SocketAddr>,
    pub handle: ServerHandle,
    thread: Option<JoinHandle<io::Result<Stats>>>,
}

impl TestServer {
    /// Binds `127.0.0.1:0` with default settings.
    pub fn start() -> TestServer {
        TestServer::with(Config::listening_on(["127.0.0.1:0"]))
    }

    /// Binds and runs the given config (with no `listen` given, `127.0.0.1:0`).
    pub fn with(config: Config) -> TestServer {
        let server = Server::bind(config).expect("bind test server");
        let addrs = server.local_addrs();
        let udp_addrs = server.local_udp_addrs();
        let tls_addrs = server.local_tls_addrs();
        let ws_addrs = server.local_ws_addrs();
        let metrics_addrs = server.local_metrics_addrs();
        let handle = server.handle();
        let thread = std::thread::spawn(move || server.run());
        TestServer {
            addrs,
            udp_addrs,
            tls_addrs,
            ws_addrs,
            metrics_addrs,
            handle,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// A blocking client with timeouts, so a broken server fails the test instead of hanging it.
    pub fn connect(&self) -> TcpStream {
        connect(self.addr())
    }

    /// Live counters from the running loop.
    pub fn stats(&self) -> Stats {
        self.handle.stats().expect("stats from running server")
    }

    /// Waits (with a deadline) until the server's counters satisfy `condition`.
    #[track_caller]
    pub fn wait_for(&self, what: &str, condition: impl Fn(&Stats) -> bool) -> Stats {
        wait_until(|| {
            let stats = self.stats();
            if condition(&stats) {
                Ok(stats)
            } else {
                Err(format!("timed out waiting for {what}: {stats:?}"))
            }
        })
    }

    /// Stops the server (gracefully) and returns its final counters.
    pub fn stop(mut self) -> Stats {
        self.handle.stop().expect("stop request");
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("server thread panicked")
            .expect("server run failed")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.handle.stop();
            let _ = self.handle.stop();
            let _ = thread.join();
        }
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to test server");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// A blocking Unix-socket client with timeouts; `@NAME` is an abstract name.
pub fn connect_unix(path: &str) -> std::os::unix::net::UnixStream {
    let stream = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
            std::os::unix::net::UnixStream::connect_addr(&addr)
        }
        None => std::os::unix::net::UnixStream::connect(path),
    }
    .unwrap_or_else(|err| panic!("connect to unix:{path}: {err}"));
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// Sends `message` and reads back exactly as many bytes (looping over partial reads).
#[track_caller]
pub fn round_trip(stream: &mut (impl Read + Write), message: &[u8]) {
    stream.write_all(message).expect("send");
    let mut echoed = vec![0; message.len()];
    stream.read_exact(&mut echoed).expect("read echo");
    assert_eq!(echoed, message, "echo differs from what was sent");
}

/// Reads until EOF.
pub fn read_to_end(stream: &mut impl Read) -> Vec<u8> {
    let mut all = Vec::new();
    stream.read_to_end(&mut all).expect("read to EOF");
    all
}

/// A deterministic, position-dependent byte pattern: a misplaced byte shows up.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        // xorshift64: cheap even in a debug build, eight bytes a step.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// The fields of `/proc/PID/stat` from the third (the state) on: proc_pid_stat(5)'s field
/// `n` is at index `n - 3`. They are counted from after the command name's closing
/// parenthesis, since the name may hold spaces. `None` once the process is gone.
pub fn proc_stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after_name) = stat.rsplit_once(')')?;
    Some(after_name.split_whitespace().map(str::to_string).collect())
}

/// Asks `probe` every few milliseconds until it answers `Ok`, for at most [`IO_TIMEOUT`];
/// then fails the test with its last `Err`, which says what was awaited and what was seen.
#[track_caller]
pub fn wait_until<T>(probe: impl FnMut() -> Result<T, String>) -> T {
    wait_within(IO_TIMEOUT, probe)
}

/// [`wait_until`], for at most `within`.
#[track_caller]
pub fn wait_within<T>(within: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match probe() {
            Ok(done) => return done,
            Err(seen) => assert!(Instant::now() < deadline, "{seen}"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Everything a child process writes to stderr, collected line by line by a thread.
#[derive(Clone, Default)]
pub struct LogLines(std::sync::Arc<std::sync::Mutex<String>>);

impl LogLines {
    /// Starts collecting `stderr`; each line is also offered to `on_line`.
    pub fn collect(
        stderr: impl Read + Send + 'static,
        mut on_line: impl FnMut(&str) + Send + 'static,
    ) -> LogLines {
        use std::io::BufRead;
        let log = LogLines::default();
        let collected = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                on_line(&line);
                let mut all = collected.0.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        log
    }

    /// Everything collected so far.
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// Waits (with a deadline) until the log contains `needle`; returns all of it.
    #[track_caller]
    pub fn wait_for(&self, needle: &str) -> String {
        self.wait_until(&format!("{needle:?}"), |text| text.contains(needle))
    }

    /// Waits (with a deadline) until `condition` holds of the log; returns all of it.
    #[track_caller]
    pub fn wait_until(&self, what: &str, condition: impl Fn(&str) -> bool) -> String {
        wait_until(|| {
            let text = self.text();
            if condition(&text) {
                Ok(text)
            } else {
                Err(format!("no {what} in the log:\n{text}"))
            }
        })
    }
}

/// The real `echod` binary, started with the given flags on a free port.
pub struct BinaryServer {
    pub child: std::process::Child,
    /// The first TCP address it said it listens on.
    pub addr: SocketAddr,
    /// Everything the server has written to stderr so far.
    pub log: LogLines,
    /// stdout, read on a thread of its own once asked (see `read_stdout_meanwhile`).
    stdout_reader: Option<JoinHandle<String>>,
}

impl BinaryServer {
    /// Starts `echod --listen 127.0.0.1:0 ARGS…` and waits for its "listening on" line.
    pub fn start(args: &[&str]) -> BinaryServer {
        BinaryServer::start_with(
            std::process::Command::new(env!("CARGO_BIN_EXE_echod")),
            args,
        )
    }

    /// Like [`BinaryServer::start`], from a prepared command (e.g. one run under a shell).
    pub fn start_with(mut command: std::process::Command, args: &[&str]) -> BinaryServer {
        command.args(["--listen", "127.0.0.1:0"]).args(args);
        BinaryServer::spawn(command)
    }

    /// Runs the prepared command as it is (it must make echod listen on some TCP address)
    /// and waits for the first "listening on HOST:PORT" line.
    pub fn spawn(mut command: std::process::Command) -> BinaryServer {
        use std::process::Stdio;
        if !command.get_envs().any(|(key, _)| key == "RUST_LOG") {
            command.env("RUST_LOG", "info");
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start echod binary");
        let (found, addr_found) = std::sync::mpsc::channel();
        let log = LogLines::collect(child.stderr.take().unwrap(), move |line| {
            let first_tcp = line
                .split_once("listening on ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .and_then(|addr| addr.parse::<SocketAddr>().ok());
            if let Some(addr) = first_tcp {
                let _ = found.send(addr);
            }
        });
        let addr = addr_found
            .recv_timeout(IO_TIMEOUT)
            .unwrap_or_else(|_| panic!("echod never said where it listens: {}", log.text()));
        BinaryServer {
            child,
            addr,
            log,
            stdout_reader: None,
        }
    }

    pub fn connect(&self) -> TcpStream {
        connect(self.addr)
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) with a valid pid and signal number has no memory effects.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "kill({pid}, {signal})"
        );
    }

    /// Waits (with a deadline) for the process to exit; returns its status.
    #[track_caller]
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        wait_within(within, || {
            self.child
                .try_wait()
                .unwrap()
                .ok_or_else(|| format!("echod did not exit within {within:?}"))
        })
    }

    /// Reads stdout from now on, as it comes: a server printing more than a pipe holds
    /// would otherwise block on stdout, and so stop echoing, before the test reads it.
    pub fn read_stdout_meanwhile(&mut self) {
        let mut stdout = self.child.stdout.take().expect("stdout not yet taken");
        self.stdout_reader = Some(std::thread::spawn(move || {
            let mut text = String::new();
            stdout.read_to_string(&mut text).unwrap();
            text
        }));
    }

    /// Stops the server with SIGTERM, expects exit 0, and returns all it wrote to stdout.
    #[track_caller]
    pub fn stop_for_stdout(&mut self) -> String {
        self.signal(libc::SIGTERM);
        assert_eq!(self.wait_exit(IO_TIMEOUT).code(), Some(0));
        if let Some(reader) = self.stdout_reader.take() {
            return reader.join().unwrap();
        }
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        stdout
    }

    /// Waits (with a deadline) until stderr contains `needle`; returns all of stderr.
    #[track_caller]
    pub fn wait_for_log(&self, needle: &str) -> String {
        self.log.wait_for(needle)
    }
}

impl Drop for BinaryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An example program built by `cargo test` (which builds every example alongside the tests).
pub fn example(name: &str) -> std::process::Command {
    let mut path = std::env::current_exe().unwrap();
    path.pop(); // the test binary
    if path.ends_with("deps") {
        path.pop();
    }
    path.push("examples");
    path.push(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo test` (which builds the examples) or `cargo build --examples`",
        path.display()
    );
    std::process::Command::new(path)
}

/// A client that floods without reading: a thread writes `total` bytes of
/// `pattern(seed, …)` through `writer` while nobody reads, until the server holds
/// `--max-pending` for it and so stops reading it; then `meanwhile` runs (other clients
/// must still be served), and only then is every byte read back through `reader` and
/// checked. Returns the stats of the stopped server.
#[track_caller]
pub fn flood_without_reading<S: Read + Write + Send + 'static>(
    server: TestServer,
    mut writer: S,
    mut reader: S,
    seed: u64,
    total: usize,
    meanwhile: impl FnOnce(),
) -> Stats {
    let cap = echod::config::DEFAULT_MAX_PENDING as u64;
    let data = pattern(seed, total);
    let expected = data.clone();
    let writing = std::thread::spawn(move || {
        for chunk in data.chunks(1 << 20) {
            writer.write_all(chunk).unwrap();
        }
        writer
    });
    server.wait_for("backpressure to engage", |s| {
        s.peak_pending_connection == cap
    });
    meanwhile();
    let mut received = vec![0; total];
    reader.read_exact(&mut received).unwrap();
    assert!(received == expected, "the {total}-byte echo differs");
    drop(writing.join().unwrap());
    drop(reader);
    let stats = server.stop();
    assert_eq!(
        stats.peak_pending_connection, cap,
        "pending exceeded the cap"
    );
    stats
}

/// The integer (or float, truncated) value of `"key"` in the JSON object on the last line
/// of `json`, as the load generator and `--stats-json` print it.
#[track_caller]
pub fn json_field(json: &str, key: &str) -> u64 {
    let last = json
        .lines()
        .rfind(|line| !line.trim().is_empty())
        .unwrap_or("");
    let object: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|err| panic!("{err}: {json}"));
    let value = &object[key];
    value
        .as_u64()
        .or_else(|| value.as_f64().map(|v| v as u64))
        .unwrap_or_else(|| panic!("no number {key} in {json}"))
}

/// Runs the load generator against `addr` (no warm-up, JSON out); returns its output and
/// its JSON line.
pub fn loadgen(addr: impl ToString, args: &[&str]) -> (std::process::Output, String) {
    let out = example("loadgen")
        .args(["--addr", &addr.to_string(), "--json", "--warmup", "0"])
        .args(args)
        .output()
        .unwrap();
    let json = String::from_utf8(out.stdout.clone()).unwrap();
    (out, json)
}

/// A program a test runs as a real peer: on `PATH`, or in the venv CI makes
/// (`target/ci-venv/bin`). Missing, it fails the test under CI (which installs it) and
/// skips it elsewhere, saying so.
#[allow(dead_code)]
pub fn peer_tool(name: &str) -> Option<std::path::PathBuf> {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-venv/bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::iter::once(venv)
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have {name} (.ci/run installs it)"
        );
        eprintln!("skipped: {name} is not installed");
    }
    found
}

/// One short connection: sends `message`, reads back exactly as many bytes; `Err` says
/// what went wrong (for tests that count failures rather than stop at the first).
#[allow(dead_code)]
pub fn echoed(addr: SocketAddr, message: &[u8]) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.write_all(message).map_err(|e| e.to_string())?;
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back).map_err(|e| e.to_string())?;
    if back == message {
        Ok(())
    } else {
        Err("different bytes came back".to_string())
    }
}

/// Where a binary echod serves `--metrics`, from its `metrics on http://ADDR/metrics` line.
#[allow(dead_code)]
pub fn metrics_addr(server: &BinaryServer) -> SocketAddr {
    let log = server.wait_for_log("metrics on http://");
    let rest = log.split("metrics on http://").nth(1).unwrap();
    rest.split('/').next().unwrap().parse().unwrap()
}

/// Everything a finished tool printed, stdout then stderr: what its checks said.
#[allow(dead_code)]
pub fn all_it_said(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `command` with `input` on its stdin; its output (stdout and stderr captured).
#[allow(dead_code)]
pub fn run_with_stdin(mut command: std::process::Command, input: &str) -> std::process::Output {
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A program a test started, its stderr collected. Dropped, it gets SIGTERM and a moment
/// to exit (nginx's master stops its own workers then; killed outright it would leave
/// them running), and SIGKILL only if it does not.
#[allow(dead_code)]
pub struct Spawned {
    pub child: std::process::Child,
    pub log: LogLines,
}

#[allow(dead_code)]
impl Spawned {
    pub fn spawn(mut command: std::process::Command) -> Spawned {
        use std::process::Stdio;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the program");
        let log = LogLines::collect(child.stderr.take().unwrap(), |_| {});
        Spawned { child, log }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a valid pid and signal number has no memory effects.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Waits (with a deadline) for the program to exit; its status.
    #[track_caller]
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        wait_until(|| {
            self.child
                .try_wait()
                .unwrap()
                .ok_or_else(|| format!("no exit:\n{}", self.log.text()))
        })
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // SAFETY: as in `signal`; the pid is our child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + IO_TIMEOUT;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
