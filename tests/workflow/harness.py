"""A real Airflow 3 on loopback for tests and benchmarks: LocalExecutor on SQLite.

Starts ``api-server``, ``scheduler`` and ``dag-processor`` (each in its own
process group, stopped by PID) in a private AIRFLOW_HOME, authenticates
through the simple auth manager's ``/auth/token`` endpoint and drives runs
with the official client (``apache-airflow-client``).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import airflow_client.client as af

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_BIN = Path(sys.executable).parent / "airflow"
DAG_ID = "helical_embedding"
TERMINAL = {"success", "failed"}


class DockerEvents:
    """The engine's container events for one label, streamed from now on.

    ``docker events --since`` replays from the engine's ring buffer, which holds
    the last 256 events of every container (health checks of a compose stack fill
    it within minutes), so early events of a long run are gone by the time a test
    asks; a stream started before the run sees every one.
    """

    def __init__(self, env: dict, label: str):
        cmd = ["docker", "events", "--filter", "type=container", "--filter", f"label={label}",
               "--format", "{{json .}}"]  # fmt: skip
        self._proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        self._events: list[dict] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            if line.strip():
                with self._lock:
                    self._events.append(json.loads(line))

    def __call__(self, action: str | None = None) -> list[dict]:
        with self._lock:
            got = list(self._events)
        return [e for e in got if action in (None, e.get("status", e.get("Action")))]

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)
        self._thread.join(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Airflow:
    """One Airflow deployment in ``home``; use as a context manager."""

    def __init__(
        self, home: Path, *, parallelism: int = 2, extra_env: dict[str, str] | None = None
    ):
        self.home = home
        self.port = free_port()
        self.user = "tester"
        self.password = secrets.token_urlsafe(16)
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {
            **os.environ,
            "PATH": f"{AIRFLOW_BIN.parent}:{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "tester:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            **(extra_env or {}),
        }

    # ---------------------------------------------------------- lifecycle

    def airflow(self, *args: str, timeout: float = 120) -> str:
        out = subprocess.run(
            [str(AIRFLOW_BIN), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if out.returncode:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def start(self, *, ready_timeout: float = 180) -> Airflow:
        self.home.mkdir(parents=True, exist_ok=True)
        pw = self.home / "passwords.json"
        pw.write_text(json.dumps({"tester": self.password}))
        pw.chmod(0o600)
        self.airflow("db", "migrate", timeout=300)
        pools = self.home / "pools.json"
        pools.write_text(
            subprocess.run(
                [sys.executable, "-m", "helical_workflow.pools", "--slots", "4"],
                cwd=REPO / "dags",
                capture_output=True,
                text=True,
                check=True,
                env=self.env,
            ).stdout
        )
        self.airflow("pools", "import", str(pools))
        for component in ("api-server", "scheduler", "dag-processor"):
            log = open(self.home / f"{component}.log", "ab")  # noqa: SIM115 (closed in stop)
            self.procs[component] = subprocess.Popen(
                [str(AIRFLOW_BIN), component],
                env=self.env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._wait_ready(ready_timeout)
        return self

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def __enter__(self) -> Airflow:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.home / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"airflow {name} exited with {proc.returncode}:\n{tail}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                self.api(af.DAGApi).get_dag(DAG_ID)
                return
            except Exception as exc:  # not up yet, or DAG not parsed yet
                last = exc
            time.sleep(1)
        raise TimeoutError(f"Airflow not ready with DAG {DAG_ID} after {timeout:.0f} s: {last}")

    # ---------------------------------------------------------------- API

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self) -> str:
        req = urllib.request.Request(
            f"{self.url}/auth/token",
            data=json.dumps({"username": self.user, "password": self.password}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())["access_token"]

    def api(self, cls):
        config = af.Configuration(host=self.url, access_token=self.token())
        return cls(af.ApiClient(config))

    def trigger(self, conf: dict) -> str:
        run = self.api(af.DagRunApi).trigger_dag_run(
            DAG_ID, af.TriggerDAGRunPostBody(logical_date=None, conf=conf)
        )
        return run.dag_run_id

    def wait(self, run_id: str, timeout: float) -> str:
        """Poll the run until it ends; its final state."""
        deadline = time.monotonic() + timeout
        api = self.api(af.DagRunApi)
        while time.monotonic() < deadline:
            self._check_alive()
            state = str(api.get_dag_run(DAG_ID, run_id).state.value)
            if state in TERMINAL:
                return state
            time.sleep(2)
        raise TimeoutError(f"run {run_id} not finished after {timeout:.0f} s")

    def task_instances(self, run_id: str) -> list:
        api = self.api(af.TaskInstanceApi)
        found, offset = [], 0
        while True:
            page = api.get_task_instances(DAG_ID, run_id, limit=100, offset=offset)
            found += page.task_instances
            offset += len(page.task_instances)
            if not page.task_instances or offset >= page.total_entries:
                return found

    def log(self, run_id: str, ti) -> str:
        """The task log text of one (mapped) task instance's last try, one line per event."""
        content = self.api(af.TaskInstanceApi).get_log(
            DAG_ID, run_id, ti.task_id, ti.try_number, map_index=ti.map_index, full_content=True
        )
        # the client wraps the anyOf(list[str], list[StructuredLogMessage]) payload
        events = getattr(content.content, "actual_instance", content.content) or []
        lines = []
        for event in events:
            if isinstance(event, str):
                lines.append(event)
            else:
                extra = json.dumps(event.additional_properties, default=str)
                lines.append(f"{event.event} {extra}")
        return "\n".join(lines)
