"""Unit tests of the DAG's logic package: no scheduler, no runner."""

from __future__ import annotations

import sys
import threading
import time

import pytest
from airflow.sdk.exceptions import AirflowFailException

from helical_workflow import inputs, jobs, local, plan, pools, profiles, provenance, runner, steps

# ----------------------------------------------------------------- profiles


def test_profiles_come_from_the_runner_yaml():
    assert {"geneformer", "scgpt", "uce"} <= set(profiles.available_models())
    gf = profiles.load_profile("geneformer")
    assert gf["cells_per_shard"] > 0 and gf["timeout_minutes"] > 0
    assert profiles.pool_name(gf) == f"gpu-{gf['resources']['gpu']['type']}"


def test_overrides_merge_deeply_and_unknown_fields_are_refused():
    p = profiles.load_profile("uce", {"cells_per_shard": 7, "resources": {"memory": "8Gi"}})
    assert p["cells_per_shard"] == 7
    assert p["resources"]["memory"] == "8Gi" and p["resources"]["gpu"]["type"] == "nvidia-l40s"
    with pytest.raises(profiles.ProfileError, match="not allowed"):
        profiles.load_profile("uce", {"helical_model_name": "other"})
    with pytest.raises(profiles.ProfileError, match="positive integer"):
        profiles.load_profile("uce", {"cells_per_shard": 0})
    with pytest.raises(profiles.ProfileError, match="unknown model 'nope'"):
        profiles.load_profile("nope")


def test_profiles_dir_is_overridable(tmp_path, monkeypatch):
    (tmp_path / "tiny.yaml").write_text(
        "model: tiny\ncells_per_shard: 5\ntimeout_minutes: 1\nresources: {cpu: '1', memory: 1Gi}\n"
    )
    monkeypatch.setenv("HELICAL_PROFILES_DIR", str(tmp_path))
    assert profiles.available_models() == ["tiny"]
    assert profiles.pool_name(profiles.load_profile("tiny")) == "cpu-runners"


def test_runner_side_overrides_become_flags():
    assert profiles.runner_overrides(
        {"batch_size": 8, "precision": "bf16", "cells_per_shard": 3}
    ) == [
        "--batch-size",
        "8",
        "--precision",
        "bf16",
    ]


def test_pools_document_has_one_pool_per_gpu_type():
    doc = pools.pools_document(3)
    assert set(doc) == set(profiles.known_pools())
    assert all(p["slots"] == 3 for p in doc.values())


# ------------------------------------------------------------------- inputs


def _no_s3(prefix):
    raise AssertionError(f"no S3 listing expected, got {prefix}")


def test_folders_expand_to_their_h5ad_files(tmp_path):
    (tmp_path / "b.h5ad").touch()
    (tmp_path / "a.h5ad").touch()
    (tmp_path / "notes.txt").touch()
    single = tmp_path / "x" / "a.h5ad"
    single.parent.mkdir()
    single.touch()
    uris = inputs.expand_datasets(
        [str(tmp_path), str(single), str(tmp_path / "a.h5ad")], list_s3=_no_s3
    )
    assert uris == [str(tmp_path / "a.h5ad"), str(tmp_path / "b.h5ad"), str(single)]
    assert list(inputs.dataset_names(uris).values()) == ["a", "b", "a-2"]


def test_missing_or_empty_inputs_fail_with_a_clear_message(tmp_path):
    with pytest.raises(inputs.InputError, match="does not exist"):
        inputs.expand_datasets([str(tmp_path / "missing.h5ad")], list_s3=_no_s3)
    with pytest.raises(inputs.InputError, match=r"no \.h5ad files"):
        inputs.expand_datasets([str(tmp_path)], list_s3=_no_s3)
    with pytest.raises(inputs.InputError, match="no datasets"):
        inputs.expand_datasets([], list_s3=_no_s3)
    with pytest.raises(inputs.InputError, match=r"no \.h5ad files under 's3://lake/empty/'"):
        inputs.expand_datasets(["s3://lake/empty/"], list_s3=lambda prefix: [])


def test_s3_prefixes_are_listed_by_the_given_lister_objects_are_not():
    asked = []

    def lister(prefix):
        asked.append(prefix)
        return [prefix + "b.h5ad", prefix + "a.h5ad"]

    uris = inputs.expand_datasets(["s3://lake/atlas/", "s3://lake/one.h5ad"], list_s3=lister)
    assert asked == ["s3://lake/atlas/"]
    assert uris == ["s3://lake/atlas/b.h5ad", "s3://lake/atlas/a.h5ad", "s3://lake/one.h5ad"]


# --------------------------------------------------------------------- plan


@pytest.mark.parametrize(
    ("n", "per", "expected"),
    [(5, 2, [(0, 2), (2, 4), (4, 5)]), (4, 2, [(0, 2), (2, 4)]), (1, 10, [(0, 1)]), (0, 3, [])],
)
def test_cell_ranges_cover_every_cell_once(n, per, expected):
    assert plan.cell_ranges(n, per) == expected


def test_plan_groups_shards_by_pool_and_keeps_merge_order():
    validated = [{"uri": "/d/a.h5ad", "name": "a", "n_cells": 25, "sha256": "f" * 64}]
    planned = plan.plan_run(
        validated=validated,
        models=["geneformer", "uce"],
        overrides={"geneformer": {"cells_per_shard": 10}, "uce": {"cells_per_shard": 20}},
        run_root="s3://out/run_1",
    )
    # no measured GPU speed in the profiles: one shard per task, as planned before
    gf = planned["gpu-nvidia-a10g"]
    assert [[(s["start"], s["stop"]) for s in t["shards"]] for t in gf] == [
        [(0, 10)],
        [(10, 20)],
        [(20, 25)],
    ]
    assert [(s["start"], s["stop"]) for t in planned["gpu-nvidia-l40s"] for s in t["shards"]] == [
        (0, 20),
        (20, 25),
    ]
    merge_gf = next(m for m in planned["merges"] if m["model"] == "geneformer")
    assert merge_gf["shards"] == [s["output"] for t in gf for s in t["shards"]]
    assert merge_gf["output"] == "s3://out/run_1/a/embeddings/geneformer.h5ad"
    assert gf[0]["sha256"] == "f" * 64


def test_run_ids_become_safe_paths():
    assert (
        plan.safe_run_id("manual__2026-11-24T18:29:23.17+00:00")
        == "manual__2026-11-24T18_29_23.17_00_00"
    )


# ------------------------------------------------------------------- runner


def test_embed_command_carries_range_hash_overrides_and_labels():
    task = {
        "dataset": "/d/a.h5ad",
        "model": "scgpt",
        "shards": [
            {"start": 10, "stop": 20, "output": "/o/x.h5ad"},
            {"start": 20, "stop": 25, "output": "/o/y.h5ad"},
        ],
        "sha256": "ab",
        "overrides": {"batch_size": 4},
    }
    labels = runner.run_labels(dag_id="d", task_id="t", run_id="r", shard="10:20")
    args = runner.embed_args(task, labels=labels)
    # one runner for the task: each shard a --cells/--output pair, in cell order
    assert args[:13] == [
        "embed",
        "--input",
        "/d/a.h5ad",
        "--model",
        "scgpt",
        "--cells",
        "10:20",
        "--output",
        "/o/x.h5ad",
        "--cells",
        "20:25",
        "--output",
        "/o/y.h5ad",
    ]
    assert args[args.index("--input-sha256") + 1] == "ab"
    assert args[args.index("--batch-size") + 1] == "4"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--run-label"] == [
        "dag_id=d",
        "task_id=t",
        "run_id=r",
        "shard=10:20",
    ]


@pytest.mark.parametrize("code", [75, 137, -9, 143, -15])
def test_transient_exits_are_retryable(code):
    with pytest.raises(runner.RunnerTransientError, match=f"exit {code}"):
        runner.raise_for_exit(code, what="embed x")


@pytest.mark.parametrize(("code", "kind"), [(2, "bad input"), (1, "runner error")])
def test_bad_input_and_bugs_fail_without_retry(code, kind):
    with pytest.raises(AirflowFailException, match=kind) as err:
        runner.raise_for_exit(code, what="validate x", message="helical-runner: error: corrupt (x)")
    assert "helical-runner: error: corrupt" in str(err.value)
    runner.raise_for_exit(0, what="ok")


def test_passthrough_env_only_carries_runner_settings(monkeypatch):
    monkeypatch.setenv("HELICAL_RUNNER_MODEL_STORE", "/store")
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "s3cr3t")
    env = runner.passthrough_env()
    assert env["HELICAL_RUNNER_MODEL_STORE"] == "/store"
    assert "AIRFLOW__API_AUTH__JWT_SECRET" not in env


# -------------------------------------------------------------------- local


def _fake_runner(tmp_path, monkeypatch, body: str) -> None:
    """A stand-in ``helical-runner`` (the operator's contract is exit codes and output)."""
    script = tmp_path / "helical-runner"
    script.write_text(f"#!{sys.executable}\nimport os, sys, json, subprocess, time\n{body}\n")
    script.chmod(0o755)
    monkeypatch.setenv("HELICAL_RUNNER_BIN", str(script))


def _local(**job):
    return local.LocalRunnerOperator(task_id="validate", **{"job_label": "x", **job})


def test_local_operator_returns_the_json_result_and_the_job_result(tmp_path, monkeypatch, capsys):
    _fake_runner(
        tmp_path,
        monkeypatch,
        "print('loading', file=sys.stderr); print(json.dumps({'n_cells': 3, 'argv': sys.argv[1:]}))",
    )
    op = _local(runner_args=["validate", "--json"], want_json=True, job_result={"name": "x"})
    out = op.execute({})
    assert out == {"n_cells": 3, "argv": ["validate", "--json"], "name": "x"}
    assert "loading" in capsys.readouterr().out  # the runner's stderr is in the task log


def test_local_operator_bad_input_fails_without_retry_with_the_runner_line(tmp_path, monkeypatch):
    _fake_runner(
        tmp_path,
        monkeypatch,
        "print('helical-runner: error: corrupt file (x.h5ad)', file=sys.stderr); sys.exit(2)",
    )
    with pytest.raises(AirflowFailException, match="not retried: helical-runner: error: corrupt"):
        _local(runner_args=["validate"]).execute({})


def test_local_operator_transient_exit_is_retried(tmp_path, monkeypatch):
    _fake_runner(tmp_path, monkeypatch, "sys.exit(75)")
    with pytest.raises(runner.RunnerTransientError, match="exit 75"):
        _local(runner_args=["embed"]).execute({})


def test_local_operator_hides_airflow_settings_from_the_runner(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql://u:pw@db/airflow")
    monkeypatch.setenv("HELICAL_RUNNER_MODEL_STORE", "/store")
    _fake_runner(
        tmp_path,
        monkeypatch,
        "print(json.dumps({'airflow': sorted(k for k in os.environ if k.startswith('AIRFLOW')),"
        " 'store': os.environ.get('HELICAL_RUNNER_MODEL_STORE')}))",
    )
    out = _local(runner_args=["ls"], want_json=True).execute({})
    assert out == {"airflow": [], "store": "/store"}


def test_local_operator_timeout_is_the_jobs_own():
    op = _local(runner_args=["embed"], timeout_s=60)
    assert op.execution_timeout.total_seconds() == 60 + steps.TIMEOUT_GRACE_S


def test_local_operator_on_kill_stops_the_runner_and_its_children(tmp_path, monkeypatch):
    pidfile = tmp_path / "child.pid"
    _fake_runner(
        tmp_path,
        monkeypatch,
        f"p = subprocess.Popen(['sleep', '60']); open('{pidfile}', 'w').write(str(p.pid)); time.sleep(60)",
    )
    op = _local(runner_args=["embed"])
    errors = []
    thread = threading.Thread(target=lambda: _catch(errors, op.execute, {}))
    thread.start()
    deadline = time.monotonic() + 20
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pidfile.exists(), "the runner never started"
    op.on_kill()  # what Airflow calls when the task is marked failed or times out
    thread.join(20)
    assert not thread.is_alive()
    # killed by SIGTERM: retried like any other kill
    assert isinstance(errors[0], runner.RunnerTransientError), errors
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().split()[2] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the runner's child survived on_kill")


def _catch(errors, fn, *args):
    try:
        fn(*args)
    except BaseException as exc:
        errors.append(exc)


# --------------------------------------------------------------------- jobs


def test_jobs_hand_each_step_what_it_needs_without_reparsing_paths():
    validated = [{"uri": "/d/a.h5ad", "name": "a", "n_cells": 25, "sha256": "f" * 64}]
    planned = plan.plan_run(
        validated=validated,
        models=["geneformer"],
        overrides={"geneformer": {"cells_per_shard": 10}},
        run_root="/out/run_1",
    )
    embeds = jobs.embed_jobs(
        planned["gpu-nvidia-a10g"], dag_id="d", task_id="embed_gpu_nvidia_a10g", run_id="r"
    )
    assert [j["job_label"] for j in embeds] == [
        "a/geneformer/0:10",
        "a/geneformer/10:20",
        "a/geneformer/20:25",
    ]
    assert all(
        j["output_root"] == "/out/run_1" and j["data_paths"] == ["/d/a.h5ad"] for j in embeds
    )
    assert embeds[0]["job_resources"]["gpu"]["type"] == "nvidia-a10g"
    assert "task_id=embed_gpu_nvidia_a10g" in embeds[0]["runner_args"]
    (merge,) = jobs.merge_jobs(planned["merges"])
    assert (
        merge["job_result"]["manifest"] == "/out/run_1/a/embeddings/geneformer.h5ad.manifest.json"
    )
    # the report only gets the embeddings whose merge succeeded; none merged: no report
    assert jobs.report_jobs(planned["reports"], [], label_key="cell_type") == []
    (report,) = jobs.report_jobs(planned["reports"], [merge["job_result"]], label_key="cell_type")
    assert report["job_result"]["html"] == "/out/run_1/a/report/report.html"
    assert report["runner_args"][report["runner_args"].index("--label-key") + 1] == "cell_type"


def test_ls_jobs_only_for_s3_prefixes_and_listing_feeds_expand():
    listed = jobs.ls_jobs(["/tmp/dir", "s3://lake/p/", "s3://lake/x.h5ad", "s3://lake/p/"])
    assert [j["runner_args"] for j in listed] == [["ls", "s3://lake/p/"]]
    found = jobs.listed_prefixes([{"datasets": {"s3://lake/p/": ["s3://lake/p/a.h5ad"]}}, None])
    assert inputs.expand_datasets(["s3://lake/p/"], list_s3=found.__getitem__) == [
        "s3://lake/p/a.h5ad"
    ]
    # a prefix outside the allowed roots is refused before the runner lists anything
    with pytest.raises(inputs.InputError, match="outside the allowed roots"):
        jobs.ls_jobs(["s3://other-team/p/"])


def test_models_are_checked_before_any_work():
    with pytest.raises(profiles.ProfileError, match="no models"):
        plan.models_and_overrides({"models": []})
    with pytest.raises(profiles.ProfileError, match="not requested"):
        plan.models_and_overrides({"models": ["uce"], "profile_overrides": {"scgpt": {}}})
    assert plan.models_and_overrides({"models": ["uce", "uce"]}) == (["uce"], {})


def test_provenance_problems_name_what_is_missing():
    record = {
        "datasets": [
            {"name": "a", "status": "validated"},
            {"name": "b", "status": "failed validation"},
        ],
        "outputs": [{"dataset_name": "a", "model": "uce", "status": "missing"}],
        "reports": [{"dataset_name": "a", "status": "written"}],
    }
    assert provenance.problems(record) == [
        "failed validation: ['b']",
        "outputs missing (an embed or merge task failed): ['a/uce']",
    ]


def test_provenance_problems_a_run_that_planned_nothing_fails():
    # resolve or plan_shards failed: no dataset, no output; the run must not end `success`
    record = {"datasets": [], "outputs": [], "reports": []}
    assert provenance.problems(record) == [
        "no output was planned: see the resolve, validate and plan_shards task logs"
    ]
