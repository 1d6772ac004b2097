#!/usr/bin/env python3
"""Load benchmark: respite vs direct Redis vs twemproxy vs predixy, side by side in one run.

    python3 benches/load.py                 # 3 interleaved rounds, the full matrix
    python3 benches/load.py --rounds 1 --quick
    python3 benches/load.py --suite quota   # respite with quotas off vs on: SET, P16
    python3 benches/load.py --suite shared  # GET of a shared key (L1) vs a tenant key (Redis)
    python3 benches/load.py --suite metrics # respite with per-tenant metrics off vs on: GET
    python3 benches/load.py --suite threads # respite on 2 worker threads vs 1 thread: GET
    python3 benches/load.py --suite scripts # EVALSHA of a 3-command script: Redis, respite
                                            # (confined: tenant ACL user), respite unconfined
    python3 benches/load.py --suite tls     # TLS: Redis' own TLS port, respite plain, respite
                                            # with TLS to the client and to Redis
    python3 benches/load.py --perf ...      # also instructions per request (perf stat)
    python3 benches/load.py --taskset 0 ... # the proxies on CPU 0 only (taskset -c), Redis
                                            # and the client anywhere
    python3 benches/load.py --pgo ...       # also respite built with profile-guided
                                            # optimisation (scripts/release-pgo.sh): beside
                                            # the plain build in the proxies suite, instead
                                            # of it in the others

Starts its own redis-server, twemproxy (Debian package `nutcracker`, one pool, one server
connection), predixy (the C++ multiplexing proxy, one worker thread, from ../shared/bin/predixy
or $PREDIXY when there is one) and respite (release build) on free loopback ports, then runs redis-benchmark
(50 clients; GET and SET; pipeline 1 and 16) against each, interleaving the targets within
every round so that machine noise hits all three alike. Reports the median over rounds of
throughput, p50 and p99 latency, and the CPU time the server process (redis-server,
nutcracker or respite) spent per request, and how much of it was the kernel's, with ratios. Prints a Markdown table for
BENCHMARKS.md.

Needs redis-server, redis-benchmark and nutcracker on PATH (apt-get install redis-server
nutcracker); the machine's core count matters, so the report says what it ran on.
"""

import argparse
import csv
import io
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENTS = 50
# Where `perf stat` writes, with --perf.
PERF = None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, seconds=15):
    for _ in range(int(seconds / 0.05)):
        if proc.poll() is not None:
            raise SystemExit("%s exited early" % what)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("%s did not start" % what)


def cpu_seconds(pid):
    """(utime, stime) of a process, in seconds: its own code's time, and the kernel's on its
    behalf (its syscalls, and the loopback TCP work done in them)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def bench(port, test, pipeline, requests, pid, auth, keyspace=None, command=None,
          redis_pid=None, tls_ca=None):
    args = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(CLIENTS),
            "-n", str(requests), "-P", str(pipeline), "--csv"]
    if tls_ca:
        args += ["--tls", "--cacert", tls_ca]
    if keyspace:
        args += ["-r", str(keyspace)]
    if auth:
        args += ["-a", auth]
    # A given command (e.g. GET of one key) instead of redis-benchmark's own test.
    args += command if command else ["-t", test]
    counter = None
    if PERF:
        # Instructions the server process ran (user and kernel): unlike throughput, steady
        # from run to run on a shared machine.
        counter = subprocess.Popen(["perf", "stat", "-x,", "-e", "instructions", "-p", str(pid),
                                    "-o", PERF], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(0.1)
    user_before, sys_before = cpu_seconds(pid)
    redis_before = sum(cpu_seconds(redis_pid)) if redis_pid else 0.0
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    user_after, sys_after = cpu_seconds(pid)
    user, kernel = user_after - user_before, sys_after - sys_before
    redis_cpu = sum(cpu_seconds(redis_pid)) - redis_before if redis_pid else 0.0
    instructions = None
    if counter:
        counter.send_signal(signal.SIGINT)
        counter.wait()
        with open(PERF) as f:
            for line in f:
                if ",instructions" in line and line.split(",")[0].isdigit():
                    instructions = int(line.split(",")[0])
    rows = [r for r in csv.reader(io.StringIO(out)) if r and r[0] != "test"]
    if not rows:
        raise SystemExit("redis-benchmark printed nothing for %s on %d:\n%s" % (test, port, out))
    r = rows[0]
    return {"rps": float(r[1]), "p50": float(r[4]), "p99": float(r[6]),
            "cpu_us": (user + kernel) / requests * 1e6, "sys_us": kernel / requests * 1e6,
            "user_us": user / requests * 1e6, "redis_cpu_us": redis_cpu / requests * 1e6,
            "instr": instructions / requests if instructions else float("nan")}


# The script of the scripts suite: three commands on its key, as a rate limiter's would be.
SCRIPT = ("redis.call('INCR', KEYS[1]) redis.call('EXPIRE', KEYS[1], 60) "
          "return redis.call('GET', KEYS[1])")

# A quota far from reach: its bookkeeping runs, nothing is refused.
QUOTAS = "[defaults]\nquota_bytes = 1073741824"

# Suites comparing two respite instances: (name, [server] lines, other sections) for the
# baseline and the variant, then the (test, pipeline, random keyspace) cases.
PAIRS = {
    "metrics": (("metrics-off", "metrics = false", ""), ("metrics-on", "", ""),
                [("get", 16, None), ("get", 1, None)]),
    "threads": (("threads-2", "threads = 2", QUOTAS), ("threads-1", "", QUOTAS),
                [("get", 1, None), ("get", 16, None)]),
    "quota": (("quota-off", "", ""), ("quota-on", "", "[defaults]\nquota_bytes = 1073741824"),
              [("set", 16, None), ("set", 16, 100_000), ("get", 16, None)]),
}


def make_certificates(tmp):
    """A CA and a certificate for 127.0.0.1 signed by it, in `tmp`: the CA's path."""
    def run(*args):
        subprocess.run(["openssl"] + list(args), cwd=tmp, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench CA")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    with open(os.path.join(tmp, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    return os.path.join(tmp, "ca.pem")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer requests per run")
    ap.add_argument("--threads", type=int, default=1,
                    help="respite's server.threads in the proxies and shared suites")
    ap.add_argument("--suite", choices=("proxies", "shared", "scripts", "tls") + tuple(PAIRS),
                    default="proxies",
                    help="proxies: redis vs twemproxy vs respite; quota: respite, quotas off vs "
                         "on; shared: GET of a shared key vs of a tenant key, one respite")
    ap.add_argument("--pgo", action="store_true",
                    help="also respite built by scripts/release-pgo.sh (respite-pgo): beside "
                         "the plain build in the proxies suite, instead of it in the others")
    ap.add_argument("--taskset", metavar="CPUS",
                    help="run the proxies (not Redis, not the client) on these CPUs only, "
                         "e.g. 0 or 0,1 (taskset -c)")
    ap.add_argument("--perf", action="store_true",
                    help="also count the instructions each server process runs per request "
                         "(perf stat; needs linux-perf)")
    opts = ap.parse_args()
    for tool in ("redis-server", "redis-benchmark", "nutcracker"):
        if not shutil.which(tool):
            raise SystemExit("%s not found: apt-get install redis-server nutcracker" % tool)

    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    plain = os.path.join(ROOT, "target", "release", "respite")
    pgo = os.path.join(ROOT, "target", "pgo", "respite")
    # Built again only when the plain build is newer (cargo just rebuilt it from changed
    # sources): the profile-guided build takes two release builds.
    if opts.pgo and (not os.path.exists(pgo) or os.path.getmtime(pgo) < os.path.getmtime(plain)):
        subprocess.run(["bash", os.path.join(ROOT, "scripts", "release-pgo.sh")], cwd=ROOT,
                       check=True, stdout=subprocess.DEVNULL)
    tmp = tempfile.mkdtemp()
    if opts.perf:
        global PERF
        PERF = os.path.join(tmp, "perf.csv")
    procs = []
    # The proxies' command line starts with this: `--taskset` pins them.
    pin = ["taskset", "-c", opts.taskset] if opts.taskset else []
    # The TLS suite: a CA and a certificate for 127.0.0.1 (openssl), Redis' own TLS port.
    tls_ca, redis_tls = None, []
    if opts.suite == "tls":
        tls_ca = make_certificates(tmp)
        tls_rport = free_port()
        redis_tls = ["--tls-port", str(tls_rport), "--tls-cert-file",
                     os.path.join(tmp, "server.pem"), "--tls-key-file",
                     os.path.join(tmp, "server.key"), "--tls-ca-cert-file", tls_ca,
                     "--tls-auth-clients", "no"]
    tls_targets = set()
    try:
        rport = free_port()
        redis = subprocess.Popen(
            ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp] + redis_tls, stdout=subprocess.DEVNULL)
        procs.append(redis)
        wait_port(rport, redis, "redis-server")

        tport, tstats = free_port(), free_port()
        with open(os.path.join(tmp, "twemproxy.yml"), "w") as f:
            f.write("pool:\n  listen: 127.0.0.1:%d\n  hash: fnv1a_64\n  distribution: ketama\n"
                    "  redis: true\n  auto_eject_hosts: false\n  server_connections: 1\n"
                    "  servers:\n   - 127.0.0.1:%d:1\n" % (tport, rport))
        twem = subprocess.Popen(pin + ["nutcracker", "-c", os.path.join(tmp, "twemproxy.yml"),
                                 "-s", str(tstats), "-v", "0"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(twem)
        wait_port(tport, twem, "nutcracker")

        def start_respite(extra, server="", upstream=True, binary=None):
            port = free_port()
            path = os.path.join(tmp, "respite-%d.toml" % port)
            # `upstream=False`: `extra` has its own [upstream].
            up = '[upstream]\nurl = "redis://127.0.0.1:%d"\n' % rport if upstream else ""
            with open(path, "w") as f:
                f.write('[server]\nlisten = "127.0.0.1:%d"\n%s\n%s%s\n[[tenants]]\n'
                        'id = "bench"\npassword = "bench-secret"\n' % (port, server, up, extra))
            proc = subprocess.Popen(
                pin + [binary or (pgo if opts.pgo else plain), "--config", path],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**os.environ, "RUST_LOG": "warn"})
            procs.append(proc)
            wait_port(port, proc, "respite")
            return port, proc.pid

        predixy = os.environ.get("PREDIXY", os.path.join(ROOT, "..", "shared", "bin", "predixy"))
        peers = []
        if opts.suite == "proxies" and os.access(predixy, os.X_OK):
            xport = free_port()
            with open(os.path.join(tmp, "predixy.conf"), "w") as f:
                f.write("Name bench\nBind 127.0.0.1:%d\nWorkerThreads 1\nClientTimeout 300\n"
                        "LogVerbSample 0\nLogDebugSample 0\nLogInfoSample 0\n"
                        "LogNoticeSample 0\nLogWarnSample 1\nLogErrorSample 1\n"
                        "Authority {\n Auth {\n  Mode write\n }\n}\n"
                        "StandaloneServerPool {\n RefreshMethod fixed\n Group shard001 {\n"
                        "  + 127.0.0.1:%d\n }\n}\n" % (xport, rport))
            pred = subprocess.Popen(pin + [predixy, os.path.join(tmp, "predixy.conf")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(pred)
            wait_port(xport, pred, "predixy")
            peers = [("predixy", xport, pred.pid, None)]

        # (name, port, pid, password) and (test, pipeline, random keyspace) per suite.
        commands = {}
        if opts.suite == "shared":
            port, pid = start_respite('[shared]\nprefixes = ["shared:market:"]',
                                      server="threads = %d" % opts.threads)
            value = "42000.5"
            # One key, and 100 keys (redis-benchmark's -r fills __rand_int__ with 12 digits).
            keys = ["shared:market:BTC-USD:price", "tenant:bench:plain"]
            keys += ["shared:market:%012d:price" % i for i in range(100)]
            keys += ["tenant:bench:plain:%012d" % i for i in range(100)]
            for key in keys:
                subprocess.run(["redis-cli", "-p", str(rport), "SET", key, value], check=True,
                               capture_output=True)
            # Redis itself answering the same GET of the shared key: what an L1 hit is to
            # beat, as it never reaches Redis.
            targets = [("redis-get", rport, redis.pid, None),
                       ("plain-get", port, pid, "bench-secret"),
                       ("shared-get", port, pid, "bench-secret")]
            commands = {("plain-get", None): ["GET", "plain"],
                        ("shared-get", None): ["GET", "shared:market:BTC-USD:price"],
                        ("redis-get", None): ["GET", "shared:market:BTC-USD:price"],
                        ("redis-get", 100): ["GET", "shared:market:__rand_int__:price"],
                        ("plain-get", 100): ["GET", "plain:__rand_int__"],
                        ("shared-get", 100): ["GET", "shared:market:__rand_int__:price"]}
            cases = [("get", 16, None), ("get", 16, 100), ("get", 1, None)]
        elif opts.suite == "scripts":
            port, pid = start_respite('[[tenants]]\nid = "trusted"\npassword = "trusted-secret"\n'
                                      'allow_unconfined_scripts = true')
            targets = [("redis", rport, redis.pid, None), ("respite", port, pid, "bench-secret"),
                       ("unconfined", port, pid, "trusted-secret")]
            for name, tport_, _, auth in targets:
                login = ["-a", auth] if auth else []
                sha = subprocess.run(["redis-cli", "-p", str(tport_)] + login +
                                     ["SCRIPT", "LOAD", SCRIPT], check=True, capture_output=True,
                                     text=True).stdout.strip()
                for key in (None, 1000):
                    commands[(name, key)] = ["EVALSHA", sha, "1", "counter:__rand_int__"
                                             if key else "counter"]
            cases = [("evalsha", 1, None), ("evalsha", 16, None), ("evalsha", 16, 1000)]
        elif opts.suite == "tls":
            # The same respite settings as the proxies suite; TLS both ways for respite-tls.
            pport, ppid = start_respite(QUOTAS, server="threads = %d" % opts.threads)
            xport = free_port()
            server_tls = ('tls_listen = "127.0.0.1:%d"\n[server.tls]\ncert_file = "%s"\n'
                          'key_file = "%s"' % (xport, os.path.join(tmp, "server.pem"),
                                               os.path.join(tmp, "server.key")))
            _, xpid = start_respite(
                QUOTAS + '\n[upstream]\nurl = "rediss://127.0.0.1:%d"\nca_file = "%s"'
                % (tls_rport, tls_ca), server="threads = %d\n%s" % (opts.threads, server_tls),
                upstream=False)
            wait_port(xport, redis, "respite's TLS listener")
            targets = [("redis-tls", tls_rport, redis.pid, None),
                       ("respite", pport, ppid, "bench-secret"),
                       ("respite-tls", xport, xpid, "bench-secret")]
            tls_targets = {"redis-tls", "respite-tls"}
            cases = [(t, p, None) for p in (1, 16) for t in ("get", "set")]
        elif opts.suite in PAIRS:
            # Two respite instances that differ in one setting, baseline first.
            *variants, cases = PAIRS[opts.suite]
            targets = []
            for name, server, extra in variants:
                port, pid = start_respite(extra, server=server)
                targets.append((name, port, pid, "bench-secret"))
        else:
            # As users run it: quotas (far from the limit) and metrics on.
            pport, ppid = start_respite(QUOTAS, server="threads = %d" % opts.threads,
                                        binary=plain)
            targets = ([("redis", rport, redis.pid, None), ("twemproxy", tport, twem.pid, None)]
                       + peers + [("respite", pport, ppid, "bench-secret")])
            if opts.pgo:
                gport, gpid = start_respite(QUOTAS, server="threads = %d" % opts.threads,
                                            binary=pgo)
                targets.append(("respite-pgo", gport, gpid, "bench-secret"))
            cases = [(t, p, None) for p in (1, 16) for t in ("get", "set")]
        scale = 0.25 if opts.quick else 1.0
        results = {}
        for rnd in range(opts.rounds):
            for case in cases:
                test, pipeline, keyspace = case
                n = int((200_000 if pipeline == 1 else 1_000_000) * scale)
                # Rotate the order every round so no target always runs first.
                k = rnd % len(targets)
                order = targets[k:] + targets[:k]
                for name, port, pid, auth in order:
                    r = bench(port, test, pipeline, n, pid, auth, keyspace,
                              commands.get((name, keyspace)), redis.pid,
                              tls_ca if name in tls_targets else None)
                    results.setdefault((name,) + case, []).append(r)
                    print("round %d %-9s %-3s P%-2d -r %-7s %10.0f rps  p50 %.3f ms  p99 %.3f ms  "
                          "%.2f us cpu/req (kernel %.2f, redis %.1f)  %.0f instr/req" % (
                              rnd + 1, name, test.upper(), pipeline, keyspace or "-", r["rps"],
                              r["p50"], r["p99"], r["cpu_us"], r["sys_us"], r["redis_cpu_us"],
                              r["instr"]),
                          file=sys.stderr)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: {m: statistics.median(r[m] for r in v)
               for m in ("rps", "p50", "p99", "cpu_us", "sys_us", "redis_cpu_us", "instr")}
           for k, v in results.items()}
    print("\nMachine: %s, %d cores, %s; redis %s; %d rounds, medians; %d clients.\n" % (
        platform.machine(), os.cpu_count(), platform.platform(terse=True),
        subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
        .stdout.split()[2].split("=")[1], opts.rounds, CLIENTS))
    names = [t[0] for t in targets]
    # Each round runs the targets back to back, so a ratio within a round is paired: the
    # median of those ratios shrugs off a round the machine was busy for.
    if opts.suite in PAIRS:
        paired(results, cases, names[1], names[0])
    elif "predixy" in names:
        for name in names:
            if name.startswith("respite"):
                paired(results, cases, name, "predixy")
    perf = " instr/req |" if opts.perf else ""
    print("| test | pipeline | keys | target | req/s | p50 ms | p99 ms | CPU µs/req | of it kernel "
          "| Redis CPU µs/req |%s %s |" % (perf, " | ".join("vs " + n for n in names[:-1])))
    print("|---" * (10 + bool(opts.perf) + len(names) - 1) + "|")
    for case in cases:
        test, pipeline, keyspace = case
        for name in names:
            m = med[(name,) + case]
            ratios = " | ".join("%.2fx" % (m["rps"] / med[(b,) + case]["rps"]) for b in names[:-1])
            instr = " %.0f |" % m["instr"] if opts.perf else ""
            print("| %s | %d | %s | %s | %.0f | %.3f | %.3f | %.2f | %.2f | %.1f |%s %s |" % (
                test.upper(), pipeline, "random %d" % keyspace if keyspace else "one",
                name, m["rps"], m["p50"], m["p99"], m["cpu_us"], m["sys_us"],
                m["redis_cpu_us"], instr, ratios))


def paired(results, cases, a, b):
    """Prints `a`'s throughput, CPU per request and CPU per request in its own code (user
    time, the kernel's left out) over `b`'s, round by round, with their medians."""
    print("Per-round ratios, %s / %s: throughput, then CPU per request (median, then each "
          "round):" % (a, b))
    for case in cases:
        test, pipeline, keyspace = case
        rounds = list(zip(results[(a,) + case], results[(b,) + case]))
        for what, metric in (("req/s", "rps"), ("CPU/req", "cpu_us"), ("user CPU/req", "user_us")):
            ratios = [x[metric] / y[metric] for x, y in rounds if y[metric]]
            if not ratios:
                continue
            print("- %s P%d %s, %s: **%.2fx** (%s)" % (
                test.upper(), pipeline, "random %d" % keyspace if keyspace else "one key",
                what, statistics.median(ratios), ", ".join("%.2f" % r for r in ratios)))
    print()


if __name__ == "__main__":
    main()
