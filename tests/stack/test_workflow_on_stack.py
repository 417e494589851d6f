"""The embedding DAG on the native stack (CeleryExecutor), observed through Prometheus.

One stack for the session (the `workflow` fixture in conftest.py, shared with
the browser test): a clean run, then every dashboard query must return
data for it, then two faults (a worker SIGKILLed mid-task, Postgres restarted
mid-run) after which the DAG still succeeds with the same embeddings.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from test_dashboards import all_exprs

from conftest import DAG_ID, MODELS, RUNNER_VENV, kill_tree, poll


def runner_processes(root_pid: int) -> list[int]:
    """helical-runner embed processes descending from root_pid."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            todo.append(child)
            try:
                cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"helical-runner" in cmd and b" embed " in cmd:
                found.append(child)
    return found


def embeddings_digest(output_root: Path, run_id: str) -> dict[str, str]:
    """sha256 of every embedding matrix (and its cell order) under an output root."""
    script = r"""
import hashlib, json, sys
from pathlib import Path
import anndata
root, run_id = Path(sys.argv[1]), sys.argv[2]
out = {}
for path in sorted(root.rglob("*.h5ad")):
    if ".partial" in str(path):
        continue
    adata = anndata.read_h5ad(path)
    for key in sorted(adata.obsm.keys()):
        h = hashlib.sha256(adata.obsm[key].tobytes())
        h.update("\n".join(map(str, adata.obs_names)).encode())
        out[str(path.relative_to(root)).replace(run_id, "{run}") + "::" + key] = h.hexdigest()
print(json.dumps(out))
"""
    proc = subprocess.run([str(RUNNER_VENV / "bin" / "python"), "-c", script, str(output_root), run_id],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(proc.stdout)


def grafana_vars(expr: str, range_s: int) -> str:
    return (
        expr.replace("$__rate_interval", "30s")  # >= 4 x the 5 s native scrape interval
        .replace("$__range", f"{range_s}s")
        .replace("$dag_id", DAG_ID)
        .replace("$model", ".*")
        .replace("$worker_concurrency", "2")
    )


# --- the tests, in order -----------------------------------------------------------


def test_dag_runs_to_success_on_celery(workflow):
    run_id = workflow.trigger("clean")
    state = workflow.wait(run_id, 420)
    assert state == "success", workflow.logs_hint(run_id)
    digest = embeddings_digest(workflow.runs["clean"]["output_root"], run_id)
    assert len(digest) >= len(MODELS), (
        f"no embeddings under {workflow.runs['clean']['output_root']}"
    )
    workflow.runs["clean"]["digest"] = digest


def test_every_dashboard_panel_query_returns_data(workflow):
    started = workflow.runs["clean"]["started"]

    def empty_panels() -> list[str]:
        range_s = int(time.time() - started) + 120
        missing = []
        for uid, title, expr in all_exprs():
            if "helical_runner_annotate_" in expr:
                # this stack runs no annotation job: runners/helical-runner/tests/
                # test_annotate_metrics.py checks those queries against a real Prometheus
                continue
            result = workflow.stack.prom_query(
                grafana_vars(expr, range_s), start=started - 60, end=time.time()
            )
            if not result:
                missing.append(f"{uid} / {title}: {expr}")
        return missing

    last: list[str] = []

    def all_have_data() -> bool:
        nonlocal last
        last = empty_panels()
        return not last

    try:
        poll(all_have_data, 90, "every panel query to return data", interval=5)
    except AssertionError:
        pytest.fail("panels without data:\n" + "\n".join(last))


def test_runner_cells_per_second_series_exists_for_the_run(workflow):
    run_id = workflow.runs["clean"]["run_id"]
    result = workflow.stack.prom_query(
        f'helical_runner_cells_per_second{{run_id="{run_id}"}}',
        start=workflow.runs["clean"]["started"],
        end=time.time(),
    )
    assert result, f"no helical_runner_cells_per_second series with run_id={run_id}"
    assert {r["metric"]["model"] for r in result} == set(MODELS)
    assert all(float(v) > 0 for r in result for _, v in r["values"])


def test_worker_killed_during_a_runner_task_is_retried_with_identical_output(workflow):
    stack = workflow.stack
    run_id = workflow.trigger("worker-killed")
    worker = stack.pids()["airflow-worker"]
    poll(lambda: runner_processes(worker), 180, "a runner process under the worker", interval=0.3)
    others = {k: v for k, v in stack.pids().items() if k != "airflow-worker"}

    # A worker crash takes its task processes with it: kill the whole tree.
    victims = [worker, *runner_processes(worker)]
    kill_tree(worker, victims, 10, "the worker and its runner to die")

    stack.run("start")  # starts only what is missing: a new worker
    after = stack.pids()
    assert after["airflow-worker"] != worker
    assert {k: v for k, v in after.items() if k != "airflow-worker"} == others

    state = workflow.wait(run_id, 420)
    assert state == "success", workflow.logs_hint(run_id)
    assert max(t["try_number"] for t in workflow.task_instances(run_id)) >= 2, (
        "the killed task was retried"
    )
    digest = embeddings_digest(workflow.runs["worker-killed"]["output_root"], run_id)
    assert digest == workflow.runs["clean"]["digest"]


def test_postgres_restart_during_a_run_is_survived_by_the_scheduler(workflow):
    stack = workflow.stack
    run_id = workflow.trigger("postgres-restart")
    worker = stack.pids()["airflow-worker"]
    poll(lambda: runner_processes(worker), 180, "a runner process under the worker", interval=0.3)
    before = stack.pids()

    stack.run("restart", "postgres")
    after = stack.pids()
    assert after["postgres"] != before["postgres"]
    # Nothing but Postgres was started again by the stack command; the Airflow
    # components recovered on their own (retrying, or restarted by supervisord).
    servers = [k for k in before if k != "postgres" and not k.startswith("airflow-")]
    assert {k: after.get(k) for k in servers} == {k: before[k] for k in servers}

    state = workflow.wait(run_id, 420)
    assert state == "success", workflow.logs_hint(run_id)
    status = {c["name"]: c["healthy"] for c in stack.status()["components"]}
    assert status["airflow-scheduler"], "the scheduler is healthy again after the outage"
    digest = embeddings_digest(workflow.runs["postgres-restart"]["output_root"], run_id)
    assert digest == workflow.runs["clean"]["digest"]
    restarts = (
        (stack.state / "logs" / "supervisord.log").read_text().count("exited: airflow-scheduler")
    )
    print(f"scheduler restarts by supervisord during the outage: {restarts}")
