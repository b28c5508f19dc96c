#!/usr/bin/env python3
"""Two workers on one port: one shared listening socket, or one SO_REUSEPORT socket each
(what `--workers 2` does)? Runs both side by side, in rounds (alternating which goes first),
10,000 connections x 64 B through the verifying load generator, and prints server CPU per
message (summed over the processes), messages per second, p99, and how the connections
were split between the two workers. Needs `cargo build --release --bins --examples`.

    python3 examples/sockets_bench.py [ROUNDS]

The shared case is two plain echod adopting one socket the script binds (LISTEN_FDS, as
from systemd), both on cores 0 and 1; the reuseport case is `echod --workers 2`, likewise.
"""
import os, socket, subprocess, sys, time, json, re, signal, statistics
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
E = os.path.join(ROOT, "target/release/echod")
L = os.path.join(ROOT, "target/release/examples/loadgen")
def children(pid):
    try: return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError: return []
def load(port, pids):
    cmd=["taskset","-c","1",L,"--addr",f"127.0.0.1:{port}","--conns","10000","--size","64","--duration","5","--warmup","1","--json"]
    for p in pids: cmd+=["--server-pid",str(p)]
    out=subprocess.run(cmd,capture_output=True,text=True,timeout=200).stdout
    return json.loads([l for l in out.splitlines() if l.startswith("{")][-1])
def accepted(logs):
    return [int(m) for m in re.findall(r"exiting: accepted=(\d+)", logs)]
def shared(port):
    s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR,1); s.bind(("127.0.0.1",port)); s.listen(1024)
    fd=s.fileno()
    procs=[]
    for _ in range(2):
        env=dict(os.environ, LISTEN_FDS="1", LISTEN_FDNAMES="echo", RUST_LOG="info")
        env.pop("LISTEN_PID",None)
        procs.append(subprocess.Popen(["taskset","-c","0,1",E], env=env, pass_fds=(fd,), preexec_fn=lambda: (os.dup2(fd,3), os.set_inheritable(3,True)) and None, stderr=subprocess.PIPE, text=True))
    s.close(); time.sleep(1)
    r=load(port,[p.pid for p in procs])
    logs=""
    for p in procs:
        p.send_signal(signal.SIGTERM); logs+=p.communicate(timeout=20)[1]
    return r, accepted(logs)
def reuseport(port):
    p=subprocess.Popen(["taskset","-c","0,1",E,"--listen",f"127.0.0.1:{port}","--workers","2"], env=dict(os.environ,RUST_LOG="info"), stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    r=load(port,[p.pid]+children(p.pid))
    p.send_signal(signal.SIGTERM); logs=p.communicate(timeout=20)[1]
    return r, accepted(logs)
port=24000; res={"shared":[], "reuseport":[]}
for rnd in range(int(sys.argv[1]) if len(sys.argv)>1 else 3):
    for name,f in (("shared",shared),("reuseport",reuseport)) if rnd%2==0 else (("reuseport",reuseport),("shared",shared)):
        port+=1; r,acc=f(port); res[name].append((r["server_cpu_us_per_msg"], r["msgs_per_s"], r["p99_us"], acc))
        print(name, rnd, r["server_cpu_us_per_msg"], r["msgs_per_s"], r["p99_us"], acc, flush=True)
for n,v in res.items():
    print(n, "median cpu/msg", statistics.median(x[0] for x in v), "msgs/s", statistics.median(x[1] for x in v), "p99", statistics.median(x[2] for x in v))
print("shared/reuseport cpu per round", [round(a[0]/b[0],3) for a,b in zip(res["shared"],res["reuseport"])])
