"""Shard planning and the output layout of a run.

Layout under ``<output_root>/<run>/`` (``<run>`` is the Airflow run id made
path-safe)::

    <dataset>/shards/<model>/<start>-<stop>.h5ad   one per mapped embed task
    <dataset>/embeddings/<model>.h5ad              merged, + .manifest.json
    <dataset>/report/report.html                   + metrics.json, PNG figures
    provenance.json                                the whole run's record
"""

from __future__ import annotations

import re
from typing import Any

from . import profiles


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


def plan_run(
    *,
    validated: list[dict[str, Any]],
    models: list[str],
    overrides: dict[str, dict[str, Any]],
    run_root: str,
) -> dict[str, Any]:
    """Every shard and merge of a run, grouped by Airflow pool.

    :param validated: one dict per dataset that passed validation, with ``uri``,
        ``name`` and ``n_cells`` (from ``helical-runner validate --json``).
    :param models: model names; each must have a profile.
    :param overrides: model -> profile fields to override.
    :param run_root: ``<output_root>/<run>``.
    :returns: ``{<pool>: [shard, ...] for every known pool, "merges": [...],
        "reports": [...], "run_root": run_root}`` where a shard holds everything
        one embed task needs, a merge lists a (dataset, model)'s shard outputs in
        cell order and a report lists a dataset's planned embeddings.
    """
    shards: dict[str, list[dict[str, Any]]] = {}
    merges: list[dict[str, Any]] = []
    for ds in validated:
        for model in models:
            model_overrides = overrides.get(model, {})
            profile = profiles.load_profile(model, model_overrides)
            pool = profiles.pool_name(profile)
            outputs = []
            for start, stop in cell_ranges(ds["n_cells"], profile["cells_per_shard"]):
                output = join(run_root, ds["name"], "shards", model, f"{start:09d}-{stop:09d}.h5ad")
                outputs.append(output)
                shards.setdefault(pool, []).append(
                    {
                        "dataset": ds["uri"],
                        "dataset_name": ds["name"],
                        "sha256": ds.get("sha256"),
                        "model": model,
                        "start": start,
                        "stop": stop,
                        "output": output,
                        "overrides": model_overrides,
                        "timeout_minutes": profile["timeout_minutes"],
                        "run_root": run_root,
                    }
                )
            merges.append(
                {
                    "dataset": ds["uri"],
                    "dataset_name": ds["name"],
                    "model": model,
                    "shards": outputs,
                    "output": join(run_root, ds["name"], "embeddings", f"{model}.h5ad"),
                    "run_root": run_root,
                }
            )
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
        **{pool: shards.get(pool, []) for pool in profiles.known_pools()},
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
