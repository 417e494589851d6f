"""Shared helpers for the local stack tests (run with .venvs/airflow/bin/python -m pytest tests/stack).

Servers are real: the Debian Postgres/Redis/Prometheus/Pushgateway, the StatsD
receiver, Airflow 3 with CeleryExecutor. Each stack a test starts gets its own
state dir and a free block of loopback ports, so a user's running stack is never
touched.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "stack"))

import stackctl  # noqa: E402
from client import (  # noqa: E402,F401 (re-exported to the tests)
    STACK_SH,
    NativeStack,
    airflow_venv,
    descendants,
    free_port_block,
    kill_tree,
    listening_sockets,
    live,
    poll,
)


@pytest.fixture(scope="session")
def state_root():
    """A state root the service users (postgres, redis, prometheus) can traverse.

    pytest's own tmp dirs are 0700 to root, which those users cannot enter.
    """
    root = Path(tempfile.mkdtemp(prefix="helical-stack-test-", dir="/tmp"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def require_servers() -> None:
    missing = [
        b
        for b in ("prometheus", "promtool", "prometheus-pushgateway", "redis-server")
        if not shutil.which(b)
    ]
    if missing or not stackctl.PG_BIN.exists():
        pytest.fail(f"missing {missing or 'postgresql'}: run scripts/bootstrap.sh system")


# --- the workflow stack: one per session (workflow and browser tests) ---------------

DAG_ID = "helical_embedding"
RUNNER_VENV = REPO / ".venvs" / "runner"
MODELS = ["geneformer"]


def runner_cli() -> str:
    cli = RUNNER_VENV / "bin" / "helical-runner"
    if not cli.exists():
        pytest.fail("no .venvs/runner: run scripts/bootstrap.sh runner")
    return str(cli)


@pytest.fixture(scope="session")
def workflow(state_root, require_servers):
    if not any((REPO / "dags").glob("*.py")):
        pytest.fail(f"no DAG file in {REPO / 'dags'}: the {DAG_ID} DAG has not landed")
    work = state_root / "workflow"
    data, models = work / "data", work / "models"
    data.mkdir(parents=True)
    subprocess.run([runner_cli(), "demo-data", "--output", str(data / "demo.h5ad"), "--cells", "400",
                    "--label-key", "cell_type"], check=True, capture_output=True)  # fmt: skip
    subprocess.run(
        [runner_cli(), "models", "demo-bundle", "--to", str(models)],
        check=True,
        capture_output=True,
    )
    stack = NativeStack(
        work / "stack",
        {
            "HELICAL_RUNNER_MODEL_STORE": str(models),
            "HELICAL_OUTPUT_ROOT": str(work / "runs"),
            # The DAG reads and writes only under these (helical_workflow.inputs).
            "HELICAL_DATASET_ROOTS": str(data),
            "HELICAL_OUTPUT_ROOTS": f"{work / 'runs'},{work / 'out'}",
            # Fault tests: notice a dead worker's task in seconds, retry it soon, and
            # have Redis hand an unacknowledged message back after one minute.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "5",
            "HELICAL_RETRY_DELAY_S": "5",
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "60",
        },
    )
    stack.run("start")
    try:
        poll(lambda: _dag_parsed(stack), 180, f"DAG {DAG_ID} parsed")
        stack.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
        yield Workflow(stack, work)
    finally:
        pids = stack.pids()
        stack.run("stop", check=False)
        assert [p for p in pids.values() if live(p)] == []


def _dag_parsed(stack: NativeStack) -> bool:
    try:
        return stack.api("GET", f"/dags/{DAG_ID}")["dag_id"] == DAG_ID
    except OSError:
        return False


class Workflow:
    def __init__(self, stack: NativeStack, work: Path) -> None:
        self.stack = stack
        self.work = work
        self.runs: dict[str, dict] = {}

    def trigger(self, name: str) -> str:
        run_id = f"{name}-{int(time.time())}"
        conf = {
            "datasets": [str(self.work / "data" / "demo.h5ad")],
            "models": MODELS,
            "output_root": str(self.work / "out" / name),
        }
        self.stack.api(
            "POST",
            f"/dags/{DAG_ID}/dagRuns",
            {"dag_run_id": run_id, "logical_date": None, "conf": conf},
        )
        self.runs[name] = {
            "run_id": run_id,
            "output_root": Path(conf["output_root"]),
            "started": time.time(),
        }
        return run_id

    def state(self, run_id: str) -> str:
        return self.stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"]

    def wait(self, run_id: str, timeout: float) -> str:
        return poll(
            lambda: (s := self.state(run_id)) in ("success", "failed") and s,
            timeout,
            f"run {run_id}",
            2,
        )

    def task_instances(self, run_id: str) -> list[dict]:
        return self.stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")[
            "task_instances"
        ]

    def logs_hint(self, run_id: str) -> str:
        tis = [
            (t["task_id"], t["map_index"], t["state"], t["try_number"])
            for t in self.task_instances(run_id)
        ]
        return f"task instances: {tis}"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "load: many DAG runs at once under faults (benchmarks/bench_load.py); minutes",
    )
