# Sourced by test.sh: makes sure promtool (Prometheus' rule checker) is on PATH, installing
# Debian's prometheus package when it is missing (its service is not started).
if ! command -v promtool >/dev/null 2>&1; then
  echo "== promtool not found: installing Debian's prometheus package with apt-get"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null
fi
promtool --version 2>&1 | sed -n 1p
