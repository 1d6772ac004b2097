# Sourced by test.sh: the job-queue tests (tests/suite/queues.rs) run BullMQ on Node.js and
# RQ on Python; they install the packages themselves (npm ci, a venv under target/), but
# need node, npm and python3 with venv, installed from Debian's packages when missing.
missing=""
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing="$missing python3 python3-venv"
if [ -n "$missing" ]; then
  echo "== installing$missing with apt-get (for tests/suite/queues.rs)"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
echo "node $(node --version), $(python3 --version)"
