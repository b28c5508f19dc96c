#!/usr/bin/env python3
"""Memory per idle connection of a TLS or WebSocket echo server: hold N connections, each
after its handshake (TLS, or the WebSocket upgrade) and one echo, and report the server's
VmRSS growth divided by N.

    target/release/echod --listen tls:127.0.0.1:50443 & python3 examples/idle_memory.py tls 50443 $! 5000
    target/release/echod --listen ws:127.0.0.1:50080 &  python3 examples/idle_memory.py ws 50080 $! 5000

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


def ws_connection(port):
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    raw.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n")
    response = b""
    while not response.endswith(b"\r\n\r\n"):
        response += raw.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    mask = os.urandom(4)
    raw.sendall(bytes([0x82, 0x81]) + mask + bytes([ord("x") ^ mask[0]]))  # binary "x"
    assert raw.recv(3) == b"\x82\x01x"
    return raw


def main():
    kind, port, pid, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    connect = {"tls": tls_connection, "ws": ws_connection}[kind]
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
