#!/usr/bin/env python3
"""Memory per idle TLS connection: hold N TLS connections to a server, each after its
handshake and one echo, and report the server's VmRSS growth divided by N.

    target/release/echod --listen tls:127.0.0.1:50443 & python3 examples/tls_idle.py 50443 $! 5000

Loopback only; the connections are held for half a second, then closed. Certificates are
not verified (the point is the server's memory, not its identity).
"""

import resource
import socket
import ssl
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def main():
    port, pid, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    def one():
        raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        tls = context.wrap_socket(raw, server_hostname="localhost")
        tls.sendall(b"x")
        assert tls.recv(1) == b"x"
        return tls

    held = [one()]  # whatever the server allocates once, before the baseline
    before = rss_kib(pid)
    held += [one() for _ in range(count)]
    time.sleep(0.5)  # a settling pause before reading memory, not synchronisation
    after = rss_kib(pid)
    print(f"server RSS {before} KiB before, {after} KiB with {count} idle TLS connections: "
          f"{(after - before) / count:.2f} KiB each")
    for tls in held:
        tls.close()


if __name__ == "__main__":
    main()
