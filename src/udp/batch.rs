//! Many datagrams per system call (Linux): `recvmmsg` in, `sendmmsg` out, with runs of
//! same-size replies to one peer sent as a single GSO message (`UDP_SEGMENT`); and, for
//! when there is nothing to batch, one datagram by plain `recvfrom` / `sendto`.
//!
//! Why this shape: on loopback the kernel's per-datagram path costs far more than the
//! system call, so batching calls alone buys little; what pays is walking the stack once
//! per *run* of datagrams (GSO), where the kernel cuts one large send into the datagrams.
//!
//! Rules kept here:
//! - **Never truncate.** Every receive slot holds the largest datagram allowed
//!   (`--udp-max-datagram`, at most the protocol's 65,527 bytes), plus one byte; the kernel's
//!   `MSG_TRUNC` flag or a length over the limit marks a datagram to drop, never to cut.
//! - **Same datagrams back.** A GSO message is the run's datagrams back to back in an
//!   iovec list with `UDP_SEGMENT` = their size (the last may be shorter), so the peer
//!   receives exactly the datagrams it sent, in order.
//! - **Reply from where it was sent to.** On a wildcard bind, the local address a datagram
//!   arrived on (`IP_PKTINFO` / `IPV6_PKTINFO`) goes back as the source of its reply.
//! - **Batching costs nothing when there is nothing to batch.** `recvmmsg` and `sendmmsg`
//!   each cost a few hundred nanoseconds more than `recvfrom` and `sendto` for a single
//!   datagram (the kernel copies in and walks a message header per datagram): ~10 % of a
//!   ping-pong echo here. So [`Batch::receive_one`] exists, and a batch of one reply
//!   without control messages goes out by `sendto`. The loop also uses it for large
//!   datagrams, where batching saves calls but costs cache (see `udp::LARGE_DATAGRAM`).
//! - **Readiness through mio.** Every call goes through `UdpSocket::try_io`, so a
//!   `WouldBlock` re-arms the socket on every selector (poll(2) included).
//!
//! The buffers are allocated once and shared by every UDP socket of the loop. The receive
//! headers point into them once and for all (boxed slices do not move), and each call
//! resets only the lengths the kernel wrote back; the send headers are built per call from
//! the replies.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use mio::net::UdpSocket;
use socket2::SockAddr;

use crate::readiness::{interrupted, syscall_result, would_block};

/// Slots start on boundaries of this many bytes.
const PAGE: usize = 4096;
/// Datagrams taken per `recvmmsg`.
pub(crate) const BATCH: usize = 32;
/// The largest UDP payload there is (IPv6; IPv4's is 65,507).
pub(crate) const MAX_DATAGRAM: usize = 65_527;
/// Room for a PKTINFO control message (IPv6's is the larger) and a GSO segment size.
const CONTROL_WORDS: usize = 16; // 128 bytes, as u64 for cmsghdr's alignment
/// Datagrams one GSO message may carry (the kernel's limit was 64 before Linux 5.x).
const GSO_MAX_SEGMENTS: usize = 64;
/// Bytes one GSO message may carry (its datagrams together, below IP's 64 KiB).
const GSO_MAX_BYTES: usize = 60_000;
/// Segments above this size are sent one by one: a GSO segment must fit the path MTU,
/// and this fits a 1,500-byte Ethernet frame for IPv4 and IPv6 alike.
const GSO_MAX_SEGMENT: usize = 1_452;

/// What arrived in one receive slot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Arrived {
    /// The datagram's length, or the part of it that fit (see `truncated`).
    pub(crate) len: usize,
    /// The kernel said it did not fit the slot (`MSG_TRUNC`).
    pub(crate) truncated: bool,
    /// Who sent it (an IPv4 sender on a dual-stack socket appears IPv4-mapped).
    pub(crate) source: SocketAddr,
    /// The local address it was sent to, where asked for (`IP_PKTINFO`).
    pub(crate) local: Option<IpAddr>,
}

/// One reply to send: `len` bytes from receive slot `slot` (or the fixed reply), to the
/// source of that slot's datagram.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reply {
    pub(crate) slot: usize,
    pub(crate) len: usize,
}

/// What a batch send achieved.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    /// Replies that went out.
    pub(crate) datagrams: u64,
    pub(crate) bytes: u64,
    /// Replies the kernel refused (one error each), by the error.
    pub(crate) failed: Vec<io::Error>,
    /// Index into the replies of the first one not sent because the socket was full
    /// (`WouldBlock`); everything from there on is still owed.
    pub(crate) blocked_at: Option<usize>,
    /// Send calls made, for the narration.
    pub(crate) calls: u32,
}

/// The loop's receive slots and the headers for one `recvmmsg` / `sendmmsg`.
pub(crate) struct Batch {
    /// `BATCH` slots, each starting on a page boundary (see `first_slot`).
    buffers: Box<[u8]>,
    /// Where slot 0 starts in `buffers`: the first page-aligned byte.
    first_slot: usize,
    /// Bytes per slot: the largest datagram allowed plus one, so an oversize one shows.
    slot_size: usize,
    /// Distance between slots: `slot_size` rounded up to whole pages. The kernel copies
    /// each datagram into its slot, and copies to a misaligned destination run markedly
    /// slower for large datagrams (measured here: 32 KiB echoes cost ~1.5× with a
    /// 65,528-byte stride).
    slot_stride: usize,
    /// The fixed reply of `--mode ack`, sent from here instead of a slot.
    fixed_reply: &'static [u8],
    /// Source address of each slot's datagram, as the kernel wrote it.
    names: Box<[libc::sockaddr_storage]>,
    name_lens: Box<[libc::socklen_t]>,
    /// Control messages received with each datagram (PKTINFO, on a wildcard bind).
    controls: Box<[[u64; CONTROL_WORDS]]>,
    /// Control messages for each outgoing message (UDP_SEGMENT, PKTINFO).
    send_controls: Box<[[u64; CONTROL_WORDS]]>,
    /// The receive side's iovecs and headers: one per slot, pointing into `buffers`,
    /// `names` and `controls`. Set once: a boxed slice's heap memory stays where it is
    /// when the `Batch` moves, so the pointers stay true. Before each call only what the
    /// kernel wrote back (`recv_dirty` of them) is reset.
    recv_iovecs: Box<[libc::iovec]>,
    recv_headers: Box<[libc::mmsghdr]>,
    /// How many receive headers the last `recvmmsg` filled (their lengths to reset).
    recv_dirty: usize,
    /// Whether the receive headers offer room for control messages (PKTINFO, asked for
    /// on wildcard binds only); a specific bind's datagrams carry none to parse.
    recv_controls: bool,
    /// The send side's iovecs and headers, rebuilt for each call from the replies.
    iovecs: Box<[libc::iovec]>,
    headers: Box<[libc::mmsghdr]>,
    /// What the last receive brought, slot by slot.
    pub(crate) arrived: Vec<Arrived>,
}

impl Batch {
    /// Slots for datagrams of up to `max_datagram` bytes.
    pub(crate) fn new(max_datagram: usize, fixed_reply: &'static [u8]) -> Batch {
        let slot_size = max_datagram.min(MAX_DATAGRAM) + 1;
        let slot_stride = slot_size.next_multiple_of(PAGE);
        let buffers = vec![0u8; BATCH * slot_stride + PAGE].into_boxed_slice();
        let first_slot = buffers.as_ptr().align_offset(PAGE);
        // SAFETY: all-zero is a valid value of these plain C structs.
        let zero_name: libc::sockaddr_storage = unsafe { zeroed() };
        let zero_header: libc::mmsghdr = unsafe { zeroed() };
        let zero_iovec = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut batch = Batch {
            buffers,
            first_slot,
            slot_size,
            slot_stride,
            fixed_reply,
            names: vec![zero_name; BATCH].into_boxed_slice(),
            name_lens: vec![0; BATCH].into_boxed_slice(),
            controls: vec![[0; CONTROL_WORDS]; BATCH].into_boxed_slice(),
            send_controls: vec![[0; CONTROL_WORDS]; BATCH].into_boxed_slice(),
            recv_iovecs: vec![zero_iovec; BATCH].into_boxed_slice(),
            recv_headers: vec![zero_header; BATCH].into_boxed_slice(),
            recv_dirty: BATCH,
            recv_controls: false,
            iovecs: vec![zero_iovec; BATCH].into_boxed_slice(),
            headers: vec![zero_header; BATCH].into_boxed_slice(),
            arrived: Vec::with_capacity(BATCH),
        };
        if slot_size > 1 {
            for i in 0..BATCH {
                batch.recv_iovecs[i] = libc::iovec {
                    iov_base: batch.buffers[batch.first_slot + i * batch.slot_stride..]
                        .as_mut_ptr()
                        .cast(),
                    iov_len: batch.slot_size,
                };
                let header = &mut batch.recv_headers[i].msg_hdr;
                header.msg_name = (&raw mut batch.names[i]).cast();
                header.msg_iov = &raw mut batch.recv_iovecs[i];
                header.msg_iovlen = 1;
                header.msg_control = batch.controls[i].as_mut_ptr().cast();
            }
        }
        batch
    }

    /// The bytes of slot `slot`'s datagram (what fit of it).
    pub(crate) fn datagram(&self, slot: usize) -> &[u8] {
        let start = self.first_slot + slot * self.slot_stride;
        &self.buffers[start..start + self.arrived[slot].len]
    }

    /// The bytes a reply carries: its slot's datagram, or the fixed reply.
    fn reply_bytes(&self, reply: Reply, fixed: bool) -> &[u8] {
        if fixed {
            &self.fixed_reply[..reply.len]
        } else {
            &self.datagram(reply.slot)[..reply.len]
        }
    }

    /// One `recvmmsg`: up to `BATCH` datagrams into the slots (see [`Batch::arrived`]).
    /// `controls`: ask for each datagram's local address (PKTINFO; a wildcard bind).
    /// `WouldBlock` when there was nothing.
    pub(crate) fn receive(&mut self, socket: &UdpSocket, controls: bool) -> io::Result<usize> {
        // Only the value-result fields the last call filled in need resetting (all of them
        // if the control room is switched on or off: the batch is shared by every socket).
        let dirty = if controls == self.recv_controls {
            self.recv_dirty
        } else {
            BATCH
        };
        let control_room = if controls {
            size_of::<[u64; CONTROL_WORDS]>()
        } else {
            0
        };
        for header in &mut self.recv_headers[..dirty] {
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_controllen = control_room as _;
        }
        self.recv_controls = controls;
        let fd = socket.as_raw_fd();
        let headers = self.recv_headers.as_mut_ptr();
        // SAFETY: every header points into buffers owned by `self`, sized as declared, and
        // alive for the call; recvmmsg writes at most BATCH headers.
        let n = socket.try_io(|| {
            syscall_result(unsafe {
                libc::recvmmsg(fd, headers, BATCH as _, 0, std::ptr::null_mut())
            } as isize)
        });
        // Even a failed call may have written nothing or anything: reset all next time.
        self.recv_dirty = *n.as_ref().unwrap_or(&BATCH);
        let n = n?;
        self.arrived.clear();
        for i in 0..n {
            let header = &self.recv_headers[i];
            self.name_lens[i] = header.msg_hdr.msg_namelen;
            self.arrived.push(Arrived {
                len: (header.msg_len as usize).min(self.slot_size),
                truncated: header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                source: to_socket_addr(&self.names[i], self.name_lens[i])
                    .unwrap_or_else(unknown_source),
                local: if controls {
                    local_address(&header.msg_hdr)
                } else {
                    None
                },
            });
        }
        Ok(n)
    }

    /// One `recvfrom` into slot 0: for a socket whose datagrams have been arriving one at
    /// a time. Carries no control messages, so not for a wildcard bind (no PKTINFO).
    pub(crate) fn receive_one(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let fd = socket.as_raw_fd();
        let slot = self.buffers[self.first_slot..].as_mut_ptr();
        let name = &raw mut self.names[0];
        let mut name_len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: slot 0 holds `slot_size` bytes and `name` a sockaddr_storage, both owned
        // by `self` and alive for the call. MSG_TRUNC: the length returned is the
        // datagram's own, even when it did not fit.
        let len = socket.try_io(|| {
            syscall_result(unsafe {
                libc::recvfrom(
                    fd,
                    slot.cast(),
                    self.slot_size,
                    libc::MSG_TRUNC,
                    name.cast(),
                    &mut name_len,
                )
            })
        })?;
        self.name_lens[0] = name_len;
        self.arrived.clear();
        self.arrived.push(Arrived {
            len: len.min(self.slot_size),
            truncated: len > self.slot_size,
            source: to_socket_addr(&self.names[0], name_len).unwrap_or_else(unknown_source),
            local: None,
        });
        Ok(1)
    }

    /// Sends `replies` (in order) to the sources of their slots: runs of same-size replies
    /// to one peer as single GSO messages, everything in as few `sendmmsg` calls as the
    /// kernel allows. `fixed`: the replies are the fixed reply, not the datagrams.
    pub(crate) fn send(&mut self, socket: &UdpSocket, replies: &[Reply], fixed: bool) -> Sent {
        let mut sent = Sent::default();
        let mut next = 0;
        while next < replies.len() {
            // Build up to BATCH messages (and BATCH iovecs) from `next` on.
            let mut messages = 0;
            let mut iovecs = 0;
            let mut first_reply = [0usize; BATCH];
            let mut run_lens = [0usize; BATCH];
            let mut at = next;
            while at < replies.len() && messages < BATCH && iovecs < BATCH {
                let run = self.run_length(replies, at, BATCH - iovecs);
                first_reply[messages] = at;
                run_lens[messages] = run;
                self.fill_message(messages, iovecs, &replies[at..at + run], fixed);
                iovecs += run;
                messages += 1;
                at += run;
            }
            let fd = socket.as_raw_fd();
            let headers = self.headers.as_mut_ptr();
            let lone = &self.headers[0].msg_hdr;
            let result = if messages == 1 && lone.msg_controllen == 0 {
                // One datagram, no control messages: the cheaper call (see the module doc).
                // SAFETY: its iovec and name point into `self`, alive for the call.
                let (iovec, name, name_len) =
                    (unsafe { *lone.msg_iov }, lone.msg_name, lone.msg_namelen);
                socket.try_io(|| {
                    syscall_result(unsafe {
                        libc::sendto(fd, iovec.iov_base, iovec.iov_len, 0, name.cast(), name_len)
                    })
                    .map(|_| 1)
                })
            } else {
                // SAFETY: as in `receive`: headers point into `self`, alive for the call.
                socket.try_io(|| {
                    syscall_result(unsafe { libc::sendmmsg(fd, headers, messages as _, 0) } as isize)
                })
            };
            sent.calls += 1;
            match result {
                Ok(done) => {
                    for m in 0..done {
                        let run = &replies[first_reply[m]..first_reply[m] + run_lens[m]];
                        sent.datagrams += run.len() as u64;
                        sent.bytes += run.iter().map(|r| r.len as u64).sum::<u64>();
                    }
                    // After a partial send, the next call starts at the first message not
                    // sent, and reports its error if it had one.
                    next = if done < messages {
                        first_reply[done]
                    } else {
                        at
                    };
                }
                Err(err) if would_block(&err) => {
                    sent.blocked_at = Some(next);
                    return sent;
                }
                Err(err) if interrupted(&err) => {}
                Err(err) => {
                    // The first message failed. A GSO run the kernel will not cut (no
                    // offload on this path, an MTU below the segment) goes out one by one;
                    // any other error concerns just that reply.
                    let run = &replies[first_reply[0]..first_reply[0] + run_lens[0]];
                    if run.len() > 1 {
                        if let Some(blocked) = self.send_singly(socket, run, fixed, &mut sent) {
                            sent.blocked_at = Some(first_reply[0] + blocked);
                            return sent;
                        }
                    } else {
                        sent.failed.push(err);
                    }
                    next = first_reply[0] + run_lens[0];
                }
            }
        }
        sent
    }

    /// Sends each reply of `run` as a message of its own; `Some(i)` if reply `i` met a
    /// full socket.
    fn send_singly(
        &mut self,
        socket: &UdpSocket,
        run: &[Reply],
        fixed: bool,
        sent: &mut Sent,
    ) -> Option<usize> {
        for (i, reply) in run.iter().enumerate() {
            self.fill_message(0, 0, std::slice::from_ref(reply), fixed);
            let fd = socket.as_raw_fd();
            let header = &raw mut self.headers[0].msg_hdr;
            // SAFETY: as in `receive`.
            let result =
                socket.try_io(|| syscall_result(unsafe { libc::sendmsg(fd, header, 0) } as isize));
            sent.calls += 1;
            match result {
                Ok(_) => {
                    sent.datagrams += 1;
                    sent.bytes += reply.len as u64;
                }
                Err(err) if would_block(&err) => return Some(i),
                Err(err) => sent.failed.push(err),
            }
        }
        None
    }

    /// How many replies from `at` on can travel as one GSO message: same peer, same local
    /// address, same size (the last may be shorter), within the kernel's limits.
    fn run_length(&self, replies: &[Reply], at: usize, room: usize) -> usize {
        let first = replies[at];
        let size = first.len;
        if size == 0 || size > GSO_MAX_SEGMENT {
            return 1;
        }
        let limit = room
            .min(GSO_MAX_SEGMENTS)
            .min(GSO_MAX_BYTES / size)
            .min(replies.len() - at);
        let (peer, local) = (
            self.arrived[first.slot].source,
            self.arrived[first.slot].local,
        );
        let mut run = 1;
        while run < limit {
            let next = replies[at + run];
            let arrived = &self.arrived[next.slot];
            let same_peer = arrived.source == peer && arrived.local == local;
            if !same_peer || next.len > size || next.len == 0 {
                break;
            }
            run += 1;
            if next.len < size {
                break; // a shorter datagram can only end a run
            }
        }
        run
    }

    /// Points message `index` at `run` (replies to one peer), its iovecs from `first_iovec`.
    fn fill_message(&mut self, index: usize, first_iovec: usize, run: &[Reply], fixed: bool) {
        for (k, reply) in run.iter().enumerate() {
            let (base, len) = {
                let bytes = self.reply_bytes(*reply, fixed);
                (bytes.as_ptr().cast_mut(), bytes.len())
            };
            self.iovecs[first_iovec + k] = libc::iovec {
                iov_base: base.cast(),
                iov_len: len,
            };
        }
        let slot = run[0].slot;
        let segment = (run.len() > 1).then_some(run[0].len as u16);
        let local = self.arrived[slot].local;
        let control_len = write_send_controls(&mut self.send_controls[index], segment, local);
        let header = &mut self.headers[index];
        header.msg_hdr.msg_name = (&raw mut self.names[slot]).cast();
        header.msg_hdr.msg_namelen = self.name_lens[slot];
        header.msg_hdr.msg_iov = &raw mut self.iovecs[first_iovec];
        header.msg_hdr.msg_iovlen = run.len() as _;
        if control_len == 0 {
            header.msg_hdr.msg_control = std::ptr::null_mut();
            header.msg_hdr.msg_controllen = 0;
        } else {
            header.msg_hdr.msg_control = self.send_controls[index].as_mut_ptr().cast();
            header.msg_hdr.msg_controllen = control_len as _;
        }
        header.msg_hdr.msg_flags = 0;
        header.msg_len = 0;
    }
}

/// Sends one datagram to `to`, from local address `from` if given (the slow path for
/// replies a full socket refused earlier).
pub(crate) fn send_one(
    socket: &UdpSocket,
    bytes: &[u8],
    to: SocketAddr,
    from: Option<IpAddr>,
) -> io::Result<()> {
    let mut control = [0u64; CONTROL_WORDS];
    let control_len = write_send_controls(&mut control, None, from);
    let destination = SockAddr::from(to);
    let mut iovec = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: all-zero is a valid msghdr; every pointer set below outlives the call.
    let mut header: libc::msghdr = unsafe { zeroed() };
    header.msg_name = destination.as_ptr().cast_mut().cast();
    header.msg_namelen = destination.len();
    header.msg_iov = &raw mut iovec;
    header.msg_iovlen = 1;
    if control_len > 0 {
        header.msg_control = control.as_mut_ptr().cast();
        header.msg_controllen = control_len as _;
    }
    let fd = socket.as_raw_fd();
    socket.try_io(|| {
        // SAFETY: `header` and what it points to are valid for the call.
        syscall_result(unsafe { libc::sendmsg(fd, &header, 0) }).map(drop)
    })
}

/// The kernel's count of datagrams it dropped for this socket, its receive queue being
/// full (`SO_MEMINFO`; the same counter `SO_RXQ_OVFL` would attach to each datagram, read
/// here only when the counters are reported, so the receive path stays lean).
pub(crate) fn queue_drops(socket: &UdpSocket) -> io::Result<u32> {
    let mut meminfo = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
    let mut len = size_of_val(&meminfo) as libc::socklen_t;
    // SAFETY: `meminfo` is writable for `len` bytes, and the kernel writes at most `len`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            meminfo.as_mut_ptr().cast(),
            &mut len,
        )
    };
    syscall_result(rc as isize)?;
    Ok(meminfo[libc::SK_MEMINFO_DROPS as usize])
}

/// The local address a datagram was sent to (PKTINFO), among its control messages.
fn local_address(header: &libc::msghdr) -> Option<IpAddr> {
    let mut local = None;
    // SAFETY: the kernel filled msg_control up to msg_controllen with well-formed cmsgs;
    // the CMSG_* walkers stay within it, and each payload is read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info = data.cast::<libc::in_pktinfo>().read_unaligned();
                    local = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        info.ipi_addr.s_addr,
                    ))));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = data.cast::<libc::in6_pktinfo>().read_unaligned();
                    local = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    local
}

/// Stands in for a source address the kernel wrote in a family we do not serve.
fn unknown_source() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// Writes an outgoing message's control messages; returns their length (0: none).
fn write_send_controls(
    buffer: &mut [u64; CONTROL_WORDS],
    segment: Option<u16>,
    local: Option<IpAddr>,
) -> usize {
    if segment.is_none() && local.is_none() {
        return 0;
    }
    // SAFETY: a msghdr whose control area is `buffer`, so CMSG_FIRSTHDR / CMSG_NXTHDR walk
    // within it; each payload fits the CMSG_SPACE counted for it, which stays below the
    // buffer's 128 bytes (16 for the segment size + 40 for in6_pktinfo).
    unsafe {
        let mut header: libc::msghdr = zeroed();
        header.msg_control = buffer.as_mut_ptr().cast();
        let space = |len: usize| libc::CMSG_SPACE(len as u32) as usize;
        let total = segment.map_or(0, |_| space(size_of::<u16>()))
            + match local {
                Some(IpAddr::V4(_)) => space(size_of::<libc::in_pktinfo>()),
                Some(IpAddr::V6(_)) => space(size_of::<libc::in6_pktinfo>()),
                None => 0,
            };
        buffer.fill(0);
        header.msg_controllen = total as _;
        let mut cmsg = libc::CMSG_FIRSTHDR(&header);
        if let Some(size) = segment {
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = libc::UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
            libc::CMSG_DATA(cmsg).cast::<u16>().write_unaligned(size);
            cmsg = libc::CMSG_NXTHDR(&header, cmsg);
        }
        match local {
            Some(IpAddr::V4(ip)) => {
                (*cmsg).cmsg_level = libc::IPPROTO_IP;
                (*cmsg).cmsg_type = libc::IP_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(ip).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                libc::CMSG_DATA(cmsg)
                    .cast::<libc::in_pktinfo>()
                    .write_unaligned(info);
            }
            Some(IpAddr::V6(ip)) => {
                (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as _;
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: ip.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                libc::CMSG_DATA(cmsg)
                    .cast::<libc::in6_pktinfo>()
                    .write_unaligned(info);
            }
            None => {}
        }
        total
    }
}

/// A kernel-written source address as a `SocketAddr`.
fn to_socket_addr(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    // SAFETY: the kernel wrote a sockaddr of family `ss_family` and length `len` into
    // `name`; each arm reads the matching struct only when `len` covers it.
    unsafe {
        match i32::from(name.ss_family) {
            libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
                let v4 = &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
                Some(SocketAddr::from((ip, u16::from_be(v4.sin_port))))
            }
            libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
                let v6 = &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                    ip,
                    u16::from_be(v6.sin6_port),
                    v6.sin6_flowinfo,
                    v6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UdpSocket, std::net::UdpSocket) {
        let server = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(server.local_addr().unwrap()).unwrap();
        (server, client)
    }

    #[test]
    fn receive_one_takes_a_datagram_whole_and_marks_one_too_large() {
        let (server, client) = pair();
        let mut batch = Batch::new(100, b"");
        client.send(b"Hello, world").unwrap();
        client.send(&[7u8; 200]).unwrap();
        // Both were sent on loopback before we read, so both are queued already.
        assert_eq!(batch.receive_one(&server).unwrap(), 1);
        assert_eq!(batch.datagram(0), b"Hello, world");
        assert!(!batch.arrived[0].truncated);
        assert_eq!(batch.arrived[0].source, client.local_addr().unwrap());
        assert_eq!(batch.receive_one(&server).unwrap(), 1);
        assert!(batch.arrived[0].truncated, "200 bytes into a 101-byte slot");
        let err = batch.receive_one(&server).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn queue_drops_counts_what_a_full_receive_queue_turned_away() {
        let (server, client) = pair();
        socket2::SockRef::from(&server)
            .set_recv_buffer_size(4096)
            .unwrap();
        assert_eq!(queue_drops(&server).unwrap(), 0);
        // Far more than a 4 KiB queue holds (the kernel doubles it, and counts overhead).
        for _ in 0..200 {
            client.send(&[1u8; 1000]).unwrap();
        }
        assert!(queue_drops(&server).unwrap() > 0);
    }
}
