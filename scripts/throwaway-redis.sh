# Sourced by run.sh and release-pgo.sh. `throwaway_redis PORT` starts a redis-server on
# 127.0.0.1:PORT with no persistence, in a new directory `$dir` (its pid in `$redis_pid`),
# and returns once it answers. The caller's EXIT trap, set before the call, stops it and
# removes `$dir`.
throwaway_redis() {
  dir="$(mktemp -d)"
  redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
    --daemonize no >"$dir/redis.log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 100); do
    redis-cli -p "$1" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "redis-server did not answer on port $1: $(cat "$dir/redis.log")" >&2
  return 1
}
