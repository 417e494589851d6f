"""The run's provenance record: what went in, what came out, and with what."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def read_manifest(output: str) -> dict[str, Any] | None:
    """The runner's manifest beside a local output, or None (S3 manifests stay in S3)."""
    path = Path(output + ".manifest.json")
    if "://" in output or not path.is_file():
        return None
    return json.loads(path.read_text())


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
        manifest = read_manifest(m["output"]) or {}
        outputs.append(
            {
                **done[m["output"]],
                "status": "merged",
                "cells": (manifest.get("selection") or {}).get("cells"),
                "model_artifacts": (manifest.get("model") or {}).get("artifacts"),
                "versions": manifest.get("versions"),
                "demo_weights": manifest.get("demo_weights"),
            }
        )
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


def write_record(record: dict[str, Any], run_root: str) -> str:
    """Write ``provenance.json`` under the run's output folder (local or S3); return its URI."""
    body = json.dumps(record, indent=2, sort_keys=True, default=str)
    uri = run_root.rstrip("/") + "/provenance.json"
    if uri.startswith("s3://"):
        import boto3

        bucket, _, key = uri[len("s3://") :].partition("/")
        boto3.client(
            "s3", endpoint_url=os.environ.get("HELICAL_RUNNER_S3_ENDPOINT_URL") or None
        ).put_object(Bucket=bucket, Key=key, Body=body.encode())
        return uri
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(body)
    tmp.replace(path)
    return str(path)
