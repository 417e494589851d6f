"""Dashboards as code: generated JSON in sync, well formed, every query valid PromQL."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import REPO

GRAFANA = REPO / "observability" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
REQUIRED = {
    "helical-workflow-overview",
    "helical-runner-performance",
    "helical-platform-health",
    "helical-resources",
}


def all_exprs() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, expr) for every target of every panel."""
    out = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            for target in panel["targets"]:
                out.append((dash["uid"], panel["title"], target["expr"]))
    return out


def grafana_to_promql(expr: str) -> str:
    """Substitute Grafana's variables the way Grafana would for a 1h view."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
        .replace("$dag_id", ".*")
        .replace("$model", ".*")
        .replace("$worker_concurrency", "2")
    )


def test_committed_json_matches_the_generator():
    proc = subprocess.run(
        [sys.executable, str(GRAFANA / "build_dashboards.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_the_four_dashboards_exist_with_unique_panel_ids():
    uids = set()
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        uids.add(dash["uid"])
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), path.name
        assert all(p["targets"] for p in dash["panels"]), path.name
        # Every panel reads through the datasource variable, so AMG can bind AMP.
        assert all(p["datasource"]["uid"] == "${datasource}" for p in dash["panels"]), path.name
        assert dash["templating"]["list"][0]["type"] == "datasource"
    assert uids == REQUIRED


def test_every_panel_query_is_valid_promql(tmp_path):
    # promtool parses expressions offline when they appear in a rule file.
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)}
        for i, (_, _, expr) in enumerate(all_exprs())
    ]}]}  # fmt: skip
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump(rules))
    if not shutil.which("promtool"):
        pytest.fail("promtool missing: run scripts/bootstrap.sh system")
    proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_provisioning_points_at_the_dashboards_folder():
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "helical.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert "./observability/grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts
    datasource = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
