"""Start, stop and inspect the native local stack (no Docker needed).

    stack/stack.sh start | stop | status [--json] | restart COMPONENT | where

Postgres, Redis, Prometheus, Pushgateway, the process, Postgres and Redis
exporters (Debian packages), the StatsD receiver and Airflow 3 with
CeleryExecutor (api-server, scheduler, dag-processor, triggerer, celery
worker), all on 127.0.0.1, run by Debian's `supervisor`: `start` writes one
supervisord config (`<state>/supervisord.conf`, 0600: it carries the
components' secret environment), starts supervisord and then each component in
order, waiting until it answers; supervisord restarts a component that exits
(`restart: unless-stopped` in compose terms). `stop` stops every component in
reverse order and then supervisord. Both commands are idempotent.

Settings (environment):
  HELICAL_STACK_STATE        state dir (default: <repo>/.state/stack): data, logs, secrets
  HELICAL_STACK_PORT_BASE    first port of the block the stack uses (default 18700, see PORTS)
  HELICAL_STACK_AIRFLOW_VENV Airflow environment (default: <repo>/.venvs/airflow)
  HELICAL_STACK_DAGS         DAG folder (default: <repo>/dags)
  HELICAL_STACK_POOL_SLOTS   slots of each GPU pool the DAG uses: embed runners at once
                             (default: one per core, as memory allows 2 GiB each; runner_slots)
  HELICAL_STACK_WORKER_CONCURRENCY  Celery worker slots (default: pool slots + 2, so the
                             DAG's light tasks never queue behind embeds; see docs/load.md)
  AIRFLOW__*, HELICAL_*      passed to every Airflow component, overriding the stack defaults
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")

# Offsets from HELICAL_STACK_PORT_BASE. The default block 18700-18799 avoids
# Airflow's 8080, Prometheus' 9090 and the services' own defaults, so the stack
# runs beside anything a user already has.
PORTS = {
    "statsd_web": 2,
    "process_exporter": 3,
    "postgres_exporter": 4,
    "redis_exporter": 5,
    "statsd_udp": 25,
    "postgres": 32,
    "redis": 79,
    "api": 80,
    "prometheus": 90,
    "pushgateway": 91,
    "worker_logs": 93,
    "triggerer_logs": 94,
}

# Order of start; stop runs it backwards.
COMPONENTS = (
    "postgres",
    "redis",
    "statsd-receiver",
    "process-exporter",
    "postgres-exporter",
    "redis-exporter",
    "pushgateway",
    "prometheus",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)


# The worker's slots beyond the pools': the DAG's light tasks (its Python tasks and the
# runner's validate, merge and provenance steps) run there instead of queueing behind
# embeds; measured in docs/load.md (benchmarks/bench_load.py).
LIGHT_SLOTS = 2
# A runner process with a small model (demo bundle, Geneformer 10M) peaks near 1 GiB;
# 2 GiB each leaves room for the stack itself.
RUNNER_MEMORY_GIB = 2


def runner_slots() -> int:
    """Embed runners this machine holds at once: one per core, as memory allows."""
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return max(1, min(os.cpu_count() or 1, int(memory_gib // RUNNER_MEMORY_GIB)))


@dataclass
class Stack:
    state: Path
    port_base: int
    airflow_venv: Path
    dags: Path
    worker_concurrency: int
    pool_slots: int = 0  # 0: as many as the worker's slots
    ports: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.ports = {name: self.port_base + offset for name, offset in PORTS.items()}
        self.pool_slots = self.pool_slots or self.worker_concurrency

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Stack:
        env = os.environ if env is None else env
        pool = int(env.get("HELICAL_STACK_POOL_SLOTS") or runner_slots())
        return cls(
            state=Path(env.get("HELICAL_STACK_STATE", REPO / ".state" / "stack")).resolve(),
            port_base=int(env.get("HELICAL_STACK_PORT_BASE", "18700")),
            airflow_venv=Path(env.get("HELICAL_STACK_AIRFLOW_VENV", REPO / ".venvs" / "airflow")),
            dags=Path(env.get("HELICAL_STACK_DAGS", REPO / "dags")).resolve(),
            worker_concurrency=int(
                env.get("HELICAL_STACK_WORKER_CONCURRENCY") or pool + LIGHT_SLOTS
            ),
            pool_slots=pool,
        )

    # --- paths -------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.state.joinpath(*parts)

    @property
    def supervisor_conf(self) -> Path:
        return self.path("supervisord.conf")

    def logfile(self, name: str) -> Path:
        return self.path("logs", f"{name}.log")


# --- supervisor -------------------------------------------------------------------


@dataclass(frozen=True)
class Program:
    """One component as supervisord runs it."""

    argv: list[str]
    user: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    # Postgres' fast shutdown is SIGINT to the postmaster, which stops its own children.
    stopsignal: str = "TERM"
    stopasgroup: bool = True


def _ini_value(text: str) -> str:
    # supervisord expands %(name)s in its values: a literal % is written %%.
    return text.replace("%", "%%")


def render_supervisor_conf(stack: Stack, programs: dict[str, Program]) -> str:
    lines = [
        "; Written by stack/stackctl.py at every start; do not edit (0600: secrets).",
        "[unix_http_server]",
        f"file={stack.path('supervisor.sock')}",
        "chmod=0700",
        "[supervisord]",
        f"logfile={stack.logfile('supervisord')}",
        f"pidfile={stack.path('supervisord.pid')}",
        f"childlogdir={stack.path('logs')}",
        f"directory={stack.state}",
        "identifier=helical-stack",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "[supervisorctl]",
        f"serverurl=unix://{stack.path('supervisor.sock')}",
    ]
    for name, prog in programs.items():
        lines += [
            f"[program:{name}]",
            f"command={_ini_value(shlex.join(prog.argv))}",
            f"directory={stack.state}",
            # Started one by one by `stack.sh start`, in dependency order, then kept up.
            "autostart=false",
            "autorestart=true",
            "startsecs=1",
            "startretries=10",
            f"stopsignal={prog.stopsignal}",
            f"stopasgroup={str(prog.stopasgroup).lower()}",
            "killasgroup=true",
            "stopwaitsecs=30",
            f"stdout_logfile={stack.logfile(name)}",
            "stdout_logfile_maxbytes=20MB",
            "redirect_stderr=true",
        ]
        if prog.user:
            lines.append(f"user={prog.user}")
        if prog.env:
            pairs = ",".join(f'{k}="{_ini_value(v)}"' for k, v in prog.env.items())
            lines.append(f"environment={pairs}")
    return "\n".join(lines) + "\n"


def supervisorctl(stack: Stack, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["supervisorctl", "-c", str(stack.supervisor_conf), *args],
        capture_output=True, text=True, check=check, cwd=stack.state,
    )  # fmt: skip


def supervisor_running(stack: Stack) -> bool:
    if not stack.path("supervisor.sock").exists():
        return False
    return supervisorctl(stack, "pid").stdout.strip().isdigit()


def program_states(stack: Stack) -> dict[str, tuple[str, int | None]]:
    """name -> (supervisor state, pid); every component STOPPED when nothing runs."""
    states: dict[str, tuple[str, int | None]] = {n: ("STOPPED", None) for n in COMPONENTS}
    if not supervisor_running(stack):
        return states
    for line in supervisorctl(stack, "status").stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in states:
            pid = int(parts[3].rstrip(",")) if parts[1] == "RUNNING" and len(parts) > 3 else None
            states[parts[0]] = (parts[1], pid)
    return states


def running_pid(stack: Stack, name: str) -> int | None:
    return program_states(stack)[name][1]


def start_supervisord(stack: Stack, programs: dict[str, Program]) -> None:
    _private_file(stack.supervisor_conf, render_supervisor_conf(stack, programs))
    if supervisor_running(stack):
        # Programs whose settings changed are restarted; unchanged ones keep running.
        supervisorctl(stack, "update", check=True)
        return
    stack.path("supervisor.sock").unlink(missing_ok=True)
    # A minimal environment: each program gets its own from the config.
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    subprocess.run(["supervisord", "-c", str(stack.supervisor_conf)], env=env, check=True,
                   cwd=stack.state)  # fmt: skip
    deadline = time.monotonic() + 30
    while not supervisor_running(stack):
        if time.monotonic() > deadline:
            raise RuntimeError(f"supervisord did not start; see {stack.logfile('supervisord')}")
        time.sleep(0.2)


def stop_supervisord(stack: Stack) -> None:
    pidfile = stack.path("supervisord.pid")
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    supervisorctl(stack, "shutdown")
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)


# --- readiness -------------------------------------------------------------------


def wait_for(what: str, check, timeout: float, stack: Stack, name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = program_states(stack)[name][0]
        if state in ("FATAL", "EXITED", "STOPPED"):
            raise RuntimeError(f"{what} died while starting; see {stack.logfile(name)}")
        if state == "RUNNING" and check():
            return
        time.sleep(0.3)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s; see {stack.logfile(name)}")


def tcp_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def airflow_health(stack: Stack) -> dict:
    url = f"http://127.0.0.1:{stack.ports['api']}/api/v2/monitor/health"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return json.load(resp)
    except (urllib.error.URLError, OSError, ValueError):
        return {}


# --- secrets ---------------------------------------------------------------------

SECRET_NAMES = ("fernet_key", "jwt_secret", "api_secret_key", "postgres_password",
                "monitor_password", "redis_password", "admin_password")  # fmt: skip


def load_secrets(stack: Stack) -> dict[str, str]:
    """Secrets generated at first start, kept 0600 in the state dir, never logged."""
    path = stack.path("secrets.json")
    values = json.loads(path.read_text()) if path.exists() else {}
    missing = [n for n in SECRET_NAMES if n not in values]
    for name in missing:
        values[name] = (
            base64.urlsafe_b64encode(os.urandom(32)).decode()
            if name == "fernet_key"
            else secrets.token_urlsafe(24)
        )
    if missing:
        _private_file(path, json.dumps(values))
    return values


def _private_file(path: Path, text: str, owner: str | None = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)  # O_CREAT's mode applies only to a new file
    if owner:
        shutil.chown(path, owner, owner)


def _service_dir(stack: Stack, name: str, owner: str) -> Path:
    directory = stack.path(name)
    directory.mkdir(mode=0o700, exist_ok=True)
    shutil.chown(directory, owner, owner)
    return directory


# --- components: what runs -----------------------------------------------------------


def airflow_env(stack: Stack, sec: dict) -> dict[str, str]:
    p = stack.ports
    db = f"airflow:{sec['postgres_password']}@127.0.0.1:{p['postgres']}/airflow"
    home = stack.path("airflow")
    env = {
        "PATH": f"{stack.airflow_venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", str(home)),
        "LANG": "C.UTF-8",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(stack.dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__FERNET_KEY": sec["fernet_key"],
        # Laptops have few cores: bound what the scheduler hands out at once.
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{p['api']}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{db}",
        # Ride out a database restart (tens of seconds) instead of exiting after 3 tries.
        "AIRFLOW__DATABASE__MAX_DB_RETRIES": "12",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://:{sec['redis_password']}@127.0.0.1:{p['redis']}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{db}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(stack.worker_concurrency),
        # A task whose worker died is redelivered after this many seconds (default 24 h).
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "900",
        # Task-instance state gauges every 10 s (default 30 s misses short runs).
        "AIRFLOW__SCHEDULER__TI_METRICS_INTERVAL": "10",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(p["api"]),
        "AIRFLOW__API__SECRET_KEY": sec["api_secret_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": sec["jwt_secret"],
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(p["worker_logs"]),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(p["triggerer_logs"]),
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(p["statsd_udp"]),
        "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
        "HELICAL_BACKEND": "local",
        "HELICAL_RUNNER_PUSHGATEWAY": f"http://127.0.0.1:{p['pushgateway']}",
    }
    env.update({k: v for k, v in os.environ.items() if k.startswith(("AIRFLOW__", "HELICAL_"))})
    env.pop("AIRFLOW__CORE__SQL_ALCHEMY_CONN", None)
    return env


def render_prometheus_config(stack: Stack) -> str:
    """The compose config with loopback targets (same rules, same job names)."""
    rules = REPO / "observability" / "prometheus" / "rules" / "*.yml"
    p = stack.ports
    return f"""# Rendered by stack/stackctl.py for the native stack; do not edit.
global:
  scrape_interval: 5s
  evaluation_interval: 15s
  external_labels: {{platform: helical-workflow, environment: native}}
rule_files: ["{rules}"]
scrape_configs:
  - job_name: prometheus
    static_configs: [{{targets: ["127.0.0.1:{p["prometheus"]}"]}}]
  - job_name: airflow
    static_configs: [{{targets: ["127.0.0.1:{p["statsd_web"]}"]}}]
  - job_name: pushgateway
    honor_labels: true
    static_configs: [{{targets: ["127.0.0.1:{p["pushgateway"]}"]}}]
  - job_name: postgres
    static_configs: [{{targets: ["127.0.0.1:{p["postgres_exporter"]}"]}}]
  - job_name: redis
    static_configs: [{{targets: ["127.0.0.1:{p["redis_exporter"]}"]}}]
  # Stands in for cAdvisor: CPU/memory per component (prometheus-process-exporter).
  - job_name: processes
    static_configs: [{{targets: ["127.0.0.1:{p["process_exporter"]}"]}}]
"""


def render_process_exporter_config(stack: Stack) -> str:
    """One process-exporter group per component, and one for runner jobs.

    The first matching rule names a process; a process no rule matches joins
    its parent's group (task processes forked by the worker, Postgres backends).
    Runner jobs match their own rule, so their CPU is not the worker's.
    Each rule carries something only this stack has (its state dir or a
    port), so another stack on the same machine is not counted.
    """
    p, state = stack.ports, re.escape(str(stack.state))
    airflow = re.escape(str(stack.airflow_venv / "bin" / "airflow"))
    rules = {
        "runner": [r"bin/helical-runner "],
        "postgres": [rf"-D {state}/postgres/data"],
        "redis": [rf"redis-server 127\.0\.0\.1:{p['redis']}\b"],
        "statsd-receiver": [rf"statsd_receiver\.py .*127\.0\.0\.1:{p['statsd_web']}\b"],
        "pushgateway": [rf"--web\.listen-address=127\.0\.0\.1:{p['pushgateway']}\b"],
        "prometheus": [rf"^\S*prometheus --config\.file={state}/"],
        "airflow-api-server": [rf"{airflow} api-server --port {p['api']}\b"],
        "airflow-scheduler": [rf"{airflow} scheduler --pid {state}/"],
        "airflow-dag-processor": [rf"{airflow} dag-processor --pid {state}/"],
        "airflow-triggerer": [rf"{airflow} triggerer --pid {state}/"],
        "airflow-worker": [rf"{airflow} celery worker --pid {state}/"],
    }
    groups = [{"name": name, "cmdline": regexes} for name, regexes in rules.items()]
    return "# Rendered by stack/stackctl.py; do not edit.\n" + json.dumps(
        {"process_names": groups}, indent=2
    )


def programs(stack: Stack, sec: dict) -> dict[str, Program]:
    """Every component's command line, user and environment, in start order."""
    p = stack.ports
    python = str(stack.airflow_venv / "bin" / "python")
    airflow = str(stack.airflow_venv / "bin" / "airflow")
    pg_run = stack.path("postgres")
    af_env = airflow_env(stack, sec)

    def af(name: str, *args: str) -> Program:
        # --pid puts the state dir in the command line: the process exporter tells
        # this stack's components from another stack's by it. --skip-serve-logs: the
        # log servers would bind every interface (Airflow has no host setting for
        # them); on one machine the api-server reads task logs from the log folder.
        return Program([airflow, *args, "--pid", str(stack.path(f"{name}.pid")), *extra.get(name, [])],
                       env=af_env)  # fmt: skip

    extra = {
        "airflow-triggerer": ["--skip-serve-logs"],
        "airflow-worker": ["--skip-serve-logs", "--concurrency", str(stack.worker_concurrency)],
    }
    monitor_dsn = (f"postgresql://monitor:{sec['monitor_password']}@127.0.0.1:{p['postgres']}"
                   "/postgres?sslmode=disable")  # fmt: skip
    progs = {
        "postgres": Program(
            [str(PG_BIN / "postgres"), "-D", str(pg_run / "data"), "-p", str(p["postgres"]),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={pg_run}",
             "-c", "max_connections=200"],
            user="postgres", stopsignal="INT", stopasgroup=False,
        ),
        "redis": Program(["redis-server", str(stack.path("redis", "redis.conf"))], user="redis"),
        "statsd-receiver": Program(
            [python, str(REPO / "stack" / "statsd_receiver.py"),
             "--mapping", str(REPO / "observability" / "statsd" / "mapping.yml"),
             "--statsd-address", f"127.0.0.1:{p['statsd_udp']}",
             "--web-address", f"127.0.0.1:{p['statsd_web']}"],
        ),
        "process-exporter": Program(
            ["prometheus-process-exporter", f"-web.listen-address=127.0.0.1:{p['process_exporter']}",
             f"-config.path={stack.path('process-exporter.yml')}", "-threads=false",
             "-gather-smaps=false"],
            user="prometheus",
        ),
        # Credentials through the environment, never the command line.
        "postgres-exporter": Program(
            ["prometheus-postgres-exporter", f"--web.listen-address=127.0.0.1:{p['postgres_exporter']}"],
            user="prometheus", env={"DATA_SOURCE_NAME": monitor_dsn},
        ),
        "redis-exporter": Program(
            ["prometheus-redis-exporter", f"-web.listen-address=127.0.0.1:{p['redis_exporter']}",
             f"-redis.addr=redis://127.0.0.1:{p['redis']}",
             # Celery's queue is a Redis list named after the queue: its length is the backlog.
             "-check-single-keys=db0=default"],
            user="prometheus", env={"REDIS_PASSWORD": sec["redis_password"]},
        ),
        "pushgateway": Program(
            ["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{p['pushgateway']}",
             f"--persistence.file={stack.path('pushgateway', 'metrics.store')}",
             "--persistence.interval=30s"],
            user="prometheus",
        ),
        "prometheus": Program(
            ["prometheus", f"--config.file={stack.path('prometheus', 'prometheus.yml')}",
             f"--storage.tsdb.path={stack.path('prometheus', 'data')}",
             f"--web.listen-address=127.0.0.1:{p['prometheus']}",
             "--storage.tsdb.retention.time=7d"],
            user="prometheus",
        ),
        "airflow-api-server": Program(
            [airflow, "api-server", "--port", str(p["api"]), "--host", "127.0.0.1", "--workers", "1"],
            env=af_env,
        ),
        "airflow-scheduler": af("airflow-scheduler", "scheduler"),
        "airflow-dag-processor": af("airflow-dag-processor", "dag-processor"),
        "airflow-triggerer": af("airflow-triggerer", "triggerer"),
        "airflow-worker": af("airflow-worker", "celery", "worker"),
    }  # fmt: skip
    return progs


# --- components: getting ready ---------------------------------------------------------


def prepare_files(stack: Stack, sec: dict) -> None:
    """Data dirs and config files the components read, before supervisord starts them."""
    pg_run = _service_dir(stack, "postgres", "postgres")
    data = pg_run / "data"
    if not (data / "PG_VERSION").exists():
        pwfile = pg_run / "initpw"
        _private_file(pwfile, sec["postgres_password"] + "\n", owner="postgres")
        subprocess.run(
            [PG_BIN / "initdb", "-D", data, "-U", "postgres", "--pwfile", pwfile,
             "--auth-local=peer", "--auth-host=scram-sha-256", "-E", "UTF8"],
            user="postgres", group="postgres", extra_groups=[], check=True,
            stdout=subprocess.DEVNULL, cwd=pg_run,
        )  # fmt: skip
        pwfile.unlink()
    redis_dir = _service_dir(stack, "redis", "redis")
    # The broker's queue survives a Redis restart (append-only file, fsync every second):
    # without it every queued task's message is gone and waits out the scheduler's
    # task_queued_timeout before it is queued again (docs/load.md, the fault table).
    _private_file(
        redis_dir / "redis.conf",
        f"bind 127.0.0.1\nport {stack.ports['redis']}\nrequirepass {sec['redis_password']}\n"
        f'dir {redis_dir}\nsave ""\nappendonly yes\nappendfsync everysec\n'
        "protected-mode yes\ndaemonize no\n",
        owner="redis",
    )
    _service_dir(stack, "pushgateway", "prometheus")
    prom_dir = _service_dir(stack, "prometheus", "prometheus")
    (prom_dir / "prometheus.yml").write_text(render_prometheus_config(stack))
    stack.path("process-exporter.yml").write_text(render_process_exporter_config(stack))
    home = stack.path("airflow")
    home.mkdir(mode=0o700, exist_ok=True)
    _private_file(home / "passwords.json", json.dumps({"admin": sec["admin_password"]}))


def _psql(stack: Stack, sql: str, *, query: bool = False) -> str:
    """Run SQL as the postgres superuser over the private socket; SQL on stdin, not argv."""
    pg_run = stack.path("postgres")
    argv = [str(PG_BIN / "psql"), "-h", str(pg_run), "-p", str(stack.ports["postgres"]),
            "-U", "postgres", "-qtA", "-v", "ON_ERROR_STOP=1"]  # fmt: skip
    proc = subprocess.run(argv, input=sql, capture_output=True, text=True, user="postgres",
                          group="postgres", extra_groups=[], cwd=pg_run)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"psql failed: {proc.stderr.strip()}")
    return proc.stdout.strip() if query else ""


def postgres_ready(stack: Stack, sec: dict) -> bool:
    ready = [
        str(PG_BIN / "pg_isready"),
        "-q",
        "-h",
        "127.0.0.1",
        "-p",
        str(stack.ports["postgres"]),
    ]
    if subprocess.run(ready).returncode != 0:
        return False
    _psql(stack, f"""
DO $$BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='airflow') THEN
    CREATE ROLE airflow LOGIN PASSWORD '{sec["postgres_password"]}';
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='monitor') THEN
    CREATE ROLE monitor LOGIN PASSWORD '{sec["monitor_password"]}' IN ROLE pg_monitor;
  END IF;
END$$;""")  # fmt: skip
    if not _psql(stack, "SELECT 1 FROM pg_database WHERE datname='airflow'", query=True):
        _psql(stack, "CREATE DATABASE airflow OWNER airflow")
    return True


def worker_ready(stack: Stack) -> bool:
    log = stack.logfile("airflow-worker")
    return log.exists() and b" ready." in log.read_bytes()


def airflow_part(stack: Stack, key: str) -> bool:
    return (airflow_health(stack).get(key) or {}).get("status") == "healthy"


def readiness(stack: Stack, sec: dict) -> dict[str, tuple[str, object]]:
    """name -> (address to print, check that it answers)."""
    p = stack.ports
    url = "http://127.0.0.1:{}{}".format
    return {
        "postgres": (f"127.0.0.1:{p['postgres']}", lambda: tcp_open(p["postgres"])),
        "redis": (f"127.0.0.1:{p['redis']}", lambda: tcp_open(p["redis"])),
        "statsd-receiver": (f"udp 127.0.0.1:{p['statsd_udp']}, {url(p['statsd_web'], '/metrics')}",
                            lambda: http_ok(url(p["statsd_web"], "/metrics"))),
        "process-exporter": (url(p["process_exporter"], "/metrics"),
                             lambda: http_ok(url(p["process_exporter"], "/metrics"))),
        "postgres-exporter": (url(p["postgres_exporter"], "/metrics"),
                              lambda: http_ok(url(p["postgres_exporter"], "/metrics"))),
        "redis-exporter": (url(p["redis_exporter"], "/metrics"),
                           lambda: http_ok(url(p["redis_exporter"], "/metrics"))),
        "pushgateway": (url(p["pushgateway"], ""), lambda: http_ok(url(p["pushgateway"], "/-/ready"))),
        "prometheus": (url(p["prometheus"], ""), lambda: http_ok(url(p["prometheus"], "/-/ready"))),
        "airflow-api-server": (url(p["api"], ""), lambda: bool(airflow_health(stack))),
        "airflow-scheduler": ("", lambda: airflow_part(stack, "scheduler")),
        "airflow-dag-processor": ("", lambda: airflow_part(stack, "dag_processor")),
        "airflow-triggerer": ("", lambda: airflow_part(stack, "triggerer")),
        "airflow-worker": ("", lambda: worker_ready(stack)),
    }  # fmt: skip


def before_airflow(stack: Stack, sec: dict) -> None:
    """Schema migration and pools: once, before the first Airflow component starts."""
    env = airflow_env(stack, sec)
    airflow = str(stack.airflow_venv / "bin" / "airflow")
    with stack.logfile("airflow-db-migrate").open("ab") as log:
        subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=log,
                       stderr=subprocess.STDOUT, cwd=stack.state)  # fmt: skip
    import_pools(stack, env, airflow)


def import_pools(stack: Stack, env: dict[str, str], airflow: str) -> None:
    """Create the DAG's GPU pools (one per GPU type in the model profiles).

    The DAG puts each embed task in its profile's pool; a pool that does not
    exist leaves the task scheduled forever. On a laptop the "GPU" work runs on the
    CPU: ``pool_slots`` runners at once (one per core), while the worker's other
    slots run the DAG's light tasks (docs/load.md).
    """
    if not (stack.dags / "helical_workflow" / "pools.py").exists():
        return
    slots = str(stack.pool_slots)
    pools_json = stack.path("airflow", "pools.json")
    with pools_json.open("w") as out:
        subprocess.run([str(stack.airflow_venv / "bin" / "python"), "-m", "helical_workflow.pools",
                        "--slots", slots], env=env, cwd=stack.dags, stdout=out, check=True)  # fmt: skip
    with stack.logfile("airflow-pools").open("ab") as log:
        subprocess.run([airflow, "pools", "import", str(pools_json)], env=env, check=True,
                       stdout=log, stderr=subprocess.STDOUT, cwd=stack.state)  # fmt: skip


# Seconds each component may take to answer after supervisord started it.
START_TIMEOUT = {"postgres": 60, "prometheus": 60, "airflow-api-server": 120,
                 "airflow-scheduler": 120, "airflow-dag-processor": 120,
                 "airflow-triggerer": 120, "airflow-worker": 120}  # fmt: skip


# --- commands -----------------------------------------------------------------------


def cmd_start(stack: Stack) -> int:
    tools = ("supervisord", "prometheus", "prometheus-pushgateway", "redis-server",
             "prometheus-process-exporter", "prometheus-postgres-exporter", "prometheus-redis-exporter")  # fmt: skip
    for tool in tools:
        if shutil.which(tool) is None:
            print(f"[stack] {tool} missing: run scripts/bootstrap.sh system", file=sys.stderr)
            return 2
    if not (stack.airflow_venv / "bin" / "airflow").exists():
        print(
            f"[stack] no Airflow at {stack.airflow_venv}: run scripts/bootstrap.sh airflow",
            file=sys.stderr,
        )
        return 2
    for sub in ("", "logs"):
        stack.path(sub).mkdir(mode=0o711, parents=True, exist_ok=True)
    # Postgres, Redis and Prometheus run as their own users: they must reach their dirs.
    closed = [p for p in (stack.state, *stack.state.parents) if not p.stat().st_mode & 0o001]
    if closed:
        print(f"[stack] service users cannot enter {closed[0]} (no o+x): "
              "pick another HELICAL_STACK_STATE or chmod o+x it", file=sys.stderr)  # fmt: skip
        return 2
    sec = load_secrets(stack)
    try:
        prepare_files(stack, sec)
        start_supervisord(stack, programs(stack, sec))
        checks = readiness(stack, sec)
        states = program_states(stack)
        airflow_prepared = False
        for name in COMPONENTS:
            state = states[name][0]
            if name.startswith("airflow-") and not airflow_prepared:
                if states["airflow-api-server"][0] != "RUNNING":
                    before_airflow(stack, sec)
                airflow_prepared = True
            if state in ("RUNNING", "STARTING", "BACKOFF"):
                verb = "already running"
            else:
                supervisorctl(stack, "start", name)
                verb = "started"
            check = checks[name][1]
            if name == "postgres":
                check = lambda: postgres_ready(stack, sec)  # noqa: E731
            wait_for(name, check, START_TIMEOUT.get(name, 30), stack, name)
            print(f"[stack] {name} {verb} (pid {running_pid(stack, name)})")
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"[stack] start failed: {exc}", file=sys.stderr)
        return 1
    print_status(stack)
    return 0


def cmd_stop(stack: Stack) -> int:
    if not supervisor_running(stack):
        return 0
    states = program_states(stack)
    for name in reversed(COMPONENTS):
        if states[name][0] not in ("STOPPED", "EXITED", "FATAL"):
            supervisorctl(stack, "stop", name)
            print(f"[stack] {name} stopped")
    stop_supervisord(stack)
    return 0


def component_status(stack: Stack) -> list[dict]:
    states = program_states(stack)
    checks = readiness(stack, {})
    rows = []
    for name in COMPONENTS:
        state, pid = states[name]
        address, check = checks[name]
        running = state == "RUNNING"
        rows.append({"name": name, "pid": pid, "running": running, "state": state,
                     "healthy": running and check(), "address": address})  # fmt: skip
    return rows


def print_status(stack: Stack) -> list[dict]:
    rows = component_status(stack)
    for row in rows:
        state = "healthy" if row["healthy"] else ("running" if row["running"] else "stopped")
        print(f"{row['name']:<24} {state:<8} pid={row['pid'] or '-':<8} {row['address']}")
    return rows


def cmd_where(stack: Stack) -> int:
    """Where to look: the UI, Prometheus, each dashboard, the newest report (no screenshots needed)."""
    p = stack.ports
    running = {r["name"]: r["healthy"] for r in component_status(stack)}
    mark = {True: "", False: "  (not running: stack/stack.sh start)"}
    print(f"Airflow UI    http://127.0.0.1:{p['api']}  user admin, password: "
          f"python3 -c \"import json; print(json.load(open('{stack.path('secrets.json')}'))['admin_password'])\""
          f"{mark[running['airflow-api-server']]}")  # fmt: skip
    print(f"Prometheus    http://127.0.0.1:{p['prometheus']}/alerts{mark[running['prometheus']]}")
    print(f"Pushgateway   http://127.0.0.1:{p['pushgateway']}{mark[running['pushgateway']]}")
    grafana = os.environ.get("GRAFANA_PORT", "18730")
    for path in sorted((REPO / "observability" / "grafana" / "dashboards").glob("*.json")):
        dash = json.loads(path.read_text())
        print(f"Dashboard     {dash['title']}: http://127.0.0.1:{grafana}/d/{dash['uid']} (compose "
              f"Grafana; native stack: import {path.relative_to(REPO)} into any Grafana)")  # fmt: skip
    output_root = Path(os.environ.get("HELICAL_OUTPUT_ROOT") or REPO / "runs")
    reports = sorted(output_root.glob("*/*/report/report.html"), key=lambda r: r.stat().st_mtime)
    if reports:
        print(
            f"Report        {reports[-1].as_uri()}  (newest of {len(reports)} under {output_root})"
        )
    else:
        print(f"Report        none yet under {output_root}: trigger helical_embedding first")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="native local stack: start | stop | status | where"
    )
    parser.add_argument("command", choices=["start", "stop", "status", "restart", "where"])
    parser.add_argument("component", nargs="?", choices=COMPONENTS, help="restart: which one")
    parser.add_argument("--json", action="store_true", help="status as JSON (for scripts)")
    args = parser.parse_args(argv)
    stack = Stack.from_env()
    if args.command == "start":
        return cmd_start(stack)
    if args.command == "stop":
        return cmd_stop(stack)
    if args.command == "where":
        return cmd_where(stack)
    if args.command == "restart":
        if not args.component:
            parser.error("restart needs a component")
        if supervisor_running(stack):
            supervisorctl(stack, "stop", args.component)
        return cmd_start(stack)
    rows = component_status(stack) if args.json else print_status(stack)
    if args.json:
        print(json.dumps({"state_dir": str(stack.state), "ports": stack.ports, "components": rows}))
    # LSB convention: 0 when everything runs, 3 when something is stopped.
    return 0 if all(r["healthy"] for r in rows) else 3


if __name__ == "__main__":
    sys.exit(main())
