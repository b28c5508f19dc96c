#!/usr/bin/env bash
# Side by side, in rounds, on one machine: server CPU per message at 10,000 connections ×
# 64 B (loadgen, every byte checked) for a single echod, `--workers 1`, a single echod
# scraped once a second on --metrics, and `--workers 2` (CPU summed over master and
# workers). Needs `cargo build --release --bins --examples`. Usage:
#   bash examples/workers_bench.sh [ROUNDS]
# Not yet part of examples/bench.py (see docs/performance.md#workers-and-metrics).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
E=target/release/echod
L=target/release/examples/loadgen
out=$(mktemp -d)
run() { # NAME PORT [ECHOD FLAGS…]
  local name=$1 port=$2
  shift 2
  "$E" --listen "127.0.0.1:$port" -qq "$@" &
  local pid=$!
  # Wait until it answers (a master's workers included), not for a fixed time.
  until python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1).close()" 2>/dev/null; do
    sleep 0.05
  done
  local pids=(--server-pid "$pid")
  for child in $(pgrep -P "$pid" || true); do pids+=(--server-pid "$child"); done
  local scraper=
  if [[ " $* " == *" --metrics "* ]]; then
    (for _ in $(seq 1 30); do curl -s -o /dev/null "127.0.0.1:$((port + 1))/metrics"; sleep 1; done) &
    scraper=$!
  fi
  "$L" --addr "127.0.0.1:$port" --conns 10000 --size 64 --duration 6 --warmup 1 --json \
    "${pids[@]}" > "$out/$name-$round.json"
  if [ -n "$scraper" ]; then kill "$scraper" 2>/dev/null || true; fi
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}
for round in $(seq 1 "${1:-3}"); do
  run single 21007
  run workers1 21107 --workers 1
  run metrics 21207 --metrics 127.0.0.1:21208
  run workers2 21307 --workers 2
done
python3 - "$out" "${1:-3}" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
get = lambda n, r: json.load(open(f"{out}/{n}-{r}.json"))
for name in ["workers1", "metrics", "workers2"]:
    cpu = [get(name, r)["server_cpu_us_per_msg"] / get("single", r)["server_cpu_us_per_msg"] for r in range(1, rounds + 1)]
    rate = [get(name, r)["msgs_per_s"] / get("single", r)["msgs_per_s"] for r in range(1, rounds + 1)]
    print(f"{name:9} ÷ single: CPU/msg median {statistics.median(cpu):.3f} {[round(x, 3) for x in cpu]}, "
          f"msgs/s median {statistics.median(rate):.3f}")
PY
