"""The native stack under supervisord: start twice, status, stop twice, nothing left behind (by PID)."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest
import stackctl

from conftest import NativeStack, descendants, listening_sockets, live, poll

COMPONENTS = {
    "postgres", "redis", "statsd-receiver", "process-exporter", "postgres-exporter", "redis-exporter",
    "pushgateway", "prometheus",
    "airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker",
}  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory, state_root, require_servers):
    # Its own empty DAG folder: this test is about the processes, not the workflow.
    dags = tmp_path_factory.mktemp("dags")
    s = NativeStack(state_root / "lifecycle", {"HELICAL_STACK_DAGS": str(dags)})
    yield s
    s.run("stop", check=False)


def group_members(pgid: int) -> list[int]:
    members = []
    for proc in os.listdir("/proc"):
        if proc.isdigit():
            try:
                fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(proc))
    return members


def test_start_is_idempotent_and_everything_is_healthy(stack):
    stack.run("start")
    first = stack.pids()
    assert set(first) == COMPONENTS
    second_run = stack.run("start")
    assert "already running" in second_run.stdout
    assert stack.pids() == first, "a second start must not start new processes"
    status = stack.status()
    unhealthy = [c["name"] for c in status["components"] if not c["healthy"]]
    assert unhealthy == []


def test_status_exit_code_is_zero_when_all_run(stack):
    assert stack.run("status", check=False).returncode == 0


def test_every_listening_socket_of_the_stack_is_on_loopback(stack):
    supervisord = int((stack.state / "supervisord.pid").read_text())
    sockets = listening_sockets(descendants(supervisord) | {supervisord})
    ports = {int(address.rsplit(":", 1)[1]) for address, _ in sockets}
    # Every server of the stack is in the list (the check sees them all) ...
    for name in ("postgres", "redis", "api", "prometheus", "pushgateway", "statsd_web",
                 "process_exporter", "postgres_exporter", "redis_exporter"):  # fmt: skip
        assert stack.ports[name] in ports, f"{name} not listening: {sockets}"
    # The StatsD receiver's UDP socket too (StatsD clients' own sending sockets are
    # unbound senders, not servers: only the receiver's port is checked).
    udp = listening_sockets(descendants(supervisord), "-u")
    assert [a for a, _ in udp if a.endswith(f":{stack.ports['statsd_udp']}")] == [
        f"127.0.0.1:{stack.ports['statsd_udp']}"
    ]
    # ... and none listens beyond 127.0.0.1 (the worker's and triggerer's log
    # servers would bind every interface: they are not started).
    assert [s for s in sockets if not s[0].startswith("127.0.0.1:")] == []
    assert stack.ports["worker_logs"] not in ports and stack.ports["triggerer_logs"] not in ports


def test_state_files_with_secrets_are_private(stack):
    for path in ("secrets.json", "supervisord.conf", "airflow/passwords.json", "redis/redis.conf"):
        assert (stack.state / path).stat().st_mode & 0o077 == 0, path
    for folder in ("airflow", "postgres", "redis", "prometheus"):
        assert (stack.state / folder).stat().st_mode & 0o077 == 0, folder


def test_no_secret_in_any_command_line(stack):
    values = list(json.loads((stack.state / "secrets.json").read_text()).values())
    supervisord = int((stack.state / "supervisord.pid").read_text())
    for pid in descendants(supervisord) | {supervisord}:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        assert not any(v in cmdline for v in values), f"a secret in the argv of pid {pid}"


def test_secrets_are_private_and_not_in_logs(stack):
    secrets_file = stack.state / "secrets.json"
    assert secrets_file.stat().st_mode & 0o077 == 0
    values = json.loads(secrets_file.read_text()).values()
    for log in (stack.state / "logs").glob("*.log"):
        text = log.read_text(errors="replace")
        assert not any(v in text for v in values), f"a secret leaked into {log.name}"


def test_airflow_metrics_reach_prometheus_through_the_receiver(stack):
    def heartbeat():
        result = stack.prom_query("airflow_scheduler_heartbeat_total")
        return result and float(result[0]["value"][1]) > 0

    poll(heartbeat, 60, "scheduler heartbeat in Prometheus")
    targets_url = f"http://127.0.0.1:{stack.ports['prometheus']}/api/v1/targets"
    with urllib.request.urlopen(targets_url, timeout=10) as resp:
        targets = json.load(resp)["data"]["activeTargets"]
    assert {t["labels"]["job"]: t["health"] for t in targets} == {
        "prometheus": "up", "airflow": "up", "pushgateway": "up", "processes": "up",
        "postgres": "up", "redis": "up",
    }  # fmt: skip


def test_restart_one_component_keeps_the_others(stack):
    before = stack.pids()
    stack.run("restart", "redis")
    after = stack.pids()
    assert after["redis"] != before["redis"]
    assert {k: v for k, v in after.items() if k != "redis"} == {
        k: v for k, v in before.items() if k != "redis"
    }


def test_postgres_passwords_go_to_psql_on_stdin_never_in_argv(stack, monkeypatch):
    """`restart postgres` in-process, recording every command stackctl runs."""
    calls = []
    real_run = subprocess.run

    def recording_run(argv, *args, **kwargs):
        calls.append(([str(a) for a in argv], kwargs.get("input") or ""))
        return real_run(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", recording_run)
    for key, value in stack.env.items():
        monkeypatch.setenv(key, value)
    assert stackctl.main(["restart", "postgres"]) == 0
    passwords = [v for k, v in json.loads((stack.state / "secrets.json").read_text()).items()]
    psql = [(argv, stdin) for argv, stdin in calls if argv[0].endswith("/psql")]
    assert any("CREATE ROLE monitor" in stdin for _, stdin in psql), "role SQL went through stdin"
    leaked = [argv[0] for argv, _ in calls if any(p in " ".join(argv) for p in passwords)]
    assert leaked == []


def test_stop_is_idempotent_and_leaves_no_process(stack):
    pids = stack.pids()
    groups = {name: group_members(pid) for name, pid in pids.items()}
    assert all(groups.values()), "every component has live processes before stop"
    stack.run("stop")
    second = stack.run("stop")
    assert second.stdout.strip() == "", "a second stop has nothing to stop"
    leftovers = {name: [p for p in members if live(p)] for name, members in groups.items()}
    assert {k: v for k, v in leftovers.items() if v} == {}
    assert all(group_members(pid) == [] for pid in pids.values())
    assert not (stack.state / "supervisord.pid").exists(), "supervisord is gone too"
    assert stack.run("status", check=False).returncode == 3
