#!/usr/bin/env bash
# Airflow with its web UI on localhost (LocalExecutor, SQLite), to run the
# helical_embedding DAG by hand:
#
#   scripts/airflow-ui.sh            # http://127.0.0.1:8080, Ctrl-C stops everything
#   AIRFLOW_UI_PORT=8091 scripts/airflow-ui.sh
#
# Same environment as scripts/demo.sh (it prepares it). Log in as `admin`;
# Airflow writes the generated password to
# .airflow/simple_auth_manager_passwords.json.generated (readable by you only).
#
# The components run one by one instead of `airflow standalone`: standalone
# starts the scheduler's and triggerer's log servers, which bind every network
# interface (Airflow has no host setting for them). Here everything listens on
# 127.0.0.1 and the UI reads task logs straight from .airflow/logs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PORT="${AIRFLOW_UI_PORT:-8080}"

scripts/demo.sh --prepare
# shellcheck source=/dev/null
source "$ROOT/.airflow/env.sh"
# What Airflow writes from here on (password file, logs) is private to this user.
umask 077
chmod 700 "$AIRFLOW_HOME"
chmod 600 "$AIRFLOW_HOME"/airflow.db
# One signing secret for the components' internal API tokens, kept 0600.
[[ -s "$AIRFLOW_HOME/jwt_secret" ]] || head -c 48 /dev/urandom | base64 -w0 > "$AIRFLOW_HOME/jwt_secret"
AIRFLOW__API_AUTH__JWT_SECRET="$(cat "$AIRFLOW_HOME/jwt_secret")"
export AIRFLOW__API_AUTH__JWT_SECRET
# The task runners reach the execution API on the same non-default port.
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT="$PORT"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$PORT/execution/"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin"

# Each component in its own process group (job control), stopped as a group:
# Ctrl-C or SIGTERM asks every group to stop, gives them 30 s, then SIGKILLs
# what is left (the scheduler can wait forever on a LocalExecutor worker).
set -m
stop() {
  trap - INT TERM EXIT
  local groups group
  groups="$(jobs -p)"
  for group in $groups; do kill -TERM -- "-$group" 2>/dev/null || true; done
  for _ in {1..30}; do
    [[ -z "$(jobs -pr)" ]] && break
    sleep 1
  done
  for group in $groups; do kill -KILL -- "-$group" 2>/dev/null || true; done
}
trap stop INT TERM EXIT
airflow api-server --host 127.0.0.1 --port "$PORT" --workers 1 &
airflow scheduler --skip-serve-logs &
airflow dag-processor &
airflow triggerer --skip-serve-logs &
echo "[airflow-ui] http://127.0.0.1:$PORT  (user admin, password in .airflow/simple_auth_manager_passwords.json.generated)"
echo "[airflow-ui] trigger 'helical_embedding'; the default params embed runs/demo-data with geneformer"
# The first component to exit ends the session (and the trap stops the rest).
wait -n
