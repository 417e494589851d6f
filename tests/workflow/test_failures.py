"""Bad input fails fast without retries; transient failures are retried."""

from __future__ import annotations

import json
from pathlib import Path

RUN_TIMEOUT = 600


def _tis(airflow, run_id, task_id):
    return [ti for ti in airflow.task_instances(run_id) if ti.task_id == task_id]


def test_corrupt_dataset_fails_validation_without_retries_good_one_completes(airflow, data_dir):
    run_id = airflow.trigger(
        {
            "datasets": [str(data_dir / "corrupt" / "corrupt.h5ad"), str(data_dir / "small_c")],
            "models": ["geneformer"],
        }
    )
    state = airflow.wait(run_id, RUN_TIMEOUT)
    assert state == "failed"  # the run reports the bad dataset
    validations = {ti.rendered_map_index: ti for ti in _tis(airflow, run_id, "validate")}
    bad, good = validations["corrupt"], validations["small_c"]
    assert str(bad.state.value) == "failed"
    assert bad.try_number == 1, "bad input must not be retried"
    log = airflow.log(run_id, bad)
    assert "helical-runner: error" in log and "not retried" in log
    assert str(good.state.value) == "success"
    # the good dataset went all the way through
    merges = _tis(airflow, run_id, "merge")
    assert [str(m.state.value) for m in merges] == ["success"]
    assert merges[0].rendered_map_index == "small_c/geneformer"
    assert [str(r.state.value) for r in _tis(airflow, run_id, "report")] == ["success"]
    # provenance is written, and the run is marked failed because of the bad dataset
    (prov,) = _tis(airflow, run_id, "record_provenance")
    assert str(prov.state.value) == "failed" and prov.try_number == 1
    assert "failed validation: ['corrupt']" in airflow.log(run_id, prov)


def test_transient_exit_is_retried_and_the_run_succeeds(airflow, data_dir):
    dataset = str(data_dir / "small_d" / "small_d.h5ad")
    marker = airflow.flaky_dir / "small_d"
    marker.write_text(dataset)  # the wrapper exits 75 once for this dataset's embed
    run_id = airflow.trigger({"datasets": [dataset], "models": ["geneformer"]})
    assert airflow.wait(run_id, RUN_TIMEOUT) == "success"
    assert not marker.exists(), "the injected failure never happened"
    (embed,) = _tis(airflow, run_id, "embed_gpu_nvidia_a10g")
    assert str(embed.state.value) == "success"
    assert embed.try_number == 2, "one transient failure, one retry"


def test_a_failed_shard_fails_the_run_but_not_the_other_datasets(airflow, data_dir):
    broken = str(data_dir / "small_e" / "small_e.h5ad")
    marker = airflow.broken_dir / "small_e"
    marker.write_text(broken)  # every embed of small_e exits 2
    try:
        run_id = airflow.trigger(
            {"datasets": [broken, str(data_dir / "small_c")], "models": ["geneformer"]}
        )
        state = airflow.wait(run_id, RUN_TIMEOUT)
    finally:
        marker.unlink()
    assert state == "failed", "a run with a missing output must not look green"
    embeds = {ti.rendered_map_index: ti for ti in _tis(airflow, run_id, "embed_gpu_nvidia_a10g")}
    assert str(embeds["small_e/geneformer/0:90"].state.value) == "failed"
    assert embeds["small_e/geneformer/0:90"].try_number == 1, "exit 2 is not retried"
    assert str(embeds["small_c/geneformer/0:120"].state.value) == "success"
    # the good dataset is merged and reported although another dataset's shard failed
    merges = {ti.rendered_map_index: ti for ti in _tis(airflow, run_id, "merge")}
    assert str(merges["small_c/geneformer"].state.value) == "success"
    assert str(merges["small_e/geneformer"].state.value) == "failed"
    assert "shard output or its manifest is missing" in airflow.log(
        run_id, merges["small_e/geneformer"]
    )
    reports = {ti.rendered_map_index: ti for ti in _tis(airflow, run_id, "report")}
    assert str(reports["small_c"].state.value) == "success"
    assert "small_e" not in reports  # nothing merged: no report job, and the reason is logged
    (jobs,) = _tis(airflow, run_id, "report_jobs")
    assert "no embedding of small_e was merged" in airflow.log(run_id, jobs)
    # provenance names what is missing, and is what fails the run
    (prov,) = _tis(airflow, run_id, "record_provenance")
    assert str(prov.state.value) == "failed"
    assert "outputs missing (an embed or merge task failed): ['small_e/geneformer']" in (
        airflow.log(run_id, prov)
    )
    roots = Path(airflow.env["HELICAL_OUTPUT_ROOT"]).glob("*/provenance.json")
    (record,) = [r for p in roots if (r := json.loads(p.read_text()))["run_id"] == run_id]
    status = {(o["dataset_name"], o["status"]) for o in record["outputs"]}
    assert status == {("small_c", "merged"), ("small_e", "missing")}
    assert {(r["dataset_name"], r["status"]) for r in record["reports"]} == {
        ("small_c", "written"),
        ("small_e", "missing"),
    }
    good = next(o for o in record["outputs"] if o["dataset_name"] == "small_c")
    assert Path(good["output"]).is_file() and good["cells"] == 120
