"""``helical-runner plan``: a time and cost quote from the files' headers and the profiles."""

from __future__ import annotations

import json
import math

import anndata as ad
import pytest
import yaml

from conftest import RUNNER_DATA, run_captured
from helical_runner import profiles, quote

PBMC = RUNNER_DATA / "datasets" / "pbmc68k_reduced.h5ad"


def test_cells_come_from_the_headers_of_real_and_generated_files(datasets):
    for path in [PBMC, datasets["ensembl-csc"], datasets["raw"]]:
        assert quote.dataset_cells(str(path)) == ad.read_h5ad(path, backed="r").n_obs


def test_figures_follow_the_profile(datasets):
    prices = quote.load_prices()
    prof = profiles.load("geneformer").with_overrides(cells_per_shard=700)
    rows = [("pbmc", 700), ("other", 1500)]  # 1 + 3 shards (700, 700, 100)
    q = quote.model_quote(prof, rows, device="cpu", prices=prices, parallel=2)
    rate, start = prof.cells_per_second["cpu"], prof.startup_s
    shard_s = [start + 700 / rate, start + 700 / rate, start + 700 / rate, start + 100 / rate]
    assert q["shards"] == q["embed_tasks"] == 4 and q["tasks"] == 4 + 2 * 2
    assert q["cells"] == 2200
    assert q["wall_s"] == pytest.approx(max(max(shard_s), sum(shard_s) / 2), abs=0.1)
    assert q["device_hours"] == pytest.approx(sum(shard_s) / 3600, abs=1e-4)
    price = prices.instances[prices.device_instances["cpu"]]
    assert q["cost_on_demand"] == pytest.approx(sum(shard_s) / 3600 * price["on_demand"], abs=1e-4)
    assert q["cost_spot"] < q["cost_on_demand"]
    # more jobs at a time: shorter wall time, the same device-hours and cost
    wide = quote.model_quote(prof, rows, device="cpu", prices=prices, parallel=8)
    assert wide["wall_s"] < q["wall_s"] and wide["cost_on_demand"] == q["cost_on_demand"]


def test_gpu_quote_uses_the_profiles_gpu_type_and_instance(tmp_path):
    prof = profiles.load("uce").with_overrides(cells_per_second={"cpu": 0.7, "gpu": 500.0})
    q = quote.model_quote(prof, [("d", 100_000)], device="gpu", prices=quote.load_prices())
    assert q["device"] == "nvidia-l40s" and q["instance"] == "g6e.xlarge"
    assert q["gpus_per_job"] == 1 and q["shards"] == math.ceil(100_000 / prof.cells_per_shard)


def test_cli_table_and_json(capsys, datasets):
    args = ["plan", "--input", PBMC, "--input", datasets["layers"], "--model", "geneformer",
            "--model", "scgpt"]  # fmt: skip
    code, out, _ = run_captured(capsys, *args)
    assert code == 0
    assert out.splitlines()[1].split()[:4] == ["model", "cells", "shards", "tasks"]
    assert "prices taken 2025-01" in out
    code, out, _ = run_captured(capsys, *args, "--json")
    q = json.loads(out)
    assert [m["model"] for m in q["models"]] == ["geneformer", "scgpt"]
    assert [d["cells"] for d in q["datasets"]] == [700, 300]
    assert q["total"]["cost_on_demand"] == pytest.approx(
        sum(m["cost_on_demand"] for m in q["models"]), abs=1e-3
    )


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("helical-runner: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--model", "nomodel"], "unknown profile 'nomodel'"),
        (["--model", "geneformer", "--device", "gpu"], "no measured cells_per_second for gpu"),
        (["--model", "geneformer", "--parallel", "0"], "--parallel must be >= 1"),
    ],
)
def test_bad_model_or_device_is_one_line_exit_2(capsys, extra, needle):
    code, out, err = run_captured(capsys, "plan", "--input", PBMC, *extra)
    assert code == 2 and out == ""
    assert needle in _one_error_line(err)


def test_missing_file_is_one_line_exit_2(capsys, tmp_path):
    code, _, err = run_captured(capsys, "plan", "--input", tmp_path / "no.h5ad", "--model", "uce")
    assert code == 2 and "dataset not found" in _one_error_line(err)


def test_price_table_without_the_instance_is_one_line_exit_2(capsys, tmp_path):
    table = yaml.safe_load(quote.PRICES.read_text())
    del table["instances"][table["device_instances"]["cpu"]]
    bad = tmp_path / "prices.yaml"
    bad.write_text(yaml.safe_dump(table))
    code, _, err = run_captured(
        capsys, "plan", "--input", PBMC, "--model", "scgpt", "--prices", bad
    )
    assert code == 2 and "no price for instance type 'm6i.4xlarge'" in _one_error_line(err)
    table["instances"]["m6i.4xlarge"] = {"on_demand": "cheap", "spot": 0.1}
    bad.write_text(yaml.safe_dump(table))
    code, _, err = run_captured(
        capsys, "plan", "--input", PBMC, "--model", "scgpt", "--prices", bad
    )
    assert code == 2 and "on_demand must be a price per hour" in _one_error_line(err)


def test_warm_tasks_pay_the_start_up_once_each():
    prices = quote.load_prices()
    prof = profiles.load("geneformer").with_overrides(cells_per_shard=100)
    rows = [("a", 1000)]  # 10 shards
    cold = quote.model_quote(prof, rows, device="cpu", prices=prices, parallel=2)
    warm = quote.model_quote(prof, rows, device="cpu", prices=prices, parallel=2, processes=2)
    assert cold["embed_tasks"] == 10 and warm["embed_tasks"] == 2
    assert warm["busy_s"] == pytest.approx(cold["busy_s"] - 8 * prof.startup_s, abs=0.2)
    assert warm["cost_on_demand"] < cold["cost_on_demand"] and warm["tasks"] == 2 + 2
