#!/usr/bin/env python3
"""Two respite builds side by side: did a change cost CPU per request?

    python3 benches/ab.py --old /path/to/old/respite --new target/release/respite --rounds 5

Builds are whatever binaries you give (e.g. `git worktree add /tmp/old <rev>` and
`cargo build --release` there). Starts one redis-server and both builds in front of it
(sidecar mode, quotas and metrics on, as users run it), then runs redis-benchmark (50
clients, 200,000 requests; GET and SET; pipeline 1 and 16) against each, alternating which
goes first every measurement so that machine noise hits both alike. Reports the median over
rounds of throughput and of the CPU time each respite process spent per request (from
/proc, in clock ticks: about 0.05 µs of resolution at 200,000 requests).
"""

import argparse
import os
import socket
import statistics
import subprocess
import tempfile
import time

REQUESTS = 200_000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("nothing listens on port %d" % port)


def cpu_seconds(pid):
    fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_respite(binary, tmp, redis_port):
    port = free_port()
    path = os.path.join(tmp, "respite-%d.toml" % port)
    with open(path, "w") as f:
        f.write('[server]\nlisten = "127.0.0.1:%d"\ndefault_tenant = "bench"\nmetrics = true\n'
                '[upstream]\nurl = "redis://127.0.0.1:%d"\n[quota]\n[[tenants]]\n'
                'id = "bench"\npassword = "pb"\nquota_bytes = 1000000000\n' % (port, redis_port))
    proc = subprocess.Popen([binary, "--config", path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def run(port, test, pipeline):
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-c", "50", "-n", str(REQUESTS), "-t", test,
         "-P", str(pipeline), "-q", "--csv"],
        capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1].split(",")[1].strip('"'))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    opts = ap.parse_args()
    tmp = tempfile.mkdtemp()
    redis_port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
    builds = []
    try:
        wait_port(redis_port)
        builds = [("old",) + start_respite(opts.old, tmp, redis_port),
                  ("new",) + start_respite(opts.new, tmp, redis_port)]
        results = {}
        turn = 0
        for r in range(opts.rounds):
            for test in ("get", "set"):
                for pipeline in (1, 16):
                    # Which build goes first flips with every measurement, not every round:
                    # flipping per round ran one build twice in a row at each round's turn
                    # (the last test, then the first), and tilted GET P1 towards it.
                    turn += 1
                    for name, proc, port in (builds if turn % 2 == 0 else builds[::-1]):
                        before = cpu_seconds(proc.pid)
                        rps = run(port, test, pipeline)
                        per_request = (cpu_seconds(proc.pid) - before) / REQUESTS * 1e6
                        results.setdefault((test, pipeline, name), []).append((rps, per_request))
        print("| test | old req/s | new req/s | old CPU/req | new CPU/req | new/old CPU |")
        print("|---|---|---|---|---|---|")
        for test in ("get", "set"):
            for pipeline in (1, 16):
                row = {}
                for name in ("old", "new"):
                    runs = results[(test, pipeline, name)]
                    row[name] = (statistics.median(x[0] for x in runs),
                                 statistics.median(x[1] for x in runs))
                print("| %s P%d | %.0f | %.0f | %.2f µs | %.2f µs | %.2fx |" % (
                    test.upper(), pipeline, row["old"][0], row["new"][0], row["old"][1],
                    row["new"][1], row["new"][1] / row["old"][1]))
    finally:
        for _, proc, _ in builds:
            proc.terminate()
        redis.terminate()


if __name__ == "__main__":
    main()
