"""The native stack: start twice, status, stop twice, nothing left behind (checked by PID)."""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from pathlib import Path

import pytest

from conftest import NativeStack, live, poll

COMPONENTS = {
    "postgres", "redis", "statsd-receiver", "process-exporter", "pushgateway", "prometheus",
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


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


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


def test_everything_listens_on_loopback_only(stack):
    for name in (
        "postgres",
        "redis",
        "api",
        "prometheus",
        "pushgateway",
        "statsd_web",
        "process_exporter",
    ):
        assert listening_addresses(stack.ports[name]) == {"127.0.0.1"}, name


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
    }  # fmt: skip


def test_restart_one_component_keeps_the_others(stack):
    before = stack.pids()
    stack.run("restart", "redis")
    after = stack.pids()
    assert after["redis"] != before["redis"]
    assert {k: v for k, v in after.items() if k != "redis"} == {
        k: v for k, v in before.items() if k != "redis"
    }


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
    assert list((stack.state / "pids").glob("*.pid")) == []
    assert stack.run("status", check=False).returncode == 3
