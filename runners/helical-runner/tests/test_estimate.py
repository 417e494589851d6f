"""Quotes that get better with use: the profiles refreshed from manifests, a run's
estimate beside what it measured in provenance."""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path

import pytest
import yaml

from conftest import run_captured, runner_process
from helical_runner import profiles, quote
from helical_runner.demo_data import write_demo_dataset


def _embed(bundle: Path, data: Path, out: Path, shards: list[tuple[int, int]]) -> list[Path]:
    """One runner process (its own start-up, as an embed task has) over `shards`."""
    args = ["embed", "--input", data, "--model", "geneformer", "--model-store", bundle,
            "--precision", "fp32"]  # fmt: skip
    targets = []
    for start, stop in shards:
        targets.append(out / f"{start:09d}-{stop:09d}.h5ad")
        args += ["--cells", f"{start}:{stop}", "--output", targets[-1]]
    proc = runner_process(*args)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return [t.with_name(t.name + ".manifest.json") for t in targets]


@pytest.fixture(scope="module")
def measured(tmp_path_factory, bundle):
    """A first run (2 shards in one process) to learn from, a second one to quote."""
    root = tmp_path_factory.mktemp("estimate")
    first = write_demo_dataset(root / "first.h5ad", n_cells=240, seed=1)
    second = write_demo_dataset(root / "second.h5ad", n_cells=360, seed=2)
    learn = _embed(bundle, first, root / "learn", [(0, 120), (120, 240)])
    # the second dataset as the DAG runs it when each shard is its own task
    check = [
        m
        for a, b in ((0, 180), (180, 360))
        for m in _embed(bundle, second, root / "check", [(a, b)])
    ]
    return {"root": root, "learn": learn, "check": check, "second": second}


def test_refresh_sets_cells_per_second_and_startup_keeping_the_rest(capsys, measured, tmp_path):
    code, out, _ = run_captured(
        capsys, "refresh-profiles", measured["root"] / "learn", "--profiles-dir", tmp_path
    )
    assert code == 0, out
    (row,) = json.loads(out)["refreshed"]
    manifests = [json.loads(p.read_text()) for p in measured["learn"]]
    work = sum(m["timings"]["total_s"] for m in manifests)
    assert row["model"] == "geneformer" and row["device"] == "cpu" and row["cells"] == 240
    assert row["cells_per_second"] == pytest.approx(240 / work, rel=1e-2)
    first = manifests[0]["timings"]  # the process's start-up is charged to its first shard
    assert row["startup_s"] == pytest.approx(first["startup_s"] + first["setup_s"], abs=0.1)
    text = (tmp_path / "geneformer.yaml").read_text()
    builtin = (profiles.PROFILES_DIR / "geneformer.yaml").read_text()
    # every comment and every other field kept; only the two planning figures changed
    assert [ln for ln in text.splitlines() if ln.startswith("#")] == [
        ln for ln in builtin.splitlines() if ln.startswith("#")
    ]
    new, old = yaml.safe_load(text), yaml.safe_load(builtin)
    assert new["cells_per_second"]["cpu"] == row["cells_per_second"]
    assert new["startup_s"] == row["startup_s"]
    assert {k: v for k, v in new.items() if k not in quote.QUOTED_FIELDS} == {
        k: v for k, v in old.items() if k not in quote.QUOTED_FIELDS
    }
    assert builtin == (profiles.PROFILES_DIR / "geneformer.yaml").read_text(), "built-in untouched"


def test_refreshed_quote_is_within_2x_of_the_measured_run(capsys, measured, tmp_path):
    assert (
        run_captured(capsys, "refresh-profiles", *measured["learn"], "--profiles-dir", tmp_path)[0]
        == 0
    )
    learned = profiles.load(str(tmp_path / "geneformer.yaml")).with_overrides(cells_per_shard=180)
    q = quote.model_quote(learned, [("second", 360)], device="cpu", prices=quote.load_prices())
    spent = sum(
        quote.runner_seconds(json.loads(p.read_text())["timings"]) for p in measured["check"]
    )
    assert q["shards"] == 2
    assert 0.5 <= q["busy_s"] / spent <= 2.0, (q, spent)
    # the built-in profile (a real-size model's CPU speed) quotes the demo weights far slower
    builtin = profiles.load("geneformer").with_overrides(cells_per_shard=180)
    slow = quote.model_quote(builtin, [("second", 360)], device="cpu", prices=quote.load_prices())
    assert slow["busy_s"] > 2 * spent


def test_refresh_bad_input_is_one_line_exit_2(capsys, tmp_path):
    code, _, err = run_captured(capsys, "refresh-profiles", tmp_path / "nothing")
    assert code == 2 and "no such manifest or folder" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_captured(capsys, "refresh-profiles", tmp_path)
    assert code == 2 and "no successful shard manifest found" in err
    (tmp_path / "x.manifest.json").write_text("{not json")
    code, _, err = run_captured(capsys, "refresh-profiles", tmp_path)
    assert code == 2 and "manifest is not JSON" in err


def _record(measured, outputs, **params) -> str:
    record = {
        "run_id": "r1",
        "params": {
            "models": ["geneformer", "nomodel"],
            "profile_overrides": {"geneformer": {"cells_per_shard": 180}},
            **params,
        },
        "quote": {"device": "cpu", "parallel": 2, "gpus": {"geneformer": 1}},
        "datasets": [
            {
                "name": "second",
                "uri": str(measured["second"]),
                "status": "validated",
                "validation": {"n_cells": 360},
            },
        ],
        "outputs": outputs,
    }
    return base64.urlsafe_b64encode(zlib.compress(json.dumps(record).encode())).decode()


def test_provenance_puts_the_estimate_beside_the_measured(capsys, measured, tmp_path):
    merged = tmp_path / "second" / "embeddings" / "geneformer.h5ad"
    shards = [str(p).removesuffix(".manifest.json") for p in measured["check"]]
    assert run_captured(capsys, "merge", "--output", merged, *shards)[0] == 0
    outputs = [{"output": str(merged), "model": "geneformer", "status": "merged"}]
    code, out, err = run_captured(
        capsys, "provenance", "--output", tmp_path / "p.json",
        "--record-z", _record(measured, outputs),
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["provenance"] == str(tmp_path / "p.json")
    written = json.loads((tmp_path / "p.json").read_text())
    est, bad = written["estimate"]["models"]
    assert est["model"] == "geneformer" and est["shards"] == 2 and est["cells"] == 360
    assert "unknown profile 'nomodel'" in bad["error"]  # quoted what it could
    (seen,) = written["measured"]["models"]
    spent = sum(
        quote.runner_seconds(json.loads(p.read_text())["timings"]) for p in measured["check"]
    )
    assert seen["cells"] == 360 and seen["shards"] == 2
    assert seen["busy_s"] == pytest.approx(spent, abs=0.2) and seen["wall_s"] > 0
    # the task log and the step's result carry the same lines
    assert "geneformer: 360 cells, 2 shard(s)" in result["quote"] and result["quote"] in err
    assert "measured" in result["quote"] and "no quote" in result["quote"]
