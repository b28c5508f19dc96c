//! One load-generator thread: its own `mio::Poll`, its share of the connections, one read
//! buffer, one write buffer and one latency histogram.
//!
//! A worker goes through three phases:
//! 1. **ramp**: non-blocking connects, a bounded number in flight, each finished by mio's
//!    documented steps (WRITABLE event, then `take_error`, then `peer_addr`); TCP or Unix;
//! 2. **load**: keep `pipeline` messages in flight on every connection (or send at a fixed
//!    rate), checking every echoed byte and timing every message;
//! 3. or, with `--idle`, **hold** every connection silent, then ping each once.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

use echod::transport::Stream as Socket;
use hdrhistogram::Histogram;
use mio::net::{TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Token};

use crate::link::Link;
use crate::probe::thread_sleeps;
use crate::wire::{Stream, pattern};

/// Bytes read or written per system call at most (one buffer of each per thread).
const IO_BUFFER: usize = 256 * 1024;
/// How long the pings of `--idle` may take to come back.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll timeout while pacing sends with `--rate`.
const RATE_TICK: Duration = Duration::from_millis(1);

/// What every worker is told to do.
#[derive(Clone, Debug)]
pub struct Plan {
    pub target: Target,
    pub size: usize,
    pub pipeline: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub idle: bool,
    /// `--churn`: connect, one message, close, again; measures the accept path.
    pub churn: bool,
    /// `--udp`: how long a datagram may take before it counts as lost.
    pub udp_timeout: Duration,
    /// `--busy-poll`: poll without waiting while loading, never sleep.
    pub busy_poll: bool,
    /// Local addresses to connect from, taken in turn (`--bind`); empty: the kernel picks.
    pub bind: Vec<IpAddr>,
    /// Messages per second for this thread (`None`: as fast as echoes return).
    pub rate: Option<f64>,
    /// Connects in flight at once, for this thread.
    pub connects_in_flight: usize,
    pub connect_timeout: Duration,
    /// `--tls` and `--ws`: what each connection speaks above TCP.
    pub layers: crate::link::Layers,
}

/// What the threads share: progress counters and the common start line.
pub struct Shared {
    /// Time zero for message timestamps.
    pub epoch: Instant,
    pub connected: AtomicUsize,
    /// Messages echoed so far (warm-up included), for the progress line.
    pub echoed: AtomicU64,
    /// Every worker waits here once its connections are up, so load starts together.
    pub ready: Barrier,
    /// When load began (set by the last worker to arrive at `ready`).
    pub start: OnceLock<Instant>,
}

/// A worker's results.
#[derive(Debug)]
pub struct Outcome {
    /// Latency of each message echoed within the measured window, in nanoseconds.
    pub latency: Histogram<u64>,
    /// Messages echoed within the measured window.
    pub msgs: u64,
    pub connected: u64,
    pub connect_failures: u64,
    /// Echoed bytes that differed from what was sent on that connection.
    pub mismatches: u64,
    pub resets: u64,
    /// The server closed a connection that was not done.
    pub eofs: u64,
    /// `--idle`: connections that answered their ping.
    pub answered: u64,
    /// `--rate`: messages due that no connection had pipeline room for.
    pub behind: u64,
    /// `--churn`: connections that connected, echoed their message and closed within the
    /// measured window.
    pub cycles: u64,
    /// `--churn`: from `connect()` to the event saying it completed, in nanoseconds.
    pub connect_latency: Histogram<u64>,
    /// `--udp`: datagrams not echoed within `--udp-timeout`.
    pub lost: u64,
    /// Times the load loop's thread went to sleep (warm-up included): near zero with
    /// `--busy-poll`.
    pub sleeps: u64,
}

impl Outcome {
    /// Nothing counted yet.
    pub fn new() -> Outcome {
        Outcome {
            // Nanoseconds, from 1 ns to an hour, at 3 significant figures.
            latency: Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("histogram bounds"),
            msgs: 0,
            connected: 0,
            connect_failures: 0,
            mismatches: 0,
            resets: 0,
            eofs: 0,
            answered: 0,
            behind: 0,
            cycles: 0,
            connect_latency: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                .expect("histogram bounds"),
            lost: 0,
            sleeps: 0,
        }
    }

    /// Adds another thread's counts to these.
    pub fn merge(&mut self, other: &Outcome) {
        let _ = self.latency.add(&other.latency);
        self.msgs += other.msgs;
        self.connected += other.connected;
        self.connect_failures += other.connect_failures;
        self.mismatches += other.mismatches;
        self.resets += other.resets;
        self.eofs += other.eofs;
        self.answered += other.answered;
        self.behind += other.behind;
        self.cycles += other.cycles;
        self.lost += other.lost;
        self.sleeps += other.sleeps;
        let _ = self.connect_latency.add(&other.connect_latency);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    Open,
    Closed,
}

/// Where to connect: the same spellings as echod's `--listen`.
#[derive(Clone, Debug)]
pub enum Target {
    Tcp(SocketAddr),
    /// A Unix socket path, or (Linux) an abstract name.
    Unix(std::os::unix::net::SocketAddr),
    /// `--udp`: flows of datagrams (see `udp.rs`).
    Udp(SocketAddr),
}

impl Target {
    /// Starts a non-blocking connect (TCP, from `source` if given) or connects at once
    /// (Unix, where a full backlog is an error rather than a wait).
    fn connect(&self, source: Option<IpAddr>) -> io::Result<Socket> {
        match (self, source) {
            (Target::Tcp(addr), None) => TcpStream::connect(*addr).map(Socket::Tcp),
            (Target::Tcp(addr), Some(ip)) => {
                // One source address has ~28,000 ephemeral ports towards one server
                // address; more connections than that need more sources (127.0.0.x).
                use socket2::{Domain, Socket as RawSocket, Type};
                let socket = RawSocket::new(Domain::for_address(*addr), Type::STREAM, None)?;
                socket.set_nonblocking(true)?;
                // Let connect() pick the port for the whole 4-tuple, as an unbound socket's
                // would: bind() alone reserves a port for the address against everyone,
                // and runs dry (and stalls) long before the ephemeral range does.
                bind_address_no_port(&socket)?;
                socket.bind(&SocketAddr::new(ip, 0).into())?;
                match socket.connect(&(*addr).into()) {
                    Ok(()) => {}
                    Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => {}
                    Err(err) => return Err(err),
                }
                Ok(Socket::Tcp(TcpStream::from_std(socket.into())))
            }
            (Target::Unix(addr), _) => UnixStream::connect_addr(addr).map(Socket::Unix),
            (Target::Udp(_), _) => Err(io::Error::other("UDP flows are run by udp.rs")),
        }
    }
}

/// `IP_BIND_ADDRESS_NO_PORT` (Linux 4.2+): bind the address now, the port at connect().
fn bind_address_no_port(socket: &socket2::Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: `on` is a valid c_int for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One client connection's state.
struct Conn {
    /// TCP or Unix, plain or TLS, driven alike through echod's own stream seam.
    stream: Link,
    id: u32,
    phase: Phase,
    /// Stream bytes written so far.
    written: u64,
    /// Stream bytes received (and checked) so far.
    received: u64,
    /// Messages this connection may start in total (`u64::MAX` in closed-loop mode).
    allowed: u64,
    /// Send timestamps of messages in flight, by `seq % pipeline`.
    sent_at: Box<[u64]>,
    /// `--churn`: when `connect()` was called (nanoseconds since the epoch).
    connect_started_ns: u64,
}

/// The thread's buffers and tallies: allocated once, reused for every message.
struct Worker<'a> {
    plan: &'a Plan,
    shared: &'a Shared,
    pattern: Vec<u8>,
    read_buf: Vec<u8>,
    write_buf: Vec<u8>,
    expect_buf: Vec<u8>,
    /// Nanoseconds since `shared.epoch`, read once per turn of the loop.
    now_ns: u64,
    /// Only messages completing inside `[window_start, window_end)` count.
    window_start: u64,
    window_end: u64,
    out: Outcome,
}

/// Runs one worker with `count` connections numbered from `first_id`.
pub fn run(plan: &Plan, shared: &Shared, first_id: u32, count: usize) -> io::Result<Outcome> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut worker = Worker {
        plan,
        shared,
        pattern: pattern(plan.size),
        read_buf: vec![0; IO_BUFFER],
        write_buf: vec![0; IO_BUFFER],
        expect_buf: vec![0; IO_BUFFER],
        now_ns: 0,
        window_start: u64::MAX,
        window_end: u64::MAX,
        out: Outcome::new(),
    };
    let mut conns = if plan.churn {
        Vec::new() // churn connects as it goes, from the common start line
    } else {
        worker.ramp(&mut poll, &mut events, first_id, count)?
    };

    // Everyone starts together; the last to arrive fixes the start time for all.
    if shared.ready.wait().is_leader() {
        let _ = shared.start.set(Instant::now());
    }
    shared.ready.wait();
    let start = *shared.start.get().expect("start set by the leader");
    worker.window_start = ns_since(shared.epoch, start + plan.warmup);
    worker.window_end = ns_since(shared.epoch, start + plan.warmup + plan.duration);

    if plan.idle {
        worker.hold_then_ping(&mut poll, &mut events, &mut conns, start)?;
    } else if plan.churn {
        worker.churn(&mut poll, &mut events, first_id, count, start)?;
    } else {
        worker.load(&mut poll, &mut events, &mut conns, start)?;
    }
    Ok(worker.out)
}

/// `poll` for at most `timeout`; a signal's interruption counts as a wake-up with no events.
fn wait(poll: &mut Poll, events: &mut Events, timeout: Duration) -> io::Result<()> {
    match poll.poll(events, Some(timeout)) {
        Err(err) if err.kind() == io::ErrorKind::Interrupted => {
            events.clear();
            Ok(())
        }
        other => other,
    }
}

fn ns_since(epoch: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(epoch).as_nanos() as u64
}

impl Worker<'_> {
    fn tick(&mut self) -> Instant {
        let now = Instant::now();
        self.now_ns = ns_since(self.shared.epoch, now);
        now
    }

    /// Phase 1: connect `count` sockets, at most `connects_in_flight` at a time.
    fn ramp(
        &mut self,
        poll: &mut Poll,
        events: &mut Events,
        first_id: u32,
        count: usize,
    ) -> io::Result<Vec<Conn>> {
        let deadline = Instant::now() + self.plan.connect_timeout;
        let mut conns: Vec<Conn> = Vec::with_capacity(count);
        let mut in_flight = 0;
        let mut settled = 0;
        while settled < count {
            while in_flight < self.plan.connects_in_flight && conns.len() < count {
                let id = first_id + conns.len() as u32;
                match self.plan.target.connect(self.source(id)) {
                    Ok(mut stream) => {
                        let token = Token(conns.len());
                        // Both directions, edge-triggered, registered once for good.
                        poll.registry().register(
                            &mut stream,
                            token,
                            Interest::READABLE | Interest::WRITABLE,
                        )?;
                        let link = Link::new(stream, &self.plan.layers)?;
                        conns.push(Conn::new(link, id, self.plan.pipeline));
                        in_flight += 1;
                    }
                    Err(err) => {
                        // Out of ports or descriptors: count it and stop trying more.
                        eprintln!("loadgen: connect: {err}");
                        self.out.connect_failures += (count - conns.len()) as u64;
                        settled += count - conns.len();
                        break;
                    }
                }
            }
            if settled >= count || in_flight == 0 && conns.len() == count {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                for conn in conns.iter_mut().filter(|c| c.phase == Phase::Connecting) {
                    conn.phase = Phase::Closed;
                    self.out.connect_failures += 1;
                }
                eprintln!(
                    "loadgen: connect timeout: {} connections never completed",
                    in_flight
                );
                break;
            }
            wait(poll, events, deadline - now)?;
            for event in events.iter() {
                let conn = &mut conns[event.token().0];
                if conn.phase != Phase::Connecting {
                    continue;
                }
                match conn.finish_connect() {
                    Ok(true) => {
                        conn.phase = Phase::Open;
                        self.out.connected += 1;
                        self.shared.connected.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => continue, // spurious: not connected yet
                    Err(err) => {
                        if self.out.connect_failures == 0 {
                            eprintln!("loadgen: connect: {err}");
                        }
                        conn.phase = Phase::Closed;
                        self.out.connect_failures += 1;
                    }
                }
                in_flight -= 1;
                settled += 1;
            }
        }
        Ok(conns)
    }

    /// Phase 2: closed-loop (or paced) echo traffic until the window ends.
    fn load(
        &mut self,
        poll: &mut Poll,
        events: &mut Events,
        conns: &mut [Conn],
        start: Instant,
    ) -> io::Result<()> {
        let end = start + self.plan.warmup + self.plan.duration;
        let sleeps_before = thread_sleeps();
        let mut pacer = Pacer::new(self.plan.rate);
        let (size, pipeline) = (self.plan.size as u64, self.plan.pipeline as u64);
        self.tick();
        self.catch_up_reads(conns);
        for conn in conns.iter_mut() {
            if self.plan.rate.is_some() {
                conn.allowed = 0; // each message waits for the pacer's permission
            } else if conn.phase == Phase::Open {
                self.pump_writes(conn);
            }
        }
        loop {
            let now = self.tick();
            if now >= end {
                self.out.behind = pacer.behind(now - start);
                self.out.sleeps = thread_sleeps() - sleeps_before;
                return Ok(());
            }
            if self.plan.rate.is_some() && !conns.is_empty() {
                pacer.hand_out(now - start, conns, size, pipeline, |conn| {
                    self.pump_writes(conn)
                });
            }
            let mut timeout = end - now;
            if self.plan.rate.is_some() {
                timeout = timeout.min(RATE_TICK);
            }
            if self.plan.busy_poll {
                timeout = Duration::ZERO;
            }
            wait(poll, events, timeout)?;
            self.tick();
            let mut echoed = 0;
            for event in events.iter() {
                let conn = &mut conns[event.token().0];
                if conn.phase != Phase::Open {
                    continue;
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    echoed += self.pump_reads(conn);
                }
                if conn.phase == Phase::Open {
                    self.pump_writes(conn);
                }
            }
            self.shared.echoed.fetch_add(echoed, Ordering::Relaxed);
        }
    }

    /// `--churn`: `count` slots, each a short life on repeat: connect, send one message,
    /// read its echo (checked), close, and connect again at once, until the window ends.
    /// The server's accept path (accept, register, first read, close) is the load.
    fn churn(
        &mut self,
        poll: &mut Poll,
        events: &mut Events,
        first_id: u32,
        count: usize,
        start: Instant,
    ) -> io::Result<()> {
        let end = start + self.plan.warmup + self.plan.duration;
        let mut next_id = first_id;
        let mut slots: Vec<Option<Conn>> = (0..count).map(|_| None).collect();
        self.tick();
        for slot in 0..count {
            self.reconnect(poll, &mut slots, slot, &mut next_id)?;
        }
        loop {
            let now = self.tick();
            if now >= end {
                return Ok(());
            }
            wait(poll, events, end - now)?;
            self.tick();
            let mut echoed = 0;
            for event in events.iter() {
                let slot = event.token().0;
                let Some(conn) = slots[slot].as_mut() else {
                    continue;
                };
                if conn.phase == Phase::Connecting {
                    match conn.finish_connect() {
                        Ok(true) => {
                            conn.phase = Phase::Open;
                            self.out.connected += 1;
                            self.shared.connected.fetch_add(1, Ordering::Relaxed);
                            if self.in_window() {
                                let took = self.now_ns.saturating_sub(conn.connect_started_ns);
                                let _ = self.out.connect_latency.record(took.max(1));
                            }
                            self.pump_writes(conn);
                        }
                        Ok(false) => continue, // spurious: not connected yet
                        Err(err) => {
                            if self.out.connect_failures == 0 {
                                eprintln!("loadgen: connect: {err}");
                            }
                            self.out.connect_failures += 1;
                            self.reconnect(poll, &mut slots, slot, &mut next_id)?;
                        }
                    }
                    continue;
                }
                if conn.phase == Phase::Open {
                    echoed += self.pump_reads(conn);
                }
                let done = conn.received >= self.plan.size as u64;
                if done && self.in_window() {
                    self.out.cycles += 1;
                }
                if done || conn.phase == Phase::Closed {
                    // Closing drops the socket (and its registration); the slot's next
                    // connection may reuse the token: its first event is a connect check,
                    // which a stale event for the old socket cannot fool.
                    self.reconnect(poll, &mut slots, slot, &mut next_id)?;
                } else {
                    self.pump_writes(conn);
                }
            }
            self.shared.echoed.fetch_add(echoed, Ordering::Relaxed);
        }
    }

    /// Starts the next connection in `slot` (dropping whatever was there).
    fn reconnect(
        &mut self,
        poll: &mut Poll,
        slots: &mut [Option<Conn>],
        slot: usize,
        next_id: &mut u32,
    ) -> io::Result<()> {
        let id = *next_id;
        *next_id = next_id.wrapping_add(1);
        slots[slot] = None;
        match self.plan.target.connect(self.source(id)) {
            Ok(mut stream) => {
                poll.registry().register(
                    &mut stream,
                    Token(slot),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                let link = Link::new(stream, &self.plan.layers)?;
                let mut conn = Conn::new(link, id, 1);
                conn.allowed = 1;
                conn.connect_started_ns = self.now_ns;
                slots[slot] = Some(conn);
            }
            Err(err) => {
                // Out of ports or descriptors: this slot stays empty; the run is not clean.
                if self.out.connect_failures == 0 {
                    eprintln!("loadgen: connect: {err}");
                }
                self.out.connect_failures += 1;
            }
        }
        Ok(())
    }

    /// Whether now is inside the measured window.
    fn in_window(&self) -> bool {
        self.now_ns >= self.window_start && self.now_ns < self.window_end
    }

    /// The `--bind` address connection `id` starts from (taken in turn), if any.
    fn source(&self, id: u32) -> Option<IpAddr> {
        (!self.plan.bind.is_empty()).then(|| self.plan.bind[id as usize % self.plan.bind.len()])
    }

    /// Phase 3 (`--idle`): hold every connection silent, then ping each once.
    fn hold_then_ping(
        &mut self,
        poll: &mut Poll,
        events: &mut Events,
        conns: &mut [Conn],
        start: Instant,
    ) -> io::Result<()> {
        let hold_end = start + self.plan.duration;
        self.catch_up_reads(conns);
        loop {
            let now = self.tick();
            if now >= hold_end {
                break;
            }
            wait(poll, events, hold_end - now)?;
            for event in events.iter() {
                let conn = &mut conns[event.token().0];
                if conn.phase == Phase::Open && (event.is_readable() || event.is_read_closed()) {
                    // Nothing was sent, so anything readable is EOF, a reset or a stray byte.
                    self.pump_reads(conn);
                }
            }
        }
        // Everyone may now send exactly one message.
        self.tick();
        self.window_start = self.now_ns;
        self.window_end = u64::MAX;
        for conn in conns.iter_mut() {
            conn.allowed = 1;
            if conn.phase == Phase::Open {
                self.pump_writes(conn);
            }
        }
        let deadline = Instant::now() + PING_TIMEOUT;
        let open = |conns: &[Conn], size: u64| {
            conns
                .iter()
                .filter(|c| c.phase == Phase::Open && c.received < size)
                .count()
        };
        while open(conns, self.plan.size as u64) > 0 {
            let now = self.tick();
            if now >= deadline {
                break;
            }
            wait(poll, events, deadline - now)?;
            self.tick();
            for event in events.iter() {
                let conn = &mut conns[event.token().0];
                if conn.phase != Phase::Open {
                    continue;
                }
                self.pump_reads(conn);
                if conn.phase == Phase::Open {
                    self.pump_writes(conn);
                }
            }
        }
        let size = self.plan.size as u64;
        self.out.answered = conns.iter().filter(|c| c.received >= size).count() as u64;
        Ok(())
    }

    /// Reads every open connection once, to `WouldBlock`. The ramp handles only connect
    /// completions, so a readable edge that arrived meanwhile (a TLS server's handshake
    /// reply) was consumed unanswered: under edge triggering it would never come again.
    fn catch_up_reads(&mut self, conns: &mut [Conn]) {
        for conn in conns.iter_mut() {
            if conn.phase == Phase::Open {
                self.pump_reads(conn);
            }
        }
    }

    /// Writes as much of the connection's stream as the pipeline (and pacing) allow.
    fn pump_writes(&mut self, conn: &mut Conn) {
        let size = self.plan.size as u64;
        let completed = conn.received / size;
        let may_start = (completed + self.plan.pipeline as u64).min(conn.allowed);
        let target = may_start.saturating_mul(size);
        if let Err(err) = conn.stream.flush_layer() {
            return self.fail(conn, &err);
        }
        while conn.written < target {
            let len = ((target - conn.written) as usize).min(self.write_buf.len());
            // Stamp each message whose first byte goes out in this write.
            let first_new = conn.written.div_ceil(size);
            let last = (conn.written + len as u64 - 1) / size;
            for seq in first_new..=last {
                let slot = (seq % conn.sent_at.len() as u64) as usize;
                conn.sent_at[slot] = self.now_ns;
            }
            conn.stream_view(self.plan.size, &self.pattern)
                .fill(conn.written, &mut self.write_buf[..len]);
            match conn.stream.write(&self.write_buf[..len]) {
                Ok(n) => conn.written += n as u64,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return self.fail(conn, &err),
            }
        }
    }

    /// Reads everything available, checks every byte, and times each completed message.
    /// Returns how many messages completed.
    fn pump_reads(&mut self, conn: &mut Conn) -> u64 {
        let size = self.plan.size as u64;
        let mut completed_now = 0;
        loop {
            let n = match conn.stream.read(&mut self.read_buf) {
                Ok(0) => {
                    self.out.eofs += 1;
                    conn.phase = Phase::Closed;
                    return completed_now;
                }
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return completed_now,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    self.fail(conn, &err);
                    return completed_now;
                }
            };
            if conn.received + n as u64 > conn.written {
                // More came back than was ever sent: not an echo.
                self.out.mismatches += 1;
                conn.phase = Phase::Closed;
                return completed_now;
            }
            conn.stream_view(self.plan.size, &self.pattern)
                .fill(conn.received, &mut self.expect_buf[..n]);
            if self.read_buf[..n] != self.expect_buf[..n] {
                self.out.mismatches += 1;
                conn.phase = Phase::Closed;
                return completed_now;
            }
            // Each message whose last byte just arrived is done; its latency is now minus
            // the timestamp its header carried (verified above, byte for byte).
            let before = conn.received / size;
            conn.received += n as u64;
            let after = conn.received / size;
            for seq in before..after {
                let sent = conn.sent_at[(seq % conn.sent_at.len() as u64) as usize];
                if self.now_ns >= self.window_start && self.now_ns < self.window_end {
                    let _ = self
                        .out
                        .latency
                        .record(self.now_ns.saturating_sub(sent).max(1));
                    self.out.msgs += 1;
                }
                completed_now += 1;
            }
        }
    }

    fn fail(&mut self, conn: &mut Conn, err: &io::Error) {
        match err.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => self.out.resets += 1,
            _ => self.out.eofs += 1,
        }
        conn.phase = Phase::Closed;
    }
}

impl Conn {
    fn new(stream: Link, id: u32, pipeline: usize) -> Conn {
        Conn {
            stream,
            id,
            phase: Phase::Connecting,
            written: 0,
            received: 0,
            allowed: u64::MAX,
            sent_at: vec![0; pipeline].into_boxed_slice(),
            connect_started_ns: 0,
        }
    }

    /// What this connection's outgoing stream looks like, to regenerate any part of it.
    fn stream_view<'a>(&'a self, size: usize, pattern: &'a [u8]) -> Stream<'a> {
        Stream {
            size,
            pattern,
            conn_id: self.id,
            sent_at: &self.sent_at,
        }
    }

    /// mio's steps after a WRITABLE event on a connecting socket: `Ok(true)` connected,
    /// `Ok(false)` not yet (a spurious event), `Err` failed.
    fn finish_connect(&mut self) -> io::Result<bool> {
        if let Some(err) = self.stream.take_error()? {
            return Err(err);
        }
        if !self.stream.is_connected()? {
            return Ok(false);
        }
        self.stream.set_nodelay()?;
        // A TLS client speaks first: its ClientHello goes out now, so that even a held
        // (--idle) connection completes its handshake while it waits.
        self.stream.flush_layer()?;
        Ok(true)
    }
}

/// `--rate`: hands out permission to start messages at a fixed pace, round-robin.
struct Pacer {
    per_second: f64,
    /// Messages handed out so far.
    issued: u64,
    /// The connection to offer the next message to.
    cursor: usize,
}

impl Pacer {
    fn new(rate: Option<f64>) -> Pacer {
        Pacer {
            per_second: rate.unwrap_or(0.0),
            issued: 0,
            cursor: 0,
        }
    }

    /// Messages due by now that no connection had room for (the server is falling behind).
    fn behind(&self, elapsed: Duration) -> u64 {
        ((elapsed.as_secs_f64() * self.per_second) as u64).saturating_sub(self.issued)
    }

    /// Gives each message due by `elapsed` to the next connection with room in its
    /// pipeline, and has it sent.
    fn hand_out(
        &mut self,
        elapsed: Duration,
        conns: &mut [Conn],
        size: u64,
        pipeline: u64,
        mut send: impl FnMut(&mut Conn),
    ) {
        let due = (elapsed.as_secs_f64() * self.per_second) as u64;
        let mut without_room = 0;
        while self.issued < due && without_room < conns.len() {
            let index = self.cursor;
            self.cursor = (self.cursor + 1) % conns.len();
            let conn = &mut conns[index];
            let completed = conn.received / size;
            if conn.phase == Phase::Open && conn.allowed - completed < pipeline {
                conn.allowed += 1;
                send(conn);
                self.issued += 1;
                without_room = 0;
            } else {
                without_room += 1;
            }
        }
    }
}
