#!/usr/bin/env bash
# The whole check, as CI runs it: formatting, lints (warnings are errors), the command
# table's freshness, and every test (they start their own redis-server on free ports).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ensure-redis.sh
. scripts/ensure-queues.sh
. scripts/ensure-promtool.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
if command -v python3 >/dev/null 2>&1; then
  echo "== command table matches redis-server"
  python3 scripts/gen-command-table.py --check
fi
echo "== alerting rules: promtool check rules, promtool test rules"
promtool check rules config/prometheus-alerts.yml
promtool test rules config/prometheus-alerts.test.yml
echo "== deploy/kubernetes: Kubernetes' API schemas (kubernetes-validate --strict, 1.29: native sidecars)"
# In a venv under target/ (PyPI's kubernetes-validate carries the schemas); the configs inside
# are checked by tests/suite/deploy.rs.
venv=target/kubernetes-validate
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate==1.37.0
fi
"$venv/bin/kubernetes-validate" --strict --quiet -k 1.29.0 deploy/kubernetes/*.yaml
echo "== cargo test"
cargo test --all-targets
