"""A client for one native stack (stack/stack.sh): start/stop, its REST API,
Prometheus, Postgres and Redis, and the processes of its components.

Used by the stack tests (tests/stack) and the load benchmark (benchmarks/bench_load.py),
run with the Airflow environment's Python. Each stack gets its own state dir and a
free block of loopback ports, so a user's running stack is never touched.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
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


def kill_tree(leader: int, victims: list[int], timeout: float, what: str) -> None:
    """SIGKILL ``leader``'s process group and every pid in ``victims`` (a crash takes a
    worker's task processes with it); wait until none is alive."""
    import signal

    os.killpg(leader, signal.SIGKILL)
    for pid in victims:
        if live(pid):
            os.kill(pid, signal.SIGKILL)
    poll(lambda: not any(live(p) for p in victims), timeout, what)


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


# --- what the load benchmark samples ------------------------------------------------


def psql(stack: NativeStack, sql: str) -> str:
    """Run one query as the postgres superuser over the stack's private socket."""
    return stackctl._psql(stackctl.Stack.from_env(stack.env), sql, query=True)


def redis_command(stack: NativeStack, *args: str) -> object:
    """One Redis command over RESP (AUTH with the stack's password first)."""
    secret = json.loads((stack.state / "secrets.json").read_text())["redis_password"]
    with socket.create_connection(("127.0.0.1", stack.ports["redis"]), timeout=5) as sock:
        reader = sock.makefile("rb")
        replies = []
        for cmd in (("AUTH", secret), args):
            parts = [f"*{len(cmd)}\r\n".encode()]
            for arg in cmd:
                data = str(arg).encode()
                parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
            sock.sendall(b"".join(parts))
            line = reader.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:].decode()
            if kind == b"-":
                raise RuntimeError(f"redis: {rest}")
            if kind == b":":
                replies.append(int(rest))
            elif kind == b"$":
                replies.append(None if rest == "-1" else reader.read(int(rest) + 2)[:-2].decode())
            else:
                replies.append(rest)
        return replies[-1]


def rss_bytes(pids: set[int]) -> int:
    """Summed resident memory of live processes (VmRSS from /proc)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def cpu_ticks(pids: set[int]) -> int:
    """CPU ticks (user + system) of live processes and of the children they reaped.

    Summed over a whole live process tree this counts every process once: a live
    one by its own ticks, a dead one in its reaper's cutime/cstime.
    """
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)
