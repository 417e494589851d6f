"""What each runner step is handed: the keyword arguments of one mapped operator.

The DAG maps every runner step (ls, validate, embed, merge, report,
provenance) with ``Operator.partial(...).expand_kwargs(jobs)``; the functions
here build those ``jobs`` lists from the plan, so that no task re-parses paths
and every backend's operator gets the same fields (see
:class:`helical_workflow.steps.RunnerStep`):

``runner_args``  the ``helical-runner`` command line (list of str)
``job_label``    what the step works on, shown as the map index (``pbmc/geneformer/0:500``)
``want_json``    the runner prints one JSON object (``--json``): the step returns it
``job_result``   a dict the step returns on success (merged into the JSON, if any)
``data_paths``   dataset URIs a container must see (their folders mounted read-only)
``output_root``  the run's output folder (mounted read-write in a container)
``job_resources`` the model profile's ``resources`` (cpu, memory, gpu), for pods and containers
``timeout_s``    the profile's time limit for this command
"""

from __future__ import annotations

import logging
from typing import Any

from . import inputs, plan, profiles, provenance, runner

LOG = logging.getLogger(__name__)
# Light commands (ls, validate, merge, report, provenance) in a container or pod.
LIGHT_RESOURCES = {"cpu": "1", "memory": "4Gi"}


def ls_jobs(specs: list[str]) -> list[dict[str, Any]]:
    """One ``helical-runner ls`` per ``s3://`` prefix: only runner pods may read the
    datasets bucket (IRSA), so Airflow asks the runner what lies under a prefix."""
    if isinstance(specs, str):
        specs = [specs]
    # Confined before anything is listed, and normalised as expand_datasets will ask.
    prefixes = [
        inputs.confine(s, "datasets")
        for s in specs or []
        if str(s).startswith("s3://") and not s.endswith(".h5ad")
    ]
    return [
        {
            "runner_args": ["ls", p],
            "job_label": p,
            "want_json": True,
            "job_resources": LIGHT_RESOURCES,
        }
        for p in dict.fromkeys(prefixes)
    ]


def listed_prefixes(listed: list[dict[str, Any]] | None) -> dict[str, list[str]]:
    """``prefix -> .h5ad URIs`` from the ``ls`` steps' JSON results."""
    found: dict[str, list[str]] = {}
    for item in listed or []:
        if item:
            found.update(item.get("datasets") or {})
    return found


def validate_jobs(datasets: list[dict[str, str]]) -> list[dict[str, Any]]:
    """One ``helical-runner validate --json`` per dataset; each returns the runner's
    report plus the dataset's ``uri`` and ``name`` (what planning needs)."""
    return [
        {
            "runner_args": runner.validate_args(d["uri"]),
            "job_label": d["name"],
            "want_json": True,
            "job_result": {"uri": d["uri"], "name": d["name"]},
            "data_paths": [d["uri"]],
            "job_resources": LIGHT_RESOURCES,
        }
        for d in datasets
    ]


VALIDATION_FIELDS = (
    "uri",
    "name",
    "n_cells",
    "n_genes",
    "label_columns",
    "counts_location",
    "matrix_format",
    "sha256",
)


def validated_datasets(validated: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The datasets that passed validation (failed ones left no result), trimmed."""
    return [{k: v.get(k) for k in VALIDATION_FIELDS} for v in validated or [] if v]


def embed_jobs(
    tasks: list[dict[str, Any]], *, dag_id: str, task_id: str, run_id: str
) -> list[dict[str, Any]]:
    """One ``helical-runner embed`` per planned task: its run of shards, each a
    ``--cells START:STOP --output X`` pair, embedded by one warm runner process."""
    jobs = []
    for task in tasks:
        shards = task["shards"]
        cells = f"{shards[0]['start']}:{shards[-1]['stop']}"
        labels = runner.run_labels(dag_id=dag_id, task_id=task_id, run_id=run_id, shard=cells)
        profile = profiles.load_profile(task["model"], task.get("overrides"))
        count = f" ({len(shards)} shards)" if len(shards) > 1 else ""
        jobs.append(
            {
                "runner_args": runner.embed_args(task, labels=labels),
                "job_label": f"{task['dataset_name']}/{task['model']}/{cells}{count}",
                "data_paths": [task["dataset"]],
                "output_root": task["run_root"],
                "job_resources": profile.get("resources") or LIGHT_RESOURCES,
                "timeout_s": task["timeout_minutes"] * 60,
            }
        )
    return jobs


def merge_jobs(merges: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One ``helical-runner merge`` per dataset x model; each returns what the
    ``helical_embeddings`` asset event and the report need."""
    return [
        {
            "runner_args": runner.merge_args(m),
            "job_label": f"{m['dataset_name']}/{m['model']}",
            "job_result": {
                **{k: m[k] for k in ("dataset", "dataset_name", "model", "output")},
                "manifest": m["output"] + ".manifest.json",
            },
            "data_paths": [m["dataset"]],
            "output_root": m["run_root"],
            "job_resources": LIGHT_RESOURCES,
        }
        for m in merges
    ]


def report_jobs(
    reports: list[dict[str, Any]], merged: list[dict[str, Any]] | None, *, label_key: str
) -> list[dict[str, Any]]:
    """One ``helical-runner report`` per dataset with at least one merged embedding.

    A dataset none of whose merges succeeded gets no report (logged here, and
    listed as missing by the provenance check, which fails the run).
    """
    done = {m["output"] for m in merged or [] if m}
    jobs = []
    for job in reports:
        embeddings = [e for e in job["embeddings"] if e in done]
        missing = [e for e in job["embeddings"] if e not in done]
        if not embeddings:
            LOG.error(
                "no embedding of %s was merged; see its embed and merge tasks", job["dataset_name"]
            )
            continue
        if missing:
            LOG.warning("reporting %s without %s: their merge failed", job["dataset_name"], missing)
        html = plan.join(job["output_dir"], "report.html")
        jobs.append(
            {
                "runner_args": runner.report_args(
                    dataset=job["dataset"],
                    embeddings=embeddings,
                    output_dir=job["output_dir"],
                    label_key=label_key,
                ),
                "job_label": job["dataset_name"],
                "job_result": {**job, "embeddings": embeddings, "html": html},
                "data_paths": [job["dataset"]],
                "output_root": job["run_root"],
                "job_resources": LIGHT_RESOURCES,
            }
        )
    return jobs


def provenance_job(
    record: dict[str, Any], *, run_root: str, problems: list[str] | None = None
) -> dict[str, Any]:
    """``helical-runner provenance``: the runner writes ``provenance.json`` (it may
    write outputs; the Airflow role may not). Returns where, and what is wrong
    (``problems``; default: :func:`provenance.problems` of an embedding run's record)."""
    where = plan.join(run_root, "provenance.json")
    return {
        "runner_args": [
            "provenance",
            "--output",
            where,
            "--record-z",
            provenance.encode_record(record),
        ],
        "job_label": "provenance",
        "want_json": True,  # {"provenance": ..., "quote": the estimate beside the measured}
        "job_result": {
            "provenance": where,
            "problems": provenance.problems(record) if problems is None else problems,
        },
        "output_root": run_root,
        "job_resources": LIGHT_RESOURCES,
    }
