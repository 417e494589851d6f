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
    :returns: ``{"shards": {pool: [shard, ...]}, "merges": [merge, ...]}`` where a
        shard holds everything one embed task needs and a merge lists a
        (dataset, model)'s shard outputs in cell order.
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
                    }
                )
            merges.append(
                {
                    "dataset": ds["uri"],
                    "dataset_name": ds["name"],
                    "model": model,
                    "shards": outputs,
                    "output": join(run_root, ds["name"], "embeddings", f"{model}.h5ad"),
                }
            )
    return {"shards": shards, "merges": merges}
