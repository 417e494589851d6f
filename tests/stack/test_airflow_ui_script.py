"""scripts/airflow-ui.sh: the UI on loopback only, its state readable by the user only."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.request

from conftest import REPO, descendants, listening_sockets, live, poll

STATE = REPO / ".airflow"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(port: int) -> bool:
    try:
        url = f"http://127.0.0.1:{port}/api/v2/monitor/health"
        with urllib.request.urlopen(url, timeout=3) as resp:
            health = json.load(resp)
    except (OSError, ValueError):
        return False
    parts = ("metadatabase", "scheduler", "dag_processor", "triggerer")
    return all((health.get(p) or {}).get("status") == "healthy" for p in parts)


def test_ui_listens_on_loopback_only_and_keeps_its_state_private(tmp_path):
    port, started = _free_port(), set()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "HELICAL_"))}
    log = (tmp_path / "airflow-ui.log").open("wb")
    proc = subprocess.Popen([str(REPO / "scripts" / "airflow-ui.sh")], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, env={**env, "AIRFLOW_UI_PORT": str(port)},
                            start_new_session=True)  # fmt: skip
    try:
        poll(lambda: proc.poll() is None and _healthy(port), 400, "airflow-ui.sh to be healthy", 2)
        started = descendants(proc.pid)
        sockets = listening_sockets(started)
        assert f"127.0.0.1:{port}" in [address for address, _ in sockets]
        assert [s for s in sockets if not s[0].startswith("127.0.0.1:")] == [], sockets
        assert STATE.stat().st_mode & 0o077 == 0, ".airflow/ is not private"
        password_file = poll(lambda: next(STATE.glob("simple_auth_manager_passwords.json*"), None),
                             30, "the generated admin password")  # fmt: skip
        for path in (password_file, STATE / "airflow.db", STATE / "jwt_secret"):
            assert path.stat().st_mode & 0o077 == 0, f"{path.name} is readable by others"
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        proc.wait(timeout=90)
        log.close()
    # Ctrl-C leaves no component behind (the script SIGKILLs leftover groups after 30 s).
    poll(lambda: not any(live(p) for p in started), 30, "every component to exit")
