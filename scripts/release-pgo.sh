#!/usr/bin/env bash
# Builds respite's release binary with profile-guided optimisation, into target/pgo/respite:
#
#   1. a build that records which code runs (-Cprofile-generate);
#   2. that build, with quotas and metrics on, serves redis-benchmark's commands (GET, SET,
#      INCR, lists, sets, hashes, MSET; pipelines 1 and 16) in front of a throwaway Redis;
#   3. LLVM merges what it recorded, and a second build lays the hot code out together
#      (-Cprofile-use) and keeps the rare paths out of its way.
#
# Why: a request passes through more code than the CPU's 32 KiB instruction cache holds, so
# the plain build misses it about 70 times per request at pipeline 16 and 330 times at
# pipeline 1 (callgrind --cache-sim). This build misses it 8 and 60 times, and runs 20% fewer
# instructions; BENCHMARKS.md has the throughput and CPU figures. The code is the same: only
# the optimiser's choices differ. The profile is made anew on every run, from the code as it
# is, so it never goes stale.
#
# Needs rustup's llvm-tools (installed when missing), redis-server and redis-benchmark.
# Takes two release builds (about 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ensure-redis.sh
. scripts/throwaway-redis.sh

sysroot="$(rustc --print sysroot)"
profdata="$(find "$sysroot" -name llvm-profdata -type f 2>/dev/null | head -1)"
if [ -z "$profdata" ]; then
  echo "== rustup component add llvm-tools"
  rustup component add llvm-tools
  profdata="$(find "$sysroot" -name llvm-profdata -type f | head -1)"
fi

out="$PWD/target/pgo"
rm -rf "$out/profiles"
mkdir -p "$out/profiles"

echo "== 1/3: the recording build"
RUSTFLAGS="-Cprofile-generate=$out/profiles" \
  cargo build --release --target-dir "$out/build-generate"

echo "== 2/3: training, against a throwaway Redis"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
redis_port="$(free_port)"
port="$(free_port)"
trap 'kill "${redis_pid:-}" 2>/dev/null; wait 2>/dev/null; rm -rf "${dir:-}"' EXIT
throwaway_redis "$redis_port"
cat >"$dir/respite.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
[upstream]
url = "redis://127.0.0.1:$redis_port"
[defaults]
quota_bytes = 1073741824
[[tenants]]
id = "train"
password = "train-secret"
EOF
RUST_LOG=warn "$out/build-generate/release/respite" --config "$dir/respite.toml" &
respite_pid=$!
trap 'kill "$respite_pid" "${redis_pid:-}" 2>/dev/null; wait 2>/dev/null; rm -rf "${dir:-}"' EXIT
for _ in $(seq 100); do
  redis-cli -p "$port" --user train --pass train-secret --no-auth-warning ping >/dev/null 2>&1 && break
  sleep 0.1
done
redis-cli -p "$port" --user train --pass train-secret --no-auth-warning ping | grep -q PONG
for pipeline in 1 16; do
  redis-benchmark -p "$port" -a train-secret -c 50 -n 100000 -P "$pipeline" -q \
    -t get,set,incr,lpush,rpush,lpop,rpop,sadd,hset,spop,mset >/dev/null
done
# A clean exit writes the profile.
kill -TERM "$respite_pid"
wait "$respite_pid" || true

echo "== 3/3: the optimised build"
"$profdata" merge -o "$out/respite.profdata" "$out/profiles"
RUSTFLAGS="-Cprofile-use=$out/respite.profdata" \
  cargo build --release --target-dir "$out/build"
cp "$out/build/release/respite" "$out/respite"
echo "== built $out/respite"
