//! The write side's ordering rules, on a wire whose room the test sets byte by byte: a
//! socket cannot be made to fill and empty at chosen moments, and the hazard lives in
//! exactly such a moment.

use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream as PeerSocket;
use std::time::Duration;

use super::{Wire, WsStream};
use crate::config::Mode;
use crate::transport::plain::Stream;

/// A Unix socket that takes at most `room` more bytes before it says `WouldBlock`.
struct Throttled {
    stream: Stream,
    room: usize,
}

impl Read for Throttled {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for Throttled {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        if self.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut taken = 0;
        for buf in bufs {
            let n = buf.len().min(self.room - taken);
            self.stream.write_all(&buf[..n])?; // the socket itself has room: tiny writes
            taken += n;
        }
        self.room -= taken;
        Ok(taken)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Wire for Throttled {
    fn flush_wire(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn wire_wants_write(&self) -> bool {
        false
    }
    fn end(&mut self) -> io::Result<()> {
        self.stream.shutdown_writes()
    }
    fn stream_mut(&mut self) -> &mut Stream {
        &mut self.stream
    }
    fn stream(&self) -> &Stream {
        &self.stream
    }
    fn is_handshaking(&self) -> bool {
        false
    }
    fn short_read_is_drained(&self) -> bool {
        false
    }
}

/// A final client frame, masked as RFC 6455 requires (payloads under 64 KiB).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame_starting(0x80 | opcode, payload)
}

/// A masked client frame whose first byte (FIN, RSV bits, opcode) is `first`.
pub(super) fn client_frame_starting(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [7, 1, 9, 3];
    let mut frame = vec![first];
    if payload.len() < 126 {
        frame.push(0x80 | payload.len() as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads one server frame: (first byte, payload).
fn server_frame(peer: &mut PeerSocket) -> (u8, Vec<u8>) {
    let mut head = [0; 2];
    peer.read_exact(&mut head).unwrap();
    assert_eq!(head[1] & 0x80, 0, "a server frame is unmasked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut len = [0; 2];
            peer.read_exact(&mut len).unwrap();
            u16::from_be_bytes(len) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0; len];
    peer.read_exact(&mut payload).unwrap();
    (head[0], payload)
}

/// A WebSocket connection past its upgrade, and the client's end of it.
fn upgraded() -> (WsStream<Throttled>, PeerSocket) {
    upgraded_in(Mode::Echo)
}

/// As `upgraded`, for `--mode`.
fn upgraded_in(mode: Mode) -> (WsStream<Throttled>, PeerSocket) {
    let (ours, theirs) = mio::net::UnixStream::pair().unwrap();
    // SAFETY: the descriptor was just taken from its only owner.
    let mut peer = unsafe { PeerSocket::from_raw_fd(theirs.into_raw_fd()) };
    peer.set_nonblocking(false).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let wire = Throttled {
        stream: Stream::Unix(ours),
        room: usize::MAX,
    };
    let mut ws = WsStream::new(wire, mode, 1 << 20);
    peer.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut buf = [0; 64];
    let err = ws.read(&mut buf).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        peer.read_exact(&mut byte).unwrap();
        response.push(byte[0]);
    }
    assert!(response.starts_with(b"HTTP/1.1 101 "));
    (ws, peer)
}

/// Reads what the client sent until `WouldBlock`, as the loop would; the bytes handed over.
/// (A Unix socket's write lands in its peer's queue before it returns: nothing to wait for.)
fn read_all(ws: &mut WsStream<Throttled>) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0; 4096];
    loop {
        match ws.read(&mut buf) {
            Ok(0) => panic!("an end"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return got,
            Err(err) => panic!("{err}"),
        }
    }
}

/// A pong queued while a reply is part-way out, then a read once the wire has room again
/// (a readable event before the writable one): tungstenite tries to send the pong from
/// inside that read, and must be held, or its bytes land inside the reply's frame.
#[test]
fn a_pong_waits_for_the_reply_frame_that_is_part_way_out() {
    let (mut ws, mut peer) = upgraded();
    let long: Vec<u8> = (0..1000).map(|i| (i % 251) as u8).collect();
    peer.write_all(&client_frame(0x2, &long)).unwrap();
    let got = read_all(&mut ws);
    assert_eq!(got, long);
    ws.wire_mut().room = 5; // the header and one byte of the payload
    assert_eq!(ws.write(&long).unwrap(), long.len());
    assert!(ws.wants_write());
    ws.wire_mut().room = 0;
    peer.write_all(&client_frame(0x9, b"ping")).unwrap();
    peer.write_all(&client_frame(0x2, b"b")).unwrap();
    assert_eq!(read_all(&mut ws), b"b");
    // Room again, and a read first.
    ws.wire_mut().room = usize::MAX;
    assert!(read_all(&mut ws).is_empty());
    ws.flush_layer().unwrap();
    assert_eq!(ws.write(b"b").unwrap(), 1);
    assert!(!ws.wants_write());
    assert_eq!(server_frame(&mut peer), (0x82, long));
    assert_eq!(server_frame(&mut peer), (0x8a, b"ping".to_vec()));
    assert_eq!(server_frame(&mut peer), (0x82, b"b".to_vec()));
}

/// An empty message behind one whose reply is still owed goes back after it, not in the
/// middle of its fragments.
#[test]
fn an_empty_reply_waits_its_turn() {
    let (mut ws, mut peer) = upgraded();
    peer.write_all(&client_frame(0x2, b"first")).unwrap();
    peer.write_all(&client_frame(0x1, b"")).unwrap();
    assert_eq!(read_all(&mut ws), b"first");
    // The echo sends its reply in two writes, as it does when a socket takes part.
    assert_eq!(ws.write(b"fir").unwrap(), 3);
    assert!(
        read_all(&mut ws).is_empty(),
        "the empty message has no bytes"
    );
    assert_eq!(ws.write(b"st").unwrap(), 2);
    assert_eq!(server_frame(&mut peer), (0x02, b"fir".to_vec()));
    assert_eq!(server_frame(&mut peer), (0x80, b"st".to_vec()));
    assert_eq!(server_frame(&mut peer), (0x81, Vec::new()));
}

/// A close behind an empty message whose reply could not start yet: the close reply is the
/// last frame, with no data frame after it (RFC 6455, 5.5.1).
#[test]
fn nothing_follows_the_close_reply() {
    let (mut ws, mut peer) = upgraded();
    peer.write_all(&client_frame(0x2, b"first")).unwrap();
    assert_eq!(read_all(&mut ws), b"first");
    ws.wire_mut().room = 3; // the header and one byte of the payload
    assert_eq!(ws.write(b"first").unwrap(), 5);
    ws.wire_mut().room = 0;
    peer.write_all(&client_frame(0x2, b"")).unwrap();
    peer.write_all(&client_frame(0x8, &1000u16.to_be_bytes()))
        .unwrap();
    let mut buf = [0; 64];
    assert_eq!(ws.read(&mut buf).unwrap(), 0, "the close ends the reading");
    ws.wire_mut().room = usize::MAX;
    ws.flush_layer().unwrap();
    assert_eq!(server_frame(&mut peer), (0x82, b"first".to_vec()));
    assert_eq!(
        server_frame(&mut peer),
        (0x88, 1000u16.to_be_bytes().to_vec())
    );
    peer.set_nonblocking(true).unwrap();
    let after = peer.read(&mut buf);
    assert!(
        matches!(&after, Err(err) if err.kind() == io::ErrorKind::WouldBlock),
        "{after:?} after the close"
    );
}

/// What the layer holds towards the client counts as owed (`--max-pending` weighs it):
/// pongs tungstenite could not send, and the queued replies of empty messages, which
/// owe no bytes but cost their place in the queue.
#[test]
fn pongs_and_empty_replies_held_back_count_as_owed() {
    let (mut ws, mut peer) = upgraded();
    ws.wire.room = 0;
    let mut flood = Vec::new();
    for n in 0..3u8 {
        flood.extend(client_frame(0x9, &[n; 5]));
    }
    for _ in 0..4 {
        flood.extend(client_frame(0x2, b""));
    }
    peer.write_all(&flood).unwrap();
    assert!(read_all(&mut ws).is_empty());
    assert!(!ws.read_paused(), "seven frames are not a flood");
    let pong = 2 + 5;
    let entry = std::mem::size_of::<super::OwedMessage>();
    assert_eq!(ws.owed(), 3 * pong + 4 * entry);
    // Room again: every pong and every empty reply goes out, in order; nothing is owed.
    ws.wire.room = usize::MAX;
    ws.flush_layer().unwrap();
    assert_eq!(ws.owed(), 0);
    for n in 0..3u8 {
        assert_eq!(server_frame(&mut peer), (0x8a, vec![n; 5]));
    }
    for _ in 0..4 {
        assert_eq!(server_frame(&mut peer), (0x82, Vec::new()));
    }
}

/// A run of frames that give the echo no bytes pauses the read after
/// `QUIET_FRAMES_PER_READ` of them (the loop comes back, as after a spent read budget),
/// and the next read goes on where it stopped.
#[test]
fn a_run_of_pings_pauses_the_read_and_the_next_read_goes_on() {
    let (mut ws, mut peer) = upgraded();
    let pings = super::reading::QUIET_FRAMES_PER_READ + 8;
    let mut flood = Vec::new();
    for n in 0..pings {
        flood.extend(client_frame(0x9, &(n as u32).to_be_bytes()));
    }
    flood.extend(client_frame(0x2, b"data"));
    peer.write_all(&flood).unwrap();
    let mut buf = [0; 64];
    let err = ws.read(&mut buf).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    assert!(
        ws.read_paused(),
        "paused after {} pings",
        super::reading::QUIET_FRAMES_PER_READ
    );
    assert_eq!(read_all(&mut ws), b"data");
    assert!(!ws.read_paused());
    assert_eq!(ws.write(b"data").unwrap(), 4);
    for n in 0..pings {
        assert_eq!(
            server_frame(&mut peer),
            (0x8a, (n as u32).to_be_bytes().to_vec())
        );
    }
    assert_eq!(server_frame(&mut peer), (0x82, b"data".to_vec()));
}

/// A whole frame arriving in one read goes around tungstenite (it is never handed to
/// it), and what follows it in the same read (a fragmented message with a ping inside)
/// goes through tungstenite, in order.
#[test]
fn a_whole_frame_is_read_around_tungstenite_and_what_follows_is_not() {
    let (mut ws, mut peer) = upgraded();
    peer.write_all(&client_frame(0x2, b"around")).unwrap();
    assert_eq!(read_all(&mut ws), b"around");
    assert!(
        !ws.inbound.frames.grown_past(0),
        "tungstenite was handed no frame"
    );
    assert_eq!(ws.write(b"around").unwrap(), 6);
    assert_eq!(server_frame(&mut peer), (0x82, b"around".to_vec()));

    let mut burst = client_frame(0x2, b"one");
    burst.extend([0x01, 0x82, 7, 1, 9, 3, b't' ^ 7, b'w' ^ 1]); // text "tw", not final
    burst.extend(client_frame(0x9, b"ping"));
    burst.extend(client_frame(0x0, b"o")); // its last fragment
    peer.write_all(&burst).unwrap();
    assert_eq!(read_all(&mut ws), b"onetwo");
    assert!(
        ws.inbound.frames.grown_past(0),
        "the rest went through tungstenite"
    );
    // The pong went out as the ping was read (here, before any echo was written).
    assert_eq!(server_frame(&mut peer), (0x8a, b"ping".to_vec()));
    assert_eq!(ws.write(b"one").unwrap(), 3);
    assert_eq!(ws.write(b"two").unwrap(), 3);
    assert_eq!(server_frame(&mut peer), (0x82, b"one".to_vec()));
    assert_eq!(server_frame(&mut peer), (0x81, b"two".to_vec()));
}

/// Invalid UTF-8 in a whole text frame is handed to tungstenite as it came (masked
/// again), and tungstenite closes with 1007 as it always did.
#[test]
fn invalid_utf8_read_around_is_still_tungstenites_to_refuse() {
    let (mut ws, mut peer) = upgraded();
    peer.write_all(&client_frame(0x1, &[0xff, 0xfe])).unwrap();
    let mut buf = [0; 64];
    assert_eq!(ws.read(&mut buf).unwrap(), 0, "the connection ends");
    let (first, body) = server_frame(&mut peer);
    assert_eq!((first, &body[..2]), (0x88, &1007u16.to_be_bytes()[..]));
}

/// `--mode ack`: replies the socket could not take pile up in the echo's pending output
/// as one run of bytes; each must still go out as a message of its own.
#[test]
fn acks_held_back_go_out_one_message_each() {
    let (mut ws, mut peer) = upgraded_in(Mode::Ack);
    ws.wire.room = 0;
    let held = crate::config::ACK_REPLY.repeat(3);
    let mut written = 0;
    while written < held.len() {
        match ws.write(&held[written..]) {
            Ok(n) => written += n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                ws.wire.room = usize::MAX;
                ws.flush_layer().unwrap();
            }
            Err(err) => panic!("{err}"),
        }
    }
    ws.wire.room = usize::MAX;
    ws.flush_layer().unwrap();
    for _ in 0..3 {
        assert_eq!(server_frame(&mut peer), (0x81, b"Got it!".to_vec()));
    }
}
