//! `--udp`: one load-generator thread's UDP flows.
//!
//! A flow is one connected UDP socket (so one source port, as a real client has) keeping
//! `--pipeline` datagrams in flight. Each datagram is message `seq` of the flow's stream
//! (see `wire.rs`): header with `seq` and send time, then a payload mixed with the flow and
//! `seq`. Every datagram that comes back is checked whole against its regenerated self;
//! one not back within `--udp-timeout` is counted lost and its place refilled (UDP loses,
//! and a generator that waited forever would measure nothing).
//!
//! Sending and receiving are batched (`sendmmsg` / `recvmmsg` on each connected socket), so
//! the generator spends less per datagram than the server it measures.

use std::io;
use std::mem::zeroed;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use echod::readiness::syscall_result;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

use crate::probe::thread_sleeps;
use crate::wire::{HEADER_LEN, Stream, pattern};
use crate::worker::{Outcome, Plan, Shared};

/// Datagrams per `recvmmsg` / `sendmmsg`.
const BATCH: usize = 64;
/// How often lost datagrams are looked for.
const LOSS_SCAN: Duration = Duration::from_millis(20);

/// One flow's state.
struct Flow {
    socket: UdpSocket,
    id: u32,
    /// The next message to send.
    next_seq: u64,
    /// The message in flight in each place (`seq % pipeline`), if any.
    in_flight: Box<[Option<u64>]>,
    /// When each place's message was sent, nanoseconds since the epoch (part of its bytes).
    sent_at: Box<[u64]>,
}

/// Runs `count` flows numbered from `first_id` until the window ends.
pub fn run(
    plan: &Plan,
    shared: &Shared,
    server: SocketAddr,
    first_id: u32,
    count: usize,
) -> io::Result<Outcome> {
    let mut out = Outcome::new();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let depth = plan.pipeline;
    let size = plan.size;
    let pattern = pattern(size);
    let mut flows = Vec::with_capacity(count);
    for i in 0..count {
        let bind: SocketAddr = match (server, plan.bind.get(i % plan.bind.len().max(1))) {
            (_, Some(ip)) => SocketAddr::new(*ip, 0),
            (SocketAddr::V4(_), None) => "0.0.0.0:0".parse().unwrap(),
            (SocketAddr::V6(_), None) => "[::]:0".parse().unwrap(),
        };
        let mut socket = UdpSocket::bind(bind)?;
        socket.connect(server)?;
        socket2::SockRef::from(&socket).set_recv_buffer_size(1 << 20)?;
        poll.registry()
            .register(&mut socket, Token(i), Interest::READABLE)?;
        flows.push(Flow {
            socket,
            id: first_id + i as u32,
            next_seq: 0,
            in_flight: vec![None; depth].into_boxed_slice(),
            sent_at: vec![0; depth].into_boxed_slice(),
        });
        out.connected += 1;
        shared.connected.fetch_add(1, Ordering::Relaxed);
    }
    let mut io = Buffers::new(size);

    if shared.ready.wait().is_leader() {
        let _ = shared.start.set(Instant::now());
    }
    shared.ready.wait();
    let start = *shared.start.get().expect("start set by the leader");
    let window = (
        ns_since(shared.epoch, start + plan.warmup),
        ns_since(shared.epoch, start + plan.warmup + plan.duration),
    );
    let end = start + plan.warmup + plan.duration;
    let timeout_ns = plan.udp_timeout.as_nanos() as u64;

    let mut now_ns = ns_since(shared.epoch, Instant::now());
    for flow in &mut flows {
        refill(flow, &mut io, &pattern, size, now_ns, &mut out)?;
    }
    let mut next_scan = Instant::now() + LOSS_SCAN;
    let sleeps_before = thread_sleeps();
    loop {
        let now = Instant::now();
        if now >= end {
            out.sleeps = thread_sleeps() - sleeps_before;
            return Ok(out);
        }
        let timeout = if plan.busy_poll {
            Duration::ZERO
        } else {
            (end - now).min(LOSS_SCAN)
        };
        match poll.poll(&mut events, Some(timeout)) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            other => other?,
        }
        now_ns = ns_since(shared.epoch, Instant::now());
        let mut echoed = 0;
        for event in events.iter() {
            let flow = &mut flows[event.token().0];
            echoed += drain(flow, &mut io, &pattern, size, now_ns, window, &mut out);
            refill(flow, &mut io, &pattern, size, now_ns, &mut out)?;
        }
        if Instant::now() >= next_scan {
            next_scan = Instant::now() + LOSS_SCAN;
            for flow in &mut flows {
                let mut freed = false;
                for place in 0..depth {
                    if flow.in_flight[place].is_some()
                        && now_ns.saturating_sub(flow.sent_at[place]) > timeout_ns
                    {
                        flow.in_flight[place] = None;
                        out.lost += 1;
                        freed = true;
                    }
                }
                if freed {
                    refill(flow, &mut io, &pattern, size, now_ns, &mut out)?;
                }
            }
        }
        shared.echoed.fetch_add(echoed, Ordering::Relaxed);
    }
}

/// Receives until `WouldBlock`, checking every datagram; returns how many came back whole.
fn drain(
    flow: &mut Flow,
    io: &mut Buffers,
    pattern: &[u8],
    size: usize,
    now_ns: u64,
    window: (u64, u64),
    out: &mut Outcome,
) -> u64 {
    let mut completed = 0;
    // Moved out for the loop, so the received datagrams can be read while it is filled.
    let mut expect = std::mem::take(&mut io.expect);
    let completed_by_now = loop {
        let received = match io.receive(&flow.socket) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break completed,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                // ECONNREFUSED and the like: the server is not there (yet).
                out.resets += 1;
                break completed;
            }
        };
        for k in 0..received {
            let datagram = io.received(k);
            let Some(seq) = datagram
                .get(..8)
                .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
            else {
                out.mismatches += 1;
                continue;
            };
            let place = (seq % flow.in_flight.len() as u64) as usize;
            if flow.in_flight[place] != Some(seq) && seq < flow.next_seq {
                continue; // late: already given up and counted as lost
            }
            if datagram.len() != size || flow.in_flight[place] != Some(seq) {
                out.mismatches += 1; // the wrong size, or a sequence number never sent
                continue;
            }
            let view = Stream {
                size,
                pattern,
                conn_id: flow.id,
                sent_at: &flow.sent_at,
            };
            view.fill(seq * size as u64, &mut expect[..size]);
            if datagram != &expect[..size] {
                out.mismatches += 1;
                continue;
            }
            flow.in_flight[place] = None;
            completed += 1;
            if now_ns >= window.0 && now_ns < window.1 {
                let _ = out
                    .latency
                    .record(now_ns.saturating_sub(flow.sent_at[place]).max(1));
                out.msgs += 1;
            }
        }
        // On to WouldBlock even after a short batch: mio's poll(2) selector re-arms the
        // socket only then (the generator's own syscalls do not count against the server).
    };
    io.expect = expect;
    completed_by_now
}

/// Sends new datagrams into every free place, in `seq` order, in one batch.
fn refill(
    flow: &mut Flow,
    io: &mut Buffers,
    pattern: &[u8],
    size: usize,
    now_ns: u64,
    out: &mut Outcome,
) -> io::Result<()> {
    let depth = flow.in_flight.len();
    let mut queued = 0;
    while queued < BATCH {
        let seq = flow.next_seq;
        let place = (seq % depth as u64) as usize;
        if flow.in_flight[place].is_some() {
            break; // the place is still taken: in order, nothing later may go first
        }
        flow.sent_at[place] = now_ns;
        flow.in_flight[place] = Some(seq);
        let view = Stream {
            size,
            pattern,
            conn_id: flow.id,
            sent_at: &flow.sent_at,
        };
        view.fill(seq * size as u64, io.outgoing(queued, size));
        flow.next_seq += 1;
        queued += 1;
    }
    if queued == 0 {
        return Ok(());
    }
    match io.send(&flow.socket, queued, size) {
        Ok(sent) if sent == queued => Ok(()),
        Ok(sent) => {
            // The rest did not go: free their places (they count as lost if never sent
            // would skew nothing, so give them back instead).
            unsend(flow, queued - sent);
            Ok(())
        }
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
            unsend(flow, queued);
            Ok(())
        }
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
            unsend(flow, queued);
            out.resets += 1;
            Ok(())
        }
        Err(err) => Err(err),
    }
}

/// Takes back the last `count` messages queued but not sent.
fn unsend(flow: &mut Flow, count: usize) {
    let depth = flow.in_flight.len() as u64;
    for _ in 0..count {
        flow.next_seq -= 1;
        flow.in_flight[(flow.next_seq % depth) as usize] = None;
    }
}

fn ns_since(epoch: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(epoch).as_nanos() as u64
}

/// The thread's datagram buffers and the headers of one batched call.
struct Buffers {
    /// `BATCH` slots of `slot` bytes for receiving; one more byte than a datagram, so a
    /// longer reply shows as the wrong size.
    incoming: Vec<u8>,
    lens: [usize; BATCH],
    slot: usize,
    /// `BATCH` datagrams being sent, back to back.
    outgoing: Vec<u8>,
    /// One datagram regenerated for comparison.
    expect: Vec<u8>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

impl Buffers {
    fn new(size: usize) -> Buffers {
        let slot = size + 1;
        Buffers {
            incoming: vec![0; BATCH * slot],
            lens: [0; BATCH],
            slot,
            outgoing: vec![0; BATCH * size],
            expect: vec![0; size],
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                BATCH
            ],
            // SAFETY: all-zero is a valid mmsghdr.
            headers: vec![unsafe { zeroed() }; BATCH],
        }
    }

    fn received(&self, k: usize) -> &[u8] {
        &self.incoming[k * self.slot..k * self.slot + self.lens[k]]
    }

    fn outgoing(&mut self, k: usize, size: usize) -> &mut [u8] {
        &mut self.outgoing[k * size..(k + 1) * size]
    }

    /// `recvmmsg` on a connected socket: up to `BATCH` datagrams.
    fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        for k in 0..BATCH {
            self.iovecs[k] = libc::iovec {
                iov_base: self.incoming[k * self.slot..].as_mut_ptr().cast(),
                iov_len: self.slot,
            };
            self.headers[k] = unsafe { zeroed() };
            self.headers[k].msg_hdr.msg_iov = &raw mut self.iovecs[k];
            self.headers[k].msg_hdr.msg_iovlen = 1;
        }
        let fd = socket.as_raw_fd();
        let headers = self.headers.as_mut_ptr();
        // SAFETY: the headers point into buffers owned by `self`, alive for the call.
        let n = socket.try_io(|| {
            syscall_result(unsafe {
                libc::recvmmsg(fd, headers, BATCH as _, 0, std::ptr::null_mut())
            } as isize)
        })?;
        for k in 0..n {
            self.lens[k] = (self.headers[k].msg_len as usize).min(self.slot);
        }
        Ok(n)
    }

    /// `sendmmsg` of the first `count` outgoing datagrams on a connected socket.
    fn send(&mut self, socket: &UdpSocket, count: usize, size: usize) -> io::Result<usize> {
        for k in 0..count {
            self.iovecs[k] = libc::iovec {
                iov_base: self.outgoing[k * size..].as_mut_ptr().cast(),
                iov_len: size,
            };
            self.headers[k] = unsafe { zeroed() };
            self.headers[k].msg_hdr.msg_iov = &raw mut self.iovecs[k];
            self.headers[k].msg_hdr.msg_iovlen = 1;
        }
        let fd = socket.as_raw_fd();
        let headers = self.headers.as_mut_ptr();
        // SAFETY: as in `receive`.
        socket.try_io(|| {
            syscall_result(unsafe { libc::sendmmsg(fd, headers, count as _, 0) } as isize)
        })
    }
}

// The header must fit any datagram the generator sends.
const _: () = assert!(HEADER_LEN == 16);
