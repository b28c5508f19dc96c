#!/usr/bin/env python3
"""Benchmark echod against the reference echo servers, side by side, on this machine.

Builds echod, its load generator and the references (../shared/bench), then for each
scenario runs every server in turn, round after round, each round starting one server
later (A B C, B C A, C A B ...) so none always goes first; each server is pinned to one
core and the load generator to the other. It prints a Markdown table of medians:
msgs/s, server CPU µs per message (from /proc/PID/stat at the window's edges, measured by
the load generator), syscalls per message (strace -c -f over a separate short run), p50 and
p99 latency, peak RSS, and RSS per idle connection.

    python3 examples/bench.py                        # every scenario (about 45 minutes)
    python3 examples/bench.py --rounds 1 --duration 3 --scenarios 100x64 16k
    python3 examples/bench.py --servers echod c-epoll --no-strace
    python3 examples/bench.py --scenarios churn idle2x   # the accept path; two processes
    python3 examples/bench.py --sweep --rounds 5     # cost against connections, charts in docs/
    python3 examples/bench.py --sweep --sweep-points 100 10000 --rounds 1   # a short sweep
    python3 examples/bench.py --together --scenarios u1 u4 --udp-servers echod c-udp --rounds 10
                                                     # both at the same moment (see run_together)
    python3 examples/bench.py --echod-b /tmp/echod-before --scenarios u1 --udp-servers echod c-udp
                                                     # A/B: this build against another
    python3 examples/bench.py --servers echod echod-w1 echod-scraped echod-w2 --scenarios 10kx64 \
        --no-strace                                  # --workers 1, /metrics scraped, --workers 2

`--sweep` runs 64 B ping-pong at each of --sweep-points connections for echod, the
references and echod-poll (echod on mio's poll(2) selector, built in target/poll), and
draws server CPU per message and p99 latency against connections as SVG charts
(docs/sweep-cpu.svg, docs/sweep-p99.svg; needs matplotlib: examples/requirements.txt).

Only loopback (127.0.0.0/8) is used; every run is bounded by --duration and timeouts.
Figures drift on a shared machine: compare servers within one run, as ratios.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ECHOD = os.path.join(ROOT, "target", "release", "echod")
# echod built on mio's poll(2) selector: the lesson of why epoll exists.
POLL_TARGET = os.path.join(ROOT, "target", "poll")
ECHOD_POLL = os.path.join(POLL_TARGET, "release", "echod")
# Another build of echod (--echod-b), run as server "echod-b": A/B of a change, same rounds.
ECHOD_B = None
DOCS = os.path.join(ROOT, "docs")
LOADGEN = os.path.join(ROOT, "target", "release", "examples", "loadgen")

# name -> (loadgen arguments, what it shows)
SCENARIOS = {
    "100x64": (["--conns", "100", "--size", "64"], "100 conns × 64 B ping-pong"),
    "10kx64": (["--conns", "10000", "--size", "64"], "10,000 conns × 64 B"),
    "16k": (["--conns", "50", "--size", "16384"], "50 conns × 16 KiB"),
    "pipe8": (["--conns", "1000", "--size", "64", "--pipeline", "8"], "1,000 conns × 64 B, 8 in flight"),
    "idle": (["--conns", "19000", "--idle"], "19,000 idle connections held"),
    "churn": (["--churn", "--conns", "100", "--size", "64"],
              "churn: 100 at once, each connect + 64 B echo + close"),
    # Run specially (two echod processes sharing a port, two load generators).
    "idle2x": ([], "38,000 idle connections, two echod processes (--reuse-port)"),
    # UDP (RFC 862's datagram half), against the UDP references: flows × in flight × size.
    "u1": (["--udp", "--conns", "1", "--pipeline", "1", "--size", "64"],
           "U1 UDP 1 flow × 1 in flight × 64 B"),
    "u2": (["--udp", "--conns", "64", "--pipeline", "16", "--size", "64"],
           "U2 UDP 64 flows × 16 in flight × 64 B"),
    "u3": (["--udp", "--conns", "16", "--pipeline", "4", "--size", "1400"],
           "U3 UDP 16 flows × 4 in flight × 1,400 B"),
    "u4": (["--udp", "--conns", "4", "--pipeline", "2", "--size", "32768"],
           "U4 UDP 4 flows × 2 in flight × 32 KiB"),
    # TLS (echod --listen tls:…), against the TLS references: the generator's --tls.
    "t100x64": (["--tls", "--conns", "100", "--size", "64"], "TLS 100 conns × 64 B ping-pong"),
    "t16k": (["--tls", "--conns", "50", "--size", "16384"], "TLS 50 conns × 16 KiB"),
    "tchurn": (["--tls", "--churn", "--conns", "100", "--size", "64"],
               "TLS churn: 100 at once, each connect + handshake + 64 B echo + close"),
    "tidle": (["--tls", "--conns", "5000", "--idle"], "TLS 5,000 idle connections held"),
    # WebSocket (echod --listen ws:… / wss:…), binary messages: the generator's --ws.
    "w100x64": (["--ws", "--conns", "100", "--size", "64"], "WS 100 conns × 64 B ping-pong"),
    "w16k": (["--ws", "--conns", "50", "--size", "16384"], "WS 50 conns × 16 KiB"),
    "wchurn": (["--ws", "--churn", "--conns", "100", "--size", "64"],
               "WS churn: 100 at once, each connect + upgrade + 64 B echo + close"),
    "widle": (["--ws", "--conns", "5000", "--idle"], "WS 5,000 idle connections held"),
    "wss100x64": (["--ws", "--tls", "--conns", "100", "--size", "64"],
                  "WSS 100 conns × 64 B ping-pong"),
}
TLS_SCENARIOS = ["t100x64", "t16k", "tchurn", "tidle"]
TLS_SERVERS = ["echod", "tokio-tls"]
WS_SCENARIOS = ["w100x64", "w16k", "wchurn", "widle"]
WS_SERVERS = ["echod", "tokio-ws-small", "tokio-ws"]
WSS_SCENARIOS = ["wss100x64"]
WSS_SERVERS = ["echod", "tokio-wss"]
# Scenarios served by echod under a --listen prefix, and the option naming their servers.
LAYERED = {**{s: ("tls:", "tls_servers") for s in TLS_SCENARIOS},
           **{s: ("ws:", "ws_servers") for s in WS_SCENARIOS},
           **{s: ("wss:", "wss_servers") for s in WSS_SCENARIOS}}
IDLE_SCENARIOS = ["idle", "tidle", "widle"]
UDP_SCENARIOS = ["u1", "u2", "u3", "u4"]
# Closed loops of echoes (not holding idle, not churning): where --busy-poll and --together apply.
CLOSED_LOOP = ["100x64", "10kx64", "16k", "pipe8", "t100x64", "t16k", "w100x64", "w16k",
               "wss100x64"] + UDP_SCENARIOS
UDP_SERVERS = ["echod", "c-udp", "c-udp-mmsg", "c-udp-gso", "tokio-udp"]
# echod run as issue 17's rows: `--workers 1` (no master: the single process), a single
# echod scraped on --metrics once a second, and `--workers 2` (master and two workers).
WORKER_SERVERS = {"echod-w1": ["--workers", "1"], "echod-scraped": [],
                  "echod-w2": ["--workers", "2"]}
# --metrics listens this far above the echo port (ports stay below the ephemeral range).
METRICS_PORT_OFFSET = 10000
# Servers built from this checkout: they need nothing from ../shared/bench.
OWN_SERVERS = ["echod", "echod-b", "echod-poll"] + list(WORKER_SERVERS)
# The figures that matter per scenario: (cost key, rate key, rate label).
PER_CONNECTION = ("server_cpu_us_per_conn", "conns_per_s", "conns/s")
PER_MESSAGE = ("server_cpu_us_per_msg", "msgs_per_s", "msgs/s")
SWEEP_POINTS = [100, 1000, 5000, 10000, 19000]
SWEEP_SERVERS = ["echod", "c-epoll", "libuv", "tokio-ct", "echod-poll"]
# Two processes of 19,000 idle connections each: one load generator process per source
# address (about 28,000 ports each) and per descriptor limit (20,000).
IDLE2X_PER_PROCESS = 19000
DEFAULT_SERVERS = ["echod", "c-epoll", "libuv", "tokio-ct"]


def in_turn(servers, round_number):
    """The servers in this round's order: each round starts one later than the last, so
    no server always runs first (right after start-up or after a given neighbour)."""
    shift = (round_number - 1) % len(servers)
    return servers[shift:] + servers[:shift]


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def build(anchors, servers):
    log("build: echod and its examples (release)")
    subprocess.run(["cargo", "build", "--release", "--bins", "--examples", "-q"], cwd=ROOT, check=True)
    if "echod-poll" in servers:
        log("build: echod-poll (mio's poll(2) selector, in target/poll)")
        env = dict(os.environ, RUSTFLAGS="--cfg mio_unsupported_force_poll_poll",
                   CARGO_TARGET_DIR=POLL_TARGET)
        subprocess.run(["cargo", "build", "--release", "--bins", "-q"], cwd=ROOT, env=env, check=True)
    references = [name for name in servers if name not in OWN_SERVERS]
    if references:
        build_sh = os.path.join(anchors, "build.sh")
        if not os.path.exists(build_sh):
            sys.exit(f"bench.py: the reference servers {', '.join(references)} need {build_sh} "
                     "(../shared/bench beside the checkout; see docs/performance.md), "
                     "or measure echod alone: --servers echod --udp-servers echod")
        log("build: reference servers")
        subprocess.run(["bash", build_sh], check=True, stdout=sys.stderr)
    for tool in ("taskset", "strace"):
        if shutil.which(tool) is None:
            subprocess.run(["apt-get", "install", "-y", "-q", "util-linux", "strace"],
                           check=False, stdout=sys.stderr)


class Server:
    """One server process, pinned to core 0, listening on 127.0.0.1:port."""

    def __init__(self, name, port, anchors, wrapper=(), extra=(), udp=False, prefix=""):
        cores = "0"
        self.scraper = None
        if name in ("echod", "echod-poll", "echod-b") or name in WORKER_SERVERS:
            binary = {"echod-poll": ECHOD_POLL, "echod-b": ECHOD_B}.get(name, ECHOD)
            kind = "udp:" if udp else prefix
            listen = f"{kind}127.0.0.1:{port}"
            command = [binary, "-qq", "--listen", listen] + list(extra)
            command += WORKER_SERVERS.get(name, [])
            if name == "echod-w2":
                # Two workers get both cores: the load generator's core 1 too (what a 2-core
                # machine can give them), so this row measures sharing, not a gain.
                cores = "0,1"
            if name == "echod-scraped":
                command += ["--metrics", f"127.0.0.1:{port + METRICS_PORT_OFFSET}"]
        else:
            command = [os.path.join(anchors, "start.sh"), name, str(port)]
        command = list(wrapper) + command
        self.name = name
        self.port = port
        # start.sh execs the server, so this PID is the server's.
        self.proc = subprocess.Popen(["taskset", "-c", cores] + command,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                if udp:
                    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    probe.settimeout(0.2)
                    probe.sendto(b"are you there?", ("127.0.0.1", port))
                    probe.recvfrom(64)
                    probe.close()
                else:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start on port {port}")
                time.sleep(0.05)

        if name == "echod-scraped":
            self.scraper = Scraper(port + METRICS_PORT_OFFSET)
        if name == "echod-w2":
            # Serving means every worker is up: the master starts them after it binds.
            deadline = time.monotonic() + 15
            while len(self.pids) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)

    @property
    def pid(self):
        return self.proc.pid

    @property
    def pids(self):
        """The server's processes: itself and, for a master, its workers (whose CPU and
        memory loadgen adds up)."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as children:
                return [self.pid] + [int(c) for c in children.read().split()]
        except OSError:
            return [self.pid]

    def peak_rss_kib(self):
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return None

    def stop(self):
        if self.scraper:
            self.scraper.stop()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Scraper:
    """GET /metrics once a second, as Prometheus would, until stopped."""

    def __init__(self, port):
        self.port = port
        self.scrapes = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopping.wait(1.0):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
                    conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    while conn.recv(65536):
                        pass
                self.scrapes += 1
            except OSError as err:
                log(f"scrape of 127.0.0.1:{self.port} failed: {err}")

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=5)


def loadgen_command(port, pids, args, duration, warmup):
    command = ["taskset", "-c", "1", LOADGEN, "--addr", f"127.0.0.1:{port}", "--json",
               "--duration", str(duration), "--warmup", str(warmup)] + args
    for pid in pids:
        command += ["--server-pid", str(pid)]
    return command


def parse_loadgen(stdout, returncode, stderr):
    lines = [l for l in stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"loadgen failed ({returncode}): {stderr[-500:]}")
    return json.loads(lines[-1])


def loadgen(port, pid, args, duration, warmup):
    pids = [] if pid is None else ([pid] if isinstance(pid, int) else list(pid))
    out = subprocess.run(loadgen_command(port, pids, args, duration, warmup),
                         capture_output=True, text=True, timeout=duration + warmup + 180)
    return parse_loadgen(out.stdout, out.returncode, out.stderr)


def sockstat_tcp():
    """The kernel's TCP line of /proc/net/sockstat: sockets in use and buffer memory (pages)."""
    with open("/proc/net/sockstat") as stat:
        for line in stat:
            if line.startswith("TCP:"):
                fields = line.split()
                values = dict(zip(fields[1::2], (int(v) for v in fields[2::2])))
                return values["inuse"], values["mem"]
    return None, None


def slab_kib():
    """The kernel's slab memory (socket, inode, file and dentry objects live there)."""
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("Slab:"):
                return int(line.split()[1])
    return None


def run_together(names, port, anchors, args, duration, warmup, udp, prefix=""):
    """Runs the servers at the same moment, all pinned to core 0, each with its own load
    generator (all on core 1); returns their results in the order named.

    Run back to back, two servers meet different moments of a shared machine: on a VM the
    cost of a wake-up swings two- to four-fold within a minute, which swamps a gap of a few
    percent. Run together, both meet the same moment, so their ratio keeps the gap and
    loses most of the swing. It is a different experiment (two servers share a core, and
    two generators another), so it is reported apart from the back-to-back tables."""
    servers = []
    try:
        for offset, name in enumerate(names):
            servers.append(Server(name, port + offset, anchors, udp=udp, prefix=prefix))
        generators = [subprocess.Popen(loadgen_command(s.port, [s.pid], args, duration, warmup),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                      for s in servers]
        results = []
        for generator in generators:
            out, err = generator.communicate(timeout=duration + warmup + 180)
            results.append(parse_loadgen(out, generator.returncode, err))
        return results
    finally:
        for server in servers:
            server.stop()


def together(opts, scenarios, port):
    """--together: echod and each reference at the same moment, round after round (echod
    named first in odd rounds, second in even ones); prints echod ÷ reference per round."""
    ratios = {}  # (scenario, reference) -> [echod ÷ reference, one per round]
    skipped = 0
    for scenario in scenarios:
        args, _ = SCENARIOS[scenario]
        udp = scenario in UDP_SCENARIOS
        prefix, servers = servers_for(opts, scenario)
        references = [n for n in servers if n != "echod"]
        for round_number in range(1, opts.rounds + 1):
            for reference in in_turn(references, round_number):
                pair = ["echod", reference] if round_number % 2 else [reference, "echod"]
                port += len(pair)
                results = dict(zip(pair, run_together(pair, port, opts.anchors, args,
                                                       opts.duration, opts.warmup, udp, prefix)))
                ours, theirs = (results[n]["server_cpu_us_per_msg"] for n in ("echod", reference))
                for name, result in results.items():
                    if result["errors"]:
                        raise RuntimeError(f"{scenario} {name}: {result['errors']} errors")
                if not (ours and theirs):
                    # No figure: nothing echoed within the window (say, every datagram lost).
                    log(f"{scenario:7} round {round_number} together with {reference}: no figure "
                        f"({ {n: (r['msgs'], r['lost']) for n, r in results.items()} } msgs, lost)")
                    skipped += 1
                    continue
                ratios.setdefault((scenario, reference), []).append(ours / theirs)
                log(f"{scenario:7} round {round_number} together: echod {ours} µs, {reference} "
                    f"{theirs} µs per message: {ours / theirs:.3f}")
    print(f"\nTogether (--together): echod and one reference at the same moment, both on core 0, "
          f"each with its own load generator on core 1; {opts.rounds} rounds of "
          f"{opts.duration:g} s. echod ÷ reference, server CPU per message, "
          "median [lowest–highest]:\n")
    print("| scenario | reference | echod ÷ reference | rounds above 1.00 |")
    print("|---|---|---|---|")
    for (scenario, reference), values in ratios.items():
        above = sum(v > 1 for v in values)
        print(f"| {SCENARIOS[scenario][1]} | {reference} | {statistics.median(values):.3f} "
              f"[{min(values):.3f}–{max(values):.3f}] | {above} of {len(values)} |")
    if skipped:
        print(f"\n{skipped} pairs gave no figure and were left out (see the log).")
    return ratios


def idle_two_processes(port, duration):
    """Two echod processes share one port (--reuse-port); two load generators, each from its
    own source address, hold IDLE2X_PER_PROCESS idle connections apiece, then ping each."""
    servers = [Server("echod", port, None, extra=["--reuse-port"]) for _ in range(2)]
    try:
        inuse_before, mem_before = sockstat_tcp()
        slab_before = slab_kib()
        pids = [s.pid for s in servers]
        args = ["--idle", "--conns", str(IDLE2X_PER_PROCESS)]
        procs = [subprocess.Popen(
                    loadgen_command(port, pids, args + ["--bind", f"127.0.0.{2 + i}"], duration, 0),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
        # Watch the kernel's side while the connections are held.
        inuse_peak, mem_peak, slab_peak = inuse_before, mem_before, slab_before
        while any(p.poll() is None for p in procs):
            inuse, mem = sockstat_tcp()
            inuse_peak, mem_peak = max(inuse_peak, inuse), max(mem_peak, mem)
            slab_peak = max(slab_peak, slab_kib())
            time.sleep(0.2)
        results = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=60)
            results.append(parse_loadgen(stdout, proc.returncode, stderr))
        conns = sum(r["conns"] for r in results)
        answered = sum(r["answered"] for r in results)
        # Both load generators sample the two servers' RSS together; the one that sampled
        # later saw more of the connections up, so take the larger.
        before = min(r["server_rss_before_kib"] for r in results)
        loaded = max(r["server_rss_loaded_kib"] for r in results)
        page = os.sysconf("SC_PAGE_SIZE")
        return {
            "conns": conns, "answered": answered,
            "rss_before_kib": before, "rss_loaded_kib": loaded,
            "user_kib_per_conn": (loaded - before) / conns if conns else None,
            "sockets_before": inuse_before, "sockets_peak": inuse_peak,
            "kernel_pages_before": mem_before, "kernel_pages_peak": mem_peak,
            "kernel_bytes_per_conn": (mem_peak - mem_before) * page / conns if conns else None,
            "slab_kib_before": slab_before, "slab_kib_peak": slab_peak,
            # Both ends of every connection are on this machine: two sockets each.
            "slab_kib_per_conn": (slab_peak - slab_before) / conns if conns else None,
            "errors": sum(r["errors"] + r["connect_failures"] for r in results),
        }
    finally:
        for server in servers:
            server.stop()





def syscalls_per_message(name, port, anchors, args, duration, udp=False):
    """strace -c -f attached to the server for a whole short run; syscalls / messages."""
    server = Server(name, port, anchors, udp=udp)
    try:
        with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
            tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(server.pid), "-o", out.name],
                                      stderr=subprocess.PIPE, text=True)
            # strace says "Process N attached" once it is in place.
            tracer.stderr.readline()
            result = loadgen(port, None, args, duration, 0)
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=30)
            total = None
            for line in out.read().splitlines():
                fields = line.split()
                if fields and fields[-1] == "total":
                    total = int(fields[3])
            if total is None or result["msgs"] == 0:
                return None
            return total / result["msgs"]
    finally:
        server.stop()


def instructions_per_message(name, port, anchors, args, duration):
    """valgrind --tool=callgrind: user-space instructions the server executes per message.

    Counts instructions, not seconds, so it does not drift with the machine's load. Start-up
    work is included; over tens of thousands of messages it adds well under 2%.
    """
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "callgrind.out")
        server = Server(name, port, anchors,
                        wrapper=["valgrind", "--tool=callgrind", "--trace-children=yes",
                                 f"--callgrind-out-file={out}.%p"])
        try:
            result = loadgen(port, None, args, duration, 0)
            # Ask callgrind to write its counts now (the server itself never exits by choice).
            subprocess.run(["callgrind_control", "--dump", str(server.pid)],
                           capture_output=True, timeout=60)
        finally:
            server.proc.kill()
            server.proc.wait()
        total = 0
        # Only the server's own counts (start.sh's shell and helpers leave files of their own).
        for path in os.listdir(scratch):
            if not path.startswith(f"callgrind.out.{server.pid}"):
                continue
            with open(os.path.join(scratch, path)) as dump:
                for line in dump:
                    if line.startswith("summary:") or line.startswith("totals:"):
                        total = max(total, int(line.split()[1]))
        return total / result["msgs"] if result["msgs"] else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", nargs="+", default=DEFAULT_SERVERS)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--no-strace", action="store_true", help="skip syscalls per message")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--callgrind", action="store_true",
                        help="also count user-space instructions per message (valgrind)")
    parser.add_argument("--anchors", default=os.path.join(os.path.dirname(ROOT), "shared", "bench", "anchors"))
    parser.add_argument("--json", help="also write every raw result to this file")
    parser.add_argument("--sweep", action="store_true",
                        help="64 B ping-pong at each of --sweep-points connections; SVG charts")
    parser.add_argument("--sweep-points", type=int, nargs="+", default=SWEEP_POINTS)
    parser.add_argument("--sweep-busy", type=int, metavar="N",
                        help="with --sweep: only N connections busy, the rest held idle by a "
                             "second load generator (most clients idle: the C10K case)")
    parser.add_argument("--udp-servers", nargs="+", default=None,
                        help="servers for the UDP scenarios u1–u4 (default: all the UDP "
                             "references, or with --servers, those of its servers that speak "
                             "UDP: `--servers echod` measures echod alone)")
    parser.add_argument("--tls-servers", nargs="+", default=None,
                        help="servers for the TLS scenarios (default: echod and tokio-tls, or "
                             "with --servers, those of its servers that speak TLS)")
    parser.add_argument("--ws-servers", nargs="+", default=None,
                        help="servers for the WebSocket scenarios (default: echod, "
                             "tokio-ws-small, tokio-ws)")
    parser.add_argument("--wss-servers", nargs="+", default=None,
                        help="servers for the WebSocket-over-TLS scenarios (default: echod, "
                             "tokio-wss)")
    parser.add_argument("--busy-poll", action="store_true",
                        help="the load generator never sleeps (loadgen --busy-poll), so the "
                             "servers' replies never wake it: less of the machine's wake-up "
                             "cost in each server's figure")
    parser.add_argument("--together", action="store_true",
                        help="run echod and each reference at the same moment instead of "
                             "back to back (see run_together); only the ratio table")
    parser.add_argument("--echod-b", metavar="PATH",
                        help="another echod binary, run as server echod-b beside echod in "
                             "every round (A/B of a change: the tables gain ÷ echod-b)")
    opts = parser.parse_args()
    for attr, defaults in (("tls_servers", TLS_SERVERS), ("ws_servers", WS_SERVERS),
                           ("wss_servers", WSS_SERVERS)):
        if getattr(opts, attr, None) is None:
            setattr(opts, attr, list(defaults) if opts.servers == DEFAULT_SERVERS
                    else [n for n in opts.servers if n in defaults + OWN_SERVERS])
    if opts.udp_servers is None:
        opts.udp_servers = (list(UDP_SERVERS) if opts.servers == DEFAULT_SERVERS
                            else [n for n in opts.servers if n in UDP_SERVERS + OWN_SERVERS])
    if opts.echod_b:
        global ECHOD_B
        ECHOD_B = os.path.abspath(opts.echod_b)
        for servers in (opts.servers, opts.udp_servers, opts.tls_servers, opts.ws_servers,
                        opts.wss_servers):
            if "echod-b" not in servers:
                servers.append("echod-b")
    if opts.sweep:
        if opts.servers == DEFAULT_SERVERS:
            opts.servers = SWEEP_SERVERS
        if not opts.no_build:
            build(opts.anchors, opts.servers)
        return sweep(opts)

    tcp_scenarios = [s for s in opts.scenarios if s not in UDP_SCENARIOS and s not in LAYERED]
    udp_scenarios = [s for s in opts.scenarios if s in UDP_SCENARIOS]
    layered = {attr: [s for s in opts.scenarios if LAYERED.get(s, (None, None))[1] == attr]
               for attr in ("tls_servers", "ws_servers", "wss_servers")}
    if not opts.no_build:
        build(opts.anchors, (opts.servers if tcp_scenarios else [])
              + (opts.udp_servers if udp_scenarios else [])
              + [n for attr, group in layered.items() if group for n in getattr(opts, attr)])
    port = 21000  # below the ephemeral range (32768+), which TIME_WAIT client ports fill
    if opts.together:
        if opts.busy_poll:
            parser.error("--together runs two load generators on one core: they cannot both busy-poll")
        unfit = [s for s in opts.scenarios if s not in CLOSED_LOOP]
        if unfit:
            parser.error(f"--together measures echoes in a closed loop, not {', '.join(unfit)}")
        together(opts, opts.scenarios, port)
        return
    results = {}  # (scenario, server) -> list of loadgen results (+ peak_rss_kib)
    idle2x = []
    for scenario in opts.scenarios:
        args, _ = SCENARIOS[scenario]
        if scenario == "idle2x":
            for round_number in range(1, opts.rounds + 1):
                port += 1
                result = idle_two_processes(port, max(opts.duration, 6))
                idle2x.append(result)
                log(f"idle2x  round {round_number} {result}")
            continue
        udp = scenario in UDP_SCENARIOS
        prefix, servers = servers_for(opts, scenario)
        for round_number in range(1, opts.rounds + 1):
            for name in in_turn(servers, round_number):
                port += 1
                server = Server(name, port, opts.anchors, udp=udp, prefix=prefix)
                try:
                    duration = opts.duration
                    extra = ["--busy-poll"] if opts.busy_poll and scenario in CLOSED_LOOP else []
                    result = loadgen(port, server.pids, args + extra, duration, opts.warmup)
                    result["peak_rss_kib"] = server.peak_rss_kib()
                finally:
                    server.stop()
                results.setdefault((scenario, name), []).append(result)
                cost, rate, unit = figures(scenario)
                log(f"{scenario:7} round {round_number} {name:9} "
                    f"{result[rate]:>10.0f} {unit}  cpu {result[cost]} µs  "
                    f"p99 {result['p99_us']:.0f} µs  errors {result['errors']}  answered {result['answered']}")
    syscalls = {}
    if not opts.no_strace and "100x64" in opts.scenarios:
        for name in opts.servers:
            port += 1
            syscalls[name] = syscalls_per_message(name, port, opts.anchors, SCENARIOS["100x64"][0], 3)
            log(f"syscalls 100x64 {name:9} {syscalls[name]}")

    udp_syscalls = {}
    if not opts.no_strace and "u2" in opts.scenarios:
        for name in opts.udp_servers:
            port += 1
            udp_syscalls[name] = syscalls_per_message(name, port, opts.anchors,
                                                      SCENARIOS["u2"][0], 3, udp=True)
            log(f"syscalls u2 {name:9} {udp_syscalls[name]}")

    instructions = {}
    if opts.callgrind and "100x64" in opts.scenarios:
        for name in opts.servers:
            port += 1
            try:
                instructions[name] = instructions_per_message(
                    name, port, opts.anchors, SCENARIOS["100x64"][0], 3)
            except (RuntimeError, subprocess.SubprocessError) as err:
                log(f"callgrind {name}: {err}")  # e.g. a Python server under valgrind
            log(f"instructions 100x64 {name:9} {instructions.get(name)}")

    if opts.json:
        with open(opts.json, "w") as raw:
            json.dump({f"{s}/{n}": r for (s, n), r in results.items()}, raw, indent=1)
    if tcp_scenarios:
        opts.scenarios = tcp_scenarios
        print_table(opts, results, syscalls, instructions)
    if idle2x:
        print_idle2x(idle2x)
    if udp_scenarios:
        print_udp_table(opts, udp_scenarios, results, udp_syscalls)
    for attr, title in (("tls_servers", "TLS (echod --listen tls:…; the load generator's --tls)"),
                        ("ws_servers", "WebSocket (echod --listen ws:…; the load generator's --ws)"),
                        ("wss_servers", "WebSocket over TLS (echod --listen wss:…)")):
        if layered[attr]:
            print(f"\n{title}:\n")
            opts.servers, opts.scenarios = getattr(opts, attr), layered[attr]
            print_table(opts, results, {}, {})


def print_udp_table(opts, scenarios, results, syscalls):
    generator = " the load generator busy-polling (--busy-poll);" if opts.busy_poll else ""
    print(f"\nUDP: medians of {opts.rounds} rounds, {opts.duration:g} s measured each;{generator} "
          "server CPU per echoed datagram; lost = not echoed within the load generator's "
          "--udp-timeout.\n")
    print("| scenario | server | datagrams/s | server µs/datagram | syscalls/datagram | p50 µs | "
          "p99 µs | lost | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    fmt = lambda v, spec: "–" if v is None else format(v, spec)
    for scenario in scenarios:
        for name in opts.udp_servers:
            runs = results.get((scenario, name), [])
            pick = lambda key: median([r[key] for r in runs])
            calls = syscalls.get(name) if scenario == "u2" else None
            print(f"| {SCENARIOS[scenario][1]} | {name} | {fmt(pick('msgs_per_s'), ',.0f')} "
                  f"| {fmt(pick('server_cpu_us_per_msg'), '.2f')} | {fmt(calls, '.3f')} "
                  f"| {fmt(pick('p50_us'), '.0f')} | {fmt(pick('p99_us'), '.0f')} "
                  f"| {fmt(pick('lost'), '.0f')} | {fmt(pick('errors'), '.0f')} |")
    references = [n for n in opts.udp_servers if n != "echod"]
    print("\nechod ÷ reference, server CPU per datagram, each ratio within one round, "
          "median [lowest–highest]:\n")
    print("| scenario | " + " | ".join(f"÷ {r}" for r in references) + " |")
    print("|---|" + "---|" * len(references))
    for scenario in scenarios:
        cells = []
        for reference in references:
            ratios = round_ratios(results, scenario, "echod", reference, "server_cpu_us_per_msg")
            cells.append(f"{statistics.median(ratios):.2f} [{min(ratios):.2f}–{max(ratios):.2f}]"
                         if ratios else "–")
        print(f"| {SCENARIOS[scenario][1]} | " + " | ".join(cells) + " |")


def figures(scenario):
    return PER_CONNECTION if scenario in ("churn", "tchurn", "wchurn") else PER_MESSAGE


def servers_for(opts, scenario):
    """The --listen prefix echod serves `scenario` under, and the servers that run it."""
    if scenario in UDP_SCENARIOS:
        return "", opts.udp_servers
    prefix, attr = LAYERED.get(scenario, ("", None))
    return prefix, getattr(opts, attr) if attr else opts.servers


def print_idle2x(runs):
    print("\nTwo echod processes sharing one port (--reuse-port), idle connections held by two "
          "load generators (127.0.0.2 and 127.0.0.3), then pinged once each:\n")
    print("| round | connections | answered | errors | user RSS KiB/conn | kernel sockets | "
          "kernel TCP mem pages (before → peak) | TCP mem bytes/conn | kernel slab KiB/conn |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(runs, 1):
        user = "–" if r["user_kib_per_conn"] is None else f"{r['user_kib_per_conn']:.3f}"
        kernel = "–" if r["kernel_bytes_per_conn"] is None else f"{r['kernel_bytes_per_conn']:.1f}"
        print(f"| {i} | {r['conns']:,} | {r['answered']:,} | {r['errors']} | {user} "
              f"| {r['sockets_before']:,} → {r['sockets_peak']:,} "
              f"| {r['kernel_pages_before']} → {r['kernel_pages_peak']} | {kernel} "
              f"| {fmt_opt(r['slab_kib_per_conn'], '.2f')} |")


def fmt_opt(value, spec):
    return "–" if value is None else format(value, spec)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def round_ratios(results, scenario, name, reference, key):
    """echod's figure ÷ a reference's, taken within each round, then summarised.

    The machine's speed drifts between rounds far more than servers differ within one, so
    each ratio compares two runs made back to back.
    """
    ours = results.get((scenario, name), [])
    theirs = results.get((scenario, reference), [])
    return [a[key] / b[key] for a, b in zip(ours, theirs) if a[key] and b[key]]


def print_table(opts, results, syscalls, instructions):
    generator = " (busy-polling: --busy-poll)" if opts.busy_poll else ""
    print(f"Medians of {opts.rounds} rounds, {opts.duration:g} s measured each; server on core 0, "
          f"load generator on core 1{generator}.\n")
    print("(churn: conns/s and server µs per connection instead of per message)\n")
    print("| scenario | server | msgs/s | server µs/msg | syscalls/msg | user instr/msg "
          "| p50 µs | p99 µs | peak RSS MiB | RSS/conn KiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    fmt = lambda v, spec: "–" if v is None else format(v, spec)
    for scenario in opts.scenarios:
        idle = scenario in IDLE_SCENARIOS
        if scenario == "idle2x":
            continue
        for name in opts.servers:
            runs = results.get((scenario, name), [])
            pick = lambda key: None if idle else median([r[key] for r in runs])
            cost, rate, _ = figures(scenario)
            first = scenario == "100x64"
            answered = median([r["answered"] for r in runs]) if idle else None
            label = SCENARIOS[scenario][1] + (f" ({fmt(answered, '.0f')} answered)" if idle else "")
            peak = median([r["peak_rss_kib"] / 1024 for r in runs if r["peak_rss_kib"]])
            per_conn = median([r["server_rss_per_conn_kib"] for r in runs]) if idle else None
            print(f"| {label} | {name} | {fmt(pick(rate), ',.0f')} "
                  f"| {fmt(pick(cost), '.2f')} "
                  f"| {fmt(syscalls.get(name) if first else None, '.2f')} "
                  f"| {fmt(instructions.get(name) if first else None, ',.0f')} "
                  f"| {fmt(pick('p50_us'), '.0f')} | {fmt(pick('p99_us'), '.0f')} "
                  f"| {fmt(peak, '.1f')} | {fmt(per_conn, '.3f')} |")
    references = [n for n in opts.servers if n != "echod"]
    busy = [s for s in opts.scenarios if s not in IDLE_SCENARIOS + ["idle2x"]]
    if "echod" not in opts.servers or not references or not busy:
        return
    print("\nechod ÷ reference, each ratio taken within one round (back-to-back runs), "
          "median [lowest–highest] over rounds; below 1.00 means echod used less.\n")
    print("| scenario | " + " | ".join(f"CPU/msg ÷ {r}" for r in references)
          + " | " + " | ".join(f"p99 ÷ {r}" for r in references) + " |")
    print("|---|" + "---|" * (2 * len(references)))
    for scenario in opts.scenarios:
        if scenario in IDLE_SCENARIOS + ["idle2x"]:
            continue
        cells = []
        for key in (figures(scenario)[0], "p99_us"):
            for reference in references:
                ratios = round_ratios(results, scenario, "echod", reference, key)
                cells.append(f"{statistics.median(ratios):.2f} [{min(ratios):.2f}–{max(ratios):.2f}]"
                             if ratios else "–")
        print(f"| {SCENARIOS[scenario][1]} | " + " | ".join(cells) + " |")


def open_descriptors(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def hold_idle(port, pid, count, seconds):
    """A second load generator holding `count` idle connections to the server for about
    `seconds`; returns once the server has them all (or the holder gave up)."""
    if count <= 0:
        return None
    for _attempt in range(3):
        with tempfile.TemporaryFile("w+") as errors:
            holder = subprocess.Popen(
                loadgen_command(port, [], ["--idle", "--conns", str(count)], seconds, 0),
                stdout=subprocess.DEVNULL, stderr=errors)
            deadline = time.monotonic() + 120
            # At least `count` descriptors open: the holder's connections are (all but a
            # handful) in. (A baseline would be off by the start-up probe's connection.)
            while open_descriptors(pid) < count and time.monotonic() < deadline:
                if holder.poll() is not None:
                    break
                time.sleep(0.1)
            if holder.poll() is None:
                return holder
            errors.seek(0)
            log(f"idle holder exited early ({holder.returncode}): "
                f"{[l for l in errors.read().splitlines() if 'conns up' not in l][-3:]}; again")
    raise RuntimeError("the idle holder could not hold its connections")


def sweep(opts):
    """Cost and latency against connection count: the C10K problem, measured."""
    port = 21000
    results = {}  # (points, server) -> list of loadgen results, in round order
    busy = opts.sweep_busy
    for conns in opts.sweep_points:
        active = min(conns, busy) if busy else conns
        args = ["--conns", str(active), "--size", "64"]
        for round_number in range(1, opts.rounds + 1):
            for name in in_turn(opts.servers, round_number):
                port += 1
                server = Server(name, port, opts.anchors)
                holder = None
                try:
                    holder = hold_idle(port, server.pid, conns - active,
                                       opts.duration + opts.warmup + 30)
                    result = loadgen(port, server.pid, args, opts.duration, opts.warmup)
                finally:
                    if holder is not None:
                        holder.kill()
                        holder.wait()
                    server.stop()
                results.setdefault((conns, name), []).append(result)
                log(f"sweep {conns:>6} round {round_number} {name:10} "
                    f"cpu {result['server_cpu_us_per_msg']} µs/msg  p99 {result['p99_us']:.0f} µs  "
                    f"errors {result['errors'] + result['connect_failures']}")
    raw = {f"{conns}/{name}": runs for (conns, name), runs in results.items()}
    os.makedirs(DOCS, exist_ok=True)
    opts.chart_prefix = f"sweep-busy{busy}" if busy else "sweep"
    with open(opts.json or os.path.join(DOCS, f"{opts.chart_prefix}.json"), "w") as out:
        json.dump({"machine": machine(), "command": command_line(), "rounds": opts.rounds,
                   "duration": opts.duration, "results": raw}, out, indent=1)
    print_sweep(opts, results)
    plot_sweep(opts, results)


def machine():
    model = "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} × {model}, Linux {os.uname().release}"


def command_line():
    return "python3 examples/bench.py " + " ".join(sys.argv[1:])


def sweep_ratio(results, reference, name, key, points):
    """Per round: name's figure ÷ reference's figure, at each of `points`."""
    ours = results.get((points, name), [])
    theirs = results.get((points, reference), [])
    return [a[key] / b[key] for a, b in zip(ours, theirs) if a[key] and b[key]]


def growth(results, name, low, high, key="server_cpu_us_per_msg"):
    """Per round: the figure at `high` connections ÷ the figure at `low`."""
    lows, highs = results.get((low, name), []), results.get((high, name), [])
    return [h[key] / l[key] for l, h in zip(lows, highs) if l[key] and h[key]]


def summary(values, spec=".2f"):
    if not values:
        return "–"
    return f"{format(statistics.median(values), spec)} [{format(min(values), spec)}–{format(max(values), spec)}]"


def print_sweep(opts, results):
    points = opts.sweep_points
    held = (f" Only {opts.sweep_busy} connections busy; the rest held idle by a second load "
            "generator." if opts.sweep_busy else "")
    print(f"Connection sweep, 64 B ping-pong, closed loop; medians of {opts.rounds} rounds, "
          f"{opts.duration:g} s measured each; server on core 0, load generator on core 1.{held}\n")
    print("Server CPU µs per message:\n")
    print("| server | " + " | ".join(f"{p:,} conns" for p in points) + " |")
    print("|---|" + "---|" * len(points))
    for name in opts.servers:
        cells = [median([r["server_cpu_us_per_msg"] for r in results.get((p, name), [])]) for p in points]
        print(f"| {name} | " + " | ".join("–" if c is None else f"{c:.2f}" for c in cells) + " |")
    print("\np99 latency, ms:\n")
    print("| server | " + " | ".join(f"{p:,} conns" for p in points) + " |")
    print("|---|" + "---|" * len(points))
    for name in opts.servers:
        cells = [median([r["p99_us"] / 1000 for r in results.get((p, name), [])]) for p in points]
        print(f"| {name} | " + " | ".join("–" if c is None else f"{c:.1f}" for c in cells) + " |")
    low, high = points[0], points[-1]
    print(f"\nGrowth of CPU per message from {low:,} to {high:,} connections, per round, "
          "median [lowest–highest]:\n")
    print("| server | growth | growth ÷ c-epoll's |")
    print("|---|---|---|")
    reference = growth(results, "c-epoll", low, high)
    for name in opts.servers:
        own = growth(results, name, low, high)
        relative = [a / b for a, b in zip(own, reference)]
        print(f"| {name} | ×{summary(own)} | {summary(relative)} |")
    if "echod" in opts.servers and "c-epoll" in opts.servers:
        print(f"\nechod ÷ c-epoll at {high:,} connections, per round: CPU/msg "
              f"{summary(sweep_ratio(results, 'c-epoll', 'echod', 'server_cpu_us_per_msg', high))}, "
              f"p99 {summary(sweep_ratio(results, 'c-epoll', 'echod', 'p99_us', high))}")
    if "echod-poll" in opts.servers and 10000 in points:
        print(f"echod-poll's CPU per message at 10,000 connections ÷ its own at {low:,}: "
              f"×{summary(growth(results, 'echod-poll', low, 10000))}")


def plot_sweep(opts, results):
    try:
        import matplotlib
    except ImportError:
        sys.exit("bench.py: --sweep draws its charts with matplotlib: "
                 "pip install -r examples/requirements.txt")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    matplotlib.rcParams["svg.hashsalt"] = "echod"  # stable ids: a re-run diffs only in data

    caption = f"{machine()}; {opts.rounds} rounds × {opts.duration:g} s; {command_line()}"
    load = (f"{opts.sweep_busy} busy, the rest idle" if opts.sweep_busy
            else "all busy, 64 B ping-pong, closed loop")
    prefix = opts.chart_prefix
    charts = [
        ("server_cpu_us_per_msg", 1, "server CPU per echoed message (µs)", f"{prefix}-cpu.svg",
         f"Server CPU per message as connections grow ({load})", "linear"),
        ("p99_us", 1000, "p99 round-trip latency (ms, log scale)", f"{prefix}-p99.svg",
         f"p99 latency as connections grow ({load})", "log"),
    ]
    styles = {"echod": ("tab:blue", "o"), "c-epoll": ("tab:green", "s"), "libuv": ("tab:orange", "^"),
              "tokio-ct": ("tab:purple", "D"), "echod-poll": ("tab:red", "v")}
    for key, scale, ylabel, filename, title, yscale in charts:
        fig, ax = plt.subplots(figsize=(8, 5))
        for name in opts.servers:
            xs, ys, lo, hi = [], [], [], []
            for p in opts.sweep_points:
                values = [r[key] / scale for r in results.get((p, name), []) if r[key]]
                if values:
                    xs.append(p)
                    mid = statistics.median(values)
                    ys.append(mid)
                    lo.append(mid - min(values))
                    hi.append(max(values) - mid)
            if xs:
                color, marker = styles.get(name, (None, "o"))
                ax.errorbar(xs, ys, yerr=[lo, hi], label=name, color=color, marker=marker,
                            capsize=3, linewidth=1.5)
        ax.set_xscale("log")
        ax.set_yscale(yscale)
        ax.set_xticks(opts.sweep_points, [f"{p:,}" for p in opts.sweep_points])
        ax.minorticks_off()
        if yscale == "linear":
            ax.set_ylim(bottom=0)  # proportions read true from a zero baseline
        ax.set_xlabel("concurrent connections (log scale)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=11)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(title="server (median, bars: min–max)", fontsize=9)
        fig.text(0.01, 0.01, caption, fontsize=6.5, color="dimgray", wrap=True)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        path = os.path.join(DOCS, filename)
        fig.savefig(path, format="svg", metadata={"Date": None})
        plt.close(fig)
        log(f"chart: {path}")


if __name__ == "__main__":
    main()
