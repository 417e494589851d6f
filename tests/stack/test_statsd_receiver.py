"""The native StatsD receiver applies observability/statsd/mapping.yml like the exporter does."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request

import pytest
import yaml
from statsd_receiver import Mapper, Registry, escape_name

from conftest import REPO, free_port_block, poll

MAPPING = REPO / "observability" / "statsd" / "mapping.yml"


@pytest.fixture(scope="module")
def mapper() -> Mapper:
    return Mapper.from_file(MAPPING)


# Names as Airflow 3.3 sends them (legacy form: ids inside the name).
CASES = [
    ("airflow.dagrun.duration.success.helical_embedding", "airflow_dagrun_duration_seconds",
     {"dag_id": "helical_embedding", "state": "success"}),
    ("airflow.dagrun.duration.failed.helical_embedding", "airflow_dagrun_duration_seconds",
     {"dag_id": "helical_embedding", "state": "failed"}),
    ("airflow.ti.finish.helical_embedding.embed.failed", "airflow_task_finish_total",
     {"dag_id": "helical_embedding", "task_id": "embed", "state": "failed"}),
    ("airflow.ti.start.helical_embedding.embed", "airflow_task_start_total",
     {"dag_id": "helical_embedding", "task_id": "embed"}),
    ("airflow.ti.queued.default.helical_embedding.embed", "airflow_task_instances",
     {"state": "queued", "queue": "default", "dag_id": "helical_embedding", "task_id": "embed"}),
    ("airflow.dag.helical_embedding.embed.duration", "airflow_task_duration_seconds",
     {"dag_id": "helical_embedding", "task_id": "embed"}),
    ("airflow.dag.helical_embedding.embed.queued_duration", "airflow_task_queued_duration_seconds",
     {"dag_id": "helical_embedding", "task_id": "embed"}),
    ("airflow.scheduler_heartbeat", "airflow_scheduler_heartbeat_total", {}),
    ("airflow.executor.open_slots.CeleryExecutor", "airflow_executor_open_slots", {"executor": "CeleryExecutor"}),
    ("airflow.executor.queued_tasks.CeleryExecutor", "airflow_executor_queued_tasks", {"executor": "CeleryExecutor"}),
    ("airflow.pool.open_slots.gpu-nvidia-a10g", "airflow_pool_open_slots", {"pool": "gpu-nvidia-a10g"}),
    ("airflow.scheduler.tasks.starving", "airflow_scheduler_tasks_starving", {}),
    ("airflow.ti_failures", "airflow_ti_failures_total", {}),
    # unmapped: escaped like the exporter does
    ("airflow.serde.load_serializers", "airflow_serde_load_serializers", {}),
]  # fmt: skip


@pytest.mark.parametrize(("statsd_name", "prom_name", "labels"), CASES, ids=[c[0] for c in CASES])
def test_legacy_names_become_labelled_series(mapper, statsd_name, prom_name, labels):
    series, _ = mapper.map(statsd_name)
    assert series is not None
    assert series.name == prom_name
    assert dict(series.labels) == labels


@pytest.mark.parametrize(
    "modern_name",
    ["airflow.dagrun.duration.success", "airflow.ti.finish", "airflow.executor.open_slots",
     "airflow.pool.open_slots", "airflow.task.duration"],
)  # fmt: skip
def test_untagged_modern_duplicates_are_dropped(mapper, modern_name):
    # Without this, executor.open_slots would appear once labelled and once not.
    series, _ = mapper.map(modern_name)
    assert series is None


def test_mapping_never_gives_one_name_two_label_sets():
    """The exporter rejects a metric name whose label names differ between rules."""
    config = yaml.safe_load(MAPPING.read_text())
    seen: dict[str, set[str]] = {}
    for rule in config["mappings"]:
        if rule.get("action") == "drop" or "$" in rule["name"]:
            continue
        keys = set(rule.get("labels", {}))
        assert seen.setdefault(rule["name"], keys) == keys, rule["name"]


def test_timers_are_histograms_in_seconds_with_mapping_buckets(mapper):
    registry = Registry(mapper)
    registry.ingest_packet(
        "airflow.dagrun.duration.success.d1:45000|ms\nairflow.dagrun.duration.success.d1:700|ms"
    )
    text = registry.exposition()
    assert "# TYPE airflow_dagrun_duration_seconds histogram" in text
    assert 'airflow_dagrun_duration_seconds_bucket{dag_id="d1",le="1",state="success"} 1' in text
    assert 'airflow_dagrun_duration_seconds_bucket{dag_id="d1",le="60",state="success"} 2' in text
    assert 'airflow_dagrun_duration_seconds_count{dag_id="d1",state="success"} 2' in text
    assert 'airflow_dagrun_duration_seconds_sum{dag_id="d1",state="success"} 45.7' in text


def test_counters_sampling_gauges_deltas_and_bad_lines(mapper):
    registry = Registry(mapper)
    registry.ingest_packet(
        "airflow.scheduler_heartbeat:1|c\nairflow.scheduler_heartbeat:1|c|@0.5\n"
        "airflow.executor.open_slots.CeleryExecutor:16|g\n"
        "airflow.executor.open_slots.CeleryExecutor:-3|g\n"
        "garbage-without-type\nairflow.x:abc|c\n"
    )
    text = registry.exposition()
    assert "airflow_scheduler_heartbeat_total 3" in text  # 1 + 1/0.5
    assert 'airflow_executor_open_slots{executor="CeleryExecutor"} 13' in text
    assert "statsd_receiver_lines_invalid_total 2" in text


def test_a_name_seen_with_two_types_keeps_the_first(mapper):
    registry = Registry(mapper)
    registry.ingest_packet("airflow.scheduler_heartbeat:1|c\nairflow.scheduler_heartbeat:5|g")
    text = registry.exposition()
    assert "airflow_scheduler_heartbeat_total 1" in text
    assert "statsd_receiver_type_conflicts_total 1" in text


def test_escape_name_matches_exporter_rules():
    assert escape_name("airflow.dag-processing.x") == "airflow_dag_processing_x"
    assert escape_name("1abc") == "_1abc"


def test_receiver_process_over_udp_and_http():
    base = free_port_block()
    udp_port, web_port = base + 25, base + 2
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "stack" / "statsd_receiver.py"), "--mapping", str(MAPPING),
         "--statsd-address", f"127.0.0.1:{udp_port}", "--web-address", f"127.0.0.1:{web_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def scrape() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=2) as r:
                    return r.read().decode()
            except OSError:
                return ""

        poll(scrape, 15, "receiver HTTP")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"airflow.ti.finish.dag_a.task_b.success:1|c", ("127.0.0.1", udp_port))
        text = poll(
            lambda: (t := scrape()) and "airflow_task_finish_total" in t and t, 10, "the UDP metric"
        )
        assert (
            'airflow_task_finish_total{dag_id="dag_a",state="success",task_id="task_b"} 1' in text
        )
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0 or proc.returncode == -15
