"""promtool on the compose config, the native stack's rendered config and the alert rules."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from stackctl import Stack, render_prometheus_config

from conftest import REPO

PROM = REPO / "observability" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess:
    if not shutil.which("promtool"):
        pytest.fail("promtool missing: run scripts/bootstrap.sh system")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=REPO)


def test_compose_prometheus_config_is_valid():
    proc = promtool("check", "config", str(PROM / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(list((PROM / 'rules').glob('*.yml')))} rule files found" in proc.stdout


def test_native_prometheus_config_is_valid_and_loads_the_same_rules(tmp_path):
    stack = Stack(
        state=tmp_path, port_base=28700, airflow_venv=tmp_path, dags=tmp_path, worker_concurrency=1
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(render_prometheus_config(stack))
    proc = promtool("check", "config", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(list((PROM / 'rules').glob('*.yml')))} rule files found" in proc.stdout


def test_alert_rules_are_valid():
    proc = promtool("check", "rules", *map(str, (PROM / "rules").glob("*.yml")))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_rule_unit_tests_pass():
    proc = promtool("test", "rules", *map(str, sorted((PROM / "tests").glob("*.test.yml"))))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_required_alert_exists_and_is_unit_tested():
    rules = "".join(p.read_text() for p in (PROM / "rules").glob("*.yml"))
    tests = "".join(p.read_text() for p in (PROM / "tests").glob("*.test.yml"))
    for alert in (
        "HelicalDagFailureRatioHigh",
        "AirflowSchedulerHeartbeatMissing",
        "HelicalRunnerThroughputDrop",
        "AirflowQueueBacklogGrowing",
        "HelicalRunnerJobStuck",
        "HelicalExporterDown",
        "PostgresDown",
        "PostgresConnectionsNearLimit",
        "RedisDown",
        "BrokerQueueDeep",
        "BrokerMemoryNearLimit",
    ):
        assert f"alert: {alert}" in rules
        assert f"alertname: {alert}" in tests
