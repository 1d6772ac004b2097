#!/usr/bin/env python3
"""Cluster benchmark: respite vs predixy in front of a Redis Cluster, side by side in one run.

    python3 benches/cluster.py                 # 5 interleaved rounds
    python3 benches/cluster.py --rounds 1 --quick
    python3 benches/cluster.py --requests 500000
    python3 benches/cluster.py --replicas 0    # three masters, no replicas

Starts its own Redis Cluster (six redis-server processes on loopback: three masters, one
replica each; --replicas 0 for three masters only), one standalone redis-server, and three
targets on free loopback ports:

- respite-cluster: respite (release build, one thread, the default) with
  `[upstream] mode = "cluster"`, seeded with one node;
- predixy: the C++ multiplexing proxy (ClusterServerPool, one worker thread, reads from
  masters), from ../shared/bin/predixy or $PREDIXY;
- respite-standalone: the same respite config in front of the one standalone redis-server,
  the baseline of what cluster mode costs.

Pre-fills each target's keyspace (redis-benchmark SET -P 16 -n 500000 -r 100000), then runs
redis-benchmark (50 clients; SET then GET; pipeline 1 and 16; -r 100000 random keys, so a
pipeline of 16 hits all three masters; 100-byte values) against each, interleaving the
targets within every round (rotating their order) so that machine noise hits them alike.
redis-benchmark exits on the first error reply, so a run that finishes had none. Reports the
median over rounds of throughput, p50 and p99 latency, the CPU time the proxy process spent
per request (utime + stime from /proc, all threads), the CPU time of the Redis masters (the
three cluster masters, or the standalone server) per request, and the ratios
respite-cluster / predixy and respite-cluster / respite-standalone. Prints Markdown tables.

Before measuring it checks respite through the cluster: SET/GET, an MGET across slots, and
that keys written through it landed on every master.

Needs redis-server, redis-cli and redis-benchmark on PATH (apt-get install redis-server).
Everything it starts is stopped and its temporary directory removed on exit, error or Ctrl-C.
"""

import argparse
import csv
import io
import os
import platform
import random
import re
import shlex
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
KEYSPACE = 100_000
VALUE_SIZE = 100
PASSWORD = "pbench"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def cluster_ports(n):
    """n ports below 30000 whose cluster bus port (port + 10000) is free too. Taken from
    20000-22767 so the bus ports stay below Linux's ephemeral range (32768 up)."""
    ports = []
    start = random.randrange(20000, 22000)
    for port in range(start, 22768):
        if port_free(port) and port_free(port + 10000):
            ports.append(port)
            if len(ports) == n:
                return ports
    raise SystemExit("no %d free cluster ports (with port + 10000) in %d-22767" % (n, start))


def wait_port(port, proc, what, seconds=15):
    for _ in range(int(seconds / 0.05)):
        if proc.poll() is not None:
            raise SystemExit("%s exited early (status %s)" % (what, proc.returncode))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("%s did not start listening on %d" % (what, port))


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cli(port, *args, auth=None, check=True, timeout=10):
    cmd = ["redis-cli", "-h", "127.0.0.1", "-p", str(port)]
    if auth:
        cmd += ["--no-auth-warning", "-a", auth]
    r = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise SystemExit("redis-cli %s failed: %s%s" % (shlex.join(cmd[1:] + list(args)),
                                                      r.stdout, r.stderr))
    return r.stdout.strip()


def bench_args(port, test, pipeline, requests, auth):
    args = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(CLIENTS),
            "-n", str(requests), "-P", str(pipeline), "-r", str(KEYSPACE), "-d", str(VALUE_SIZE),
            "-t", test, "--csv"]
    if auth:
        args += ["-a", auth]
    return args


def bench(name, port, test, pipeline, requests, pid, auth, redis_pids):
    args = bench_args(port, test, pipeline, requests, auth)
    before = cpu_seconds(pid)
    redis_before = sum(cpu_seconds(p) for p in redis_pids)
    # A proxy that stops answering would hang redis-benchmark for ever: give up long after
    # even a slow run (1,000 req/s) would have ended.
    timeout = 60 + requests / 1000
    try:
        run = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit("redis-benchmark against %s (%s P%d) did not finish in %.0f s: "
                         "hung?\n  %s" % (name, test, pipeline, timeout, shlex.join(args)))
    cpu = cpu_seconds(pid) - before
    redis_cpu = sum(cpu_seconds(p) for p in redis_pids) - redis_before
    # redis-benchmark (7.x) exits at the first error reply, with status 1 and the error.
    if run.returncode != 0:
        raise SystemExit("redis-benchmark against %s (%s P%d) failed (status %d):\n  %s\n%s%s"
                         % (name, test, pipeline, run.returncode, shlex.join(args),
                            run.stdout, run.stderr))
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",...
    rows = list(csv.DictReader(io.StringIO(run.stdout)))
    if not rows or "p99_latency_ms" not in rows[0]:
        raise SystemExit("redis-benchmark printed no CSV row for %s (%s P%d):\n%s%s"
                         % (name, test, pipeline, run.stdout, run.stderr))
    r = rows[0]
    return {"rps": float(r["rps"]), "p50": float(r["p50_latency_ms"]),
            "p99": float(r["p99_latency_ms"]),
            "cpu_us": cpu / requests * 1e6, "redis_cpu_us": redis_cpu / requests * 1e6}


class Procs:
    """Everything started, stopped in reverse order on exit."""

    def __init__(self):
        self.procs = []

    def start(self, args, what, log=None, **kw):
        # Own session: a Ctrl-C reaches this script only, which then stops them in order.
        out = open(log, "w") if log else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(args, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                    start_new_session=True, **kw)
        finally:
            if log:
                out.close()
        self.procs.append((what, proc))
        return proc

    def stop(self):
        # One at a time, last started first: the proxies go before the Redis behind them, so
        # their logs show no upstream errors of the shutdown.
        while self.procs:
            what, p = self.procs.pop()
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                print("%s (pid %d) ignored SIGTERM for 10 s: killed" % (what, p.pid),
                      file=sys.stderr)
                p.kill()
                p.wait()


def start_cluster(procs, tmp, replicas):
    nodes_wanted = 3 * (1 + replicas)
    ports = cluster_ports(nodes_wanted)
    nodes = []
    for port in ports:
        d = os.path.join(tmp, "node-%d" % port)
        os.mkdir(d)
        proc = procs.start(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", os.path.join(d, "nodes.conf"),
             "--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no",
             "--repl-diskless-sync-delay", "0", "--save", "", "--appendonly", "no",
             "--dir", d], "redis-server :%d" % port)
        nodes.append((port, proc))
    for port, proc in nodes:
        wait_port(port, proc, "redis-server :%d" % port)
    r = subprocess.run(["redis-cli", "--cluster", "create"] +
                       ["127.0.0.1:%d" % p for p in ports] +
                       ["--cluster-replicas", str(replicas), "--cluster-yes"],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise SystemExit("redis-cli --cluster create failed:\n%s%s" % (r.stdout, r.stderr))
    # Ready: every node says cluster_state:ok with all slots, knows every node, and every
    # replica has finished its sync (so no full sync runs during the measurements).
    deadline = time.time() + 60
    while True:
        ready = True
        for port, _ in nodes:
            info = cli(port, "CLUSTER", "INFO")
            if "cluster_state:ok" not in info or "cluster_slots_assigned:16384" not in info \
                    or "cluster_known_nodes:%d" % nodes_wanted not in info:
                ready = False
                break
            repl = cli(port, "INFO", "replication")
            if "role:slave" in repl and "master_link_status:up" not in repl:
                ready = False
                break
        if ready:
            break
        if time.time() > deadline:
            raise SystemExit("the cluster did not become ready in 60 s")
        time.sleep(0.2)
    masters = []
    for line in cli(ports[0], "CLUSTER", "NODES").splitlines():
        f = line.split()
        if "master" in f[2].split(",") and len(f) > 8:
            port = int(f[1].split("@")[0].rsplit(":", 1)[1])
            masters.append(port)
    if len(masters) != 3:
        raise SystemExit("expected 3 masters, CLUSTER NODES says %s" % masters)
    pids = dict((port, proc.pid) for port, proc in nodes)
    return ports, sorted(masters), [pids[p] for p in sorted(masters)]


def start_respite(procs, tmp, upstream):
    port = free_port()
    path = os.path.join(tmp, "respite-%d.toml" % port)
    with open(path, "w") as f:
        f.write('[server]\nlisten = "127.0.0.1:%d"\n\n[upstream]\n%s\n\n'
                '[[tenants]]\nid = "bench"\npassword = "%s"\n' % (port, upstream, PASSWORD))
    log = os.path.join(tmp, "respite-%d.log" % port)
    proc = procs.start([os.path.join(ROOT, "target", "release", "respite"), "--config", path],
                       "respite :%d" % port, log=log, env={**os.environ, "RUST_LOG": "warn"})
    try:
        wait_port(port, proc, "respite (%s)" % path)
    except SystemExit:
        print(tail(log), file=sys.stderr)
        raise
    return port, proc.pid, log


# Log lines every run has: redis-benchmark asks for CONFIG GET save/appendonly (a tenant may
# not), respite's note about RESTORE at start, predixy's goodbye.
ROUTINE = re.compile(r"command=config\|get|RESTORE is refused|predixy will quit")


def tail(path, lines=20, routine=True):
    """The last lines of a log, without colours (and without the routine lines)."""
    try:
        with open(path, errors="replace") as f:
            text = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in f]
    except OSError:
        return ""
    if not routine:
        text = [line for line in text if not ROUTINE.search(line)]
    return "".join(text[-lines:])


def prefill(name, port, auth):
    """SET most of the keyspace (1 - e^-5: 99.3% of it) so that GETs find 100-byte values."""
    args = bench_args(port, "set", 16, 5 * KEYSPACE, auth)
    run = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise SystemExit("pre-filling %s failed:\n  %s\n%s%s" % (
            name, shlex.join(args), run.stdout, run.stderr))


def check_respite(port, masters):
    """respite answers through the cluster, and its keys spread over every master."""
    def expect(got, want, what):
        if got != want:
            raise SystemExit("respite-cluster sanity check: %s gave %r, expected %r "
                             "(redis-cli -p %d -a %s ...)" % (what, got, want, port, PASSWORD))

    expect(cli(port, "SET", "x", "1", auth=PASSWORD), "OK", "SET x 1")
    expect(cli(port, "GET", "x", auth=PASSWORD), "1", "GET x")
    keys = ["sanity:%d" % i for i in range(30)]
    for i, k in enumerate(keys):
        expect(cli(port, "SET", k, "v%d" % i, auth=PASSWORD), "OK", "SET %s" % k)
    expect(cli(port, "MGET", *keys, auth=PASSWORD).splitlines(),
           ["v%d" % i for i in range(len(keys))], "MGET of 30 keys across slots")
    expect(cli(port, "DEL", *keys, "x", auth=PASSWORD), str(len(keys) + 1),
           "DEL of 31 keys across slots")
    # A SET through respite lands on the key's master, under the tenant's prefix.
    for i, k in enumerate(keys[:10]):
        cli(port, "SET", k, "v%d" % i, auth=PASSWORD)
    counts = [int(cli(m, "DBSIZE")) for m in masters]
    if min(counts) == 0 or sum(counts) != 10:
        raise SystemExit("respite-cluster sanity check: 10 keys SET through respite gave "
                         "DBSIZE %s on the masters %s" % (counts, masters))
    expect(cli(masters[0], "-c", "GET", "tenant:bench:" + keys[0]), "v0",
           "the cluster's own GET tenant:bench:%s" % keys[0])
    expect(cli(port, "DEL", *keys[:10], auth=PASSWORD), "10", "DEL of 10 keys")
    return counts


def main():
    ap = argparse.ArgumentParser(
        description="respite (cluster mode) vs predixy vs respite (standalone), interleaved")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true",
                    help="a quarter of the requests per run (a smoke run)")
    ap.add_argument("--requests", type=int,
                    help="requests per run, every test (default 200000 at pipeline 1, 1000000 "
                         "at pipeline 16; --quick quarters the defaults)")
    ap.add_argument("--replicas", type=int, choices=(0, 1), default=1,
                    help="replicas per master (default 1: six nodes; 0: three masters only, "
                         "no replication work on the machine)")
    ap.add_argument("--no-build", action="store_true",
                    help="use target/release/respite as it is (no cargo build --release)")
    opts = ap.parse_args()
    for tool in ("redis-server", "redis-cli", "redis-benchmark"):
        if not shutil.which(tool):
            raise SystemExit("%s not found: apt-get install redis-server" % tool)
    predixy = os.environ.get("PREDIXY", os.path.join(ROOT, "..", "shared", "bin", "predixy"))
    if not os.access(predixy, os.X_OK):
        raise SystemExit("predixy not found at %s (set $PREDIXY)" % predixy)
    if not opts.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)

    # Ctrl-C, SIGTERM and SIGHUP end the run through the cleanup below (SIGINT set here too:
    # a shell without job control starts a background job with SIGINT ignored).
    def interrupted(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)

    tmp = tempfile.mkdtemp(prefix="respite-cluster-bench-")
    procs = Procs()
    results = {}
    clog = slog = plog = None
    try:
        ports, masters, master_pids = start_cluster(procs, tmp, opts.replicas)
        print("cluster: nodes %s, masters %s" % (ports, masters), file=sys.stderr)

        rport = free_port()
        redis = procs.start(["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", tmp],
                            "redis-server :%d" % rport)
        wait_port(rport, redis, "redis-server :%d" % rport)

        # The same respite config but for the upstream; cluster mode gets one seed node.
        cport, cpid, clog = start_respite(
            procs, tmp, 'mode = "cluster"\nurl = "redis://127.0.0.1:%d"' % ports[0])
        sport, spid, slog = start_respite(
            procs, tmp, 'mode = "standalone"\nurl = "redis://127.0.0.1:%d"' % rport)

        xport = free_port()
        conf = os.path.join(tmp, "predixy.conf")
        with open(conf, "w") as f:
            f.write("Name bench\nBind 127.0.0.1:%d\nWorkerThreads 1\nClientTimeout 300\n"
                    "LogVerbSample 0\nLogDebugSample 0\nLogInfoSample 0\n"
                    "LogNoticeSample 0\nLogWarnSample 1\nLogErrorSample 1\n"
                    "Authority {\n Auth {\n  Mode write\n }\n}\n"
                    "ClusterServerPool {\n MasterReadPriority 100\n RefreshInterval 1\n"
                    " Servers {\n%s }\n}\n" % (xport, "".join(
                        "  + 127.0.0.1:%d\n" % p for p in ports)))
        plog = os.path.join(tmp, "predixy.log")
        pred = procs.start([predixy, conf], "predixy :%d" % xport, log=plog)
        wait_port(xport, pred, "predixy")

        counts = check_respite(cport, masters)
        print("sanity: respite-cluster SET/GET/MGET/DEL fine; 10 keys spread %s over the "
              "masters" % counts, file=sys.stderr)
        # predixy is up once it has read the slot map: wait for a SET/GET through it.
        deadline = time.time() + 15
        while cli(xport, "SET", "x", "1", check=False) != "OK" \
                or cli(xport, "GET", "x", check=False) != "1":
            if time.time() > deadline:
                raise SystemExit("predixy does not answer SET/GET through the cluster")
            time.sleep(0.2)
        cli(xport, "DEL", "x")
        expect_standalone = cli(sport, "SET", "x", "1", auth=PASSWORD)
        if expect_standalone != "OK" or cli(sport, "GET", "x", auth=PASSWORD) != "1":
            raise SystemExit("respite-standalone does not answer SET/GET")
        cli(sport, "DEL", "x", auth=PASSWORD)

        # (name, port, proxy pid, password, pids of the Redis masters behind it)
        targets = [("respite-cluster", cport, cpid, PASSWORD, master_pids),
                   ("predixy", xport, pred.pid, None, master_pids),
                   ("respite-standalone", sport, spid, PASSWORD, [redis.pid])]
        for name, port, _, auth, _ in targets:
            prefill(name, port, auth)
        # SET before GET in each pipeline depth; GETs find the pre-filled values.
        cases = [(t, p) for p in (1, 16) for t in ("set", "get")]
        scale = 0.25 if opts.quick else 1.0
        for rnd in range(opts.rounds):
            for case in cases:
                test, pipeline = case
                n = opts.requests or int((200_000 if pipeline == 1 else 1_000_000) * scale)
                # Rotate the order every round so no target always runs first.
                k = rnd % len(targets)
                for name, port, pid, auth, rpids in targets[k:] + targets[:k]:
                    r = bench(name, port, test, pipeline, n, pid, auth, rpids)
                    results.setdefault((name,) + case, []).append(r)
                    print("round %d %-18s %-3s P%-2d %9.0f rps  p50 %.3f ms  p99 %.3f ms  "
                          "%.1f us proxy cpu/req  %.1f us redis cpu/req" % (
                              rnd + 1, name, test.upper(), pipeline, r["rps"], r["p50"],
                              r["p99"], r["cpu_us"], r["redis_cpu_us"]), file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        raise SystemExit(130)
    finally:
        procs.stop()
        # What the proxies logged (respite at RUST_LOG=warn, predixy warnings and errors),
        # but for the lines every run has.
        for what, log in (("respite-cluster", clog),
                          ("respite-standalone", slog),
                          ("predixy", plog)):
            text = tail(log, routine=False) if log else ""
            if text.strip():
                print("%s logged (last lines):\n%s" % (what, text), file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: {m: statistics.median(r[m] for r in v)
               for m in ("rps", "p50", "p99", "cpu_us", "redis_cpu_us")}
           for k, v in results.items()}
    head = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip()
    print("\nCommand: %s" % shlex.join(["python3", os.path.relpath(sys.argv[0], ROOT)]
                                       + sys.argv[1:]))
    print("Machine: %s, %d cores, %s; redis %s; respite %s; %d round(s), medians; "
          "%d clients, -r %d random keys, %d-byte values; %s requests per run." % (
              platform.machine(), os.cpu_count(), platform.platform(terse=True),
              subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
              .stdout.split()[2].split("=")[1], head, opts.rounds, CLIENTS, KEYSPACE,
              VALUE_SIZE, opts.requests or ("%d at P1, %d at P16" % (
                  int(200_000 * scale), int(1_000_000 * scale)))))
    print("Cluster: 3 masters%s on loopback; respite threads = 1, predixy WorkerThreads 1. "
          "Redis CPU: the 3 masters (cluster) or the one redis-server. Keyspaces pre-filled "
          "(SET -P 16 -n %d); SET before GET." % (
              " + 3 replicas" if opts.replicas else " (no replicas)", 5 * KEYSPACE))
    print("redis-benchmark (-a for respite only): %s\n" % shlex.join(
        bench_args("PORT", "set|get", "1|16", "N", PASSWORD)))
    names = [t[0] for t in targets]
    print("| test | pipeline | target | req/s | p50 ms | p99 ms | proxy CPU µs/req | "
          "Redis CPU µs/req |")
    print("|---" * 8 + "|")
    for case in cases:
        for name in names:
            m = med[(name,) + case]
            print("| %s | %d | %s | %.0f | %.3f | %.3f | %.1f | %.1f |" % (
                case[0].upper(), case[1], name, m["rps"], m["p50"], m["p99"], m["cpu_us"],
                m["redis_cpu_us"]))
    print("\nRatios of medians, respite-cluster over each (req/s: higher is better for "
          "respite-cluster; CPU µs/req and p99: lower is):\n")
    print("| test | pipeline | req/s vs predixy | req/s vs standalone | CPU/req vs predixy | "
          "CPU/req vs standalone | p99 vs predixy | p99 vs standalone |")
    print("|---" * 8 + "|")
    for case in cases:
        c = med[("respite-cluster",) + case]
        p = med[("predixy",) + case]
        s = med[("respite-standalone",) + case]
        print("| %s | %d | %.2fx | %.2fx | %.2fx | %.2fx | %.2fx | %.2fx |" % (
            case[0].upper(), case[1], c["rps"] / p["rps"], c["rps"] / s["rps"],
            c["cpu_us"] / p["cpu_us"], c["cpu_us"] / s["cpu_us"],
            c["p99"] / p["p99"], c["p99"] / s["p99"]))


if __name__ == "__main__":
    main()
