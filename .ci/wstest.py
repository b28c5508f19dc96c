#!/usr/bin/env python3
"""Autobahn|Testsuite's own fuzzing client (`wstest -m fuzzingclient`, CPython 2.7)
against echod's ws: and wss: listeners at once: every case but the compression ones (12.*,
13.*: echod offers no permessage-deflate). Prints each agent's verdicts and exits 1 if any
case FAILED or was UNIMPLEMENTED.

    python3 .ci/wstest.py target/debug/echod WSTEST
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter


def main():
    echod, wstest = sys.argv[1], os.path.abspath(sys.argv[2])
    server = subprocess.Popen([echod, "--listen", "ws:127.0.0.1:0", "--listen", "wss:127.0.0.1:0"],
                              stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, RUST_LOG="info"))
    try:
        ports = {}
        deadline = time.monotonic() + 20
        while len(ports) < 2 and time.monotonic() < deadline:
            found = re.search(r"listening on (wss?):127\.0\.0\.1:(\d+)", server.stderr.readline())
            if found:
                ports[found.group(1)] = found.group(2)
        if len(ports) < 2:
            sys.exit("wstest: echod never said where it listens")
        with tempfile.TemporaryDirectory() as work:
            reports = os.path.join(work, "reports")
            spec = {
                "outdir": reports,
                # wstest does not verify the server's certificate: the self-signed one serves.
                "servers": [{"agent": f"echod-{kind}", "url": f"{kind}://127.0.0.1:{port}"}
                            for kind, port in sorted(ports.items())],
                "cases": ["*"],
                "exclude-cases": ["12.*", "13.*"],
                "exclude-agent-cases": {},
            }
            with open(os.path.join(work, "spec.json"), "w") as out:
                json.dump(spec, out)
            subprocess.run([wstest, "-m", "fuzzingclient", "-s", "spec.json"], cwd=work,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900,
                           check=True)
            with open(os.path.join(reports, "index.json")) as index:
                verdicts = json.load(index)
    finally:
        server.terminate()
        server.wait(timeout=20)
    bad = []
    for agent, cases in sorted(verdicts.items()):
        counts = Counter(case["behavior"] for case in cases.values())
        print(f"wstest {agent}: {len(cases)} cases: {dict(sorted(counts.items()))}")
        bad += [f"{agent} {case}" for case, v in cases.items()
                if {"FAILED", "UNIMPLEMENTED"} & {v["behavior"], v["behaviorClose"]}]
    if bad:
        print("failed: " + ", ".join(sorted(bad)))
    sys.exit(1 if bad or len(verdicts) != 2 else 0)


if __name__ == "__main__":
    main()
