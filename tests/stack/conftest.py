"""Shared helpers for the local stack tests (run with .venvs/airflow/bin/python -m pytest tests/stack).

Servers are real: the Debian Postgres/Redis/Prometheus/Pushgateway, the StatsD
receiver, Airflow 3 with CeleryExecutor. Each stack a test starts gets its own
state dir and a free block of loopback ports, so a user's running stack is never
touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STACK_SH = REPO / "stack" / "stack.sh"
sys.path.insert(0, str(REPO / "stack"))

import stackctl  # noqa: E402


def airflow_venv() -> Path:
    """The Airflow env the tests run in (the stack uses the same one)."""
    return Path(os.environ.get("HELICAL_STACK_AIRFLOW_VENV", Path(sys.executable).parent.parent))


def free_port_block() -> int:
    """A port base whose whole block (stackctl.PORTS offsets) is free on loopback."""
    for base in range(28700, 40000, 100):
        ok = True
        for offset in stackctl.PORTS.values():
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as sock:
                    try:
                        sock.bind(("127.0.0.1", base + offset))
                    except OSError:
                        ok = False
        if ok:
            return base
    raise RuntimeError("no free port block between 28700 and 40000")


def poll(check: Callable[[], object], timeout: float, what: str, interval: float = 0.5):
    """Return check()'s first truthy value, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def live(pid: int) -> bool:
    """True when the PID is a live (non-zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for proc in os.listdir("/proc"):
        if proc.isdigit():
            try:
                ppid = int(Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(proc))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def listening_sockets(pids: set[int], kind: str = "-t") -> list[tuple[str, str]]:
    """(local address, process) of every listening socket (`ss -l -t|-u`) owned by one of `pids`."""
    argv = ["ss", "-H", "-lnp", kind]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            found.append((line.split()[3], line.split()[-1]))
    return found


class NativeStack:
    """One native stack instance driven through stack/stack.sh."""

    def __init__(self, state: Path, extra_env: dict[str, str] | None = None) -> None:
        self.state = state
        self.port_base = free_port_block()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "HELICAL_"))},
            "HELICAL_STACK_STATE": str(state),
            "HELICAL_STACK_PORT_BASE": str(self.port_base),
            "HELICAL_STACK_AIRFLOW_VENV": str(airflow_venv()),
            **(extra_env or {}),
        }
        self.ports = {k: self.port_base + v for k, v in stackctl.PORTS.items()}

    def run(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(STACK_SH), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            logs = "\n".join(
                f"--- {p.name}\n{p.read_text()[-3000:]}"
                for p in sorted((self.state / "logs").glob("*.log"))
            )
            raise AssertionError(
                f"stack.sh {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}\n{logs}"
            )
        return proc

    def status(self) -> dict:
        return json.loads(self.run("status", "--json", check=False).stdout)

    def pids(self) -> dict[str, int]:
        return {c["name"]: c["pid"] for c in self.status()["components"] if c["pid"]}

    # --- HTTP APIs ----------------------------------------------------------
    def prom_query(
        self, expr: str, *, start: float | None = None, end: float | None = None, step: str = "5s"
    ) -> list:
        base = f"http://127.0.0.1:{self.ports['prometheus']}/api/v1/"
        if start is None:
            url = base + "query?" + urllib.parse.urlencode({"query": expr})
        else:
            params = {
                "query": expr,
                "start": f"{start:.3f}",
                "end": f"{end or time.time():.3f}",
                "step": step,
            }
            url = base + "query_range?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def admin_password(self) -> str:
        return json.loads((self.state / "secrets.json").read_text())["admin_password"]

    def airflow_token(self) -> str:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.ports['api']}/auth/token",
            data=json.dumps({"username": "admin", "password": self.admin_password()}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)["access_token"]

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.ports['api']}/api/v2{path}",
            data=json.dumps(body).encode() if body is not None else None,
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self.airflow_token()}",
            },
            method=method,
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)


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
