#!/usr/bin/env bash
# Build the CPU runner image on this machine with no container registry:
#
#   scripts/docker-image.sh            # = make image
#
# 1. base image: Debian bookworm (minbase + python3, venv, CA certificates) from
#    `debootstrap`, loaded with `docker import` as helical-base:bookworm. The
#    tarball is cached under $HELICAL_DOCKER_CACHE, so it is built once.
# 2. runner image: `docker build` of runners/helical-runner/Dockerfile on that
#    base. torch 2.13.0 CPU comes from the local wheel folder; pip reaches the
#    package index through the machine's CA bundle (build stage only: the
#    runtime stage copies the venv, never the bundle).
# The engine's data root keeps the layers: a second build is a cache hit.
# Starts the private engine (scripts/docker-engine.sh) when DOCKER_HOST is unset.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${HELICAL_DOCKER_CACHE:-/var/cache/helical-workflow}"
BASE="${HELICAL_BASE_IMAGE:-helical-base:bookworm}"
IMAGE="${HELICAL_RUNNER_IMAGE:-helical-runner:0.1.0-cpu}"
WHEELS="${HELICAL_WHEELS:-/opt/wheels}"
CA="${HELICAL_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
MIRROR="${HELICAL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

log() { printf '[docker-image] %s\n' "$*" >&2; }

[[ -n "${DOCKER_HOST:-}" ]] || eval "$("$ROOT/scripts/docker-engine.sh" start)"
export DOCKER_HOST

base_image() {
  if docker image inspect "$BASE" >/dev/null 2>&1; then
    log "$BASE present"; return
  fi
  local tarball="$CACHE/base-bookworm.tar"
  if [[ ! -s "$tarball" ]]; then
    command -v debootstrap >/dev/null || {
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    }
    local rootfs; rootfs="$(mktemp -d "$CACHE/rootfs.XXXX")"
    log "debootstrap bookworm (minbase) into $rootfs"
    debootstrap --variant=minbase \
      --include=python3,python3-venv,ca-certificates \
      bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
      || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  log "docker import $tarball as $BASE"
  docker import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' "$tarball" "$BASE" >/dev/null
}

# Debian's engine (20.10) has no buildx: no named build contexts, no build
# secrets, and a `# syntax=` line would pull a frontend image from a registry.
# So the build runs on a staged context and a Dockerfile derived from the one in
# the repo (one source of truth), every rewrite checked so a drift fails here.
derive_dockerfile() {
  local src="$ROOT/runners/helical-runner/Dockerfile"
  local want=(
    '^# syntax='
    '^FROM python:3.11.14-slim-bookworm AS build$'
    '^COPY --from=requirements runner.txt runner-constraints.txt /tmp/requirements/$'
    '--index-url https://download.pytorch.org/whl/cpu'
    '^RUN python -m venv /opt/venv$'
  )
  for pattern in "${want[@]}"; do
    grep -qE -- "$pattern" "$src" || { log "Dockerfile changed: no line matching '$pattern'"; exit 1; }
  done
  sed -E \
    -e '/^# syntax=/d' \
    -e "s|^FROM python:3.11.14-slim-bookworm( AS build)?$|FROM $BASE\1|" \
    -e 's|^COPY --from=requirements runner.txt runner-constraints.txt /tmp/requirements/$|COPY requirements/ /tmp/requirements/\nCOPY wheels/ /tmp/wheels/\nCOPY ca.crt /tmp/ca.crt\nENV PIP_CERT=/tmp/ca.crt|' \
    -e 's|--index-url https://download.pytorch.org/whl/cpu|--find-links /tmp/wheels|' \
    -e 's|^RUN python -m venv /opt/venv$|RUN python3 -m venv /opt/venv|' \
    "$src"
}

runner_image() {
  local ctx; ctx="$(mktemp -d)"
  cp -r "$ROOT/runners/helical-runner/pyproject.toml" "$ROOT/runners/helical-runner/src" "$ctx/"
  find "$ctx/src" -name __pycache__ -prune -exec rm -rf {} + -o -name '*.egg-info' -prune -exec rm -rf {} +
  mkdir "$ctx/requirements" "$ctx/wheels"
  cp "$ROOT/requirements/runner.txt" "$ROOT/requirements/runner-constraints.txt" "$ctx/requirements/"
  # only the torch wheel the image pins (the folder may hold others)
  cp "$WHEELS"/torch-2.13.0+cpu-cp311-*.whl "$ctx/wheels/"
  # the CA bundle pip needs to reach the index; only in the build stage (not in the image)
  cp "$CA" "$ctx/ca.crt"
  derive_dockerfile >"$ctx/Dockerfile"
  log "docker build $IMAGE (base $BASE)"
  DOCKER_BUILDKIT=0 docker build -q -t "$IMAGE" "$ctx" >/dev/null \
    || { rm -rf "$ctx"; log "image build failed"; exit 1; }
  rm -rf "$ctx"
}

mkdir -p "$CACHE"
start=$SECONDS
base_image
[[ "${1:-}" == base ]] && exit 0
runner_image
log "built $IMAGE in $((SECONDS - start)) s"
