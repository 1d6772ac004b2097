#!/usr/bin/env python3
"""Generate src/command/table.rs from a real redis-server's COMMAND INFO.

respite never hand-writes where a command's keys are: Redis 7 describes that itself in each
command's key specifications (begin_search + find_keys). This script starts a throwaway
redis-server (from PATH) on a free port, asks it for `COMMAND` (name, arity, flags, ACL
categories, key specs and subcommands of every command) and writes the table as Rust.

    python3 scripts/gen-command-table.py            # rewrite src/command/table.rs
    python3 scripts/gen-command-table.py --check    # exit 1 if the committed table differs

Commit the output together with any change to this script.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time

OUT = os.path.join(os.path.dirname(__file__), "..", "src", "command", "table.rs")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Resp:
    """The smallest RESP2 client that reads what COMMAND returns."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buf = self.sock.makefile("rb")

    def call(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a.encode() if isinstance(a, str) else a
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(out)
        return self.read()

    def read(self):
        line = self.buf.readline()[:-2]
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.buf.read(n + 2)[:-2]
            return data.decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError("unexpected reply type %r" % kind)


def pairs(flat):
    """COMMAND returns maps as flat [k, v, k, v] arrays in RESP2."""
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


CMD_FLAGS = [
    "write", "readonly", "denyoom", "module", "admin", "pubsub", "noscript", "blocking",
    "loading", "stale", "skip_monitor", "skip_slowlog", "asking", "fast", "no_auth",
    "may_replicate", "sentinel", "only_sentinel", "no_mandatory_keys", "protected",
    "no_async_loading", "no_multi", "movablekeys", "allow_busy",
]
ACL_CATS = [
    "keyspace", "read", "write", "set", "sortedset", "list", "hash", "string", "bitmap",
    "hyperloglog", "geo", "stream", "pubsub", "admin", "fast", "slow", "blocking",
    "dangerous", "connection", "transaction", "scripting",
]
KEY_FLAGS = [
    "RO", "RW", "OW", "RM", "access", "update", "insert", "delete", "not_key",
    "incomplete", "variable_flags",
]


def const(prefix, name):
    return prefix + name.upper()


def bits(names, known, prefix):
    out = []
    for n in names:
        n = n.lstrip("@")
        if n not in known:
            raise SystemExit("unknown flag %r: add it to the script" % n)
        out.append(const(prefix, n))
    return " | ".join(out) if out else "0"


def key_spec(spec):
    spec = pairs(spec)
    bs = pairs(spec["begin_search"])
    fk = pairs(spec["find_keys"])
    if bs["type"] == "index":
        begin = "BeginSearch::Index(%d)" % pairs(bs["spec"])["index"]
    elif bs["type"] == "keyword":
        kw = pairs(bs["spec"])
        begin = 'BeginSearch::Keyword { keyword: b"%s", start_from: %d }' % (
            kw["keyword"].lower(), kw["startfrom"])
    else:
        begin = "BeginSearch::Unknown"
    if fk["type"] == "range":
        r = pairs(fk["spec"])
        find = "FindKeys::Range { last_key: %d, key_step: %d, limit: %d }" % (
            r["lastkey"], r["keystep"], r["limit"])
    elif fk["type"] == "keynum":
        k = pairs(fk["spec"])
        find = "FindKeys::KeyNum { key_num_idx: %d, first_key: %d, key_step: %d }" % (
            k["keynumidx"], k["firstkey"], k["keystep"])
    else:
        find = "FindKeys::Unknown"
    return "KeySpec { flags: %s, begin: %s, find: %s }" % (
        bits(spec["flags"], KEY_FLAGS, "KS_"), begin, find)


def command(info, indent):
    name, arity, flags, _first, _last, _step, acl, _tips, specs, subs = info[:10]
    name = name.lower().split("|")[-1]
    pad = " " * indent
    sub_text = "&[]"
    if subs:
        rows = sorted(subs, key=lambda s: s[0].lower())
        sub_text = "&[\n%s%s]" % ("".join(command(s, indent + 8) for s in rows), pad + "    ")
    spec_text = ", ".join(key_spec(s) for s in specs)
    return (
        '%sCommandSpec {\n%s    name: b"%s",\n%s    arity: %d,\n%s    flags: %s,\n'
        "%s    acl: %s,\n%s    key_specs: &[%s],\n%s    subcommands: %s,\n%s},\n"
    ) % (pad, pad, name, pad, arity, pad, bits(flags, CMD_FLAGS, "CMD_"), pad,
         bits(acl, ACL_CATS, "ACL_"), pad, spec_text, pad, sub_text, pad)


def render(infos, version):
    consts = []
    for prefix, names, ty in (("CMD_", CMD_FLAGS, "u32"), ("ACL_", ACL_CATS, "u32"),
                              ("KS_", KEY_FLAGS, "u16")):
        for i, n in enumerate(names):
            consts.append("pub const %s: %s = 1 << %d;" % (const(prefix, n), ty, i))
    rows = "".join(command(i, 4) for i in sorted(infos, key=lambda c: c[0].lower()))
    return (
        "// @generated by scripts/gen-command-table.py from redis-server %s. Do not edit.\n"
        "//\n"
        "// Every Redis command with its arity, flags, ACL categories and key specifications,\n"
        "// sorted by name (subcommands are found by binary search, commands by a hash index).\n\n"
        "use super::spec::{BeginSearch, CommandSpec, FindKeys, KeySpec};\n\n"
        "%s\n\n"
        "pub static COMMANDS: &[CommandSpec] = &[\n%s];\n"
    ) % (version, "\n".join(consts), rows)


def main():
    check = "--check" in sys.argv
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    conn = Resp(port)
                    conn.call("PING")
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                raise SystemExit("redis-server did not start")
            info = conn.call("INFO", "server")
            version = next(l.split(":")[1] for l in info.splitlines()
                           if l.startswith("redis_version:"))
            text = render(conn.call("COMMAND"), version)
        finally:
            server.terminate()
            server.wait()
    if check:
        with open(OUT) as f:
            committed = f.read()
        made_from = committed.split(" from redis-server ", 1)[1].split(".", 3)
        made_from = ".".join(made_from[:3]).split()[0]
        if made_from != version:
            print("skipped: the table is from redis %s, this redis-server is %s"
                  % (made_from, version))
            return
        if committed != text:
            print("src/command/table.rs is stale: run scripts/gen-command-table.py")
            sys.exit(1)
        print("ok: src/command/table.rs matches redis %s" % version)
        return
    with open(OUT, "w") as f:
        f.write(text)
    print("wrote %s (%d bytes) from redis %s" % (OUT, len(text), version))


if __name__ == "__main__":
    main()
