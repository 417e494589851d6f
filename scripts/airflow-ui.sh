#!/usr/bin/env bash
# Airflow with its web UI on localhost (LocalExecutor, SQLite), to run the
# helical_embedding DAG by hand:
#
#   scripts/airflow-ui.sh            # http://127.0.0.1:8080, Ctrl-C stops everything
#   AIRFLOW_UI_PORT=8091 scripts/airflow-ui.sh
#
# Same environment as scripts/demo.sh (it prepares it). Log in as `admin`;
# Airflow writes the generated password to
# .airflow/simple_auth_manager_passwords.json.generated.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PORT="${AIRFLOW_UI_PORT:-8080}"

scripts/demo.sh --prepare
# shellcheck source=/dev/null
source "$ROOT/.airflow/env.sh"
# Loopback only (standalone binds 0.0.0.0 otherwise); the task runners must
# reach the execution API on the same non-default port.
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT="$PORT"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$PORT/execution/"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin"
echo "[airflow-ui] http://127.0.0.1:$PORT  (user admin, password in .airflow/simple_auth_manager_passwords.json.generated)"
echo "[airflow-ui] trigger 'helical_embedding'; the default params embed runs/demo-data with geneformer"
exec airflow standalone
