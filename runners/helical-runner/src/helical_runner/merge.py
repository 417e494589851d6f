"""Merge shard outputs of one dataset and model into one output (+ merged manifest)."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

from . import output, storage
from .embed import MANIFEST_SUFFIX
from .errors import BadInput


def merged_manifest(shards: list[dict], out: storage.Location, cells: int) -> dict:
    first = shards[0]
    inputs = {m["input"]["sha256"] for m in shards}
    models = {(m["model"]["name"], m["model"]["helical_model_name"]) for m in shards}
    if len(inputs) != 1 or len(models) != 1:
        raise BadInput("shards come from different inputs or models; refusing to merge")
    timing_keys = sorted({k for m in shards for k in m.get("timings", {})})
    timings = {
        k: round(sum(m.get("timings", {}).get(k, 0.0) for m in shards), 4) for k in timing_keys
    }
    compute = sum(timings.get(k, 0.0) for k in ("read_s", "preprocess_s", "embed_s"))
    return {
        **{
            k: v
            for k, v in first.items()
            if k not in ("timings", "selection", "run_key", "output", "run_labels")
        },
        "outcome": "success",
        "output": out.uri,
        "selection": {
            "start": min(m["selection"]["start"] for m in shards),
            "stop": max(m["selection"]["stop"] for m in shards),
            "cells": cells,
        },
        "shards": [
            {
                "output": m["output"],
                "selection": m["selection"],
                "run_key": m["run_key"],
                "cells_per_second": m.get("cells_per_second"),
                "host": m.get("host"),
            }
            for m in shards
        ],
        "timings": timings,
        "cells_without_counts": sum(m.get("cells_without_counts") or 0 for m in shards),
        "cells_per_second": round(cells / compute, 3) if compute else None,
        "peak_rss_bytes": max(m.get("peak_rss_bytes", 0) for m in shards),
        "peak_gpu_memory_bytes": max(m.get("peak_gpu_memory_bytes", 0) for m in shards),
        # the span of the shards' work (every shard's own start and end), for provenance
        "started_at": min((m["started_at"] for m in shards if m.get("started_at")), default=None),
        "finished_at": max(
            (m["finished_at"] for m in shards if m.get("finished_at")), default=None
        ),
        "merged_at": datetime.now(UTC).isoformat(),
    }


def merge_outputs(shards: list[storage.Location], out: storage.Location) -> dict:
    with tempfile.TemporaryDirectory(prefix="helical-runner-merge-") as tmp:
        local = []
        manifests = []
        for i, loc in enumerate(shards):
            manifest_loc = loc.with_suffix(MANIFEST_SUFFIX)
            if not storage.exists(loc) or not storage.exists(manifest_loc):
                raise BadInput("shard output or its manifest is missing", where=loc.uri)
            manifests.append(storage.read_json(manifest_loc))
            if loc.is_s3:
                path = Path(tmp) / f"shard-{i:05d}.h5ad"
                storage.get_file(loc, path)
                local.append(path)
            else:
                local.append(loc.path)
        starts = [m["selection"]["start"] for m in manifests]
        if starts != sorted(starts):
            raise BadInput(
                "shards are not in cell order; pass them in the order of their cell ranges"
            )
        # written aside first, then moved into place whole
        target = Path(tmp) / "merged.h5ad"
        merged = merged_manifest(manifests, out, sum(m["selection"]["cells"] for m in manifests))
        output.merge(local, target, provenance=merged)
        # the sha256 of the file as written, so a reader can tell a whole output from a damaged one
        merged["output_sha256"] = storage.sha256_file(target)
        storage.put_file(target, out)
        storage.write_json(out.with_suffix(MANIFEST_SUFFIX), merged)
        return merged
