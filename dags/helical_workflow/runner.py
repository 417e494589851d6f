"""``helical-runner`` command lines and what their exit codes mean for Airflow.

The DAG never imports the runner: it builds argument lists here and every
backend (subprocess, Docker, Kubernetes pod) executes them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from . import profiles

RUNNER_BIN_ENV = "HELICAL_RUNNER_BIN"
DEFAULT_RUNNER_BIN = profiles.REPO_ROOT / ".venvs/runner/bin/helical-runner"
# Handed to the runner in every backend (docs/contracts.md).
PASSTHROUGH_ENV = (
    "HELICAL_RUNNER_MODEL_STORE",
    "HELICAL_RUNNER_PUSHGATEWAY",
    "HELICAL_RUNNER_S3_ENDPOINT_URL",
    "HELICAL_RUNNER_LOG_FORMAT",
)

LOG = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_BUG = 1
EXIT_BAD_INPUT = 2
EXIT_TRANSIENT = 75
# Killed by a signal: 128 + N as a container or shell reports it, -N as Python's
# subprocess does (SIGKILL: OOM killer, node loss; SIGTERM: eviction, shutdown).
EXIT_KILLED = (137, -9, 143, -15)


class RunnerTransientError(Exception):
    """The runner failed in a way worth retrying (Airflow's retries + backoff apply)."""


def runner_bin() -> str:
    """The local backend's runner executable (env ``HELICAL_RUNNER_BIN`` wins)."""
    return os.environ.get(RUNNER_BIN_ENV) or str(DEFAULT_RUNNER_BIN)


def passthrough_env() -> dict[str, str]:
    """The runner settings of this worker's environment that must reach the runner."""
    return {k: os.environ[k] for k in PASSTHROUGH_ENV if os.environ.get(k)}


def run_labels(*, dag_id: str, task_id: str, run_id: str, shard: str) -> list[str]:
    """``--run-label`` flags: metrics and manifests say which task produced them."""
    labels = {"dag_id": dag_id, "task_id": task_id, "run_id": run_id, "shard": shard}
    return [arg for k, v in labels.items() for arg in ("--run-label", f"{k}={v}")]


def validate_args(dataset: str) -> list[str]:
    return ["validate", "--input", dataset, "--json"]


def embed_args(task: dict[str, Any], *, labels: list[str]) -> list[str]:
    """Arguments of one embed task: its shards as ``--cells``/``--output`` pairs, in
    cell order (see :func:`helical_workflow.plan.plan_run`)."""
    args = ["embed", "--input", task["dataset"], "--model", task["model"]]
    for shard in task["shards"]:
        args += ["--cells", f"{shard['start']}:{shard['stop']}", "--output", shard["output"]]
    if task.get("sha256"):
        # validate already hashed the input: no task re-reads a whole file to hash it
        args += ["--input-sha256", task["sha256"]]
    return [*args, *profiles.runner_overrides(task.get("overrides") or {}), *labels]


def merge_args(merge: dict[str, Any]) -> list[str]:
    return ["merge", "--output", merge["output"], *merge["shards"]]


def report_args(
    *, dataset: str, embeddings: list[str], output_dir: str, label_key: str
) -> list[str]:
    return [
        "report",
        "--dataset",
        dataset,
        "--embeddings",
        *embeddings,
        "--output",
        output_dir,
        "--label-key",
        label_key,
    ]


def is_transient(code: int) -> bool:
    return code == EXIT_TRANSIENT or code in EXIT_KILLED


def raise_for_exit(code: int, *, what: str, message: str = "") -> None:
    """Turn a runner exit code into Airflow's retry semantics.

    0 returns; 75 and kills raise :class:`RunnerTransientError` (retried with
    backoff); 2 (bad input) and 1 (a bug) raise ``AirflowFailException`` so the
    task fails at once: retrying cannot fix a corrupt file or a bug.
    """
    if code == EXIT_OK:
        return
    detail = f": {message}" if message else ""
    # Logged as well as raised: the decision must read plainly in the task log.
    if is_transient(code):
        message = f"{what}: transient runner failure (exit {code}), will retry{detail}"
        LOG.warning(message)
        raise RunnerTransientError(message)
    kind = "bad input or configuration" if code == EXIT_BAD_INPUT else "runner error"
    message = f"{what}: {kind} (exit {code}), not retried{detail}"
    LOG.error(message)
    raise AirflowFailException(message)


def error_line(lines) -> str:
    """The runner's one-line error (``helical-runner: ...``) among its output, else the last line."""
    text = [str(line).rstrip() for line in lines or () if str(line).strip()]
    for line in reversed(text):
        if line.startswith("helical-runner:") or '"helical-runner:' in line:
            return line
    return text[-1] if text else ""


def parse_json_output(out: Any) -> Any:
    """The runner's ``--json`` result as a backend hands it over.

    Kubernetes' xcom sidecar already parsed it; Docker returns the last log line
    (the entry point squeezes the JSON onto one line); local reads a file.
    """
    if out is None or isinstance(out, dict | list):
        return out
    if isinstance(out, bytes):
        out = out.decode()
    return json.loads(str(out).strip().splitlines()[-1])


def data_folder(uris: list[str]) -> Path | None:
    """The deepest local folder holding every local URI (what containers mount), or None."""
    local = [Path(u).resolve() for u in uris if not u.startswith("s3://")]
    if not local:
        return None
    return Path(os.path.commonpath([str(p.parent) for p in local]))
