#!/usr/bin/env bash
# Run terraform against the offline AWS provider mirror on this machine.
#
#   scripts/terraform.sh -chdir=terraform/envs/dev init -backend=false
#   scripts/terraform.sh config        # print the CLI config file path
#
# No registry is reachable here, so terraform must install the AWS provider
# from a filesystem mirror. This script finds that mirror once (or takes
# TF_AWS_PROVIDER_MIRROR), writes a CLI config that points at it plus a shared
# plugin cache (the provider is ~700 MB: one copy for every module, not one
# per `.terraform/`), and runs terraform with TF_CLI_CONFIG_FILE set to it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${HELICAL_TF_HOME:-$ROOT/.tools/terraform}"
CONFIG="$STATE_DIR/terraformrc"
PROVIDER_DIR="registry.terraform.io/hashicorp/aws"

die() { printf 'terraform.sh: error: %s\n' "$*" >&2; exit 2; }

# The mirror root is the directory that holds registry.terraform.io/.
# Cheap, likely places first; a whole-disk search only when they miss.
find_mirror() {
  local candidates=(/opt /usr/local/share /usr/share "$HOME/.terraform.d" "$HOME/.local/share/terraform")
  local hit=""
  for dir in "${candidates[@]}"; do
    [[ -d "$dir" ]] || continue
    hit="$(find "$dir" -path "*/$PROVIDER_DIR/*" -name 'terraform-provider-aws*' 2>/dev/null | head -1)"
    [[ -n "$hit" ]] && break
  done
  if [[ -z "$hit" ]]; then
    hit="$(find / -xdev \( -path /proc -o -path /sys \) -prune -o \
      -path "*/$PROVIDER_DIR/*" -name 'terraform-provider-aws*' -print 2>/dev/null | head -1)"
  fi
  [[ -n "$hit" ]] || return 1
  printf '%s\n' "${hit%%/registry.terraform.io/*}"
}

write_config() {
  local mirror="$1"
  mkdir -p "$STATE_DIR/plugin-cache"
  cat >"$CONFIG.tmp" <<EOF
# Written by scripts/terraform.sh: offline AWS provider from a local mirror.
plugin_cache_dir = "$STATE_DIR/plugin-cache"
provider_installation {
  filesystem_mirror {
    path    = "$mirror"
    include = ["registry.terraform.io/hashicorp/aws"]
  }
}
EOF
  mv "$CONFIG.tmp" "$CONFIG"
}

# Reuse the config while the mirror it names still exists.
ensure_config() {
  local mirror=""
  if [[ -n "${TF_AWS_PROVIDER_MIRROR:-}" ]]; then
    mirror="$TF_AWS_PROVIDER_MIRROR"
    [[ -d "$mirror/$PROVIDER_DIR" ]] || die "TF_AWS_PROVIDER_MIRROR=$mirror has no $PROVIDER_DIR/ inside"
  elif [[ -f "$CONFIG" ]]; then
    mirror="$(sed -n 's/^ *path *= *"\(.*\)"$/\1/p' "$CONFIG")"
    [[ -d "$mirror/$PROVIDER_DIR" ]] || mirror=""
  fi
  if [[ -z "$mirror" ]]; then
    mirror="$(find_mirror)" || die "no AWS provider mirror found (looked for */$PROVIDER_DIR/*/terraform-provider-aws*); set TF_AWS_PROVIDER_MIRROR to the directory that holds registry.terraform.io/"
  fi
  write_config "$mirror"
}

command -v terraform >/dev/null || die "terraform is not on PATH (expected 1.11+)"
ensure_config
export TF_CLI_CONFIG_FILE="$CONFIG"
export CHECKPOINT_DISABLE=1   # no network: skip the version check call
export TF_IN_AUTOMATION=1

if [[ "${1:-}" == "config" ]]; then
  printf '%s\n' "$CONFIG"
  exit 0
fi
exec terraform "$@"
