#!/usr/bin/env bash
# The native local stack: one command each to start, stop and inspect it.
#
#   stack/stack.sh start          # idempotent; prints where each service listens
#   stack/stack.sh status [--json]
#   stack/stack.sh stop           # idempotent; stops every component, then supervisord
#   stack/stack.sh restart postgres   # stop one component, start what is missing
#   stack/stack.sh where          # URLs of the UI, Prometheus, each dashboard, the newest report
#
# Needs `scripts/bootstrap.sh system airflow` (Debian servers + .venvs/airflow);
# `start` runs the system part itself when a server is missing.
# Settings are environment variables, documented in stack/stackctl.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HELICAL_STACK_AIRFLOW_VENV:-$ROOT/.venvs/airflow}"
if [[ "${1:-}" == start ]]; then
  for tool in supervisord prometheus-pushgateway prometheus-process-exporter \
      prometheus-postgres-exporter prometheus-redis-exporter; do
    command -v "$tool" >/dev/null || { "$ROOT/scripts/bootstrap.sh" system; break; }
  done
fi
exec "$VENV/bin/python" "$ROOT/stack/stackctl.py" "$@"
