#!/usr/bin/env bash
# Build every image docker-compose.yml needs on this machine, with no registry:
#
#   scripts/compose-images.sh           # then: docker compose -f docker-compose.yml \
#                                       #        -f docker-compose.offline.yml up -d --wait
#
# - helical-runner:0.1.0-cpu, helical-base:bookworm   scripts/docker-image.sh (debootstrap base)
# - helical-airflow:local                             docker/airflow/Dockerfile (the lock, non-root)
# - helical-docker-proxy:local                        docker/socket-proxy/Dockerfile
# - helical-offline/<service>:bookworm                docker/offline/Dockerfile, one target each:
#   stand-ins from Debian packages for postgres, redis, prometheus, pushgateway,
#   the postgres/redis exporters, the StatsD exporter and cAdvisor.
# Our own two Dockerfiles start FROM python:3.11 slim; here they are built on the
# debootstrap base instead (the FROM line swapped, the machine's CA bundle given to
# pip), every other line as in the repo. Grafana has no Debian package: the offline
# run leaves it out (docs/local-stack.md). The engine's data root
# (/var/cache/helical-workflow/docker) keeps the layers: a second run takes seconds.
# Prints one progress line per image. Starts the private engine when DOCKER_HOST is unset.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="${HELICAL_BASE_IMAGE:-helical-base:bookworm}"
CA="${HELICAL_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
STANDINS=(postgres redis prometheus pushgateway postgres-exporter redis-exporter statsd-exporter cadvisor)

log() { printf '[compose-images] %s\n' "$*" >&2; }

[[ -n "${DOCKER_HOST:-}" ]] || eval "$("$ROOT/scripts/docker-engine.sh" start)"
export DOCKER_HOST

build() {  # build TAG CONTEXT [docker build args...]
  local tag="$1" ctx="$2"; shift 2
  local t0=$SECONDS out
  out="$(DOCKER_BUILDKIT=0 docker build -t "$tag" "$@" "$ctx" 2>&1)" \
    || { printf '%s\n' "$out" | tail -30 >&2; log "FAILED: $tag"; exit 1; }
  local cached=""
  grep -q -- '---> Running in' <<<"$out" || cached=" (cached)"
  log "$tag ready in $((SECONDS - t0)) s$cached"
}

# Our Dockerfile with its python base swapped for the debootstrap base.
derive() {
  local src="$1"
  grep -qE '^FROM python:3\.11\.[0-9]+-slim-bookworm$' "$src" \
    || { log "$src: no 'FROM python:3.11.x-slim-bookworm' line to swap"; exit 1; }
  sed -E "s|^FROM python:3\.11\.[0-9]+-slim-bookworm$|FROM $BASE\nCOPY ca.crt /tmp/ca.crt\nENV PIP_CERT=/tmp/ca.crt|" "$src"
}

start=$SECONDS
"$ROOT/scripts/docker-image.sh"   # base + runner image (cached after the first build)
log "runner image ready"

ctx="$(mktemp -d)"; trap 'rm -rf "$ctx"' EXIT

mkdir -p "$ctx/offline"
cp "$ROOT/docker/offline/Dockerfile" "$ROOT/docker/offline/postgres-entrypoint.sh" \
   "$ROOT/docker/offline/cadvisor_standin.py" "$ROOT/stack/statsd_receiver.py" "$ctx/offline/"
for target in "${STANDINS[@]}"; do
  build "helical-offline/$target:bookworm" "$ctx/offline" --target "$target" --build-arg "BASE=$BASE"
done

mkdir -p "$ctx/airflow/requirements" "$ctx/airflow/docker/airflow"
cp "$ROOT/requirements/airflow.lock" "$ctx/airflow/requirements/"
cp -r "$ROOT/dags" "$ctx/airflow/dags"
find "$ctx/airflow/dags" -name __pycache__ -prune -exec rm -rf {} +
mkdir -p "$ctx/airflow/runners/helical-runner/src/helical_runner"
cp -r "$ROOT/runners/helical-runner/src/helical_runner/profiles" "$ctx/airflow/runners/helical-runner/src/helical_runner/"
cp "$CA" "$ctx/airflow/ca.crt"
derive "$ROOT/docker/airflow/Dockerfile" > "$ctx/airflow/Dockerfile"
build helical-airflow:local "$ctx/airflow"

mkdir -p "$ctx/proxy/docker/socket-proxy" "$ctx/proxy/docker/authz"
cp "$ROOT/docker/socket-proxy/socket_proxy.py" "$ctx/proxy/docker/socket-proxy/"
cp "$ROOT/docker/authz/runner-only.rego" "$ctx/proxy/docker/authz/"
cp "$CA" "$ctx/proxy/ca.crt"
derive "$ROOT/docker/socket-proxy/Dockerfile" > "$ctx/proxy/Dockerfile"
build helical-docker-proxy:local "$ctx/proxy"

log "all compose images ready in $((SECONDS - start)) s"
# No `docker image prune`: the runner build stage is an untagged image, and
# pruning it throws away the build cache (every later build would take minutes).
