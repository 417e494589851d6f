"""End to end through the REST API: a real scheduler (LocalExecutor) and the real runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import GOOD_RUN_MODELS as MODELS
from conftest import good_run_conf, read_embedding_shape, read_obs_names


def _states(airflow, run_id) -> dict[tuple[str, int], object]:
    return {(ti.task_id, ti.map_index): ti for ti in airflow.task_instances(run_id)}


def test_every_mapped_task_succeeded(airflow, good_run):
    run_id, state = good_run
    tis = _states(airflow, run_id)
    bad = {
        k: str(ti.state)
        for k, ti in tis.items()
        if str(ti.state.value if ti.state else None) not in ("success", "skipped")
    }
    assert state == "success", f"run ended {state}; tasks not successful: {bad}"
    embeds = [ti for (task, _), ti in tis.items() if task == "embed_gpu_nvidia_a10g"]
    # pbmc_a: 300 cells -> 2 shards, pbmc_b: 200 -> 2 shards; x 2 models; little work
    # for the profiles' CPU speed: one warm runner task per dataset x model
    assert len(embeds) == 4
    assert {ti.rendered_map_index for ti in embeds} >= {
        "pbmc_a/geneformer/0:300 (2 shards)",
        "pbmc_b/scgpt/0:200 (2 shards)",
    }
    assert len([k for k in tis if k[0] == "merge"]) == 4
    assert len([k for k in tis if k[0] == "report"]) == 2
    # no GPU type asked for the L40S pool: that embed task had nothing to map
    assert str(tis[("embed_gpu_nvidia_l40s", -1)].state.value) == "skipped"


def _run_root(airflow, run_id) -> Path:
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


@pytest.mark.parametrize("dataset", ["pbmc_a", "pbmc_b"])
@pytest.mark.parametrize("model", MODELS)
def test_outputs_have_one_row_per_cell_in_input_order(airflow, good_run, data_dir, dataset, model):
    root = _run_root(airflow, good_run[0])
    out = root / dataset / "embeddings" / f"{model}.h5ad"
    assert read_obs_names(out) == read_obs_names(data_dir / dataset / f"{dataset}.h5ad")
    rows, dim = read_embedding_shape(out, f"X_{model}")
    assert rows == len(read_obs_names(out)) and dim > 0
    manifest = json.loads(Path(str(out) + ".manifest.json").read_text())
    assert manifest["outcome"] == "success"
    assert manifest["selection"]["cells"] == rows
    assert manifest["input"]["sha256"]
    assert manifest["model"]["artifacts"]


@pytest.mark.parametrize("dataset", ["pbmc_a", "pbmc_b"])
def test_report_with_figures_and_metrics(airflow, good_run, dataset):
    report = _run_root(airflow, good_run[0]) / dataset / "report"
    html = (report / "report.html").read_text()
    pngs = sorted(p.name for p in report.glob("*.png"))
    for model in MODELS:
        assert f"umap_{model}.png" in pngs
        assert model in html
    assert "umap_pca_baseline.png" in pngs
    for png in pngs:
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((report / "metrics.json").read_text())
    assert "knn" in json.dumps(metrics).lower() and "silhouette" in json.dumps(metrics).lower()


def test_provenance_record_is_complete(airflow, good_run):
    run_id = good_run[0]
    record = json.loads((_run_root(airflow, run_id) / "provenance.json").read_text())
    assert record["dag_id"] == "helical_embedding" and record["run_id"] == run_id
    assert [d["status"] for d in record["datasets"]] == ["validated", "validated"]
    assert sorted((o["dataset_name"], o["model"]) for o in record["outputs"]) == [
        ("pbmc_a", "geneformer"),
        ("pbmc_a", "scgpt"),
        ("pbmc_b", "geneformer"),
        ("pbmc_b", "scgpt"),
    ]
    for out in record["outputs"]:
        assert Path(out["manifest"]).is_file()
        assert out["cells"] in (300, 200) and out["model_artifacts"] and out["versions"]["helical"]
    assert len(record["reports"]) == 2
    # the quote beside what was measured, per model (local backend: planned as CPU)
    assert record["estimate"]["device"] == "cpu"
    quoted = {m["model"]: m for m in record["estimate"]["models"]}
    seen = {m["model"]: m for m in record["measured"]["models"]}
    assert set(quoted) == set(seen) == set(MODELS)
    for model in MODELS:
        assert quoted[model]["cells"] == seen[model]["cells"] == 500
        assert quoted[model]["shards"] == seen[model]["shards"] == 4  # 150 cells a shard
        assert quoted[model]["cost_on_demand"] > 0 and seen[model]["busy_s"] > 0


def test_dry_run_quotes_and_embeds_nothing(airflow, data_dir):
    conf = {**good_run_conf(data_dir), "dry_run": True}
    run_id = airflow.trigger(conf)
    assert airflow.wait(run_id, 300) == "success"
    tis = _states(airflow, run_id)
    ran = {task for (task, _), ti in tis.items() if str(ti.state.value) == "success"}
    assert not {t for t in ran if t.startswith("embed_") or t in ("merge", "report")}
    root = _run_root(airflow, run_id)
    assert not list(root.rglob("*.h5ad")), "a dry run writes no embeddings"
    record = json.loads((root / "provenance.json").read_text())
    assert record["outputs"] == [] and record["measured"]["models"] == []
    rows = {m["model"]: m for m in record["estimate"]["models"]}
    assert set(rows) == set(MODELS) and all(r["shards"] == 4 for r in rows.values())
    # the quote reads plainly in the last task's log (and the write_provenance log)
    log = airflow.log(run_id, tis[("record_provenance", -1)])
    assert "quote on cpu" in log and "geneformer: 500 cells, 4 shard(s)" in log


def test_runner_logs_and_labels_reach_the_task_log(airflow, good_run):
    run_id = good_run[0]
    ti = _states(airflow, run_id)[("embed_gpu_nvidia_a10g", 0)]
    log = airflow.log(run_id, ti)
    # the command the operator ran, the runner's own log lines, its exit status
    assert "Running command:" in log and "Command exited with return code 0" in log
    assert "chunk done" in log
    assert "dag_id=helical_embedding" in log and f"run_id={run_id}" in log
