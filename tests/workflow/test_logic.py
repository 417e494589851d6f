"""Unit tests of the DAG's logic package: no scheduler, no runner."""

from __future__ import annotations

import sys
import time

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowTaskTimeout

from helical_workflow import inputs, local, plan, pools, profiles, runner

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
    gf = planned["shards"]["gpu-nvidia-a10g"]
    assert [(s["start"], s["stop"]) for s in gf] == [(0, 10), (10, 20), (20, 25)]
    assert [(s["start"], s["stop"]) for s in planned["shards"]["gpu-nvidia-l40s"]] == [
        (0, 20),
        (20, 25),
    ]
    merge_gf = next(m for m in planned["merges"] if m["model"] == "geneformer")
    assert merge_gf["shards"] == [s["output"] for s in gf]
    assert merge_gf["output"] == "s3://out/run_1/a/embeddings/geneformer.h5ad"
    assert gf[0]["sha256"] == "f" * 64


def test_run_ids_become_safe_paths():
    assert (
        plan.safe_run_id("manual__2026-11-24T18:29:23.17+00:00")
        == "manual__2026-11-24T18_29_23.17_00_00"
    )


# ------------------------------------------------------------------- runner


def test_embed_command_carries_range_hash_overrides_and_labels():
    shard = {
        "dataset": "/d/a.h5ad",
        "model": "scgpt",
        "output": "/o/x.h5ad",
        "start": 10,
        "stop": 20,
        "sha256": "ab",
        "overrides": {"batch_size": 4},
    }
    labels = runner.run_labels(dag_id="d", task_id="t", run_id="r", shard="10:20")
    args = runner.embed_args(shard, labels=labels)
    assert args[:9] == [
        "embed",
        "--input",
        "/d/a.h5ad",
        "--model",
        "scgpt",
        "--output",
        "/o/x.h5ad",
        "--cells",
        "10:20",
    ]
    assert args[args.index("--input-sha256") + 1] == "ab"
    assert args[args.index("--batch-size") + 1] == "4"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--run-label"] == [
        "dag_id=d",
        "task_id=t",
        "run_id=r",
        "shard=10:20",
    ]


@pytest.mark.parametrize("code", [75, 137, -9])
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


def test_local_run_streams_both_streams_and_keeps_the_error_line(caplog):
    code = "import sys; print('{\"ok\": true}'); print('helical-runner: error: bad (x)', file=sys.stderr); sys.exit(2)"
    with caplog.at_level("INFO", logger="helical_workflow.local"):
        result = local.run([sys.executable, "-c", code], env={})
    assert result.code == 2 and result.stdout == '{"ok": true}'
    assert result.error == "helical-runner: error: bad (x)"
    assert "[runner stderr] helical-runner: error: bad (x)" in caplog.text


def test_local_run_hides_airflow_settings_from_the_runner(monkeypatch):
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql://u:pw@db/airflow")
    code = "import os; print(sorted(k for k in os.environ if k.startswith('AIRFLOW')))"
    assert local.run([sys.executable, "-c", code], env={"X": "1"}).stdout == "[]"


def test_local_run_kills_the_process_group_at_the_timeout(tmp_path):
    pidfile = tmp_path / "child.pid"
    code = f"import subprocess, time; p = subprocess.Popen(['sleep', '60']); open('{pidfile}', 'w').write(str(p.pid)); time.sleep(60)"
    start = time.monotonic()
    with pytest.raises(AirflowTaskTimeout):
        local.run([sys.executable, "-c", code], env={}, timeout_s=2)
    assert time.monotonic() - start < 10
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
        pytest.fail("the runner's child survived the timeout")
