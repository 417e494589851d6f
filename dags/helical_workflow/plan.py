"""Shard planning and the output layout of a run.

Layout under ``<output_root>/<run>/`` (``<run>`` is the Airflow run id made
path-safe)::

    <dataset>/shards/<model>/<start>-<stop>.h5ad   one per shard (an embed task writes a run of them)
    <dataset>/embeddings/<model>.h5ad              merged, + .manifest.json
    <dataset>/report/report.html                   + metrics.json, PNG figures
    provenance.json                                the whole run's record
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from . import profiles

log = logging.getLogger(__name__)


def safe_run_id(run_id: str) -> str:
    """Airflow run ids hold ':' and '+': keep them readable but path- and S3-safe."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("_") or "run"


def join(root: str, *parts: str) -> str:
    """Join a local path or an ``s3://`` URI with '/' (URIs are not OS paths)."""
    return "/".join([root.rstrip("/"), *parts])


def cell_ranges(n_cells: int, cells_per_shard: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` ranges covering ``n_cells``, each at most ``cells_per_shard``.

    >>> cell_ranges(5, 2)
    [(0, 2), (2, 4), (4, 5)]
    """
    if cells_per_shard <= 0:
        raise ValueError(f"cells_per_shard must be positive, not {cells_per_shard}")
    return [(s, min(s + cells_per_shard, n_cells)) for s in range(0, n_cells, cells_per_shard)]


# A task's fixed cost (runner start-up: imports, model load, exit) is at most this
# share of it, unless the work is too small to fill the executor's slots otherwise.
FIXED_COST_SHARE = 0.10
# Planned work fills at most this share of a task's time limit: the profile's
# cells/s is a measurement on one machine, and cell lengths vary between datasets.
TIMEOUT_SHARE = 0.5
# Shards per task at most: keeps a task's command line (a --cells/--output pair
# per shard) far below argv and pod-spec limits.
MAX_SHARDS_PER_TASK = 1000


def tasks_per_group(groups: list[dict[str, Any]], *, slots: int) -> list[int]:
    """How many embed tasks each (dataset, model) gets; each task embeds a run of
    consecutive shards in one warm runner process.

    :param groups: ``{"shards": n, "cells": n, "cells_per_second": float | None,
        "startup_s": float, "timeout_s": float}`` per dataset x model.
        ``cells_per_second`` None (no measured figure for the device): one shard per task.
    :param slots: tasks the executor runs at once.
    :returns: per group a count in ``1..shards``: enough tasks that each fits
        :data:`TIMEOUT_SHARE` of the time limit; as many as its share of ``slots``
        when that leaves each task's start-up <= :data:`FIXED_COST_SHARE` of it;
        otherwise as few as keep start-up under that share.

    >>> g = {"shards": 200, "cells": 2000, "startup_s": 5.0, "timeout_s": 3600.0}
    >>> tasks_per_group([{**g, "cells_per_second": 1.0}], slots=2)    # 2,000 s of work
    [2]
    >>> tasks_per_group([{**g, "cells_per_second": 500.0}], slots=2)  # 4 s: one warm task
    [1]
    >>> tasks_per_group([{**g, "cells_per_second": 0.1}], slots=2)    # 20,000 s: timeout-bound
    [12]
    """
    work = [
        g["cells"] / g["cells_per_second"] if g.get("cells_per_second") else None for g in groups
    ]
    shares = iter(slot_shares(slots, [w for w in work if w is not None]))
    counts = []
    for group, work_s in zip(groups, work, strict=True):
        if work_s is None:
            counts.append(group["shards"])  # no measured speed: one shard per task
            continue
        startup = max(float(group["startup_s"]), 0.0)
        budget = max(group["timeout_s"] * TIMEOUT_SHARE - startup, 1.0)
        fit_timeout = math.ceil(work_s / budget)
        # start-up / (start-up + work per task) <= FIXED_COST_SHARE
        most_efficient = (
            math.floor(work_s * FIXED_COST_SHARE / ((1 - FIXED_COST_SHARE) * startup))
            if startup
            else group["shards"]
        )
        slot_share = next(shares)
        fit_argv = math.ceil(group["shards"] / MAX_SHARDS_PER_TASK)
        wanted = max(fit_timeout, fit_argv, min(slot_share, most_efficient), 1)
        counts.append(min(group["shards"], wanted))
    return counts


def slot_shares(slots: int, work: list[float]) -> list[int]:
    """``slots`` shared in proportion to ``work`` (largest remainders), each at least 1.

    >>> slot_shares(2, [2000.0, 3333.0])
    [1, 1]
    >>> slot_shares(8, [100.0, 300.0])
    [2, 6]
    """
    total = sum(work) or 1.0
    quotas = [slots * w / total for w in work]
    shares = [max(1, math.floor(q)) for q in quotas]
    for i in sorted(range(len(work)), key=lambda i: shares[i] - quotas[i]):
        if sum(shares) >= slots:
            break
        shares[i] += 1
    return shares


def split_runs(items: list[Any], n: int) -> list[list[Any]]:
    """``items`` cut into ``n`` consecutive runs whose lengths differ by at most one.

    >>> split_runs([1, 2, 3, 4, 5], 2)
    [[1, 2, 3], [4, 5]]
    """
    size, extra = divmod(len(items), n)
    runs, start = [], 0
    for i in range(n):
        stop = start + size + (i < extra)
        runs.append(items[start:stop])
        start = stop
    return runs


def plan_run(
    *,
    validated: list[dict[str, Any]],
    models: list[str],
    overrides: dict[str, dict[str, Any]],
    run_root: str,
    slots: int = 1,
    gpus: bool = True,
) -> dict[str, Any]:
    """Every embed task, merge and report of a run; embed tasks grouped by Airflow pool.

    Shards of ``cells_per_shard`` cells stay the unit of checkpointing, output and
    merge; an embed task embeds a run of consecutive shards of one dataset and model
    in one runner process (:func:`tasks_per_group` sizes the runs).

    :param validated: one dict per dataset that passed validation, with ``uri``,
        ``name`` and ``n_cells`` (from ``helical-runner validate --json``).
    :param models: model names; each must have a profile.
    :param overrides: model -> profile fields to override.
    :param run_root: ``<output_root>/<run>``.
    :param slots: embed tasks the executor runs at once.
    :param gpus: whether runners get the GPUs their profiles ask for (which
        ``cells_per_second`` figure of the profile applies).
    :returns: ``{<pool>: [task, ...] for every known pool, "merges": [...],
        "reports": [...], "run_root": run_root}`` where a task holds everything
        one embed task needs (its ``shards``: ``start``, ``stop``, ``output``, in
        cell order), a merge lists a (dataset, model)'s shard outputs in cell
        order and a report lists a dataset's planned embeddings.
    """
    groups: list[dict[str, Any]] = []
    merges: list[dict[str, Any]] = []
    for ds in validated:
        for model in models:
            model_overrides = overrides.get(model, {})
            profile = profiles.load_profile(model, model_overrides)
            shards = [
                {
                    "start": start,
                    "stop": stop,
                    "output": join(
                        run_root, ds["name"], "shards", model, f"{start:09d}-{stop:09d}.h5ad"
                    ),
                }
                for start, stop in cell_ranges(ds["n_cells"], profile["cells_per_shard"])
            ]
            groups.append(
                {
                    "pool": profiles.pool_name(profile),
                    "shard_list": shards,
                    "shards": len(shards),
                    "cells": ds["n_cells"],
                    "cells_per_second": profiles.cells_per_second(profile, gpus=gpus),
                    "startup_s": profile.get("startup_s", 0.0),
                    "timeout_s": profile["timeout_minutes"] * 60.0,
                    "task": {
                        "dataset": ds["uri"],
                        "dataset_name": ds["name"],
                        "sha256": ds.get("sha256"),
                        "model": model,
                        "overrides": model_overrides,
                        "timeout_minutes": profile["timeout_minutes"],
                        "run_root": run_root,
                    },
                }
            )
            merges.append(
                {
                    "dataset": ds["uri"],
                    "dataset_name": ds["name"],
                    "model": model,
                    "shards": [s["output"] for s in shards],
                    "output": join(run_root, ds["name"], "embeddings", f"{model}.h5ad"),
                    "run_root": run_root,
                }
            )
    tasks: dict[str, list[dict[str, Any]]] = {}
    for group, n in zip(groups, tasks_per_group(groups, slots=slots), strict=True):
        for run in split_runs(group["shard_list"], n):
            tasks.setdefault(group["pool"], []).append({**group["task"], "shards": run})
    reports = [
        {
            "dataset": ds["uri"],
            "dataset_name": ds["name"],
            "embeddings": [m["output"] for m in merges if m["dataset"] == ds["uri"]],
            "output_dir": join(run_root, ds["name"], "report"),
            "run_root": run_root,
        }
        for ds in validated
    ]
    return {
        **{pool: tasks.get(pool, []) for pool in profiles.known_pools()},
        "merges": merges,
        "reports": reports,
        "run_root": run_root,
    }


def run_root(output_root: str, run_id: str) -> str:
    """``<output_root>/<run>``: where every output of one DAG run lands."""
    return join(output_root, safe_run_id(run_id))


def models_and_overrides(params: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Requested models (deduplicated, in order) and their profile overrides, checked:
    each model has a profile whose GPU type has an Airflow pool.

    :raises profiles.ProfileError: no models, overrides for models not requested,
        an unknown model or override, or a GPU type without a pool.
    """
    models = list(dict.fromkeys(params["models"]))
    if not models:
        raise profiles.ProfileError("no models given: set the 'models' parameter")
    overrides = params.get("profile_overrides") or {}
    unused = sorted(set(overrides) - set(models))
    if unused:
        raise profiles.ProfileError(f"profile_overrides for models not requested: {unused}")
    for model in models:
        profile = profiles.load_profile(model, overrides.get(model))
        if profiles.pool_name(profile) not in profiles.known_pools():
            raise profiles.ProfileError(
                f"{model}: no Airflow pool for {profiles.pool_name(profile)} "
                f"(pools: {profiles.known_pools()}); add a profile using that GPU type"
            )
    return models, overrides


def task_suffix(pool: str) -> str:
    """``gpu-nvidia-a10g`` -> ``gpu_nvidia_a10g`` (the embed task of a pool: ``embed_<suffix>``)."""
    return pool.replace("-", "_")


def longest_timeout_minutes(pool: str) -> int:
    """Pools are fixed at parse time, so each GPU type gets its own embed task; its
    Airflow timeout covers the longest profile of the pool (each shard gets its own)."""
    return max(
        p["timeout_minutes"]
        for p in map(profiles.load_profile, profiles.available_models())
        if profiles.pool_name(p) == pool
    )


def quote_hints(
    params: dict[str, Any], planned: dict[str, Any], *, gpus: bool, slots: int
) -> dict[str, Any]:
    """What ``helical-runner provenance`` needs to quote the run beside what it measured:
    the device the planner planned for, the embed jobs at once, each model's GPUs per
    job and embed tasks (warm runners: each pays its start-up once)."""
    overrides = params.get("profile_overrides") or {}
    per_job = {}
    for model in dict.fromkeys(params.get("models") or []):
        try:
            profile = profiles.load_profile(model, overrides.get(model))
        except profiles.ProfileError:
            continue  # the run already failed on it in resolve; nothing to quote
        per_job[model] = int(((profile.get("resources") or {}).get("gpu") or {}).get("count") or 0)
    return {
        "device": "gpu" if gpus else "cpu",
        "parallel": max(1, slots),
        "gpus": per_job,
        "tasks": planned.get("tasks_by_model") or {},
    }


def unless_dry_run(planned: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The plan (with ``tasks_by_model``: embed tasks per model, for the quote), or
    (param ``dry_run``) the same plan with nothing in it: the run validates its
    datasets and writes the quote (write_provenance), embeds nothing."""
    counts: dict[str, int] = {}
    for pool in profiles.known_pools():
        for task in planned.get(pool, []):
            counts[task["model"]] = counts.get(task["model"], 0) + 1
    if not params.get("dry_run"):
        return {**planned, "tasks_by_model": counts}
    log.info("dry run: nothing is embedded; the quote is in the write_provenance task log")
    return {**{key: [] for key in planned}, "tasks_by_model": counts}
