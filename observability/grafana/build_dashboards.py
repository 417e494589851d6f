"""Generate the Grafana dashboards (JSON, committed) from compact definitions.

    python observability/grafana/build_dashboards.py          # rewrite dashboards/*.json
    python observability/grafana/build_dashboards.py --check  # exit 1 if the JSON is stale

The JSON is what Grafana (compose) and Amazon Managed Grafana import; this file
is what people edit. Every query names a metric that exists in some stack:
  airflow_*               Airflow StatsD via observability/statsd/mapping.yml
  helical_runner_*        the runner, through the Pushgateway
  container_*             cAdvisor (compose) or the kubelet (EKS)
  namedprocess_namegroup_* the native stack's prometheus-process-exporter (no containers there)
  pg_*, redis_*           prometheus-postgres-exporter / prometheus-redis-exporter
Panels that count failures fall back to `0 * <the matching success series>`, so
a healthy system shows 0 instead of "No data", yet a misspelt metric still
shows nothing (tests/stack checks that every query returns data).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}


def target(expr: str, legend: str = "", ref: str = "A", fmt: str = "time_series") -> dict:
    return {"refId": ref, "datasource": DS, "expr": expr, "legendFormat": legend, "format": fmt}


def panel(
    kind: str,
    title: str,
    targets: list[dict],
    *,
    unit: str = "short",
    desc: str = "",
    w: int = 12,
    h: int = 8,
) -> dict:
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    return {"type": kind, "title": title, "description": desc, "datasource": DS, "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {},
            "gridPos": {"w": w, "h": h}}  # fmt: skip


def var_query(name: str, label: str, query: str) -> dict:
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": name}, "definition": query, "refresh": 2,
            "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"text": "All", "value": "$__all"}}  # fmt: skip


DATASOURCE_VAR = {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
                  "current": {"text": "Prometheus", "value": "prometheus"}}  # fmt: skip


def dashboard(uid: str, title: str, desc: str, panels: list[dict], variables: list[dict]) -> dict:
    x = y = 0
    row_h = 0
    for i, p in enumerate(panels, start=1):
        p["id"] = i
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > 24:
            x, y = 0, y + row_h
            row_h = 0
        p["gridPos"].update({"x": x, "y": y})
        x += w
        row_h = max(row_h, h)
    return {"uid": uid, "title": title, "description": desc, "tags": ["helical-workflow"],
            "timezone": "utc", "schemaVersion": 39, "version": 1, "editable": True,
            "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
            "templating": {"list": [DATASOURCE_VAR, *variables]}, "annotations": {"list": []},
            "panels": panels}  # fmt: skip


def zero_if_none(expr: str, base: str) -> str:
    """`expr`, or 0 per series of `base` when expr is empty (no failures yet)."""
    return f"({expr}) or (0 * ({base}))"


# --- workflow overview ---------------------------------------------------------


def runs(state: str = "") -> str:
    """DAG runs finished (histogram count), optionally of one final state."""
    extra = f',state="{state}"' if state else ""
    return f'airflow_dagrun_duration_seconds_count{{dag_id=~"$dag_id"{extra}}}'


def tasks(state: str = "") -> str:
    extra = f',state="{state}"' if state else ""
    return f'airflow_task_finish_total{{dag_id=~"$dag_id"{extra}}}'


def workflow_overview() -> dict:
    ok = f"sum(increase({runs('success')}[$__range]))"
    failed = f"sum(increase({runs('failed')}[$__range]))"
    all_runs = f"sum(increase({runs()}[$__range]))"
    failed_tasks = f"sum by (dag_id, task_id) (increase({tasks('failed')}[$__range]))"
    panels = [
        panel("stat", "DAG runs succeeded", [target(ok)], w=6, h=4,
              desc="Runs that ended in success in the selected time range."),
        panel("stat", "DAG runs failed", [target(zero_if_none(failed, all_runs))], w=6, h=4,
              desc="Runs that ended in failure in the selected time range."),
        panel("stat", "Failure ratio", [target(f"{zero_if_none(failed, all_runs)} / {all_runs}")],
              unit="percentunit", w=6, h=4, desc="Failed / finished runs. Alert HelicalDagFailureRatioHigh above 20%."),
        panel("stat", "Task instance failures", [target(zero_if_none(
              "sum(increase(airflow_ti_failures_total[$__range]))",
              "sum(increase(airflow_ti_successes_total[$__range]))"))], w=6, h=4,
              desc="Failed task tries (a retried task counts each failed try)."),
        panel("timeseries", "DAG run outcomes", [target(
              f"sum by (dag_id, state) (increase({runs()}[$__rate_interval]))", "{{dag_id}} {{state}}")],
              desc="Finished runs per interval, by DAG and final state."),
        panel("timeseries", "DAG run duration (p50, p95)", [
              target('histogram_quantile(0.5, sum by (le, dag_id) (increase(airflow_dagrun_duration_seconds_bucket{dag_id=~"$dag_id",state="success"}[$__range])))', "p50 {{dag_id}}"),
              target('histogram_quantile(0.95, sum by (le, dag_id) (increase(airflow_dagrun_duration_seconds_bucket{dag_id=~"$dag_id",state="success"}[$__range])))', "p95 {{dag_id}}")],
              unit="s", desc="Duration of successful runs over the selected range."),
        panel("bargauge", "DAG run duration distribution", [target(
              'sum by (le) (increase(airflow_dagrun_duration_seconds_bucket{dag_id=~"$dag_id",state="success"}[$__range]))',
              "{{le}}", fmt="heatmap")], desc="How many successful runs finished under each duration bound (seconds)."),
        panel("table", "Failing tasks", [target(zero_if_none(failed_tasks,
              f"sum by (dag_id, task_id) (increase({tasks()}[$__range]))"), fmt="table")],
              desc="Failed tries per task in the range; 0 rows mean the task ran and never failed."),
        panel("timeseries", "Task outcomes", [target(
              f"sum by (task_id, state) (increase({tasks()}[$__rate_interval]))", "{{task_id}} {{state}}")],
              desc="Finished task tries per interval, by task and state."),
        panel("timeseries", "Task duration p95", [target(
              'histogram_quantile(0.95, sum by (le, task_id) (increase(airflow_task_duration_seconds_bucket{dag_id=~"$dag_id"}[$__range])))',
              "{{task_id}}")], unit="s", desc="95th percentile run time per task over the range."),
        panel("timeseries", "Scheduling delay p95 (scheduled -> queued)", [target(
              'histogram_quantile(0.95, sum by (le, task_id) (increase(airflow_task_scheduled_duration_seconds_bucket{dag_id=~"$dag_id"}[$__range])))',
              "{{task_id}}")], unit="s",
              desc="Time a ready task waits for a pool slot or concurrency limit. (Airflow 3 sends no queued -> running timing.)"),
    ]  # fmt: skip
    variables = [
        var_query("dag_id", "DAG", "label_values(airflow_dagrun_duration_seconds_count, dag_id)")
    ]
    return dashboard("helical-workflow-overview", "Helical / Workflow overview",
                     "DAG runs and their outcomes, durations, failing tasks.", panels, variables)  # fmt: skip


# --- runner performance ----------------------------------------------------------
M = '{model=~"$model"}'


def annotation_row() -> list[dict]:
    """One row for the annotation job (helical-runner annotate; docs/annotation.md).
    Empty until an annotation has run: these series exist only once one pushed."""
    return [
        panel("bargauge", "Annotation: held-out macro-F1", [target(
              f"max by (model) (helical_runner_annotate_macro_f1{M})", "{{model}}")], unit="percentunit", w=6,
              desc="Macro-F1 of each model's classifier on its reference's held-out cells; pca is the baseline."),
        panel("timeseries", "Annotation: training time", [target(
              f"max by (model) (helical_runner_annotate_train_seconds{M})", "{{model}}")], unit="s", w=6,
              desc="annotate train, the reference's embedding (when train made it) included."),
        panel("timeseries", "Annotation: cells labelled per second", [target(
              f"avg by (model) (helical_runner_annotate_cells_per_second{M})", "{{model}}")], unit="cells/s", w=6),
        panel("timeseries", "Annotation: cells left unknown", [target(
              f"max by (model, dataset) (helical_runner_annotate_unknown_fraction{M})", "{{model}} {{dataset}}")],
              unit="percentunit", w=6, desc="Share of a query's cells below the confidence threshold."),
    ]  # fmt: skip


def runner_performance() -> dict:
    panels = [
        panel("timeseries", "Throughput by model and device", [target(
              f"avg by (model, device) (helical_runner_cells_per_second{M})", "{{model}} {{device}}")],
              unit="cells/s", desc="Cells embedded per second of compute, averaged over jobs. Alert HelicalRunnerThroughputDrop."),
        panel("table", "Throughput per job", [target(
              f"helical_runner_cells_per_second{M}", fmt="table")], unit="cells/s",
              desc="One row per runner job (run_id, shard, dataset, precision)."),
        panel("timeseries", "Batch latency (p50, p95)", [
              target(f"histogram_quantile(0.5, sum by (le, model, device) (helical_runner_batch_latency_seconds_bucket{M}))", "p50 {{model}} {{device}}"),
              target(f"histogram_quantile(0.95, sum by (le, model, device) (helical_runner_batch_latency_seconds_bucket{M}))", "p95 {{model}} {{device}}")],
              unit="s", desc="Model forward time per batch, all retained jobs."),
        panel("timeseries", "Mean batch latency", [target(
              f"sum by (model, device) (helical_runner_batch_latency_seconds_sum{M}) / sum by (model, device) (helical_runner_batch_latency_seconds_count{M})",
              "{{model}} {{device}}")], unit="s"),
        panel("timeseries", "Peak memory (RSS) per job", [target(
              f"max by (model, device, run_id, shard) (helical_runner_peak_rss_bytes{M})", "{{model}} {{run_id}}/{{shard}}")],
              unit="bytes", desc="Peak resident memory: size memory limits in the model's resource profile from this."),
        panel("timeseries", "Peak GPU memory per job", [target(
              f"max by (model, device, run_id, shard) (helical_runner_peak_gpu_memory_bytes{M})", "{{model}} {{device}} {{run_id}}/{{shard}}")],
              unit="bytes", desc="torch.cuda.max_memory_allocated(); 0 on CPU."),
        panel("timeseries", "Cells processed", [target(
              f"sum by (model) (helical_runner_cells_processed_total{M})", "{{model}}")]),
        panel("timeseries", "Job duration and model load time", [
              target(f"max by (model) (helical_runner_duration_seconds{M})", "run {{model}}"),
              target(f"max by (model) (helical_runner_model_load_seconds{M})", "load {{model}}")], unit="s"),
        panel("table", "Failures by reason", [target(zero_if_none(
              f"sum by (model, reason) (helical_runner_failures_total{M})",
              f"sum by (model) (helical_runner_cells_processed_total{M})"), fmt="table")],
              desc="Runner exits by reason (bad_input, transient, oom, ...)."),
        *annotation_row(),
    ]  # fmt: skip
    variables = [
        var_query("model", "Model", 'label_values({__name__=~"helical_runner_cells_per_second|helical_runner_annotate_macro_f1"}, model)')
    ]  # fmt: skip
    return dashboard("helical-runner-performance", "Helical / Runner performance",
                     "Throughput, latency and memory of Helical model runs.", panels, variables)  # fmt: skip


# --- platform health -------------------------------------------------------------------


def platform_health() -> dict:
    panels = [
        panel("timeseries", "Heartbeats per second", [
              target("sum(rate(airflow_scheduler_heartbeat_total[$__rate_interval]))", "scheduler"),
              target("sum(rate(airflow_triggerer_heartbeat_total[$__rate_interval]))", "triggerer"),
              target("sum(rate(airflow_dag_processor_heartbeat_total[$__rate_interval]))", "dag-processor")],
              desc="Flat at 0 = component down. Alert AirflowSchedulerHeartbeatMissing."),
        panel("timeseries", "Queue backlog", [
              target("sum by (executor) (airflow_executor_queued_tasks)", "queued {{executor}}"),
              target("sum(airflow_scheduler_tasks_executable)", "executable"),
              target("sum(airflow_scheduler_tasks_starving)", "starving (no pool slot)")],
              desc="Tasks waiting for a worker. Alert AirflowQueueBacklogGrowing."),
        panel("timeseries", "Worker slots", [
              target("sum by (executor) (airflow_executor_running_tasks)", "running {{executor}}"),
              target("sum by (executor) (airflow_executor_open_slots)", "open {{executor}}")],
              desc="Executor slots in use and free."),
        panel("timeseries", "Workers wanted by the autoscaler", [target(
              "ceil((sum(airflow_executor_running_tasks) + sum(airflow_executor_queued_tasks)) / $worker_concurrency)",
              "workers")], desc="KEDA's Celery formula: ceil((running + queued) / worker concurrency). Compare with the worker count."),
        panel("timeseries", "Pool slots", [
              target("sum by (pool) (airflow_pool_running_slots)", "running {{pool}}"),
              target("sum by (pool) (airflow_pool_queued_slots)", "queued {{pool}}"),
              target("sum by (pool) (airflow_pool_open_slots)", "open {{pool}}")],
              desc="GPU pools (gpu-<type>) bound how many GPU tasks run at once."),
        panel("timeseries", "Task instances by state", [target(
              "sum by (state) (airflow_task_instances)", "{{state}}")]),
        panel("timeseries", "Scheduler loop duration p95", [target(
              "histogram_quantile(0.95, sum by (le) (rate(airflow_scheduler_loop_duration_seconds_bucket[$__rate_interval])))",
              "p95")], unit="s"),
        panel("stat", "DAG import errors", [target("max(airflow_dag_processing_import_errors)")],
              desc="DAG files that fail to import (a broken deploy or git-sync)."),
        panel("stat", "Scrape targets up", [target("sum by (job) (up)", "{{job}}")],
              desc="Prometheus targets answering (statsd exporter, pushgateway, cAdvisor, Postgres/Redis exporters...). Alert HelicalExporterDown."),
        panel("timeseries", "Metadata DB connections", [
              target("sum by (instance) (pg_stat_database_numbackends)", "in use {{instance}}"),
              target("max by (instance) (pg_settings_max_connections)", "max_connections {{instance}}")],
              desc="Postgres backends vs its limit. Alert PostgresConnectionsNearLimit at 80%. On AWS: RDS DatabaseConnections in CloudWatch."),
        panel("stat", "Metadata DB up", [target("max by (instance) (pg_up)", "{{instance}}")],
              desc="1 when the exporter reaches Postgres. Alert PostgresDown."),
        panel("timeseries", "Broker queue depth", [
              target("sum by (key) (redis_key_size{key=\"default\"})", "queue {{key}}")],
              desc="Celery messages no worker has taken yet (a Redis list per queue). Alert BrokerQueueDeep."),
        panel("timeseries", "Broker memory", [
              target("max by (instance) (redis_memory_used_bytes)", "used {{instance}}")],
              unit="bytes", desc="Redis memory; alert BrokerMemoryNearLimit when maxmemory is set. On AWS: ElastiCache in CloudWatch."),
    ]  # fmt: skip
    concurrency = {"name": "worker_concurrency", "label": "Worker concurrency", "type": "constant",
                   "query": "2", "hide": 2, "current": {"text": "2", "value": "2"}}  # fmt: skip
    return dashboard("helical-platform-health", "Helical / Platform health",
                     "Scheduler, queue, worker slots and autoscaling.", panels, [concurrency])  # fmt: skip


# --- resources ---------------------------------------------------------------------------------


def resources() -> dict:
    cpu = ("sum by (name) (rate(container_cpu_usage_seconds_total{name!=\"\"}[$__rate_interval]))"
           " or sum by (namespace, pod) (rate(container_cpu_usage_seconds_total{pod!=\"\",container!=\"\",container!=\"POD\"}[$__rate_interval]))"
           " or sum by (name) (label_replace(rate(namedprocess_namegroup_cpu_seconds_total[$__rate_interval]), \"name\", \"$1\", \"groupname\", \"(.*)\"))")  # fmt: skip
    mem = ("sum by (name) (container_memory_working_set_bytes{name!=\"\"})"
           " or sum by (namespace, pod) (container_memory_working_set_bytes{pod!=\"\",container!=\"\",container!=\"POD\"})"
           " or sum by (name) (label_replace(namedprocess_namegroup_memory_bytes{memtype=\"resident\"}, \"name\", \"$1\", \"groupname\", \"(.*)\"))")  # fmt: skip
    panels = [
        panel("timeseries", "CPU per container / pod (cores)", [target(cpu, "{{name}}{{pod}}")],
              desc="cAdvisor in compose and EKS; prometheus-process-exporter on the native stack (one group per component, and 'runner' for runner jobs)."),
        panel("timeseries", "Memory per container / pod", [target(mem, "{{name}}{{pod}}")], unit="bytes",
              desc="Working set (containers) or resident memory (native processes)."),
        panel("timeseries", "Runner job CPU (average cores)", [target(
              'sum by (model, run_id, shard) (helical_runner_cpu_seconds_total{model=~"$model"}) / sum by (model, run_id, shard) (helical_runner_duration_seconds{model=~"$model"})',
              "{{model}} {{run_id}}/{{shard}}")], desc="CPU seconds / wall seconds of each runner job, as it reports it."),
        panel("timeseries", "Runner job memory", [
              target('max by (model, run_id, shard) (helical_runner_rss_bytes{model=~"$model"})', "rss {{model}} {{run_id}}/{{shard}}"),
              target('max by (model, run_id, shard) (helical_runner_peak_rss_bytes{model=~"$model"})', "peak {{model}} {{run_id}}/{{shard}}")],
              unit="bytes"),
    ]  # fmt: skip
    variables = [
        var_query("model", "Model", "label_values(helical_runner_cells_per_second, model)")
    ]
    return dashboard("helical-resources", "Helical / Resources",
                     "CPU and memory per container, pod or process, and per runner job.", panels, variables)  # fmt: skip


DASHBOARDS = {
    "workflow-overview.json": workflow_overview,
    "runner-performance.json": runner_performance,
    "platform-health.json": platform_health,
    "resources.json": resources,
}


def render() -> dict[str, str]:
    return {
        name: json.dumps(build(), indent=2, sort_keys=True) + "\n"
        for name, build in DASHBOARDS.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON differs")
    args = parser.parse_args(argv)
    stale = []
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale dashboards: {', '.join(stale)}; run {Path(__file__).name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
