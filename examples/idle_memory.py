#!/usr/bin/env python3
"""Memory per idle connection of a TLS or WebSocket echo server: hold N connections, each
after its handshake (TLS, or the WebSocket upgrade) and one echo, and report the server's
VmRSS growth divided by N.

    target/release/echod --listen tls:127.0.0.1:50443 & python3 examples/idle_memory.py tls 50443 $! 5000
    target/release/echod --listen ws:127.0.0.1:50080 &  python3 examples/idle_memory.py ws 50080 $! 5000

A fifth argument sets the size of each WebSocket connection's one message (default 1 byte):
what a connection keeps after a large message, once it has gone quiet.

    python3 examples/idle_memory.py ws 50080 $! 200 1048576

Loopback only; the connections are held for half a second, then closed. Certificates are
not verified (the point is the server's memory, not its identity).
"""

import os
import resource
import socket
import ssl
import struct
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def tls_connection(port):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20),
                              server_hostname="localhost")
    tls.sendall(b"x")
    assert tls.recv(1) == b"x"
    return tls


def ws_connection(port, size=1):
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    raw.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n")
    response = b""
    while not response.endswith(b"\r\n\r\n"):
        response += raw.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    payload = os.urandom(size)
    # A zero mask leaves the payload as it is (a valid mask all the same): no per-byte work
    # here for a large message.
    raw.sendall(bytes([0x82]) + length_field(0x80, size) + bytes(4) + payload)
    # The echo may come back in several frames (a fragmented message is the same message).
    echoed, final = b"", False
    while not final:
        first, second = recv_exactly(raw, 2)
        final = bool(first & 0x80)
        assert first & 0x0F == (0x2 if not echoed else 0x0), first
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", recv_exactly(raw, 2))
        elif length == 127:
            (length,) = struct.unpack("!Q", recv_exactly(raw, 8))
        echoed += recv_exactly(raw, length)
    assert echoed == payload
    return raw


def recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "the server closed"
        data += chunk
    return data


def length_field(mask_bit, size):
    """A frame's second byte and extended length (RFC 6455, 5.2)."""
    if size < 126:
        return bytes([mask_bit | size])
    if size < 1 << 16:
        return bytes([mask_bit | 126]) + struct.pack("!H", size)
    return bytes([mask_bit | 127]) + struct.pack("!Q", size)


def main():
    kind, port, pid, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    size = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    connect = {"tls": tls_connection, "ws": lambda port: ws_connection(port, size)}[kind]
    held = [connect(port)]  # whatever the server allocates once, before the baseline
    before = rss_kib(pid)
    held += [connect(port) for _ in range(count)]
    time.sleep(0.5)  # a settling pause before reading memory, not synchronisation
    after = rss_kib(pid)
    print(f"server RSS {before} KiB before, {after} KiB with {count} idle {kind} connections: "
          f"{(after - before) / count:.2f} KiB each")
    for connection in held:
        connection.close()


if __name__ == "__main__":
    main()
