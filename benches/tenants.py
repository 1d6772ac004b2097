#!/usr/bin/env python3
"""Many tenants at a fixed rate: the "1,000 tenants at 10,000 req/s" acceptance test, direct
Redis and respite side by side in one run.

    python3 benches/tenants.py                      # 1,000 tenants, 10,000 req/s, 3 rounds
    python3 benches/tenants.py --no-quota           # the tenants without quotas
    python3 benches/tenants.py --reconcile-during   # respite's walk of every key meanwhile
    python3 benches/tenants.py --tenants 100 --rate 2000 --seconds 5 --rounds 1
    python3 benches/tenants.py --respite-bin /path/to/older/respite
    python3 benches/tenants.py --extra-config $'[quota]\\nflush_interval_ms = 100'

Builds respite (release) and the paced load generator (`benches/paced.rs`, `cargo bench
--bench paced`), starts its own redis-server (no persistence, maxclients 20000) and respite
(N tenants `t{i}` with password `t{i}-secret`, each with `quota_bytes = 10485760` unless
--no-quota, `max_clients = 20000`, admin port on, metrics on) on free loopback ports, SETs
every tenant's keys (`tenant:t{i}:k:{n}`, 1,000 per tenant, 100-byte values) straight into
Redis once, then runs the generator against direct Redis (no AUTH, keys under
`tenant:t{i}:`, so both see the same keys) and respite (one connection per tenant, each
logged in as its tenant) in turn, --rounds times, the order alternating each round.

The generator is open-loop: the rate is split evenly over the connections, each sends on a
fixed schedule whatever the replies do, GET/SET 80/20, and each request is timed from its
write to its reply (and from its scheduled time, to show any stall of the generator itself).

The keys are written after respite's first quota reconciliation (the walk of every
`tenant:*` key it starts with, then once every reconcile_interval_ms, 5 minutes), so that
walk finds an empty keyspace and no walk runs during the rounds; with --reconcile-during
they are written before respite starts, and its walk of all of them (paced at
reconcile_keys_per_second) runs while the rounds do.

Prints, per target, the median over rounds of p50/p99/p999 and the answered rate, the errors
and lost requests summed, respite's CPU time per request (utime+stime from /proc, warm-up
included) and RSS, and a Markdown table. Raises the open-file limit for itself and its
children (1,000+ sockets each). --extra-config is TOML put after the [admin] section, before
the tenants (so it may open [quota], [defaults], ...); a literal "\\n" in it is a newline.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import cpu_seconds, free_port, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))


def build(opts):
    """Builds respite (unless given one) and the generator; returns their paths."""
    if not opts.respite_bin:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    out = subprocess.run(["cargo", "bench", "--bench", "paced", "--no-run",
                          "--message-format=json"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    generator = None
    for line in out.splitlines():
        msg = json.loads(line)
        if (msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "paced"
                and msg.get("executable")):
            generator = msg["executable"]
    if not generator:
        raise SystemExit("cargo bench --no-run named no executable for the paced bench")
    respite = opts.respite_bin or os.path.join(TARGET, "release", "respite")
    return respite, generator


def config(opts, port, rport, aport):
    extra = (opts.extra_config or "").replace("\\n", "\n")
    quota = "" if opts.no_quota else "quota_bytes = 10485760\n"
    tenants = "".join('[[tenants]]\nid = "t%d"\npassword = "t%d-secret"\n%s' % (i, i, quota)
                      for i in range(opts.tenants))
    return ('[server]\nlisten = "127.0.0.1:%d"\nmax_clients = 20000\n'
            '[upstream]\nurl = "redis://127.0.0.1:%d"\n'
            '[admin]\nlisten = "127.0.0.1:%d"\n%s\n%s' % (port, rport, aport, extra, tenants))


def wait_reconciled(rport, respite):
    """Waits for respite's first reconciliation walk (its lock key appears in Redis as it
    starts; over an empty keyspace it ends within moments)."""
    for _ in range(200):
        if respite.poll() is not None:
            raise SystemExit("respite exited early")
        out = subprocess.run(["redis-cli", "-p", str(rport), "EXISTS",
                              "respite:quota:reconcile"], capture_output=True, text=True).stdout
        if out.strip() == "1":
            time.sleep(1)
            return
        time.sleep(0.05)
    print("note: respite's first reconciliation walk did not show", file=sys.stderr)


def rss_mib(pid, field="VmRSS"):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def generate(generator, opts, port, extra):
    args = [generator, "--addr", "127.0.0.1:%d" % port, "--tenants", str(opts.tenants),
            "--rate", str(opts.rate), "--seconds", str(opts.seconds), "--warmup",
            str(opts.warmup), "--keys", str(opts.keys), "--threads", str(opts.gen_threads),
            "--no-prefill"] + extra
    budget = opts.warmup + opts.seconds + 120
    run = subprocess.run(args, capture_output=True, text=True, timeout=budget)
    sys.stderr.write(run.stderr)
    if run.returncode != 0:
        raise SystemExit("the generator failed (%d)" % run.returncode)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=10000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keys", type=int, default=1000, help="keys per tenant")
    ap.add_argument("--gen-threads", type=int, default=1, help="the generator's tokio threads")
    ap.add_argument("--no-quota", action="store_true", help="tenants without quota_bytes")
    ap.add_argument("--reconcile-during", action="store_true",
                    help="fill Redis before respite starts, so that its first quota "
                         "reconciliation walks every key during the rounds")
    ap.add_argument("--respite-bin", help="this respite binary instead of a fresh release build")
    ap.add_argument("--extra-config", help="TOML added to respite's config, before the tenants")
    opts = ap.parse_args()
    if not shutil.which("redis-server"):
        raise SystemExit("redis-server not found: bash scripts/ensure-redis.sh")

    respite_bin, generator = build(opts)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    tmp = tempfile.mkdtemp()
    procs = []
    results = {"redis": [], "respite": []}
    metrics = None
    try:
        rport, port, aport = free_port(), free_port(), free_port()
        redis = subprocess.Popen(
            ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--maxclients", "20000", "--dir", tmp],
            stdout=subprocess.DEVNULL)
        procs.append(redis)
        wait_port(rport, redis, "redis-server")
        path = os.path.join(tmp, "respite.toml")
        with open(path, "w") as f:
            f.write(config(opts, port, rport, aport))

        def fill():
            # Every tenant's keys, once, straight into Redis: the names respite gives them.
            run = subprocess.run([generator, "--addr", "127.0.0.1:%d" % rport, "--no-auth",
                                  "--key-prefix", "tenant:t{i}:", "--tenants",
                                  str(opts.tenants), "--keys", str(opts.keys), "--fill-only"],
                                 capture_output=True, text=True, check=True)
            sys.stderr.write(run.stderr)

        if opts.reconcile_during:
            fill()
        respite = subprocess.Popen([respite_bin, "--config", path], stdout=subprocess.DEVNULL,
                                   stderr=open(os.path.join(tmp, "respite.log"), "w"),
                                   env={**os.environ, "RUST_LOG": "warn"})
        procs.append(respite)
        wait_port(port, respite, "respite")
        if not opts.reconcile_during:
            if not opts.no_quota:
                wait_reconciled(rport, respite)
            fill()
        began = time.monotonic()

        targets = [("redis", rport, redis.pid, ["--no-auth", "--key-prefix", "tenant:t{i}:"]),
                   ("respite", port, respite.pid, [])]
        for rnd in range(opts.rounds):
            order = targets if rnd % 2 == 0 else targets[::-1]
            for name, tport, pid, extra in order:
                cpu0, rcpu0 = sum(cpu_seconds(respite.pid)), sum(cpu_seconds(redis.pid))
                r = generate(generator, opts, tport, extra)
                r["respite_cpu_us"] = ((sum(cpu_seconds(respite.pid)) - cpu0) * 1e6
                                       / max(1, r["replies_all"]))
                r["redis_cpu_us"] = ((sum(cpu_seconds(redis.pid)) - rcpu0) * 1e6
                                     / max(1, r["replies_all"]))
                r["respite_rss_mib"] = rss_mib(respite.pid)
                r["respite_hwm_mib"] = rss_mib(respite.pid, "VmHWM")
                results[name].append(r)
                lat = r["latency_us"]
                print("round %d %-7s %7.0f req/s  p50 %5d  p99 %6d  p999 %6d  max %7d µs  "
                      "errors %d  lost %d  respite CPU %.1f µs/req, redis %.1f µs/req, "
                      "respite RSS %.1f MiB" % (
                          rnd + 1, name, r["achieved_rate"], lat["p50"], lat["p99"],
                          lat["p999"], lat["max"], r["errors"], r["lost"],
                          r["respite_cpu_us"], r["redis_cpu_us"], r["respite_rss_mib"]),
                      file=sys.stderr, flush=True)
                time.sleep(1)
        if time.monotonic() - began > 290 and not opts.no_quota:
            print("note: the rounds took longer than reconcile_interval_ms (300 s): respite's "
                  "next reconciliation walk may have run during the last ones", file=sys.stderr)
        # One scrape of /metrics, with every tenant's series in it.
        began = time.perf_counter()
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % aport, timeout=10) as resp:
            body = resp.read()
        metrics = (len(body), (time.perf_counter() - began) * 1e3)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        log = os.path.join(tmp, "respite.log")
        if os.path.exists(log) and os.path.getsize(log):
            with open(log) as f:
                lines = f.read().splitlines()
            print("respite logged %d lines, the last ones:" % len(lines), file=sys.stderr)
            for line in lines[-5:]:
                print("  " + line, file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)

    def med(name, *path):
        values = []
        for r in results[name]:
            for key in path:
                r = r[key]
            values.append(r)
        return statistics.median(values)

    print("\nMachine: %s, %d cores, %s; %s; respite %s; %d tenants, %.0f req/s, %g s measured "
          "(+%g s warm-up), %d rounds, medians; quotas %s." % (
              platform.machine(), os.cpu_count(), platform.platform(terse=True),
              subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
              .stdout.split()[2].replace("v=", "redis "),
              respite_bin if opts.respite_bin else "release build", opts.tenants, opts.rate,
              opts.seconds, opts.warmup, opts.rounds,
              "off" if opts.no_quota else "on (10 MiB per tenant)%s" % (
                  ", reconciliation walk during the rounds" if opts.reconcile_during else "")))
    if metrics:
        print("respite /metrics: %d KiB, scraped in %.1f ms." % (metrics[0] / 1024, metrics[1]))
    print()
    print("| target | req/s answered | p50 µs | p99 µs | p999 µs | max µs | from schedule "
          "p99 µs | errors | lost | respite CPU µs/req | Redis CPU µs/req | respite peak RSS "
          "MiB |")
    print("|---" * 12 + "|")
    for name in ("redis", "respite"):
        runs = results[name]
        if not runs:
            continue
        print("| %s | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %d | %d | %s | %.1f | %s |" % (
            name, med(name, "achieved_rate"), med(name, "latency_us", "p50"),
            med(name, "latency_us", "p99"), med(name, "latency_us", "p999"),
            med(name, "latency_us", "max"), med(name, "intended_us", "p99"),
            sum(r["errors"] for r in runs), sum(r["lost"] for r in runs),
            "%.1f" % med(name, "respite_cpu_us") if name == "respite" else "-",
            med(name, "redis_cpu_us"),
            "%.1f" % max(r["respite_hwm_mib"] for r in runs) if name == "respite" else "-"))
    errors = [e for name in results for r in results[name] for e in r["first_errors"]]
    if errors:
        print("\nFirst errors: " + "; ".join(errors[:5]))
    if results["redis"] and results["respite"]:
        ratios = [b["latency_us"]["p99"] / max(1, a["latency_us"]["p99"])
                  for a, b in zip(results["redis"], results["respite"])]
        print("\nrespite p99 / Redis p99 per round: " + ", ".join("%.2fx" % x for x in ratios))


if __name__ == "__main__":
    main()
