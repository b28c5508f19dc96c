#!/usr/bin/env python3
"""Benchmark echod against the reference echo servers, side by side, on this machine.

Builds echod, its load generator and the references (../shared/bench), then for each
scenario runs every server in turn, round after round (A B C A B C ...), each server pinned
to one core and the load generator to the other, and prints a Markdown table of medians:
msgs/s, server CPU µs per message (from /proc/PID/stat at the window's edges, measured by
the load generator), syscalls per message (strace -c -f over a separate short run), p50 and
p99 latency, peak RSS, and RSS per idle connection.

    python3 examples/bench.py                        # everything (about 15 minutes)
    python3 examples/bench.py --rounds 1 --duration 3 --scenarios 100x64 16k
    python3 examples/bench.py --servers echod c-epoll --no-strace

Only loopback (127.0.0.1) is used; every run is bounded by --duration and timeouts.
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
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ECHOD = os.path.join(ROOT, "target", "release", "echod")
LOADGEN = os.path.join(ROOT, "target", "release", "examples", "loadgen")

# name -> (loadgen arguments, what it shows)
SCENARIOS = {
    "100x64": (["--conns", "100", "--size", "64"], "100 conns × 64 B ping-pong"),
    "10kx64": (["--conns", "10000", "--size", "64"], "10,000 conns × 64 B"),
    "16k": (["--conns", "50", "--size", "16384"], "50 conns × 16 KiB"),
    "pipe8": (["--conns", "1000", "--size", "64", "--pipeline", "8"], "1,000 conns × 64 B, 8 in flight"),
    "idle": (["--conns", "19000", "--idle"], "19,000 idle connections held"),
}
DEFAULT_SERVERS = ["echod", "c-epoll", "libuv", "tokio-ct"]


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def build(anchors):
    log("build: echod and its examples (release)")
    subprocess.run(["cargo", "build", "--release", "--bins", "--examples", "-q"], cwd=ROOT, check=True)
    log("build: reference servers")
    subprocess.run(["bash", os.path.join(anchors, "build.sh")], check=True, stdout=sys.stderr)
    for tool in ("taskset", "strace"):
        if shutil.which(tool) is None:
            subprocess.run(["apt-get", "install", "-y", "-q", "util-linux", "strace"],
                           check=False, stdout=sys.stderr)


class Server:
    """One server process, pinned to core 0, listening on 127.0.0.1:port."""

    def __init__(self, name, port, anchors, wrapper=()):
        if name == "echod":
            command = [ECHOD, "-qq", "--listen", f"127.0.0.1:{port}"]
        else:
            command = [os.path.join(anchors, "start.sh"), name, str(port)]
        command = list(wrapper) + command
        self.name = name
        self.port = port
        # start.sh execs the server, so this PID is the server's.
        self.proc = subprocess.Popen(["taskset", "-c", "0"] + command,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start on port {port}")
                time.sleep(0.05)

    @property
    def pid(self):
        return self.proc.pid

    def peak_rss_kib(self):
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return None

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def loadgen(port, pid, args, duration, warmup):
    command = ["taskset", "-c", "1", LOADGEN, "--addr", f"127.0.0.1:{port}", "--json",
               "--duration", str(duration), "--warmup", str(warmup)] + args
    if pid is not None:
        command += ["--server-pid", str(pid)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=duration + warmup + 180)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"loadgen failed ({out.returncode}): {out.stderr[-500:]}")
    return json.loads(lines[-1])


def syscalls_per_message(name, port, anchors, args, duration):
    """strace -c -f attached to the server for a whole short run; syscalls / messages."""
    server = Server(name, port, anchors)
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
    opts = parser.parse_args()

    if not opts.no_build:
        build(opts.anchors)
    port = 21000  # below the ephemeral range (32768+), which TIME_WAIT client ports fill
    results = {}  # (scenario, server) -> list of loadgen results (+ peak_rss_kib)
    for scenario in opts.scenarios:
        args, _ = SCENARIOS[scenario]
        for round_number in range(1, opts.rounds + 1):
            for name in opts.servers:
                port += 1
                server = Server(name, port, opts.anchors)
                try:
                    duration = opts.duration
                    result = loadgen(port, server.pid, args, duration, opts.warmup)
                    result["peak_rss_kib"] = server.peak_rss_kib()
                finally:
                    server.stop()
                results.setdefault((scenario, name), []).append(result)
                log(f"{scenario:7} round {round_number} {name:9} "
                    f"{result['msgs_per_s']:>10.0f} msgs/s  cpu {result['server_cpu_us_per_msg']} µs/msg  "
                    f"p99 {result['p99_us']:.0f} µs  errors {result['errors']}  answered {result['answered']}")
    syscalls = {}
    if not opts.no_strace and "100x64" in opts.scenarios:
        for name in opts.servers:
            port += 1
            syscalls[name] = syscalls_per_message(name, port, opts.anchors, SCENARIOS["100x64"][0], 3)
            log(f"syscalls 100x64 {name:9} {syscalls[name]}")

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
    print_table(opts, results, syscalls, instructions)


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
    print(f"Medians of {opts.rounds} rounds, {opts.duration:g} s measured each; server on core 0, "
          f"load generator on core 1.\n")
    print("| scenario | server | msgs/s | server µs/msg | syscalls/msg | user instr/msg "
          "| p50 µs | p99 µs | peak RSS MiB | RSS/conn KiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    fmt = lambda v, spec: "–" if v is None else format(v, spec)
    for scenario in opts.scenarios:
        idle = scenario == "idle"
        for name in opts.servers:
            runs = results.get((scenario, name), [])
            pick = lambda key: None if idle else median([r[key] for r in runs])
            first = scenario == "100x64"
            answered = median([r["answered"] for r in runs]) if idle else None
            label = SCENARIOS[scenario][1] + (f" ({fmt(answered, '.0f')} answered)" if idle else "")
            peak = median([r["peak_rss_kib"] / 1024 for r in runs if r["peak_rss_kib"]])
            per_conn = median([r["server_rss_per_conn_kib"] for r in runs]) if idle else None
            print(f"| {label} | {name} | {fmt(pick('msgs_per_s'), ',.0f')} "
                  f"| {fmt(pick('server_cpu_us_per_msg'), '.2f')} "
                  f"| {fmt(syscalls.get(name) if first else None, '.2f')} "
                  f"| {fmt(instructions.get(name) if first else None, ',.0f')} "
                  f"| {fmt(pick('p50_us'), '.0f')} | {fmt(pick('p99_us'), '.0f')} "
                  f"| {fmt(peak, '.1f')} | {fmt(per_conn, '.3f')} |")
    references = [n for n in opts.servers if n != "echod"]
    if "echod" not in opts.servers or not references:
        return
    print("\nechod ÷ reference, each ratio taken within one round (back-to-back runs), "
          "median [lowest–highest] over rounds; below 1.00 means echod used less.\n")
    print("| scenario | " + " | ".join(f"CPU/msg ÷ {r}" for r in references)
          + " | " + " | ".join(f"p99 ÷ {r}" for r in references) + " |")
    print("|---|" + "---|" * (2 * len(references)))
    for scenario in opts.scenarios:
        if scenario == "idle":
            continue
        cells = []
        for key in ("server_cpu_us_per_msg", "p99_us"):
            for reference in references:
                ratios = round_ratios(results, scenario, "echod", reference, key)
                cells.append(f"{statistics.median(ratios):.2f} [{min(ratios):.2f}–{max(ratios):.2f}]"
                             if ratios else "–")
        print(f"| {SCENARIOS[scenario][1]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
