"""Shared fixtures: demo data, the demo model store and ONE real Airflow per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# In-process Airflow (DagBag, operators) must never touch the user's ~/airflow.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="helical-wf-airflow-home-")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
# The DAG reads datasets and writes outputs only under allowed roots
# (helical_workflow.inputs): here pytest's temp folders and the made-up buckets.
# /var/tmp: the Docker end-to-end test keeps its data where the runner container may read it
os.environ.setdefault(
    "HELICAL_DATASET_ROOTS", f"{tempfile.gettempdir()},/var/tmp,s3://lake/,s3://datasets/"
)
os.environ.setdefault(
    "HELICAL_OUTPUT_ROOTS", f"{tempfile.gettempdir()},/var/tmp,s3://out/,s3://outputs/"
)
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "dags"))

from harness import REPO, Airflow

RUNNER_BIN = REPO / ".venvs/runner/bin/helical-runner"
RUNNER_PY = REPO / ".venvs/runner/bin/python"

# Test-only wrapper: when a file in $FLAKY_DIR names a string found in an embed
# command line, exit 75 (transient) once and delete the file; when a file in
# $BROKEN_DIR does, exit 2 (bad input) every time; otherwise run the real
# runner. The real runner does all the actual work.
FLAKY_RUNNER = """#!/usr/bin/env bash
if [[ "$1" == embed ]]; then
  for marker in "$BROKEN_DIR"/*; do
    [[ -f "$marker" ]] || continue
    if [[ "$*" == *"$(cat "$marker")"* ]]; then
      echo "helical-runner: error: injected by the test wrapper (a shard that cannot succeed)" >&2
      exit 2
    fi
  done
  for marker in "$FLAKY_DIR"/*; do
    [[ -f "$marker" ]] || continue
    if [[ "$*" == *"$(cat "$marker")"* ]] && rm "$marker" 2>/dev/null; then
      echo "helical-runner: transient error: injected by the test wrapper (flaky storage)" >&2
      exit 75
    fi
  done
fi
exec "$REAL_RUNNER" "$@"
"""


def runner(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(RUNNER_BIN), *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def read_obs_names(path: Path) -> list[str]:
    """Cell names of an .h5ad, read with the runner env (this env has no anndata)."""
    code = "import anndata, json, sys; print(json.dumps(list(anndata.read_h5ad(sys.argv[1], backed='r').obs_names)))"
    out = subprocess.run(
        [str(RUNNER_PY), "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def read_embedding_shape(path: Path, key: str) -> tuple[int, int]:
    code = f"import anndata, sys; a = anndata.read_h5ad(sys.argv[1]); print(*a.obsm['{key}'].shape)"
    out = subprocess.run(
        [str(RUNNER_PY), "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    rows, dim = out.stdout.split()
    return int(rows), int(dim)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("workflow")


@pytest.fixture(scope="session")
def runner_env(workdir) -> dict[str, str]:
    """The demo model store (tiny random weights) and a private helical cache."""
    if not RUNNER_BIN.exists():
        pytest.fail(f"{RUNNER_BIN} missing: run scripts/bootstrap.sh runner")
    env = {
        "CACHE_DIR_HELICAL_PREFIX": str(workdir / "helical-cache"),
        "HELICAL_RUNNER_MODEL_STORE": str(workdir / "model-store"),
    }
    out = runner("models", "demo-bundle", "--to", env["HELICAL_RUNNER_MODEL_STORE"], env=env)
    assert out.returncode == 0, out.stderr
    return env


@pytest.fixture(scope="session")
def data_dir(workdir, runner_env) -> Path:
    """Small datasets: two good ones of different shapes and one corrupt file."""
    data = workdir / "data"
    for name, extra in {
        "pbmc_a": ["--cells", "300", "--seed", "1"],
        "pbmc_b": ["--cells", "200", "--seed", "2", "--gene-ids", "symbol", "--layout", "csc"],
        "small_c": ["--cells", "120", "--seed", "3"],
        "small_d": ["--cells", "100", "--seed", "4"],
        "small_e": ["--cells", "90", "--seed", "5"],
    }.items():
        out = runner(
            "demo-data", "--output", str(data / name / f"{name}.h5ad"), *extra, env=runner_env
        )
        assert out.returncode == 0, out.stderr
    (data / "corrupt").mkdir()
    (data / "corrupt" / "corrupt.h5ad").write_bytes(b"this is not an HDF5 file\n" * 100)
    return data


@pytest.fixture(scope="session")
def airflow(workdir, runner_env):
    """api-server + scheduler + dag-processor, LocalExecutor on SQLite, loopback only."""
    flaky = workdir / "flaky"
    flaky.mkdir()
    broken = workdir / "broken"
    broken.mkdir()
    wrapper = workdir / "flaky-runner"
    wrapper.write_text(FLAKY_RUNNER)
    wrapper.chmod(0o755)
    env = {
        **runner_env,
        "HELICAL_RUNNER_BIN": str(wrapper),
        "REAL_RUNNER": str(RUNNER_BIN),
        "FLAKY_DIR": str(flaky),
        "BROKEN_DIR": str(broken),
        "HELICAL_OUTPUT_ROOT": str(workdir / "runs"),
        # fast retries for the transient-failure test (production: 30 s doubling)
        "HELICAL_RETRY_DELAY_S": "1",
    }
    deployment = Airflow(workdir / "airflow-home", parallelism=2, extra_env=env)
    deployment.flaky_dir = flaky
    deployment.broken_dir = broken
    with deployment:
        yield deployment


GOOD_RUN_MODELS = ["geneformer", "scgpt"]


def good_run_conf(data_dir: Path) -> dict:
    """Two datasets (a folder and a file) x two models, two shards each."""
    return {
        "datasets": [str(data_dir / "pbmc_a"), str(data_dir / "pbmc_b" / "pbmc_b.h5ad")],
        "models": GOOD_RUN_MODELS,
        # fp32: backends are compared within 1e-5, and `auto` calibrates per process
        # (each container anew), so a reduced precision could differ between them
        "profile_overrides": {
            m: {"cells_per_shard": 150, "precision": "fp32"} for m in GOOD_RUN_MODELS
        },
    }


@pytest.fixture(scope="session")
def good_run(airflow, data_dir):
    """The good run on the local backend (also the reference for the Docker backend)."""
    run_id = airflow.trigger(good_run_conf(data_dir))
    return run_id, airflow.wait(run_id, 720)


def run_root_of(airflow, run_id) -> Path:
    """``<output_root>/<run>`` of a run, found by its provenance.json."""
    roots = [
        p
        for p in Path(airflow.env["HELICAL_OUTPUT_ROOT"]).iterdir()
        if (p / "provenance.json").exists()
    ]
    match = [
        p for p in roots if json.loads((p / "provenance.json").read_text())["run_id"] == run_id
    ]
    assert len(match) == 1, f"no provenance.json for {run_id} under {roots}"
    return match[0]


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "docker: runs the DAG on a real Docker engine (scripts/docker-engine.sh, docker-image.sh)",
    )
    config.addinivalue_line(
        "markers",
        "compose: docker-compose.yml up on the engine with offline images (scripts/compose-images.sh)",
    )
