#!/usr/bin/env bash
# A private Docker engine (Debian's docker.io) for the image build and the
# Docker-backend tests: its own socket, data root and exec root, stopped by pid.
#
#   scripts/docker-engine.sh start    # prints: export DOCKER_HOST=unix://...
#   scripts/docker-engine.sh stop
#   scripts/docker-engine.sh status
#
# HELICAL_DOCKER_STATE (default /var/cache/helical-workflow/docker) holds the
# data root (images and build cache survive a restart, so a second image build
# is quick), the socket and the pid file. Needs root (dockerd does).
set -euo pipefail

STATE="${HELICAL_DOCKER_STATE:-/var/cache/helical-workflow/docker}"
SOCK="$STATE/docker.sock"
PIDFILE="$STATE/dockerd.pid"
LOG="$STATE/dockerd.log"

log() { printf '[docker-engine] %s\n' "$*" >&2; }

running() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

install_engine() {
  command -v dockerd >/dev/null && return
  log "apt-get install docker.io (Debian's engine)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null
  # Debian enables its own daemon on the default socket: ours is private.
  (systemctl stop docker.service docker.socket || service docker stop) >/dev/null 2>&1 || true
}

start() {
  install_engine
  mkdir -p "$STATE/data" "$STATE/exec"
  chmod 0700 "$STATE"
  if ! running; then
    log "starting dockerd (data root $STATE/data)"
    # nofile: this machine's hard limit is lower than dockerd's default for containers.
    # No iptables/bridge changes beyond the engine's own default bridge.
    setsid dockerd \
      --data-root "$STATE/data" \
      --exec-root "$STATE/exec" \
      --pidfile "$PIDFILE" \
      -H "unix://$SOCK" \
      --default-ulimit nofile=4096:4096 \
      --default-runtime runc \
      >>"$LOG" 2>&1 </dev/null &
    local deadline=$((SECONDS + 60))
    until DOCKER_HOST="unix://$SOCK" docker version >/dev/null 2>&1; do
      if ((SECONDS > deadline)); then
        log "dockerd did not answer within 60 s; last log lines:"; tail -20 "$LOG" >&2; exit 1
      fi
      sleep 0.5
    done
  fi
  echo "export DOCKER_HOST=unix://$SOCK"
}

stop() {
  if running; then
    local pid; pid="$(cat "$PIDFILE")"
    log "stopping dockerd (pid $pid)"
    kill "$pid"
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
      ((SECONDS > deadline)) && { kill -9 "$pid" 2>/dev/null || true; break; }
      sleep 0.5
    done
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running (pid $(cat "$PIDFILE"), DOCKER_HOST=unix://$SOCK)"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
