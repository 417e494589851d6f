"""Metrics reach a real Pushgateway; profiles are the single source of run parameters."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request

import pytest

from conftest import free_port, run, run_captured, wait_until
from helical_runner import profiles


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory):
    exe = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    assert exe, "prometheus-pushgateway is installed by scripts/bootstrap.sh system"
    port = free_port()
    proc = subprocess.Popen(
        [exe, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def ready():
        try:
            return urllib.request.urlopen(f"{url}/-/ready", timeout=1).status == 200
        except OSError:
            return False

    wait_until(ready, 30, "pushgateway")
    yield url
    proc.terminate()
    proc.wait(10)


def test_runner_pushes_its_metrics(tmp_path, bundle, datasets, pushgateway):
    code = run(
        "embed",
        "--input",
        datasets["ensembl-csr"],
        "--model",
        "scgpt",
        "--output",
        tmp_path / "e.h5ad",
        "--model-store",
        bundle,
        "--cells",
        "0:300",
        "--pushgateway",
        pushgateway,
        "--run-label",
        "dag_id=helical_embedding",
        "--run-label",
        "run_id=manual-1",
        "--run-label",
        "task_id=embed",
        "--run-label",
        "shard=0",
    )
    assert code == 0
    text = urllib.request.urlopen(f"{pushgateway}/metrics", timeout=5).read().decode()
    series = [line for line in text.splitlines() if line.startswith("helical_runner_")]
    names = {line.split("{")[0] for line in series}
    for name in (
        "helical_runner_cells_processed_total",
        "helical_runner_cells_per_second",
        "helical_runner_batch_latency_seconds_bucket",
        "helical_runner_model_load_seconds",
        "helical_runner_peak_rss_bytes",
        "helical_runner_duration_seconds",
        "helical_runner_cpu_seconds_total",
        "helical_runner_last_success",
    ):
        assert name in names, f"{name} missing from {sorted(names)}"
    processed = [line for line in series if line.startswith("helical_runner_cells_processed_total")]
    assert any(
        'model="scgpt"' in line and 'run_id="manual-1"' in line and line.endswith(" 300")
        for line in processed
    )


def test_failures_are_counted_by_reason(tmp_path, bundle, pushgateway):
    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(b"junk" * 100)
    assert (
        run(
            "embed",
            "--input",
            bad,
            "--model",
            "scgpt",
            "--output",
            tmp_path / "e.h5ad",
            "--model-store",
            bundle,
            "--pushgateway",
            pushgateway,
            "--run-label",
            "run_id=bad-1",
        )
        == 2
    )
    text = urllib.request.urlopen(f"{pushgateway}/metrics", timeout=5).read().decode()
    failures = [
        line for line in text.splitlines() if line.startswith("helical_runner_failures_total")
    ]
    assert any(
        'reason="bad_input"' in line and 'run_id="bad-1"' in line and line.endswith(" 1")
        for line in failures
    )


def test_builtin_profiles_are_complete():
    for name in ("geneformer", "scgpt", "uce"):
        p = profiles.load(name)
        assert p.model == name and p.cells_per_chunk > 0 and p.cells_per_shard >= p.cells_per_chunk
        assert p.resources["gpu"]["type"] and p.resources["memory"].endswith("Gi")


def test_profile_overrides_and_errors(tmp_path, capsys):
    p = profiles.load("geneformer").with_overrides(batch_size=8, precision="bf16")
    assert (p.batch_size, p.precision) == (8, "bf16")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: geneformer\nbatch_size: -1\n")
    code, _, err = run_captured(capsys, "profiles", str(bad))
    assert code == 2 and "misses" in err
    code, out, _ = run_captured(capsys, "profiles", "uce", "--json")
    assert code == 0 and json.loads(out)["embedding_dim"] == 1280


def test_batch_size_override_reaches_the_manifest(tmp_path, bundle, datasets):
    out = tmp_path / "e.h5ad"
    assert (
        run(
            "embed",
            "--input",
            datasets["ensembl-csr"],
            "--model",
            "scgpt",
            "--output",
            out,
            "--model-store",
            bundle,
            "--cells",
            "0:100",
            "--batch-size",
            "16",
            "--precision",
            "bf16",
        )
        == 0
    )
    manifest = json.loads(out.with_name("e.h5ad.manifest.json").read_text())
    assert manifest["batch_size"] == 16 and manifest["precision"] == "bf16"
    assert manifest["batches"] == 7  # ceil(100 / 16)
