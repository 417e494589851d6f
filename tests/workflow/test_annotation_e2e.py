"""End to end: new embeddings on the helical_embeddings asset start helical_annotation,
which trains a classifier per model on a labelled reference (the three models' demo
bundles and the pca baseline) and labels the query; a real scheduler, the real runner."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import airflow_client.client as af
import pytest

from conftest import RUNNER_PY, runner

MODELS = ["geneformer", "scgpt", "uce"]
DAG = "helical_annotation"
VARIABLE = "helical_annotation_reference"
TIMEOUT = 600


def _runs(airflow) -> list:
    return airflow.api(af.DagRunApi).get_dag_runs(DAG, limit=100).dag_runs


def _queued_events(airflow) -> list:
    try:
        return airflow.api(af.AssetApi).get_dag_asset_queued_events(DAG).queued_events
    except af.exceptions.NotFoundException:  # none queued
        return []


def _wait(airflow, run_id: str) -> str:
    api = airflow.api(af.DagRunApi)
    deadline = time.monotonic() + TIMEOUT
    while True:
        state = str(api.get_dag_run(DAG, run_id).state.value)
        if state in ("success", "failed"):
            return state
        assert time.monotonic() < deadline, f"{DAG} run {run_id} still {state}"
        time.sleep(2)


@pytest.fixture(scope="module")
def annotated(airflow, workdir, runner_env):
    data = workdir / "annotation-data"
    # one seed: reference and query share the generator's cell-type programmes, not cells
    for name, cells in (("reference", "300"), ("query", "120")):
        out = runner("demo-data", "--output", str(data / name / f"{name}.h5ad"),
                     "--cells", cells, "--seed", "11", env=runner_env)  # fmt: skip
        assert out.returncode == 0, out.stderr
    reference, query = data / "reference" / "reference.h5ad", data / "query" / "query.h5ad"
    root = Path(airflow.env["HELICAL_OUTPUT_ROOT"])
    variables = airflow.api(af.VariableApi)
    variables.post_variable(af.VariableBody(key=VARIABLE, value=str(reference)))
    try:
        before = {r.dag_run_id for r in _runs(airflow)}
        embedding_run = airflow.trigger({"datasets": [str(query)], "models": MODELS})
        assert airflow.wait(embedding_run, TIMEOUT) == "success"
        # The merges' asset events start annotation runs; done when no event waits
        # for a run and every run has ended.
        deadline = time.monotonic() + TIMEOUT
        while True:
            runs = [r for r in _runs(airflow) if r.dag_run_id not in before]
            ended = runs and all(str(r.state.value) in ("success", "failed") for r in runs)
            if ended and not _queued_events(airflow):
                break
            assert time.monotonic() < deadline, f"annotation runs not done: {runs}"
            time.sleep(2)
    finally:
        variables.delete_variable(VARIABLE)
    classifiers = {p: p.stat().st_mtime_ns for p in root.glob("classifiers/reference-*/*.npz")}
    # By hand, with every embedding of the query: one run, every model side by side.
    embedded = [
        {"dataset": str(query), "model": m, "output": str(next(root.glob(f"*/query/embeddings/{m}.h5ad")))}
        for m in MODELS
    ]  # fmt: skip
    manual = airflow.api(af.DagRunApi).trigger_dag_run(DAG, af.TriggerDAGRunPostBody(
        logical_date=None, conf={"reference": str(reference), "embeddings": embedded})).dag_run_id  # fmt: skip
    state = _wait(airflow, manual)
    return {"asset_runs": runs, "manual": manual, "manual_state": state, "root": root,
            "query": query, "reference": reference, "classifiers": classifiers}  # fmt: skip


def test_new_embeddings_start_annotation_runs_that_succeed(annotated):
    states = {r.dag_run_id: str(r.state.value) for r in annotated["asset_runs"]}
    assert set(states.values()) == {"success"}, states
    assert all(r.run_type.value == "asset_triggered" for r in annotated["asset_runs"])
    assert annotated["manual_state"] == "success"


def _run_folder(annotated, run_id: str) -> Path:
    for path in annotated["root"].glob("*/annotation/provenance.json"):
        if json.loads(path.read_text())["run_id"] == run_id:
            return path.parent
    raise AssertionError(f"no annotation provenance.json for {run_id}")


def test_the_last_asset_run_labelled_the_query_with_every_model(annotated):
    last = max(annotated["asset_runs"], key=lambda r: r.start_date)
    folder = _run_folder(annotated, last.dag_run_id)
    assert sorted(p.stem for p in (folder / "query").glob("*.h5ad")) == sorted([*MODELS, "pca"])
    summary = json.loads((folder / "report" / "annotation.json").read_text())
    assert list(summary["models"]) == [*MODELS, "pca"]


def test_classifiers_are_trained_once_per_reference_and_model(annotated):
    classifiers = annotated["classifiers"]
    assert sorted(p.name for p in classifiers) == sorted(f"{m}.npz" for m in [*MODELS, "pca"])
    # the manual run found every classifier done: not one file was rewritten
    assert {p: p.stat().st_mtime_ns for p in classifiers} == classifiers


def test_report_shows_every_model_beside_the_baseline(annotated):
    report = _run_folder(annotated, annotated["manual"]) / "report"
    summary = json.loads((report / "annotation.json").read_text())
    assert list(summary["models"]) == [*MODELS, "pca"]
    assert summary["models"]["pca"]["macro_f1"] > 0.9  # separable by construction
    assert sorted(p["model"] for p in summary["predictions"]) == sorted([*MODELS, "pca"])
    page = (report / "annotation.html").read_text()
    for model in [*MODELS, "pca"]:
        assert f'src="confusion_{model}.png"' in page
        assert (report / f"confusion_{model}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "DEMO weights" in page


def test_query_labels_match_its_true_cell_types(annotated):
    labelled = _run_folder(annotated, annotated["manual"]) / "query" / "pca.h5ad"
    code = (
        "import anndata, sys; a = anndata.read_h5ad(sys.argv[1]); b = anndata.read_h5ad(sys.argv[2]);"
        "print((a.obs['pca_label'].astype(str) == b.obs['cell_type'].astype(str)).mean())"
    )
    out = subprocess.run([str(RUNNER_PY), "-c", code, str(labelled), str(annotated["query"])],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert float(out.stdout) > 0.9
    manifest = json.loads(Path(str(labelled) + ".manifest.json").read_text())
    assert manifest["reference"]["uri"] == str(annotated["reference"])
    assert manifest["classifier"]["sha256"] and manifest["held_out_scores"]["macro_f1"] > 0.9


def test_provenance_is_complete(annotated):
    record = json.loads(
        (_run_folder(annotated, annotated["manual"]) / "provenance.json").read_text()
    )
    assert record["dag_id"] == DAG and record["run_id"] == annotated["manual"]
    assert [c["status"] for c in record["classifiers"]] == ["trained"] * 4
    assert [p["status"] for p in record["predictions"]] == ["labelled"] * 4
    assert record["report"].endswith("annotation.html")
