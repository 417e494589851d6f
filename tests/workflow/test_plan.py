"""Embed tasks as runs of consecutive shards: sized from the profile's speed and start-up."""

from __future__ import annotations

import pytest

from helical_workflow import jobs, plan, profiles

DATASET = {"uri": "/d/a.h5ad", "name": "a", "n_cells": 2000, "sha256": "f" * 64}
# a runner that embeds 1 cell/s and takes 5 s to start, on CPU
SPEED = {"cells_per_second": {"cpu": 1.0}, "startup_s": 5}


def _plan(models, overrides, *, slots, n_cells=2000, gpus=False):
    return plan.plan_run(
        validated=[{**DATASET, "n_cells": n_cells}],
        models=models,
        overrides=overrides,
        run_root="/out/run_1",
        slots=slots,
        gpus=gpus,
    )


def _runs(tasks):
    return [[(s["start"], s["stop"]) for s in t["shards"]] for t in tasks]


def test_each_shard_is_embedded_once_in_cell_order_and_merged_whole():
    planned = _plan(["geneformer"], {"geneformer": {"cells_per_shard": 10, **SPEED}}, slots=2)
    tasks = planned["gpu-nvidia-a10g"]
    shards = [s for t in tasks for s in t["shards"]]
    assert [(s["start"], s["stop"]) for s in shards] == plan.cell_ranges(2000, 10)
    (merge,) = planned["merges"]
    assert merge["shards"] == [s["output"] for s in shards]


def test_enough_work_keeps_every_slot_busy():
    # 2,000 s of work, 5 s start-up: two tasks of 100 shards (start-up 0.5% of each)
    planned = _plan(["geneformer"], {"geneformer": {"cells_per_shard": 10, **SPEED}}, slots=2)
    runs = _runs(planned["gpu-nvidia-a10g"])
    assert [len(r) for r in runs] == [100, 100]
    assert runs[0][-1] == (990, 1000) and runs[1][0] == (1000, 1010)


def test_little_work_goes_to_one_warm_task_per_model():
    # the demo: 2,000 cells, shards of 1,000, two models sharing two slots
    fast = {"cells_per_second": {"cpu": 400.0}, "startup_s": 5}
    overrides = {m: {"cells_per_shard": 1000, **fast} for m in ("geneformer", "scgpt")}
    planned = _plan(["geneformer", "scgpt"], overrides, slots=2)
    tasks = planned["gpu-nvidia-a10g"]
    assert [(t["model"], _runs([t])[0]) for t in tasks] == [
        ("geneformer", [(0, 1000), (1000, 2000)]),
        ("scgpt", [(0, 1000), (1000, 2000)]),
    ]


def test_the_demo_gets_one_warm_task_per_model_from_the_shipped_profiles():
    # scripts/demo.sh: 2,000 cells, cells_per_shard 1,000, two models, parallelism 2
    overrides = {m: {"cells_per_shard": 1000} for m in ("geneformer", "scgpt")}
    tasks = _plan(["geneformer", "scgpt"], overrides, slots=2)["gpu-nvidia-a10g"]
    assert [(t["model"], len(t["shards"])) for t in tasks] == [("geneformer", 2), ("scgpt", 2)]


def test_slots_are_shared_in_proportion_to_work():
    assert plan.slot_shares(2, [2000.0, 3333.0]) == [1, 1]
    assert plan.slot_shares(8, [100.0, 300.0]) == [2, 6]
    assert plan.slot_shares(2, [1.0, 1.0, 1.0]) == [1, 1, 1]


def test_start_up_stays_a_small_share_of_each_task():
    # 50 s of work, 5 s start-up: more than one task would spend > 10% starting
    slow_start = {"cells_per_second": {"cpu": 40.0}, "startup_s": 5}
    planned = _plan(["geneformer"], {"geneformer": {"cells_per_shard": 10, **slow_start}}, slots=8)
    assert len(planned["gpu-nvidia-a10g"]) == 1
    # 500 s of work: 8 slots would cost 8 x 5 s of start-up for 62 s tasks (7.4%): allowed
    planned = _plan(
        ["geneformer"],
        {"geneformer": {"cells_per_shard": 10, **slow_start}},
        slots=8,
        n_cells=20000,
    )
    tasks = planned["gpu-nvidia-a10g"]
    assert len(tasks) == 8
    for task in tasks:
        cells = task["shards"][-1]["stop"] - task["shards"][0]["start"]
        assert 5 / (5 + cells / 40.0) <= plan.FIXED_COST_SHARE


def test_a_task_fits_its_time_limit():
    # 20,000 s of work, a 60-minute limit: tasks planned for at most half of it
    slow = {"cells_per_second": {"cpu": 0.1}, "startup_s": 5, "timeout_minutes": 60}
    planned = _plan(["geneformer"], {"geneformer": {"cells_per_shard": 10, **slow}}, slots=1)
    tasks = planned["gpu-nvidia-a10g"]
    assert len(tasks) == 12
    for task in tasks:
        cells = task["shards"][-1]["stop"] - task["shards"][0]["start"]
        assert 5 + cells / 0.1 <= 60 * 60 * plan.TIMEOUT_SHARE


def test_without_a_measured_speed_each_shard_is_its_own_task():
    # GPU runners (pods) and a profile with only a CPU figure: as planned before
    planned = _plan(
        ["geneformer"], {"geneformer": {"cells_per_shard": 500, **SPEED}}, slots=2, gpus=True
    )
    assert _runs(planned["gpu-nvidia-a10g"]) == [[r] for r in plan.cell_ranges(2000, 500)]


def test_one_task_never_gets_more_shards_than_its_command_line_can_carry():
    fast = {"cells_per_second": {"cpu": 1e6}, "startup_s": 5}
    planned = _plan(
        ["geneformer"], {"geneformer": {"cells_per_shard": 1, **fast}}, slots=1, n_cells=2500
    )
    assert [len(r) for r in _runs(planned["gpu-nvidia-a10g"])] == [834, 833, 833]


def test_the_embed_job_runs_its_shards_in_one_runner():
    planned = _plan(["geneformer"], {"geneformer": {"cells_per_shard": 1000, **SPEED}}, slots=1)
    (job,) = jobs.embed_jobs(
        planned["gpu-nvidia-a10g"], dag_id="d", task_id="embed_gpu_nvidia_a10g", run_id="r"
    )
    assert job["job_label"] == "a/geneformer/0:2000 (2 shards)"
    args = job["runner_args"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--cells"] == ["0:1000", "1000:2000"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--output"] == [
        "/out/run_1/a/shards/geneformer/000000000-000001000.h5ad",
        "/out/run_1/a/shards/geneformer/000001000-000002000.h5ad",
    ]
    assert job["timeout_s"] == profiles.load_profile("geneformer")["timeout_minutes"] * 60


def test_shipped_profiles_carry_measured_cpu_speed_and_start_up():
    for model in profiles.available_models():
        profile = profiles.load_profile(model)
        assert profiles.cells_per_second(profile, gpus=False) > 0
        assert profile["startup_s"] > 0


@pytest.mark.parametrize(
    "bad",
    [{"cells_per_second": {"tpu": 3}}, {"cells_per_second": {"cpu": -1}}, {"startup_s": "fast"}],
)
def test_bad_speed_overrides_are_refused(bad):
    with pytest.raises(profiles.ProfileError, match=r"cells_per_second|startup_s"):
        profiles.load_profile("geneformer", bad)
