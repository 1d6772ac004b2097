# Sourced by run.sh and test.sh: makes sure redis-server (and redis-cli, redis-benchmark)
# are on PATH, installing Debian's redis-server package when they are missing.
if ! command -v redis-server >/dev/null 2>&1; then
  echo "== redis-server not found: installing it with apt-get"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
redis-server --version
