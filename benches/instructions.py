#!/usr/bin/env python3
"""Instructions per request: respite's release build beside another respite binary, counted
by callgrind (valgrind), which counts instructions rather than time, so the figure repeats
from run to run on a shared, noisy machine (perf's hardware counters are not available on
every machine).

    cargo build --release && cp target/release/respite /tmp/respite-before   # the old one
    ... change the code ...
    python3 benches/instructions.py --baseline before=/tmp/respite-before [--baseline ...]
    python3 benches/instructions.py --variant limits="ops_per_second = 100000000"
                                    # this build, the bench tenant with extra settings

For each binary and each case (GET and SET, pipeline 1 and 16, 50 clients, one key, quotas
on), respite runs under callgrind against its own redis-server; callgrind's counters are
zeroed once respite is up and dumped right after redis-benchmark's run, so start-up and
shutdown are not counted. Prints a Markdown table for BENCHMARKS.md.

Needs valgrind (callgrind_control), redis-server and redis-benchmark on PATH.
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import free_port, wait_port  # noqa: E402  (the same helpers as the load bench)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [("get", 1), ("get", 16), ("set", 1), ("set", 16)]


def total_ir(path):
    """The instruction total of one callgrind dump."""
    with open(path) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise SystemExit("no totals in %s" % path)


def measure(binary, rport, tmp, test, pipeline, requests, extra=""):
    port = free_port()
    conf = os.path.join(tmp, "respite-%d.toml" % port)
    with open(conf, "w") as f:
        f.write('[server]\nlisten = "127.0.0.1:%d"\n[upstream]\nurl = "redis://127.0.0.1:%d"\n'
                '[defaults]\nquota_bytes = 1073741824\n'
                '[[tenants]]\nid = "bench"\npassword = "bench-secret"\n%s\n'
                % (port, rport, extra.replace("\\n", "\n")))
    out = os.path.join(tmp, "callgrind-%d.out" % port)
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out, binary,
         "--config", conf],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn"})
    try:
        wait_port(port, proc, "respite under callgrind", seconds=60)
        bench = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-a", "bench-secret",
                 "-c", "50", "-P", str(pipeline), "-q"]
        # Warm up (connections, the first lease), then count only the measured run.
        subprocess.run(bench + ["-n", "2000", "-t", test], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "--zero", str(proc.pid)], check=True,
                       capture_output=True)
        subprocess.run(bench + ["-n", str(requests), "-t", test], check=True,
                       capture_output=True)
        subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True,
                       capture_output=True)
        dumps = sorted(glob.glob(out + ".*"), key=os.path.getmtime)
        return total_ir(dumps[-1]) / requests
    finally:
        proc.terminate()
        proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", action="append", default=[],
                    help="NAME=PATH of a respite binary to compare with (repeatable)")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=SETTINGS: the current binary with these lines added to the "
                         "bench tenant (\\n between lines; repeatable)")
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--current", help="the binary to measure (default: a fresh release build)")
    opts = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "redis-server", "redis-benchmark"):
        if not shutil.which(tool):
            raise SystemExit("%s not found" % tool)
    current = opts.current
    if not current:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        current = os.path.join(ROOT, "target", "release", "respite")
    binaries = [tuple(b.split("=", 1)) + ("",) for b in opts.baseline]
    binaries.append(("current", current, ""))
    binaries += [(n, current, extra) for n, extra in (v.split("=", 1) for v in opts.variant)]
    tmp = tempfile.mkdtemp()
    rport = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", tmp],
                             stdout=subprocess.DEVNULL)
    try:
        wait_port(rport, redis, "redis-server")
        results = {}
        for test, pipeline in CASES:
            for name, binary, extra in binaries:
                ir = measure(binary, rport, tmp, test, pipeline, opts.requests, extra)
                results[(name, test, pipeline)] = ir
                print("%-8s %s P%-2d %8.0f instructions/request" % (name, test.upper(),
                                                                    pipeline, ir), flush=True)
    finally:
        redis.terminate()
        redis.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n%d requests a case, 50 clients, one key, quotas on; callgrind (Ir).\n"
          % opts.requests)
    # Every other one against "current" (this build, the tenant as it is).
    names = [n for n, _, _ in binaries]
    others = [n for n in names if n != "current"]
    print("| test | pipeline | %s | %s |" % (
        " | ".join("%s instr/req" % n for n in names),
        " | ".join("%s / current" % n for n in others)))
    print("|---|---" + "|---" * (len(names) + len(others)) + "|")
    for test, pipeline in CASES:
        ir = {n: results[(n, test, pipeline)] for n in names}
        print("| %s | %d | %s | %s |" % (
            test.upper(), pipeline, " | ".join("%.0f" % ir[n] for n in names),
            " | ".join("%.3fx" % (ir[n] / ir["current"]) for n in others)))


if __name__ == "__main__":
    main()
