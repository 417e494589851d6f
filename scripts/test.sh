#!/usr/bin/env bash
# Install what each test group needs, run the groups, print one summary line.
#
#   scripts/test.sh                 # every group
#   scripts/test.sh runner infra    # some groups
#
# Groups: runner (runner venv), workflow (airflow venv), stack (airflow venv +
# Debian servers), infra (tools + checkov venvs, terraform, helm). workflow
# includes the Docker backend's end to end test (marker `docker`: Debian's
# engine, the runner image built on this machine; scripts/docker-image.sh).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONDONTWRITEBYTECODE=1

declare -A ENVS=(
  [runner]="runner system"
  [workflow]="runner airflow tools docker"
  [stack]="runner airflow tools system"
  [infra]="tools checkov"
)
declare -A PYTHON=(
  [runner]=".venvs/runner/bin/python"
  [workflow]=".venvs/airflow/bin/python"
  [stack]=".venvs/airflow/bin/python"
  [infra]=".venvs/tools/bin/python"
)
declare -A PATHS=(
  [runner]="runners/helical-runner/tests"
  [workflow]="tests/workflow"
  [stack]="tests/stack"
  [infra]="tests/infra"
)

[[ $# -gt 0 ]] || set -- runner workflow infra stack
passed=0; failed=0; status=0
for group in "$@"; do
  [[ -n "${ENVS[$group]:-}" ]] || { echo "unknown test group '$group'" >&2; exit 2; }
  if [[ ! -d "${PATHS[$group]}" ]]; then
    echo "test group '$group' has no tests at ${PATHS[$group]}" >&2; status=1; continue
  fi
  scripts/bootstrap.sh ${ENVS[$group]} || { echo "bootstrap for '$group' failed" >&2; status=1; continue; }
  echo "=== test group: $group ==="
  report=".venvs/pytest-$group.txt"
  "${PYTHON[$group]}" -m pytest "${PATHS[$group]}" -p no:cacheprovider -q -rfE 2>&1 | tee "$report"
  rc=${PIPESTATUS[0]}
  # pytest's closing line: "== 12 passed, 1 failed, 2 skipped in 3.2s =="
  line="$(grep -E '(passed|failed|error).* in [0-9.]+s' "$report" | tail -1)"
  p=$(grep -oE '[0-9]+ passed' <<<"$line" | grep -oE '[0-9]+' || echo 0)
  f=$(grep -oE '[0-9]+ (failed|errors?)' <<<"$line" | awk '{s+=$1} END {print s+0}')
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
  # exit 5 = no tests collected: a failure, never a pass
  if [[ $rc -ne 0 ]]; then status=1; echo "test group '$group' failed (pytest exit $rc)" >&2; fi
done
echo "${passed} passed, ${failed} failed"
exit $status
