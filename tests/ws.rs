//! `ws:` and `wss:` listeners: WebSocket echo (RFC 6455), message by message, over a real
//! socket, with tungstenite's blocking client on the other end, and raw bytes where a
//! client must misbehave.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use common::{TestServer, connect};
use echod::Config;

/// A server with a plain TCP listener and a `ws:` one.
fn ws_server(tune: impl FnOnce(&mut Config)) -> (TestServer, SocketAddr) {
    let mut config = Config::listening_on(["127.0.0.1:0", "ws:127.0.0.1:0"]);
    tune(&mut config);
    let server = TestServer::with(config);
    let addr = server.ws_addrs[0].0;
    (server, addr)
}

fn ws_connect(addr: SocketAddr) -> WebSocket<TcpStream> {
    let url = format!("ws://{addr}/any/path?query");
    let (socket, response) = tungstenite::client(url, connect(addr)).expect("upgrade");
    assert_eq!(response.status(), 101);
    socket
}

fn next_data(socket: &mut WebSocket<TcpStream>) -> Message {
    loop {
        match socket.read().expect("a message") {
            Message::Ping(_) | Message::Pong(_) => {}
            message => return message,
        }
    }
}

#[test]
fn text_comes_back_as_text_and_binary_as_binary() {
    let (server, addr) = ws_server(|_| {});
    let mut socket = ws_connect(addr);
    let every_byte: Vec<u8> = (0..=255).collect();
    let big = common::pattern(9, 1 << 20);
    for message in [
        Message::text("Hello, world"),
        Message::text("汉语/漢語 Hànyǔ"),
        Message::binary(every_byte.clone()),
        Message::text(""),
        Message::binary(Vec::new()),
        Message::binary(big.clone()),
    ] {
        socket.send(message.clone()).unwrap();
        assert_eq!(next_data(&mut socket), message);
    }
    // A ping gets its pong, with the same payload.
    socket
        .send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    match socket.read().unwrap() {
        Message::Pong(payload) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    // The close handshake completes, with our code echoed.
    socket
        .close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .unwrap();
    loop {
        match socket.read() {
            Ok(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Normal),
            Ok(Message::Close(None)) => panic!("the close code was not echoed"),
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(err) => panic!("{err}"),
        }
    }
    let stats = server.wait_for("the close", |s| s.closed_total() == 1);
    assert_eq!(stats.closed_eof, 1, "{stats:?}");
    assert_eq!(stats.handshakes, 1, "the upgrade is counted as a handshake");
    assert_eq!(
        (stats.ws_messages_in, stats.ws_messages_out),
        (6, 6),
        "{stats:?}"
    );
    assert_eq!(stats.ws_closes_received, 1, "{stats:?}");
}

#[test]
fn a_fragmented_message_comes_back_whole() {
    let (_server, addr) = ws_server(|_| {});
    let mut raw = connect(addr);
    upgrade_by_hand(&mut raw);
    // "Hello, " then "world", as two masked frames: text (FIN=0), continuation (FIN=1).
    raw.write_all(&masked_frame(0x01, false, b"Hello, "))
        .unwrap();
    raw.write_all(&masked_frame(0x00, true, b"world")).unwrap();
    let reply = read_frames_payload(&mut raw, 12);
    assert_eq!(reply, b"Hello, world");
}

#[test]
fn invalid_utf8_closes_with_1007_and_too_big_with_1009() {
    let (server, addr) = ws_server(|config| config.ws_max_message = 1000);
    let mut raw = connect(addr);
    upgrade_by_hand(&mut raw);
    raw.write_all(&masked_frame(0x01, true, &[0xff, 0xfe, 0xfd]))
        .unwrap();
    assert_eq!(close_code(&mut raw), 1007);

    let mut raw = connect(addr);
    upgrade_by_hand(&mut raw);
    raw.write_all(&masked_frame(0x02, true, &vec![7; 2000]))
        .unwrap();
    assert_eq!(close_code(&mut raw), 1009);
    // Others are served meanwhile.
    let mut socket = ws_connect(addr);
    socket.send(Message::text("still here")).unwrap();
    assert_eq!(next_data(&mut socket), Message::text("still here"));
    common::round_trip(&mut server.connect(), b"and plain TCP");
    let stats = server.stats();
    assert_eq!(stats.ws_closed_invalid_utf8, 1, "{stats:?}");
    assert_eq!(stats.ws_closed_too_big, 1, "{stats:?}");
}

#[test]
fn a_request_that_is_no_upgrade_gets_a_4xx_and_a_close() {
    let (server, addr) = ws_server(|_| {});
    for (request, status) in [
        ("GET / HTTP/1.1\r\nHost: x\r\n\r\n", "426"),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n",
            "400",
        ),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            "426",
        ),
        ("POST / HTTP/1.1\r\nHost: x\r\n\r\n", "405"),
        ("\x16\x03\x01 not http at all\r\n\r\n", "400"),
    ] {
        let mut raw = connect(addr);
        raw.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        raw.read_to_string(&mut response).unwrap(); // ends: the server closes
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status} ")),
            "{request:?}: {response}"
        );
    }
    let stats = server.wait_for("all closed", |s| s.closed_total() == 5);
    assert_eq!(stats.handshakes_failed, 5, "{stats:?}");
}

/// `--mode ack` answers each message with a text message of its own; `--mode discard`
/// answers none, while a ping still gets its pong and a close its close.
#[test]
fn ack_and_discard_apply_per_message() {
    let (_ack, addr) = ws_server(|config| config.mode = echod::config::Mode::Ack);
    let mut socket = ws_connect(addr);
    for message in [
        Message::text("first"),
        Message::binary(vec![1, 2, 3]),
        Message::text("汉语"),
    ] {
        socket.send(message).unwrap();
        assert_eq!(next_data(&mut socket), Message::text("Got it!"));
    }
    // An empty message is a message too, and one longer than a read is still one message:
    // three messages, three acks, and nothing more before the close.
    socket.send(Message::binary(Vec::new())).unwrap();
    socket.send(Message::binary(vec![7u8; 200_000])).unwrap();
    socket.send(Message::text("last")).unwrap();
    socket.close(None).unwrap();
    let mut acks = Vec::new();
    loop {
        match socket.read() {
            Ok(Message::Close(_)) => {}
            Ok(message) => acks.push(message),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(err) => panic!("reading the acks: {err}"),
        }
    }
    assert_eq!(acks, vec![Message::text("Got it!"); 3]);

    let (_discard, addr) = ws_server(|config| config.mode = echod::config::Mode::Discard);
    let mut raw = connect(addr);
    upgrade_by_hand(&mut raw);
    raw.write_all(&masked_frame(0x01, true, b"dropped"))
        .unwrap();
    raw.write_all(&masked_frame(0x09, true, b"still here?"))
        .unwrap();
    assert_eq!(server_frame(&mut raw), (0x0a, b"still here?".to_vec()));
    raw.write_all(&masked_frame(0x08, true, &1000u16.to_be_bytes()))
        .unwrap();
    assert_eq!(
        close_code(&mut raw),
        1000,
        "the close, and no echo before it"
    );
}

/// `--print` prints each message the server heard once, on the real binary: an empty
/// one too, and one longer than a read by its first part and how much more came.
#[test]
fn print_shows_each_message_heard_over_ws() {
    const LONG: usize = 200_000;
    let (mut server, addr) = ws_binary_server(&["--print"]);
    // The long message's line is longer than a pipe holds.
    server.read_stdout_meanwhile();
    let mut socket = ws_connect(addr);
    let peer = socket.get_ref().local_addr().unwrap();
    for message in [
        Message::text("Hello, world"),
        Message::text(""),
        Message::text("x".repeat(LONG)),
        Message::text("汉语/漢語 Hànyǔ"),
    ] {
        socket.send(message.clone()).unwrap();
        assert_eq!(next_data(&mut socket), message);
    }
    socket.close(None).unwrap();
    while socket.read().is_ok() {}
    let stdout = server.stop_for_stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "one line a message: {:.300}", stdout);
    assert_eq!(
        lines[0],
        format!("Server heard \"Hello, world\" from {peer}")
    );
    assert_eq!(lines[1], format!("Server heard \"\" from {peer}"));
    assert_eq!(
        lines[3],
        format!("Server heard \"汉语/漢語 Hànyǔ\" from {peer}")
    );
    let long = lines[2]
        .strip_prefix("Server heard \"")
        .and_then(|rest| rest.strip_suffix(&format!(" bytes more from {peer}")))
        .expect("the long message's line");
    let (first, more) = long
        .split_once("\" and ")
        .expect("its first part, then the rest");
    assert!(
        !first.is_empty() && first.bytes().all(|b| b == b'x'),
        "{first:.40}"
    );
    assert_eq!(first.len() + more.parse::<usize>().unwrap(), LONG);
}

/// A `wss:` server with a certificate of the test's own, and that certificate.
fn wss_server(
    tune: impl FnOnce(&mut Config),
) -> (
    TestServer,
    SocketAddr,
    rcgen::CertifiedKey<rcgen::KeyPair>,
    tempfile::TempDir,
) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), made.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), made.signing_key.serialize_pem()).unwrap();
    let mut config = Config::listening_on(["wss:127.0.0.1:0"]);
    config.tls_files = Some((dir.path().join("cert.pem"), dir.path().join("key.pem")));
    tune(&mut config);
    let server = TestServer::with(config);
    let (addr, tls) = server.ws_addrs[0];
    assert!(tls);
    (server, addr, made, dir)
}

type WssSocket = WebSocket<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

/// A WebSocket client over rustls on `stream`, trusting `cert` alone.
fn wss_client(stream: TcpStream, cert: &rcgen::Certificate, port: u16) -> WssSocket {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let session = rustls::ClientConnection::new(
        Arc::new(client),
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let stream = rustls::StreamOwned::new(session, stream);
    let (socket, _) =
        tungstenite::client(format!("wss://localhost:{port}/"), stream).expect("upgrade over TLS");
    socket
}

#[test]
fn wss_is_websocket_over_tls() {
    let (server, addr, made, _dir) = wss_server(|_| {});
    let mut socket = wss_client(connect(addr), &made.cert, addr.port());
    for message in [
        Message::text("secure hello"),
        Message::binary(vec![1, 2, 3]),
    ] {
        socket.send(message.clone()).unwrap();
        loop {
            match socket.read().unwrap() {
                Message::Ping(_) | Message::Pong(_) => {}
                got => {
                    assert_eq!(got, message);
                    break;
                }
            }
        }
    }
    socket.close(None).unwrap();
    while socket.read().is_ok() {}
    let stats = server.wait_for("the close", |s| s.closed_total() == 1);
    assert_eq!(stats.closed_eof, 1, "{stats:?}");
}

/// Sends a valid upgrade request by hand and reads the 101 response.
fn upgrade_by_hand(raw: &mut TcpStream) {
    raw.write_all(
        b"GET /chat HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut response = Vec::new();
    let mut byte = [0];
    while !response.ends_with(b"\r\n\r\n") {
        raw.read_exact(&mut byte).unwrap();
        response.push(byte[0]);
    }
    let response = String::from_utf8(response).unwrap();
    assert!(response.starts_with("HTTP/1.1 101 "), "{response}");
    // RFC 6455's own example key and answer.
    assert!(
        response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{response}"
    );
}

/// A client frame (masked, as RFC 6455 requires of clients).
fn masked_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n < 65536 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads one server frame (unmasked): its opcode and payload.
fn server_frame(raw: &mut impl Read) -> (u8, Vec<u8>) {
    let mut head = [0; 2];
    raw.read_exact(&mut head).unwrap();
    assert_eq!(head[1] & 0x80, 0, "a server frame is never masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut len = [0; 2];
            raw.read_exact(&mut len).unwrap();
            u16::from_be_bytes(len) as usize
        }
        127 => {
            let mut len = [0; 8];
            raw.read_exact(&mut len).unwrap();
            u64::from_be_bytes(len) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0; len];
    raw.read_exact(&mut payload).unwrap();
    (head[0] & 0x0f, payload)
}

/// Reads server frames until `len` payload bytes have arrived.
fn read_frames_payload(raw: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut payload = Vec::new();
    while payload.len() < len {
        payload.extend(server_frame(raw).1);
    }
    payload
}

/// Reads frames until a close frame, and returns its code.
fn close_code(raw: &mut TcpStream) -> u16 {
    loop {
        if let (0x08, body) = server_frame(raw) {
            return u16::from_be_bytes([body[0], body[1]]);
        }
    }
}

/// Waits until some connection owes `--max-pending` (so it is no longer read), then
/// checks that another client is served meanwhile.
fn held_at_the_cap_while_a_bystander_is_served(server: &TestServer, addr: SocketAddr, what: &str) {
    let cap = echod::config::DEFAULT_MAX_PENDING as u64;
    server.wait_for(what, |s| s.peak_pending_connection >= cap);
    let mut bystander = ws_connect(addr);
    bystander.send(Message::text("not starved")).unwrap();
    assert_eq!(next_data(&mut bystander), Message::text("not starved"));
}

#[test]
fn a_client_that_never_reads_is_held_at_the_cap_and_loses_nothing() {
    const FRAME: usize = 64 << 10;
    const FRAMES: usize = 256; // 16 MiB
    let cap = echod::config::DEFAULT_MAX_PENDING as u64;
    let (server, addr) = ws_server(|_| {});
    let mut raw = connect(addr);
    upgrade_by_hand(&mut raw);
    let mut writer = raw.try_clone().unwrap();
    let data = common::pattern(21, FRAME * FRAMES);
    let expected = data.clone();
    let writing = std::thread::spawn(move || {
        for chunk in data.chunks(FRAME) {
            writer.write_all(&masked_frame(0x02, true, chunk)).unwrap();
        }
    });
    held_at_the_cap_while_a_bystander_is_served(&server, addr, "backpressure to engage");
    // Now read every frame back: binary, and the same bytes in order.
    let mut received = Vec::with_capacity(expected.len());
    while received.len() < expected.len() {
        let (opcode, payload) = server_frame(&mut raw);
        assert!(opcode == 0x02 || opcode == 0x00, "opcode {opcode}");
        received.extend(payload);
    }
    writing.join().unwrap();
    assert!(received == expected, "the 16 MiB echo differs");
    drop(raw);
    let stats = server.stop();
    assert!(
        stats.peak_pending_connection <= cap + ONE_MESSAGE_BOOKKEEPING,
        "{} bytes owed at the peak, over the cap of {cap}",
        stats.peak_pending_connection
    );
}

/// What each message whose reply is owed costs besides its bytes (its place in the
/// queue), counted against `--max-pending` too: the message being read when the cap is
/// reached may pass it by that much.
const ONE_MESSAGE_BOOKKEEPING: u64 = 64;

/// A client that breaks RFC 6455 gets close code 1002 and nothing else of the server's:
/// an unmasked frame, a reserved bit, an unknown opcode, and a close frame carrying a code
/// no endpoint may send. The others are served meanwhile.
#[test]
fn protocol_errors_close_with_1002() {
    let (server, addr) = ws_server(|_| {});
    let unmasked = [0x82, 0x03, b'a', b'b', b'c'];
    let mut reserved_bit = masked_frame(0x02, true, b"abc");
    reserved_bit[0] |= 0x40; // RSV1 without an extension that defines it
    let unknown_opcode = masked_frame(0x03, true, b"abc");
    let forbidden_code = masked_frame(0x08, true, &1005u16.to_be_bytes()); // "no code": never sent
    for (what, frame) in [
        ("an unmasked frame", unmasked.to_vec()),
        ("a reserved bit", reserved_bit),
        ("an unknown opcode", unknown_opcode),
        ("close code 1005", forbidden_code),
    ] {
        let mut raw = connect(addr);
        upgrade_by_hand(&mut raw);
        raw.write_all(&frame).unwrap();
        assert_eq!(close_code(&mut raw), 1002, "{what}");
        assert_eq!(
            common::read_to_end(&mut raw),
            b"",
            "nothing after the close: {what}"
        );
        let mut socket = ws_connect(addr);
        socket.send(Message::text("still here")).unwrap();
        assert_eq!(next_data(&mut socket), Message::text("still here"));
    }
    let stats = server.wait_for("every connection closed", |s| s.closed_total() == 8);
    // The close frame is a close received, answered with 1002; the other three are
    // echod's own closes for a protocol error.
    assert_eq!(stats.ws_closed_protocol, 3, "{stats:?}");
}

/// A TCP connection whose receive buffer is small: a server's reply to it is held back
/// by the socket soon.
fn small_window_connect(addr: SocketAddr) -> TcpStream {
    let raw = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    raw.set_recv_buffer_size(4096).unwrap();
    raw.connect(&addr.into()).unwrap();
    let raw = TcpStream::from(raw);
    raw.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    raw
}

/// The cap for `replies_behind_a_held_reply…`: above its long message, so all of that is
/// taken while its reply waits.
const HELD_REPLY_CAP: usize = 16 << 20;

/// While a long reply is held part-way out by a client that does not read, what arrives
/// behind it (a ping, an empty message, a short one) must neither cut into its frames nor
/// overtake it: the client's own parser (tungstenite's) would fail on either. The message
/// is three times Linux's largest send buffer, and the client's receive buffer is small,
/// so the sockets cannot absorb the reply whole. (The build before this test sent the
/// empty message's frame into the middle of the long one's: tungstenite said
/// `ExpectedFragment(Binary)`.)
fn replies_behind_a_held_reply<S: Read + Write>(server: TestServer, mut socket: WebSocket<S>) {
    let long = common::pattern(33, 12 << 20);
    let mut request = masked_frame(0x02, true, &long);
    request.extend(masked_frame(0x09, true, b"are you there"));
    request.extend(masked_frame(0x02, true, b""));
    request.extend(masked_frame(0x01, true, "汉语/漢語 Hànyǔ".as_bytes()));
    // Not reading: all three data messages are taken while the long reply is held.
    socket.get_mut().write_all(&request).unwrap();
    socket.get_mut().flush().unwrap();
    server.wait_for("the messages behind the long one to be read", |s| {
        s.ws_messages_in == 3
    });
    let mut pongs = 0;
    let mut data = Vec::new();
    while data.len() < 3 || pongs == 0 {
        match socket.read().expect("a well-formed message") {
            Message::Pong(payload) => {
                assert_eq!(&payload[..], b"are you there");
                pongs += 1;
            }
            message => data.push(message),
        }
    }
    assert!(data[0] == Message::binary(long), "the long reply differs");
    assert_eq!(data[1], Message::binary(Vec::new()));
    assert_eq!(data[2], Message::text("汉语/漢語 Hànyǔ"));
    drop(socket);
    let stats = server.stop();
    assert_eq!(stats.ws_messages_out, 3, "{stats:?}");
}

#[test]
fn replies_behind_a_held_reply_keep_their_order_and_never_cut_into_its_frames() {
    let (server, addr) = ws_server(|config| config.max_pending = HELD_REPLY_CAP);
    let (socket, _) =
        tungstenite::client(format!("ws://{addr}/"), small_window_connect(addr)).expect("upgrade");
    replies_behind_a_held_reply(server, socket);
}

#[test]
fn replies_behind_a_held_reply_keep_their_order_over_tls_too() {
    let (server, addr, made, _dir) = wss_server(|config| config.max_pending = HELD_REPLY_CAP);
    let socket = wss_client(small_window_connect(addr), &made.cert, addr.port());
    replies_behind_a_held_reply(server, socket);
}

/// The payload of ping number `seq`: the number, then filler up to 120 bytes.
fn numbered_ping(seq: u64) -> Vec<u8> {
    let mut payload = seq.to_be_bytes().to_vec();
    payload.resize(120, b'p');
    payload
}

/// A client floods pings and never reads the pongs, then sends one data message. Pongs
/// not yet sent count against `--max-pending` like echoed bytes: the flood is held at the
/// cap, and a bystander is served meanwhile. RFC 6455 lets an endpoint answer only the
/// most recent of the pings it has not answered yet, so once the client reads, every
/// pong must carry a ping's payload, in order, the last ping must be answered, and the
/// data message's echo comes after all of them.
#[test]
fn a_ping_flood_that_never_reads_its_pongs_is_held_at_the_cap() {
    const PINGS: u64 = 1 << 18; // 33 MB: more than the sockets on both sides hold
    let cap = echod::config::DEFAULT_MAX_PENDING as u64;
    let (server, addr) = ws_server(|_| {});
    let mut raw = small_window_connect(addr);
    raw.set_write_timeout(Some(common::IO_TIMEOUT)).unwrap();
    upgrade_by_hand(&mut raw);
    let mut writer = raw.try_clone().unwrap();
    let writing = std::thread::spawn(move || {
        let flood: Vec<u8> = (0..PINGS)
            .flat_map(|seq| masked_frame(0x09, true, &numbered_ping(seq)))
            .collect();
        for chunk in flood.chunks(64 << 10) {
            writer.write_all(chunk).unwrap();
        }
        writer
            .write_all(&masked_frame(0x02, true, b"after the flood"))
            .unwrap();
    });
    held_at_the_cap_while_a_bystander_is_served(&server, addr, "the pongs owed to reach the cap");
    let mut reader = std::io::BufReader::new(raw);
    let mut last = None;
    while last != Some(PINGS - 1) {
        let (opcode, payload) = server_frame(&mut reader);
        assert_eq!(opcode, 0x0a, "only pongs before the data message's echo");
        let seq = u64::from_be_bytes(payload[..8].try_into().unwrap());
        assert_eq!(
            payload,
            numbered_ping(seq),
            "a pong carries its ping's payload"
        );
        assert!(last < Some(seq), "pong {seq} after pong {last:?}");
        last = Some(seq);
    }
    assert_eq!(
        server_frame(&mut reader),
        (0x02, b"after the flood".to_vec())
    );
    writing.join().unwrap();
    drop(reader);
    let stats = server.stop();
    // Past the cap by at most the pongs of the pings one read goes through (a few KiB).
    // Before pongs were counted, tungstenite's buffer grew to over 1 MiB per connection.
    assert!(
        stats.peak_pending_connection <= cap + (8 << 10),
        "{} bytes owed at the peak, over the cap of {cap}",
        stats.peak_pending_connection
    );
}

/// The real binary with a `ws:` listener (and `args`), and that listener's address.
fn ws_binary_server(args: &[&str]) -> (common::BinaryServer, SocketAddr) {
    let server = common::BinaryServer::start(&[args, &["--listen", "ws:127.0.0.1:0"]].concat());
    let line = server.log.wait_for("listening on ws:");
    let addr: SocketAddr = line
        .split("listening on ws:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no ws address in {line:?}"));
    (server, addr)
}

/// The resident memory of a process, in KiB.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// tungstenite's read buffer grows to the longest frame it is sent. A connection that
/// got one 1 MiB message and then went quiet used to keep 1 MiB for as long as it stayed
/// open; the buffer is now given back once tungstenite holds nothing. Measured on the
/// real binary, with the connections still open.
#[test]
fn a_quiet_connection_gives_back_what_a_large_message_grew() {
    const CLIENTS: u64 = 64;
    let (server, addr) = ws_binary_server(&[]);
    let pid = server.child.id();
    let big = Message::binary(common::pattern(5, 1 << 20));
    let before = resident_kib(pid);
    let mut held = Vec::new();
    for _ in 0..CLIENTS {
        let mut socket = ws_connect(addr);
        socket.send(big.clone()).unwrap();
        assert!(next_data(&mut socket) == big, "the 1 MiB echo differs");
        held.push(socket);
    }
    let per_connection = resident_kib(pid).saturating_sub(before) / CLIENTS;
    // Kept, it would be 1,024 KiB or more each; what is left is the socket's and the
    // allocator's.
    assert!(
        per_connection < 128,
        "{per_connection} KiB per quiet connection"
    );
    drop(held);
}

#[test]
fn several_messages_in_one_segment_and_a_fin_behind_them_are_all_answered() {
    let (server, addr) = ws_server(|_| {});
    for round in 0..20 {
        let mut raw = connect(addr);
        upgrade_by_hand(&mut raw);
        // Three messages in one write: the server reads them in one go and must answer
        // every one, not just the first, though its socket then has nothing more.
        let mut burst = Vec::new();
        for word in [&b"one"[..], b"two", b"three"] {
            burst.extend(masked_frame(0x01, true, word));
        }
        raw.write_all(&burst).unwrap();
        assert_eq!(read_frames_payload(&mut raw, 11), b"onetwothree");
        // The last message and the FIN together: answered, then the connection ends.
        raw.write_all(&masked_frame(0x02, true, b"last")).unwrap();
        raw.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(read_frames_payload(&mut raw, 4), b"last", "round {round}");
    }
    server.wait_for("every close", |s| s.closed_total() == 20);
}

#[test]
fn the_tutorial_client_speaks_ws_and_wss() {
    let server = TestServer::with(Config::listening_on(["ws:127.0.0.1:0", "wss:127.0.0.1:0"]));
    for (addr, tls) in server.ws_addrs.clone() {
        let url = format!(
            "{}://127.0.0.1:{}/chat",
            if tls { "wss" } else { "ws" },
            addr.port()
        );
        let out = common::example("client")
            .args(["--host", &url, "--insecure"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "Received: Hello, world\nReceived: 汉语/漢語 Hànyǔ\n",
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = common::example("client")
            .args(["--host", &url, "--insecure", "--hex", "AB"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "Received: 41 42\n",
            "{url}"
        );
    }
}
