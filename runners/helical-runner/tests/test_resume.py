"""A run killed mid-way resumes from its finished chunks and ends identical to an uninterrupted run."""

from __future__ import annotations

import json
import signal

import anndata as ad
import numpy as np

from conftest import runner_process, wait_until


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, bundle, datasets):
    source = datasets["ensembl-csr"]
    args = [
        "--input",
        source,
        "--model",
        "geneformer",
        "--model-store",
        bundle,
        "--cells-per-chunk",
        "200",
    ]
    killed = tmp_path / "killed" / "emb.h5ad"
    killed.parent.mkdir()
    proc = runner_process("embed", *args, "--output", killed)
    partial = killed.with_name("emb.h5ad.partial")

    def two_parts_done():
        return len(list(partial.glob("*/cells-*.npy"))) >= 2 or proc.poll() is not None

    wait_until(two_parts_done, 300, "two finished chunks")
    assert proc.poll() is None, f"run ended before it could be killed: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    finished_before = {p.name for p in partial.glob("*/cells-*.npy")}
    assert 2 <= len(finished_before) < 10
    # nothing that looks complete was left behind
    assert not killed.exists()
    assert not killed.with_name("emb.h5ad.manifest.json").exists()

    resumed = runner_process("embed", *args, "--output", killed)
    _out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    manifest = json.loads(killed.with_name("emb.h5ad.manifest.json").read_text())
    assert manifest["resumed_chunks"] == len(finished_before)
    assert manifest["chunks"] == 10
    assert not partial.exists(), "work in progress is removed on success"

    clean = tmp_path / "clean" / "emb.h5ad"
    clean.parent.mkdir()
    full = runner_process("embed", *args, "--output", clean)
    _, err = full.communicate(timeout=600)
    assert full.returncode == 0, err

    a, b = ad.read_h5ad(killed), ad.read_h5ad(clean)
    assert list(a.obs_names) == list(b.obs_names)
    np.testing.assert_array_equal(a.obsm["X_geneformer"], b.obsm["X_geneformer"])


def test_log_lines_are_json_when_not_on_a_terminal(tmp_path, bundle, datasets):
    proc = runner_process(
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
        env={"HELICAL_RUNNER_LOG_FORMAT": ""},
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    messages = [r["msg"] for r in records]
    assert "embedding" in messages and "done" in messages
    assert any("DEMO WEIGHTS" in m for m in messages), "demo runs must say so in their logs"
    assert all({"ts", "level", "msg"} <= set(r) for r in records)


def test_transient_exit_code_on_unreachable_s3(tmp_path, bundle):
    proc = runner_process(
        "embed",
        "--input",
        "s3://no-such-bucket/x.h5ad",
        "--model",
        "scgpt",
        "--output",
        tmp_path / "e.h5ad",
        "--model-store",
        bundle,
        env={
            "HELICAL_RUNNER_S3_ENDPOINT_URL": "http://127.0.0.1:9",
            "AWS_ACCESS_KEY_ID": "x",
            "AWS_SECRET_ACCESS_KEY": "x",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_MAX_ATTEMPTS": "1",
        },
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err
    assert "transient error" in err and "S3 unreachable" in err
