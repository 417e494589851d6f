"""The run's provenance record: what went in, what came out, and with what."""

from __future__ import annotations

import base64
import json
import os
import zlib
from datetime import UTC, datetime
from typing import Any


def build_record(
    *,
    dag_id: str,
    run_id: str,
    params: dict[str, Any],
    datasets: list[dict[str, Any]],
    validated: list[dict[str, Any]],
    planned: dict[str, Any],
    merged: list[dict[str, Any]],
    reports: list[dict[str, Any]],
) -> dict[str, Any]:
    """One JSON document linking every input, validation, output and manifest of a run.

    Every planned output and report is listed, with ``status`` saying whether it
    was produced (``merged`` / ``written``) or is ``missing`` because a task failed.
    """
    ok = {v["uri"] for v in validated}
    done = {m["output"]: m for m in merged}
    outputs = []
    for m in planned.get("merges", []):
        key = {k: m[k] for k in ("dataset", "dataset_name", "model", "output")}
        if m["output"] not in done:
            outputs.append({**key, "status": "missing"})
            continue
        # `helical-runner provenance` adds cells, artifacts and versions from the
        # manifest beside each merged output (it can read the outputs bucket).
        outputs.append({**done[m["output"]], "status": "merged"})
    written = {r["output_dir"]: r for r in reports}
    report_entries = [
        {**written[r["output_dir"]], "status": "written"}
        if r["output_dir"] in written
        else {**r, "status": "missing"}
        for r in planned.get("reports", [])
    ]
    import airflow

    return {
        "dag_id": dag_id,
        "run_id": run_id,
        "written_at": datetime.now(UTC).isoformat(),
        "params": params,
        "airflow_version": airflow.__version__,
        "backend": os.environ.get("HELICAL_BACKEND", "local"),
        "datasets": [
            {**d, "validation": next((v for v in validated if v["uri"] == d["uri"]), None)}
            | {"status": "validated" if d["uri"] in ok else "failed validation"}
            for d in datasets
        ],
        "outputs": outputs,
        "reports": report_entries,
    }


def encode_record(record: dict[str, Any]) -> str:
    """The record as ``helical-runner provenance --record-z`` takes it (zlib, base64url):
    about ten times smaller than the JSON, so large runs fit in one argument."""
    body = json.dumps(record, sort_keys=True, default=str).encode()
    return base64.urlsafe_b64encode(zlib.compress(body, 9)).decode()


def problems(record: dict[str, Any]) -> list[str]:
    """What makes a run with this record fail although its good outputs are complete."""
    found = []
    if not record["outputs"] and not (record.get("params") or {}).get("dry_run"):
        # resolve or plan_shards failed (bad parameters, no dataset passed validation):
        # the run must not end `success` with nothing in it (a dry run plans nothing)
        found.append("no output was planned: see the resolve, validate and plan_shards task logs")
    failed = [d["name"] for d in record["datasets"] if d["status"] != "validated"]
    if failed:
        found.append(f"failed validation: {failed}")
    missing = [
        f"{o['dataset_name']}/{o['model']}" for o in record["outputs"] if o["status"] != "merged"
    ]
    if missing:
        found.append(f"outputs missing (an embed or merge task failed): {missing}")
    unreported = [r["dataset_name"] for r in record["reports"] if r["status"] != "written"]
    if unreported:
        found.append(f"reports missing: {unreported}")
    return found
