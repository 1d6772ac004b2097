#!/usr/bin/env python3
"""Many configured tenants: what 10,000 tenants in the config cost respite when idle.

    python3 benches/scale.py [--tenants 10000] [--runs 5] [--active 100]

For a config with one tenant and one with N (each with a password and a quota, as a
platform would list its customers), starts respite (release build) against its own
redis-server, and measures, median of --runs starts each:

- startup: from exec to a tenant's AUTH answered +OK;
- RSS once started and idle (/proc/PID/status VmRSS), and the difference per tenant;
- a /metrics scrape (median of 10 scrapes) with --active tenants logged in and having run a
  command, the rest idle: respite names only the active ones, and counts the rest.

Prints a Markdown table for BENCHMARKS.md.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import free_port, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(path, port, admin, rport, tenants):
    with open(path, "w") as f:
        f.write('[server]\nlisten = "127.0.0.1:%d"\nmax_clients = 20000\n'
                '[upstream]\nurl = "redis://127.0.0.1:%d"\n'
                '[admin]\nlisten = "127.0.0.1:%d"\n' % (port, rport, admin))
        for i in range(tenants):
            f.write('[[tenants]]\nid = "t%d"\npassword = "t%d-secret"\nquota_bytes = 10485760\n'
                    % (i, i))


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def resp(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def start(path, port):
    """respite on `path`; returns the process and the seconds until a tenant's AUTH was
    answered (the listener is bound before the tenants are built: a connect alone would
    not say that respite is ready)."""
    began = time.perf_counter()
    proc = subprocess.Popen([os.path.join(ROOT, "target", "release", "respite"), "--config", path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "RUST_LOG": "warn"})
    while True:
        if proc.poll() is not None:
            raise SystemExit("respite exited early")
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            time.sleep(0.002)
            continue
        s.sendall(resp("AUTH", "t0", "t0-secret"))
        reply = s.recv(100)
        s.close()
        if reply != b"+OK\r\n":
            raise SystemExit("AUTH answered %r" % reply)
        return proc, time.perf_counter() - began


def scrape(admin):
    began = time.perf_counter()
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin, timeout=10).read()
    return time.perf_counter() - began, body


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--active", type=int, default=100)
    opts = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp()
    rport = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", tmp],
                             stdout=subprocess.DEVNULL)
    wait_port(rport, redis, "redis-server")
    results = {}
    try:
        for n in (1, opts.tenants):
            starts, rss, scrapes, sizes, lines = [], [], [], [], []
            for _ in range(opts.runs):
                port, admin = free_port(), free_port()
                path = os.path.join(tmp, "respite-%d.toml" % n)
                config(path, port, admin, rport, n)
                proc, took = start(path, port)
                starts.append(took)
                time.sleep(1.0)
                rss.append(rss_kib(proc.pid))
                socks = []
                for i in range(min(opts.active, n)):
                    s = socket.create_connection(("127.0.0.1", port))
                    s.sendall(resp("AUTH", "t%d" % i, "t%d-secret" % i) + resp("SET", "k", "v"))
                    got = b""
                    while got.count(b"\r\n") < 2:
                        got += s.recv(100)
                    socks.append(s)
                for _ in range(10):
                    took, body = scrape(admin)
                    scrapes.append(took)
                sizes.append(len(body))
                lines.append(body.count(b"\n"))
                for s in socks:
                    s.close()
                proc.terminate()
                proc.wait()
            results[n] = {
                "start_ms": statistics.median(starts) * 1000,
                "rss_kib": statistics.median(rss),
                "scrape_ms": statistics.median(scrapes) * 1000,
                "scrape_bytes": statistics.median(sizes),
                "scrape_lines": statistics.median(lines),
            }
            print(n, results[n], file=sys.stderr)
    finally:
        redis.terminate()
    one, many = results[1], results[opts.tenants]
    per = (many["rss_kib"] - one["rss_kib"]) * 1024 / (opts.tenants - 1)
    print("| tenants in the config | startup (ms) | idle RSS (MiB) | /metrics scrape (ms), %d active "
          "| scrape size |" % opts.active)
    print("|---|---|---|---|---|")
    for n in (1, opts.tenants):
        r = results[n]
        print("| %d | %.0f | %.1f | %.1f | %d lines, %.0f KiB |" % (
            n, r["start_ms"], r["rss_kib"] / 1024, r["scrape_ms"], r["scrape_lines"],
            r["scrape_bytes"] / 1024))
    print("\nidle RSS per configured tenant: %.0f bytes (%d runs, medians)" % (per, opts.runs))


if __name__ == "__main__":
    main()
