#!/usr/bin/env bash
# Runs respite with config/respite.example.toml in front of a throwaway local Redis
# (no persistence, removed on exit). Then, in another terminal:
#   redis-cli -p 6380 --user acme --pass acme-secret --no-auth-warning
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ensure-redis.sh
. scripts/throwaway-redis.sh

port="${REDIS_PORT:-6399}"
trap 'kill "${redis_pid:-}" 2>/dev/null; wait 2>/dev/null; rm -rf "${dir:-}"' EXIT
throwaway_redis "$port"
echo "== throwaway Redis on 127.0.0.1:$port (pid $redis_pid)"
echo "== respite on 127.0.0.1:6380; try: redis-cli -p 6380 --user acme --pass acme-secret"
cargo run --release -- --config config/respite.example.toml --upstream "redis://127.0.0.1:$port" "$@"
