#!/usr/bin/env python3
"""Autobahn|Testsuite's WebSocket cases (through kosoku, their Python 3 runner) against
echod's ws: listener: every case but the compression ones (12.*, 13.*: echod does not
offer permessage-deflate). Prints one line 'autobahn: N passed, N failed' and exits 1 if
any case failed.

    python3 .ci/autobahn.py target/debug/echod KOSOKU
"""

import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time


def main():
    echod, kosoku = sys.argv[1], sys.argv[2]
    server = subprocess.Popen([echod, "--listen", "ws:127.0.0.1:0"],
                              stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, RUST_LOG="info"))
    try:
        port = None
        deadline = time.monotonic() + 20
        while port is None and time.monotonic() < deadline:
            line = server.stderr.readline()
            found = re.search(r"listening on ws:127\.0\.0\.1:(\d+)", line)
            port = found and found.group(1)
        if port is None:
            sys.exit("autobahn: echod never said where it listens")
        with tempfile.TemporaryDirectory() as reports:
            run = subprocess.run([kosoku, "-x", "12.*", "-x", "13.*", "-p", "4", "-o", reports,
                                  f"127.0.0.1:{port}"], capture_output=True, text=True,
                                 timeout=900)
            print(run.stdout.strip())
            verdicts = {}
            for path in glob.glob(os.path.join(reports, "*.json")):
                with open(path) as report:
                    case = json.load(report)
                if "behavior" in case:
                    verdicts[case.get("id", path)] = (case["behavior"], case.get("behaviorClose"))
    finally:
        server.terminate()
        server.wait(timeout=20)
    failed = sorted(case for case, (behavior, close) in verdicts.items()
                    if "FAILED" in (behavior, close))
    counts = {}
    for behavior, _ in verdicts.values():
        counts[behavior] = counts.get(behavior, 0) + 1
    print(f"autobahn verdicts: {counts}")
    if failed:
        print("failed cases: " + ", ".join(failed))
    print(f"autobahn: {len(verdicts) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed or not verdicts else 0)


if __name__ == "__main__":
    main()
