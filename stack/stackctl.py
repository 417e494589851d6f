"""Start, stop and inspect the native local stack (no Docker needed).

    stack/stack.sh start | stop | status [--json] | restart COMPONENT

Postgres, Redis, Prometheus, Pushgateway (Debian packages), the StatsD receiver,
a process exporter (CPU/memory per component, in place of cAdvisor) and Airflow 3 with CeleryExecutor (api-server, scheduler, dag-processor,
triggerer, celery worker), all on 127.0.0.1. Every process runs in its own
session (so its group can be stopped as a whole), its PID and start time are
recorded in `<state>/pids/`, and `stop` signals exactly those PIDs. Both
commands are idempotent.

Settings (environment):
  HELICAL_STACK_STATE        state dir (default: <repo>/.state/stack): data, logs, pids, secrets
  HELICAL_STACK_PORT_BASE    first port of the block the stack uses (default 18700, see PORTS)
  HELICAL_STACK_AIRFLOW_VENV Airflow environment (default: <repo>/.venvs/airflow)
  HELICAL_STACK_DAGS         DAG folder (default: <repo>/dags)
  HELICAL_STACK_WORKER_CONCURRENCY  Celery worker slots (default 2)
  HELICAL_STACK_POOL_SLOTS   slots of each GPU pool the DAG uses (default: worker concurrency)
  AIRFLOW__*, HELICAL_*      passed to every Airflow component, overriding the stack defaults
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
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
    "pushgateway",
    "prometheus",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)


@dataclass
class Stack:
    state: Path
    port_base: int
    airflow_venv: Path
    dags: Path
    worker_concurrency: int
    ports: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.ports = {name: self.port_base + offset for name, offset in PORTS.items()}

    @classmethod
    def from_env(cls) -> Stack:
        env = os.environ
        return cls(
            state=Path(env.get("HELICAL_STACK_STATE", REPO / ".state" / "stack")).resolve(),
            port_base=int(env.get("HELICAL_STACK_PORT_BASE", "18700")),
            airflow_venv=Path(env.get("HELICAL_STACK_AIRFLOW_VENV", REPO / ".venvs" / "airflow")),
            dags=Path(env.get("HELICAL_STACK_DAGS", REPO / "dags")).resolve(),
            worker_concurrency=int(env.get("HELICAL_STACK_WORKER_CONCURRENCY", "2")),
        )

    # --- paths -------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.state.joinpath(*parts)

    def pidfile(self, name: str) -> Path:
        return self.path("pids", f"{name}.pid")

    def logfile(self, name: str) -> Path:
        return self.path("logs", f"{name}.log")


# --- process bookkeeping -----------------------------------------------------


def _start_time(pid: int) -> str | None:
    """Kernel start time of a PID: tells a live process from a recycled PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie is gone for our purposes
        return None
    return fields[19]


def tracked_pid(stack: Stack, name: str) -> int | None:
    """PID of a component if the process recorded for it still runs."""
    try:
        pid_text, started = stack.pidfile(name).read_text().split()
    except (OSError, ValueError):
        return None
    pid = int(pid_text)
    return pid if _start_time(pid) == started else None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(…, 0) also succeeds for zombies; look for a live member.
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def spawn(
    stack: Stack, name: str, argv: list[str], *, env: dict | None = None, user: str | None = None
) -> int:
    """Start one component in a new session, log to its file, record its PID."""
    log = stack.logfile(name).open("ab")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=stack.state,
        start_new_session=True,
        user=user,
        group=user,
        extra_groups=[] if user else None,
    )
    log.close()
    started = None
    deadline = time.monotonic() + 5
    while started is None and time.monotonic() < deadline:
        started = _start_time(proc.pid)
    if started is None:
        raise RuntimeError(f"{name} exited at once; see {stack.logfile(name)}")
    stack.pidfile(name).write_text(f"{proc.pid} {started}\n")
    return proc.pid


def stop_component(stack: Stack, name: str, timeout: float = 30.0) -> bool:
    """Stop a component by its recorded PID (its whole process group). True if it ran."""
    pid = tracked_pid(stack, name)
    if pid is None:
        stack.pidfile(name).unlink(missing_ok=True)
        return False
    # Postgres' fast shutdown is SIGINT to the postmaster, which stops its own children.
    sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + timeout
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(pid):
        print(f"[stack] {name} ignored SIGTERM for {timeout:.0f}s: SIGKILL", file=sys.stderr)
        os.killpg(pid, signal.SIGKILL)
        while _group_alive(pid):
            time.sleep(0.1)
    stack.pidfile(name).unlink(missing_ok=True)
    return True


# --- readiness -------------------------------------------------------------------


def wait_for(what: str, check, timeout: float, stack: Stack, name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tracked_pid(stack, name) is None:
            raise RuntimeError(f"{what} died while starting; see {stack.logfile(name)}")
        if check():
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


def load_secrets(stack: Stack) -> dict[str, str]:
    """Secrets generated at first start, kept 0600 in the state dir, never logged."""
    path = stack.path("secrets.json")
    if path.exists():
        return json.loads(path.read_text())
    values = {
        "fernet_key": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "jwt_secret": secrets.token_urlsafe(48),
        "api_secret_key": secrets.token_urlsafe(32),
        "postgres_password": secrets.token_urlsafe(24),
        "redis_password": secrets.token_urlsafe(24),
        "admin_password": secrets.token_urlsafe(16),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(values, fh)
    return values


def _private_file(path: Path, text: str, owner: str | None = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    if owner:
        shutil.chown(path, owner, owner)


def _service_dir(stack: Stack, name: str, owner: str) -> Path:
    directory = stack.path(name)
    directory.mkdir(mode=0o700, exist_ok=True)
    shutil.chown(directory, owner, owner)
    return directory


# --- components -------------------------------------------------------------------


def start_postgres(stack: Stack, sec: dict) -> None:
    data = stack.path("postgres", "data")
    run_dir = _service_dir(stack, "postgres", "postgres")
    if not (data / "PG_VERSION").exists():
        pwfile = run_dir / "initpw"
        _private_file(pwfile, sec["postgres_password"] + "\n", owner="postgres")
        subprocess.run(
            [PG_BIN / "initdb", "-D", data, "-U", "postgres", "--pwfile", pwfile,
             "--auth-local=peer", "--auth-host=scram-sha-256", "-E", "UTF8"],
            user="postgres", group="postgres", extra_groups=[], check=True,
            stdout=subprocess.DEVNULL, cwd=run_dir,
        )  # fmt: skip
        pwfile.unlink()
    argv = [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(stack.ports["postgres"]),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={run_dir}",
            "-c", "max_connections=200"]  # fmt: skip
    spawn(stack, "postgres", argv, user="postgres")
    port = stack.ports["postgres"]
    ready = [str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]
    wait_for("postgres", lambda: subprocess.run(ready).returncode == 0, 60, stack, "postgres")
    psql = [str(PG_BIN / "psql"), "-h", str(run_dir), "-p", str(port), "-U", "postgres", "-qtA"]
    role_sql = (
        "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='airflow') THEN "
        f"CREATE ROLE airflow LOGIN PASSWORD '{sec['postgres_password']}'; END IF; END$$;"
    )
    run_as_pg = {"user": "postgres", "group": "postgres", "extra_groups": [], "cwd": run_dir}
    subprocess.run([*psql, "-c", role_sql], check=True, **run_as_pg)
    exists = subprocess.run(
        [*psql, "-c", "SELECT 1 FROM pg_database WHERE datname='airflow'"],
        check=True, capture_output=True, text=True, **run_as_pg,
    ).stdout.strip()  # fmt: skip
    if not exists:
        subprocess.run(
            [*psql, "-c", "CREATE DATABASE airflow OWNER airflow"], check=True, **run_as_pg
        )


def start_redis(stack: Stack, sec: dict) -> None:
    run_dir = _service_dir(stack, "redis", "redis")
    conf = run_dir / "redis.conf"
    _private_file(
        conf,
        f"bind 127.0.0.1\nport {stack.ports['redis']}\nrequirepass {sec['redis_password']}\n"
        f'dir {run_dir}\nsave ""\nappendonly no\nprotected-mode yes\ndaemonize no\n',
        owner="redis",
    )
    spawn(stack, "redis", ["redis-server", str(conf)], user="redis")
    wait_for("redis", lambda: tcp_open(stack.ports["redis"]), 30, stack, "redis")


def start_statsd_receiver(stack: Stack, sec: dict) -> None:
    argv = [str(stack.airflow_venv / "bin" / "python"), str(REPO / "stack" / "statsd_receiver.py"),
            "--mapping", str(REPO / "observability" / "statsd" / "mapping.yml"),
            "--statsd-address", f"127.0.0.1:{stack.ports['statsd_udp']}",
            "--web-address", f"127.0.0.1:{stack.ports['statsd_web']}"]  # fmt: skip
    spawn(stack, "statsd-receiver", argv)
    url = f"http://127.0.0.1:{stack.ports['statsd_web']}/-/healthy"
    wait_for("statsd receiver", lambda: http_ok(url), 30, stack, "statsd-receiver")


def start_process_exporter(stack: Stack, sec: dict) -> None:
    argv = [str(stack.airflow_venv / "bin" / "python"), str(REPO / "stack" / "process_exporter.py"),
            "--pids", str(stack.path("pids")),
            "--web-address", f"127.0.0.1:{stack.ports['process_exporter']}"]  # fmt: skip
    spawn(stack, "process-exporter", argv)
    url = f"http://127.0.0.1:{stack.ports['process_exporter']}/metrics"
    wait_for("process exporter", lambda: http_ok(url), 30, stack, "process-exporter")


def start_pushgateway(stack: Stack, sec: dict) -> None:
    run_dir = _service_dir(stack, "pushgateway", "prometheus")
    argv = ["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{stack.ports['pushgateway']}",
            f"--persistence.file={run_dir / 'metrics.store'}", "--persistence.interval=30s"]  # fmt: skip
    spawn(stack, "pushgateway", argv, user="prometheus")
    url = f"http://127.0.0.1:{stack.ports['pushgateway']}/-/ready"
    wait_for("pushgateway", lambda: http_ok(url), 30, stack, "pushgateway")


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
  # Stands in for cAdvisor: CPU/memory per component process group.
  - job_name: processes
    static_configs: [{{targets: ["127.0.0.1:{p["process_exporter"]}"]}}]
"""


def start_prometheus(stack: Stack, sec: dict) -> None:
    run_dir = _service_dir(stack, "prometheus", "prometheus")
    config = run_dir / "prometheus.yml"
    config.write_text(render_prometheus_config(stack))
    argv = ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={run_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{stack.ports['prometheus']}",
            "--storage.tsdb.retention.time=7d"]  # fmt: skip
    spawn(stack, "prometheus", argv, user="prometheus")
    url = f"http://127.0.0.1:{stack.ports['prometheus']}/-/ready"
    wait_for("prometheus", lambda: http_ok(url), 60, stack, "prometheus")


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


def start_airflow(stack: Stack, sec: dict) -> None:
    home = stack.path("airflow")
    home.mkdir(mode=0o700, exist_ok=True)
    _private_file(home / "passwords.json", json.dumps({"admin": sec["admin_password"]}))
    env = airflow_env(stack, sec)
    airflow = str(stack.airflow_venv / "bin" / "airflow")
    if tracked_pid(stack, "airflow-api-server") is None:
        with stack.logfile("airflow-db-migrate").open("ab") as log:
            subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=log,
                           stderr=subprocess.STDOUT, cwd=stack.state)  # fmt: skip
    import_pools(stack, env, airflow)
    commands = {
        "airflow-api-server": [airflow, "api-server", "--port", str(stack.ports["api"]),
                               "--host", "127.0.0.1", "--workers", "1"],
        "airflow-scheduler": [airflow, "scheduler"],
        "airflow-dag-processor": [airflow, "dag-processor"],
        "airflow-triggerer": [airflow, "triggerer"],
        "airflow-worker": [airflow, "celery", "worker", "--concurrency", str(stack.worker_concurrency)],
    }  # fmt: skip
    supervise = [str(stack.airflow_venv / "bin" / "python"), str(REPO / "stack" / "supervise.py")]
    for name, argv in commands.items():
        if tracked_pid(stack, name) is None:
            # Restarted if it exits (e.g. the scheduler after a database outage), like
            # compose's `restart: unless-stopped`; stop signals wrapper and child together.
            spawn(stack, name, [*supervise, "--name", name, "--", *argv], env=env)
    wait_for(
        "airflow api-server", lambda: bool(airflow_health(stack)), 120, stack, "airflow-api-server"
    )

    def components_healthy() -> bool:
        health = airflow_health(stack)
        wanted = ("metadatabase", "scheduler", "dag_processor", "triggerer")
        return all((health.get(k) or {}).get("status") == "healthy" for k in wanted)

    wait_for(
        "airflow scheduler/dag-processor/triggerer",
        components_healthy,
        120,
        stack,
        "airflow-scheduler",
    )
    wait_for("celery worker", lambda: worker_ready(stack), 120, stack, "airflow-worker")


def import_pools(stack: Stack, env: dict[str, str], airflow: str) -> None:
    """Create the DAG's GPU pools (one per GPU type in the model profiles).

    The DAG puts each embed task in its profile's pool; a pool that does not
    exist leaves the task scheduled forever. Here one slot per Celery slot:
    on a laptop the "GPU" work runs on the CPU, as many at once as the worker takes.
    """
    if not (stack.dags / "helical_workflow" / "pools.py").exists():
        return
    slots = os.environ.get("HELICAL_STACK_POOL_SLOTS", str(stack.worker_concurrency))
    pools_json = stack.path("airflow", "pools.json")
    with pools_json.open("w") as out:
        subprocess.run([str(stack.airflow_venv / "bin" / "python"), "-m", "helical_workflow.pools",
                        "--slots", slots], env=env, cwd=stack.dags, stdout=out, check=True)  # fmt: skip
    with stack.logfile("airflow-pools").open("ab") as log:
        subprocess.run([airflow, "pools", "import", str(pools_json)], env=env, check=True,
                       stdout=log, stderr=subprocess.STDOUT, cwd=stack.state)  # fmt: skip


def worker_ready(stack: Stack) -> bool:
    return b" ready." in stack.logfile("airflow-worker").read_bytes()


STARTERS = {
    "postgres": start_postgres,
    "redis": start_redis,
    "statsd-receiver": start_statsd_receiver,
    "process-exporter": start_process_exporter,
    "pushgateway": start_pushgateway,
    "prometheus": start_prometheus,
}


# --- commands -----------------------------------------------------------------------


def cmd_start(stack: Stack) -> int:
    for tool in ("prometheus", "prometheus-pushgateway", "redis-server"):
        if shutil.which(tool) is None:
            print(f"[stack] {tool} missing: run scripts/bootstrap.sh system", file=sys.stderr)
            return 2
    if not (stack.airflow_venv / "bin" / "airflow").exists():
        print(
            f"[stack] no Airflow at {stack.airflow_venv}: run scripts/bootstrap.sh airflow",
            file=sys.stderr,
        )
        return 2
    for sub in ("", "pids", "logs"):
        stack.path(sub).mkdir(mode=0o711, parents=True, exist_ok=True)
    # Postgres, Redis and Prometheus run as their own users: they must reach their dirs.
    closed = [p for p in (stack.state, *stack.state.parents) if not p.stat().st_mode & 0o001]
    if closed:
        print(f"[stack] service users cannot enter {closed[0]} (no o+x): "
              "pick another HELICAL_STACK_STATE or chmod o+x it", file=sys.stderr)  # fmt: skip
        return 2
    sec = load_secrets(stack)
    try:
        for name, starter in STARTERS.items():
            if tracked_pid(stack, name) is None:
                starter(stack, sec)
                print(f"[stack] {name} started (pid {tracked_pid(stack, name)})")
            else:
                print(f"[stack] {name} already running (pid {tracked_pid(stack, name)})")
        start_airflow(stack, sec)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"[stack] start failed: {exc}", file=sys.stderr)
        return 1
    print_status(stack)
    return 0


def cmd_stop(stack: Stack) -> int:
    for name in reversed(COMPONENTS):
        if stop_component(stack, name):
            print(f"[stack] {name} stopped")
    return 0


def component_status(stack: Stack) -> list[dict]:
    p = stack.ports
    health = airflow_health(stack) if tracked_pid(stack, "airflow-api-server") else {}

    def airflow_part(key: str) -> bool:
        return (health.get(key) or {}).get("status") == "healthy"

    endpoints = {
        "postgres": (f"127.0.0.1:{p['postgres']}", lambda: tcp_open(p["postgres"])),
        "redis": (f"127.0.0.1:{p['redis']}", lambda: tcp_open(p["redis"])),
        "statsd-receiver": (f"udp 127.0.0.1:{p['statsd_udp']}, http://127.0.0.1:{p['statsd_web']}/metrics",
                            lambda: http_ok(f"http://127.0.0.1:{p['statsd_web']}/-/healthy")),
        "process-exporter": (f"http://127.0.0.1:{p['process_exporter']}/metrics",
                             lambda: http_ok(f"http://127.0.0.1:{p['process_exporter']}/metrics")),
        "pushgateway": (f"http://127.0.0.1:{p['pushgateway']}",
                        lambda: http_ok(f"http://127.0.0.1:{p['pushgateway']}/-/ready")),
        "prometheus": (f"http://127.0.0.1:{p['prometheus']}",
                       lambda: http_ok(f"http://127.0.0.1:{p['prometheus']}/-/ready")),
        "airflow-api-server": (f"http://127.0.0.1:{p['api']}", lambda: bool(health)),
        "airflow-scheduler": ("", lambda: airflow_part("scheduler")),
        "airflow-dag-processor": ("", lambda: airflow_part("dag_processor")),
        "airflow-triggerer": ("", lambda: airflow_part("triggerer")),
        "airflow-worker": ("", lambda: worker_ready(stack)),
    }  # fmt: skip
    rows = []
    for name in COMPONENTS:
        pid = tracked_pid(stack, name)
        address, check = endpoints[name]
        rows.append({"name": name, "pid": pid, "running": pid is not None,
                     "healthy": pid is not None and check(), "address": address})  # fmt: skip
    return rows


def print_status(stack: Stack) -> list[dict]:
    rows = component_status(stack)
    for row in rows:
        state = "healthy" if row["healthy"] else ("running" if row["running"] else "stopped")
        print(f"{row['name']:<24} {state:<8} pid={row['pid'] or '-':<8} {row['address']}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="native local stack: start | stop | status")
    parser.add_argument("command", choices=["start", "stop", "status", "restart"])
    parser.add_argument("component", nargs="?", choices=COMPONENTS, help="restart: which one")
    parser.add_argument("--json", action="store_true", help="status as JSON (for scripts)")
    args = parser.parse_args(argv)
    stack = Stack.from_env()
    if args.command == "start":
        return cmd_start(stack)
    if args.command == "stop":
        return cmd_stop(stack)
    if args.command == "restart":
        if not args.component:
            parser.error("restart needs a component")
        stop_component(stack, args.component)
        return cmd_start(stack)
    if not stack.path("pids").exists():
        rows = [
            {"name": n, "pid": None, "running": False, "healthy": False, "address": ""}
            for n in COMPONENTS
        ]
    elif args.json:
        rows = component_status(stack)
    else:
        rows = print_status(stack)
    if args.json:
        print(json.dumps({"state_dir": str(stack.state), "ports": stack.ports, "components": rows}))
    # LSB convention: 0 when everything runs, 3 when something is stopped.
    return 0 if all(r["healthy"] for r in rows) else 3


if __name__ == "__main__":
    sys.exit(main())
