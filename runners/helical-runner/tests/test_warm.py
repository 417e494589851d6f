"""Warm runners: one process embeds several shards with the model loaded once; each shard
is written, checkpointed, skipped on a re-run and reported exactly as a one-shard run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

from conftest import run, run_captured, runner_process, wait_until

RANGES = ["0:100", "100:250", "250:300"]


def _pairs(folder, ranges=RANGES):
    args = []
    for cells in ranges:
        args += ["--cells", cells, "--output", folder / f"{cells.replace(':', '-')}.h5ad"]
    return args


def _manifest(path):
    return json.loads(path.with_name(path.name + ".manifest.json").read_text())


@pytest.mark.parametrize("model", ["geneformer", "scgpt"])
def test_shards_of_one_runner_equal_one_shard_runs(tmp_path, bundle, datasets, model):
    source = datasets["ensembl-csr" if model == "geneformer" else "symbol-csr"]
    common = ["embed", "--input", source, "--model", model, "--model-store", bundle]
    assert run(*common, *_pairs(tmp_path / "warm")) == 0
    for cells in RANGES:
        one = tmp_path / "one" / f"{cells.replace(':', '-')}.h5ad"
        assert run(*common, "--cells", cells, "--output", one) == 0
        warm = tmp_path / "warm" / one.name
        a, b = ad.read_h5ad(warm), ad.read_h5ad(one)
        assert list(a.obs_names) == list(b.obs_names)
        assert a.obs.equals(b.obs)
        np.testing.assert_array_equal(a.obsm[f"X_{model}"], b.obsm[f"X_{model}"])
        assert _manifest(warm)["run_key"] == _manifest(one)["run_key"]
        assert _manifest(warm)["selection"] == _manifest(one)["selection"]

    manifests = [_manifest(tmp_path / "warm" / f"{c.replace(':', '-')}.h5ad") for c in RANGES]
    # one process; the model was imported, loaded and first run once, by the first shard
    assert len({m["process"]["pid"] for m in manifests}) == 1
    assert [m["process"]["index"] for m in manifests] == [0, 1, 2]
    first, *rest = manifests
    for key in ("startup_s", "import_s", "load_s", "first_batch_s"):
        # (imports are already done in this test process: ~0 s here)
        assert first["timings"][key] >= 0
        assert all(key not in m["timings"] for m in rest)
    assert first["timings"]["load_s"] > 0 and first["timings"]["first_batch_s"] > 0
    assert all(m["timings"]["embed_s"] > 0 and m["batches"] >= 1 for m in manifests)
    assert [m["run_labels"] for m in manifests] == [{"shard": c} for c in RANGES]


def test_killed_mid_task_resumes_without_redoing_finished_shards(tmp_path, bundle, datasets):
    ranges = [f"{lo}:{lo + 100}" for lo in range(0, 600, 100)]
    folder = tmp_path / "warm"
    args = [
        "embed",
        "--input",
        datasets["ensembl-csr"],
        "--model",
        "geneformer",
        "--model-store",
        bundle,
        "--cells-per-chunk",
        "50",
        *_pairs(folder, ranges),
    ]
    outputs = [folder / f"{c.replace(':', '-')}.h5ad" for c in ranges]
    proc = runner_process(*args)

    def two_shards_done():
        return outputs[1].with_name(outputs[1].name + ".manifest.json").exists() or (
            proc.poll() is not None
        )

    wait_until(two_shards_done, 300, "two finished shards", interval=0.02)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    done = [o for o in outputs if o.with_name(o.name + ".manifest.json").exists()]
    assert 2 <= len(done) < len(outputs)
    before = {o: _manifest(o)["finished_at"] for o in done}

    resumed = runner_process(*args)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    skipped = [r["output"] for r in records if r["msg"].startswith("output already complete")]
    assert skipped == [str(o) for o in done]
    # finished shards untouched; the rest embedded now, by one process
    assert {o: _manifest(o)["finished_at"] for o in done} == before
    redone = [_manifest(o) for o in outputs if o not in done]
    assert len({m["process"]["pid"] for m in redone}) == 1
    # the last shard's "done" line was flushed before the fast exit
    assert records[-1]["msg"] == "done" and records[-1]["output"] == str(outputs[-1])

    for output, cells in zip(outputs, ranges, strict=True):
        clean = tmp_path / "clean" / output.name
        assert run(*args[:9], "--cells", cells, "--output", clean) == 0
        np.testing.assert_array_equal(
            ad.read_h5ad(output).obsm["X_geneformer"], ad.read_h5ad(clean).obsm["X_geneformer"]
        )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cells", "0:10", "--output", "a.h5ad", "--output", "b.h5ad"], "2 --output for 1"),
        (
            ["--cells", "0:10", "--output", "a.h5ad", "--cells", "10:20", "--output", "a.h5ad"],
            "same output",
        ),
    ],
)
def test_shard_pairs_must_match(tmp_path, capsys, bundle, datasets, extra, message):
    extra = [str(tmp_path / a) if a.endswith(".h5ad") else a for a in extra]
    code, _, err = run_captured(
        capsys,
        "embed",
        "--input",
        datasets["layers"],
        "--model",
        "scgpt",
        "--model-store",
        bundle,
        *extra,
    )
    assert code == 2
    assert message in err
    assert not list(tmp_path.glob("*.h5ad*"))


def test_embedding_needs_no_scanpy(tmp_path, bundle, datasets):
    """helical imports scanpy (and with it sklearn, numba, matplotlib); the runner's
    embedding path never uses it, so it is never run: seconds off every start.
    Code that does use scanpy afterwards gets the real package."""
    code = f"""
import sys
from helical_runner import cli
assert cli.main(["embed", "--input", {str(datasets["layers"])!r}, "--model", "geneformer",
                 "--model-store", {str(bundle)!r}, "--output", {str(tmp_path / "e.h5ad")!r}]) == 0
from helical_runner.embed import import_model_stack
import_model_stack("scgpt")
import_model_stack("uce")
print(sorted(m for m in ("sklearn", "numba", "matplotlib", "scanpy.preprocessing") if m in sys.modules))
import scanpy
print(scanpy.pp.normalize_total.__name__)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "normalize_total"]
