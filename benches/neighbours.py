#!/usr/bin/env python3
"""Noisy neighbours, measured: ten quiet tenants t0..t9 send 1,000 requests a second in all
(paced, GET/SET 80/20, 100-byte values, latency of each request from its write to its
reply) while one tenant misbehaves, one scenario at a time:

    baseline    nobody misbehaves
    flood       tenant `flood` (ops_per_second = 5000) runs redis-benchmark -c 20 -P 16
    unread      20 connections each pipeline 300 GETs of a 100 KB value and never read
                (client_output_limit_bytes = 8 MiB); respite's RSS is sampled
    dbsize      tenant `walker` loops DBSIZE while tenant `big` holds 200,000 keys
    idle        10,000 sockets connect and never log in; then a tenant logs in
    pinned      tenant `holder` (pinned_max = 48) holds 64 BLPOPs; t0 runs MULTI/EXEC

    python3 benches/neighbours.py [--seconds 10] [--only flood,dbsize]

Starts its own redis-server and respite (release build, quotas on) on loopback, and prints
the quiet tenants' p50/p99/p999 and errors per scenario, with each scenario's own figures.
"""

import argparse
import asyncio
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import free_port, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = ["t%d" % i for i in range(10)]


def cmd(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


async def read_reply(r):
    """One whole RESP2 reply (enough for +, -, :, $ and flat *)."""
    line = await r.readline()
    kind = line[:1]
    if kind == b"$":
        n = int(line[1:])
        if n >= 0:
            await r.readexactly(n + 2)
    elif kind == b"*":
        for _ in range(max(0, int(line[1:]))):
            await read_reply(r)
    return line


async def login(port, tenant):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(cmd("AUTH", tenant, "p" + tenant))
    await w.drain()
    line = await read_reply(r)
    if not line.startswith(b"+OK"):
        raise SystemExit("login %s: %r" % (tenant, line))
    return r, w


async def quiet_tenant(port, tenant, rate, until, latencies, errors):
    r, w = await login(port, tenant)
    value = b"v" * 100
    period = 1.0 / rate
    next_at = time.monotonic()
    i = 0
    while time.monotonic() < until:
        next_at += period
        key = "k%d" % (i % 100)
        i += 1
        req = cmd("SET", key, value) if random.random() < 0.2 else cmd("GET", key)
        start = time.perf_counter()
        w.write(req)
        await w.drain()
        line = await read_reply(r)
        latencies.append((time.perf_counter() - start) * 1e6)
        if line.startswith(b"-"):
            errors.append(line)
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    w.close()


async def quiet_load(port, seconds):
    until = time.monotonic() + seconds
    latencies, errors = [], []
    await asyncio.gather(*(quiet_tenant(port, t, 100, until, latencies, errors)
                           for t in QUIET))
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    return {"requests": len(latencies), "p50_us": pick(0.5), "p99_us": pick(0.99),
            "p999_us": pick(0.999), "errors": len(errors)}


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def flood(port, seconds):
    proc = await asyncio.create_subprocess_exec(
        "redis-benchmark", "-p", str(port), "--user", "flood", "-a", "pflood", "-c", "20",
        "-P", "16", "-n", "100000000", "-t", "get", "-q", "--csv",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    # Its rate, from Redis' own count of the flood tenant's GETs over the window.
    await asyncio.sleep(1)
    start = await tenant_commands(port, "flood")
    t0 = time.monotonic()
    quiet = await quiet_load(port, seconds)
    served = await tenant_commands(port, "flood") - start
    rate = served / (time.monotonic() - t0)
    proc.kill()
    await proc.wait()
    quiet["flood_req_per_s"] = round(rate)
    return quiet


async def tenant_commands(port, tenant):
    """The tenant's command count, from INFO # Tenant."""
    r, w = await login(port, tenant)
    w.write(cmd("INFO", "tenant"))
    await w.drain()
    line = await r.readline()
    body = await r.readexactly(int(line[1:]) + 2)
    w.close()
    for field in body.decode().split("\r\n"):
        if field.startswith("commands:"):
            return int(field.split(":")[1])
    return 0


async def unread(port, seconds, pid):
    r, w = await login(port, "hog")
    w.write(cmd("SET", "big", b"x" * 100_000))
    await w.drain()
    await read_reply(r)
    idle = rss_mib(pid)
    hogs = []
    for _ in range(20):
        hr, hw = await login(port, "hog")
        hw.write(cmd("GET", "big") * 300)
        await hw.drain()
        hogs.append((hr, hw))
    peak = [idle]

    async def sample():
        while True:
            peak[0] = max(peak[0], rss_mib(pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.ensure_future(sample())
    quiet = await quiet_load(port, seconds)
    sampler.cancel()
    for _, hw in hogs:
        hw.close()
    quiet["rss_idle_mib"] = round(idle, 1)
    quiet["rss_peak_mib"] = round(peak[0], 1)
    return quiet


async def dbsize(port, seconds, rport):
    # 200,000 keys of another tenant, written straight into Redis.
    r, w = await asyncio.open_connection("127.0.0.1", rport)
    for chunk in range(200):
        w.write(b"".join(cmd("SET", "tenant:big:%d:%d" % (chunk, i), "v")
                         for i in range(1000)))
        await w.drain()
        for _ in range(1000):
            await read_reply(r)
    w.close()
    timings = []
    stop = asyncio.Event()

    async def walker():
        wr, ww = await login(port, "walker")
        while not stop.is_set():
            start = time.perf_counter()
            ww.write(cmd("DBSIZE"))
            await ww.drain()
            await read_reply(wr)
            timings.append((time.perf_counter() - start) * 1e3)

    task = asyncio.ensure_future(walker())
    quiet = await quiet_load(port, seconds)
    stop.set()
    await task
    quiet["dbsize_median_ms"] = round(statistics.median(timings), 1) if timings else None
    quiet["dbsize_calls"] = len(timings)
    return quiet


async def idle(port, seconds):
    socks = []
    refused = 0
    for _ in range(10_000):
        try:
            socks.append(await asyncio.open_connection("127.0.0.1", port))
        except OSError:
            refused += 1
    await asyncio.sleep(0.5)
    start = time.perf_counter()
    r, w = await login(port, "t0")
    w.write(cmd("PING"))
    await w.drain()
    pong = await read_reply(r)
    took = (time.perf_counter() - start) * 1e3
    quiet = await quiet_load(port, seconds)
    for _, sw in socks:
        sw.close()
    quiet["idle_sockets"] = len(socks)
    quiet["login_then_ping_ms"] = round(took, 2)
    quiet["ping"] = pong.decode().strip()
    return quiet


async def pinned(port, seconds):
    held = []
    for i in range(64):
        hr, hw = await login(port, "holder")
        hw.write(cmd("BLPOP", "never%d" % i, 0))
        await hw.drain()
        held.append((hr, hw))
    await asyncio.sleep(0.5)
    r, w = await login(port, "t0")
    start = time.perf_counter()
    w.write(cmd("MULTI") + cmd("SET", "m", 1) + cmd("EXEC"))
    await w.drain()
    replies = [(await read_reply(r)).decode().strip() for _ in range(3)]
    took = (time.perf_counter() - start) * 1e3
    quiet = await quiet_load(port, seconds)
    for _, hw in held:
        hw.close()
    quiet["multi_exec"] = " ".join(replies)
    quiet["multi_exec_ms"] = round(took, 2)
    return quiet


def config(port, rport):
    tenants = "".join('[[tenants]]\nid = "%s"\npassword = "p%s"\n' % (t, t) for t in QUIET)
    return ('[server]\nlisten = "127.0.0.1:%d"\nclient_output_limit_bytes = 8388608\n'
            '[upstream]\nurl = "redis://127.0.0.1:%d"\npinned_max = 64\n'
            '[defaults]\nquota_bytes = 1073741824\n%s'
            '[[tenants]]\nid = "flood"\npassword = "pflood"\nops_per_second = 5000\n'
            '[[tenants]]\nid = "hog"\npassword = "phog"\n'
            '[[tenants]]\nid = "walker"\npassword = "pwalker"\n'
            '[[tenants]]\nid = "big"\npassword = "pbig"\n'
            '[[tenants]]\nid = "holder"\npassword = "pholder"\npinned_max = 48\n'
            % (port, rport, tenants))


async def run(opts):
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    tmp = tempfile.mkdtemp()
    rport, port = free_port(), free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--save", "", "--dir", tmp,
                              "--maxclients", "20000"], stdout=subprocess.DEVNULL)
    path = os.path.join(tmp, "respite.toml")
    with open(path, "w") as f:
        f.write(config(port, rport))
    respite = subprocess.Popen([os.path.join(ROOT, "target", "release", "respite"),
                                "--config", path], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
    try:
        wait_port(rport, redis, "redis-server")
        wait_port(port, respite, "respite")
        scenarios = {
            "baseline": lambda: quiet_load(port, opts.seconds),
            "flood": lambda: flood(port, opts.seconds),
            "unread": lambda: unread(port, opts.seconds, respite.pid),
            "dbsize": lambda: dbsize(port, opts.seconds, rport),
            "idle": lambda: idle(port, opts.seconds),
            "pinned": lambda: pinned(port, opts.seconds),
        }
        wanted = opts.only.split(",") if opts.only else list(scenarios)
        results = {}
        for name in wanted:
            results[name] = await scenarios[name]()
            print(name, results[name], flush=True)
            await asyncio.sleep(1)
    finally:
        respite.terminate()
        redis.terminate()
        respite.wait()
        redis.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| scenario | quiet requests | p50 µs | p99 µs | p999 µs | errors | its own figures |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        own = ", ".join("%s %s" % (k, v) for k, v in r.items()
                        if k not in ("requests", "p50_us", "p99_us", "p999_us", "errors"))
        print("| %s | %d | %.0f | %.0f | %.0f | %d | %s |" % (
            name, r["requests"], r["p50_us"], r["p99_us"], r["p999_us"], r["errors"], own))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--only", help="comma-separated scenarios")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
