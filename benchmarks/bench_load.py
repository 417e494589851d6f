"""Many DAG runs at once on the native Celery stack, with faults: what the orchestration sustains.

    .venvs/airflow/bin/python benchmarks/bench_load.py                     # 50 runs, ~2,000 task instances
    .venvs/airflow/bin/python benchmarks/bench_load.py --runs 10 --shards 12 \\
        --faults worker-kill,postgres-restart --label faults
    .venvs/airflow/bin/python benchmarks/bench_load.py --shape warm        # the same work, planner's warm tasks

Starts its own stack (stack/stack.sh, its own state dir and loopback ports; the
Debian Postgres, Redis, Prometheus and Airflow 3 with CeleryExecutor), writes one
small demo dataset per run, and triggers every run through the REST API back to
back. Each run embeds its dataset with every model, one shard of
``--cells-per-shard`` cells per embed task (``--shape tasks``, the orchestration-heavy
shape: the profile's cells/s is overridden to unknown, so the planner gives every
shard its own task) or in as few warm runner processes as the planner picks
(``--shape warm``, several runs' worth of shards in one run: ``--runs 1``).

While the runs go, every 2 s: Postgres connections (pg_stat_activity), the Celery
queue's depth in Redis (LLEN), RSS of the Celery worker's own processes and of the
runner processes under it. Faults (``--faults``, in the order given, each once,
spaced ``--fault-gap`` s apart, each fired while a runner is embedding under the
worker): ``worker-kill`` (SIGKILL the worker's process group and its runners),
``postgres-restart``, ``redis-restart``, ``scheduler-restart`` (SIGKILL the
scheduler while the worker's slots are full; supervisord starts it again).

Afterwards, from the REST API and the outputs: wall time, task instances per
minute, queue wait (queued -> running) p50/p95/max, Airflow's overhead per embed task
(task duration minus the runner's own time from its shard manifest), scheduler
loop time (Prometheus), retries, and the data check: every run ``success``; every
merged output present, readable, its sha256 the one its manifest records, its
input sha256 the dataset's; no shard embedded into two files; nothing half-written
(``.partial``/temporary files). Prints one JSON document and, with ``--out``,
merges it into that file under ``--label``.

Reproduce the figures in docs/load.md: see the commands there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "stack"))

import stackctl  # noqa: E402
from client import (  # noqa: E402
    NativeStack,
    cmdline,
    cpu_ticks,
    descendants,
    kill_tree,
    machine_ticks,
    poll,
    psql,
    redis_command,
    rss_bytes,
)

DAG_ID = "helical_embedding"
RUNNER = REPO / ".venvs" / "runner" / "bin"
FAULTS = ("worker-kill", "postgres-restart", "redis-restart", "scheduler-restart")
TERMINAL = ("success", "failed")


# --- setup ------------------------------------------------------------------------


def cpu_info() -> dict:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(
        (k.strip(), v.strip())
        for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)
    )
    flags = set(fields.get("Flags", "").split())
    return {
        "model": fields.get("Model name"),
        "cpus": os.cpu_count(),
        "flags_of_note": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
        "python": platform.python_version(),
    }


def make_datasets(data: Path, runs: int, cells: int, same: bool = False) -> list[Path]:
    """One demo dataset per run (different seeds: different cells; ``same``: seed 0 for
    every file, so every run's embeddings must equal one quiet reference)."""
    data.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(runs):
        path = data / f"load{i:03d}.h5ad"
        if not path.exists():
            subprocess.run([str(RUNNER / "helical-runner"), "demo-data", "--output", str(path),
                            "--cells", str(cells), "--label-key", "cell_type", "--seed", str(0 if same else i)],
                           check=True, capture_output=True)  # fmt: skip
        paths.append(path)
    return paths


def start_stack(work: Path, args: argparse.Namespace) -> NativeStack:
    models = work / "models"
    if not models.exists():
        subprocess.run([str(RUNNER / "helical-runner"), "models", "demo-bundle", "--to", str(models)],
                       check=True, capture_output=True)  # fmt: skip
    env = {
        "HELICAL_RUNNER_MODEL_STORE": str(models),
        "HELICAL_OUTPUT_ROOT": str(work / "out"),
        "HELICAL_DATASET_ROOTS": str(work / "data"),
        "HELICAL_OUTPUT_ROOTS": str(work / "out"),
        # Faults: notice a dead worker's task in seconds and retry it soon.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        "HELICAL_RETRY_DELAY_S": "5",
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "120",
    }
    if args.worker_concurrency:
        env["HELICAL_STACK_WORKER_CONCURRENCY"] = str(args.worker_concurrency)
    if args.pool_slots:
        env["HELICAL_STACK_POOL_SLOTS"] = str(args.pool_slots)
    for item in args.airflow_env:
        key, _, value = item.partition("=")
        env[key] = value
    stack = NativeStack(work / "stack", env)
    stack.run("start", timeout=600)
    poll(lambda: _dag_parsed(stack), 300, f"DAG {DAG_ID} parsed", interval=2)
    stack.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
    return stack


def _dag_parsed(stack: NativeStack) -> bool:
    try:
        return stack.api("GET", f"/dags/{DAG_ID}")["dag_id"] == DAG_ID
    except OSError:
        return False


def run_conf(datasets: list[Path], models: list[str], out: Path, args: argparse.Namespace) -> dict:
    override: dict = {"cells_per_shard": args.cells_per_shard, "precision": "fp32"}
    if args.shape == "tasks":
        override["cells_per_second"] = {"cpu": None}  # unknown speed: one shard per task
    return {
        "datasets": [str(p) for p in datasets],
        "models": models,
        "output_root": str(out),
        "profile_overrides": {m: dict(override) for m in models},
    }


# --- sampling and faults --------------------------------------------------------------


def cpu_by_component(stack: NativeStack) -> dict:
    """CPU ticks of each component's process tree (the worker's includes its runners)."""
    out = {}
    for name, pid in stack.pids().items():
        out[name] = cpu_ticks(descendants(pid) | {pid})
    out["_machine"] = machine_ticks()
    return out


def cpu_used(before: dict, after: dict) -> dict:
    """CPU seconds each component used between two cpu_by_component() readings, and
    the machine's busy share; a component restarted in between counts from 0."""
    hz = os.sysconf("SC_CLK_TCK")
    used = {
        name: round(
            (after[name] - (before.get(name, 0) if after[name] >= before.get(name, 0) else 0)) / hz,
            1,
        )
        for name in after
        if not name.startswith("_")
    }
    busy = after["_machine"][0] - before["_machine"][0]
    total = after["_machine"][1] - before["_machine"][1]
    return {
        "seconds": dict(sorted(used.items(), key=lambda kv: -kv[1])),
        "machine_busy": round(busy / total, 3),
    }


class Sampler(threading.Thread):
    """Every `interval` s: DB connections, Celery queue depth, worker and runner RSS."""

    def __init__(self, stack: NativeStack, interval: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.stack, self.interval = stack, interval
        self.samples: list[dict] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            sample: dict = {"t": time.time()}
            try:
                sample["db_connections"] = int(
                    psql(
                        self.stack,
                        "select count(*) from pg_stat_activity where datname = 'airflow'",
                    )
                )
            except (RuntimeError, ValueError, OSError):
                sample["db_connections"] = None  # Postgres down (a fault)
            try:
                sample["queue_depth"] = int(redis_command(self.stack, "LLEN", "default"))
            except (RuntimeError, OSError, ValueError):
                sample["queue_depth"] = None
            worker = self.stack.pids().get("airflow-worker")
            tree = descendants(worker) | {worker} if worker else set()
            runners = {p for p in tree if "helical-runner" in cmdline(p)}
            runners |= {d for p in runners for d in descendants(p)}
            sample["worker_rss_bytes"] = rss_bytes(tree - runners)
            sample["runner_rss_bytes"] = rss_bytes(runners)
            sample["runners"] = len([p for p in runners if " embed " in cmdline(p)])
            self.samples.append(sample)


def embedding_runners(stack: NativeStack) -> list[int]:
    worker = stack.pids().get("airflow-worker")
    if not worker:
        return []
    return [
        p for p in descendants(worker) if "helical-runner" in cmdline(p) and " embed " in cmdline(p)
    ]


def fire(stack: NativeStack, fault: str, slots: int) -> dict:
    """One fault, fired while a runner is embedding under the worker."""
    poll(lambda: embedding_runners(stack), 600, "a runner embedding under the worker", interval=0.3)
    before = stack.pids()
    event = {"fault": fault, "at": time.time()}
    if fault == "worker-kill":
        worker = before["airflow-worker"]
        victims = [worker, *descendants(worker)]
        kill_tree(worker, victims, 30, "the worker and its runners to die")
        event["killed"] = len(victims)
        stack.run("start", timeout=600)
    elif fault in ("postgres-restart", "redis-restart"):
        stack.run("restart", fault.removesuffix("-restart"), timeout=600)
    elif fault == "scheduler-restart":
        # the pools full: every embed slot holds a running runner (the worker is busy)
        poll(lambda: len(embedding_runners(stack)) >= slots, 600, "the embed slots full", 0.3)
        os.killpg(before["airflow-scheduler"], signal.SIGKILL)
        poll(lambda: stack.pids().get("airflow-scheduler") not in (None, before["airflow-scheduler"]),
             120, "supervisord to start the scheduler again", 1)  # fmt: skip
        stack.run("start", timeout=600)
    else:
        raise ValueError(f"unknown fault {fault!r} (known: {', '.join(FAULTS)})")
    after = stack.pids()
    event["restarted"] = sorted(k for k in after if after.get(k) != before.get(k))
    event["took_s"] = round(time.time() - event["at"], 1)
    print(
        f"[load] fault {fault}: restarted {event['restarted']} in {event['took_s']} s",
        file=sys.stderr,
    )
    return event


# --- results ------------------------------------------------------------------------


def dag_runs(stack: NativeStack) -> list[dict]:
    """Every run of the DAG, a page (the API's maximum, 100) at a time."""
    found: list[dict] = []
    while True:
        page = stack.api("GET", f"/dags/{DAG_ID}/dagRuns?limit=100&offset={len(found)}")
        found += page["dag_runs"]
        if not page["dag_runs"] or len(found) >= page["total_entries"]:
            return found


def task_instances(stack: NativeStack, run_id: str) -> list[dict]:
    found, offset = [], 0
    while True:
        page = stack.api(
            "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100&offset={offset}"
        )
        found += page["task_instances"]
        offset += len(page["task_instances"])
        if not page["task_instances"] or offset >= page["total_entries"]:
            return found


def ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 3)


def spread(values: list[float]) -> dict:
    return {
        "p50": pct(values, 0.5),
        "p95": pct(values, 0.95),
        "max": pct(values, 1.0),
        "n": len(values),
    }


def runner_seconds(manifest: dict) -> float:
    """The runner process's own time: interpreter start to the end of its work."""
    t = manifest.get("timings") or {}
    return sum(float(t.get(k) or 0.0) for k in ("startup_s", "setup_s", "total_s"))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_outputs(out: Path, run_id: str, datasets: list[Path], models: list[str]) -> dict:
    """Every merged output there, whole and as its manifest says; no shard twice; nothing partial."""
    root = out / re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("_")
    problems, shards = [], 0
    leftovers = [str(p) for p in root.rglob("*") if p.is_file() and
                 (".partial" in p.name or p.name.startswith((".tmp", "tmp")) or p.suffix == ".tmp")]  # fmt: skip
    problems += [f"half-written: {p}" for p in leftovers]
    for ds in datasets:
        ds_sha = sha256(ds)
        for model in models:
            merged = root / ds.stem / "embeddings" / f"{model}.h5ad"
            manifest_path = merged.with_name(merged.name + ".manifest.json")
            if not merged.exists() or not manifest_path.exists():
                problems.append(f"missing: {merged}")
                continue
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("output_sha256") != sha256(merged):
                problems.append(f"sha256 differs from its manifest: {merged}")
            if manifest["input"]["sha256"] != ds_sha:
                problems.append(f"input sha256 differs from the dataset's: {merged}")
            files = sorted((root / ds.stem / "shards" / model).glob("*.h5ad"))
            ranges = [m["selection"]["start"] for m in manifest["shards"]]
            if len(files) != len(manifest["shards"]) or len(set(ranges)) != len(ranges):
                problems.append(
                    f"shards embedded twice or stray shard files: {root / ds.stem / 'shards' / model}"
                )
            shards += len(files)
    return {"problems": problems, "shards": shards, "root": str(root)}


def embeddings_digest(root: str) -> dict[str, str]:
    """sha256 of each merged embedding matrix (and its cell order), by dataset/model."""
    script = r"""
import hashlib, json, sys
from pathlib import Path
import anndata
out = {}
for path in sorted(Path(sys.argv[1]).glob("*/embeddings/*.h5ad")):
    adata = anndata.read_h5ad(path)
    for key in sorted(adata.obsm.keys()):
        h = hashlib.sha256(adata.obsm[key].tobytes())
        h.update("\n".join(map(str, adata.obs_names)).encode())
        out[f"{path.parent.parent.name}/{path.stem}/{key}"] = h.hexdigest()
print(json.dumps(out))
"""
    proc = subprocess.run(
        [str(RUNNER / "python"), "-c", script, root], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)


def scheduler_loop(stack: NativeStack, start: float, end: float) -> dict:
    """The scheduler's loop time over the load (StatsD timer -> Prometheus histogram)."""
    window = f"{max(int(end - start) + 30, 60)}s"
    name = "airflow_scheduler_loop_duration_seconds"
    out = {}
    for key, expr in (
        ("mean_s", f"sum(increase({name}_sum[{window}])) / sum(increase({name}_count[{window}]))"),
        ("p95_s", f"histogram_quantile(0.95, sum by (le) (increase({name}_bucket[{window}])))"),
        ("loops", f"sum(increase({name}_count[{window}]))"),
    ):
        url = (
            f"http://127.0.0.1:{stack.ports['prometheus']}/api/v1/query?"
            + urllib.parse.urlencode({"query": expr, "time": f"{end + 15:.0f}"})
        )
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                result = json.load(resp)["data"]["result"]
            value = float(result[0]["value"][1]) if result else None
            out[key] = round(value, 3) if value is not None and value == value else None
        except (OSError, KeyError, ValueError) as exc:
            out[key] = None
            out["error"] = str(exc)
    return out


def summarize(stack, args, runs, started, finished, samples, faults, states, work, slots) -> dict:
    tis, waits, overhead, airflow_only, retried = [], [], [], [], []
    problems: list[str] = []
    by_task: dict[str, list[float]] = {}
    out = work / "out"
    digests = {}
    for run_id, datasets in runs.items():
        run_tis = task_instances(stack, run_id)
        tis += run_tis
        root = out / re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("_")
        for ti in run_tis:
            if ti.get("duration") is not None:
                by_task.setdefault(ti["task_id"], []).append(float(ti["duration"]))
            if (ti.get("try_number") or 1) > 1:
                retried.append(f"{run_id}/{ti['task_id']}[{ti.get('map_index')}]")
            queued, begun, ended = (
                ts(ti.get("queued_when")),
                ts(ti.get("start_date")),
                ts(ti.get("end_date")),
            )
            if queued and begun and begun >= queued:
                waits.append(begun - queued)
            if ti["state"] != "success" or not (begun and ended):
                continue
            if ti["task_id"].startswith("embed_"):
                # "name/model/START:STOP" or, a warm task, "... (N shards)"
                label = (ti.get("rendered_map_index") or "").split(" ", 1)[0]
                try:
                    name, model, cells = label.split("/")
                    lo, hi = (int(x) for x in cells.split(":"))
                except ValueError:
                    continue
                # the runner's own time: every shard manifest of the task's cell range
                spent = [
                    runner_seconds(m)
                    for m in map(json.loads, map(Path.read_text,
                                 (root / name / "shards" / model).glob("*.manifest.json")))
                    if lo <= m["selection"]["start"] and m["selection"]["stop"] <= hi
                ]  # fmt: skip
                if spent:
                    overhead.append(ended - begun - sum(spent))
            elif ti["operator"] in ("_PythonDecoratedOperator", "PythonOperator", "@task"):
                airflow_only.append(ended - begun)
        checked = check_outputs(out, run_id, datasets, args.models)
        problems += checked["problems"]
        if args.digest:
            digests[run_id] = embeddings_digest(checked["root"])
    wall = finished - started
    peak = lambda key: max((s[key] for s in samples if s.get(key) is not None), default=None)  # noqa: E731
    return {
        "shape": args.shape,
        "runs": len(runs),
        "models": args.models,
        "cells_per_dataset": args.cells,
        "cells_per_shard": args.cells_per_shard,
        "datasets_per_run": args.datasets_per_run,
        "worker_concurrency": slots.worker_concurrency,
        "pool_slots": slots.pool_slots,
        "same_data": args.same_data,
        "airflow_env": args.airflow_env,
        "triggered_in_s": round(runs.triggered_s, 1),
        "task_instances": len(tis),
        "runs_succeeded": sum(s == "success" for s in states.values()),
        "run_states": dict(sorted(states.items())),
        "wall_s": round(wall, 1),
        "task_instances_per_minute": round(len(tis) / wall * 60, 1),
        "queue_wait_s": spread(waits),
        "airflow_overhead_per_embed_task_s": spread(overhead),
        "python_task_duration_s": spread(airflow_only),
        # what one task instance costs the whole stack: worker slot-seconds per task
        "slot_seconds_per_task": round(wall * slots.worker_concurrency / max(len(tis), 1), 2),
        "duration_by_task_s": {k: spread(v) for k, v in sorted(by_task.items())},
        "scheduler_loop": scheduler_loop(stack, started, finished),
        "db_connections_peak": peak("db_connections"),
        "queue_depth_peak": peak("queue_depth"),
        "worker_rss_peak_bytes": peak("worker_rss_bytes"),
        "runner_rss_peak_bytes": peak("runner_rss_bytes"),
        "runners_at_once_peak": peak("runners"),
        "tasks_retried": len(retried),
        "retried": retried,
        "faults": faults,
        "outputs_checked": sum(len(d) for d in runs.values()) * len(args.models),
        "data_problems": problems,
        "lost_or_duplicated": len(problems),
        "digests": digests or None,
        "cpu": cpu_info(),
        "when": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


class Runs(dict):
    """run id -> its datasets; how long triggering them all took."""

    triggered_s = 0.0


def load(args: argparse.Namespace, work: Path, stack: NativeStack | None = None) -> dict:
    datasets = make_datasets(
        work / "data", args.runs * args.datasets_per_run, args.cells, same=args.same_data
    )
    own_stack = stack is None
    stack = stack or start_stack(work, args)
    slots = stackctl.Stack.from_env(stack.env)  # the worker's and the pools' slots
    sampler = Sampler(stack)
    sampler.start()
    runs = Runs()
    try:
        cpu_before = cpu_by_component(stack)
        started = time.time()
        tag = args.label or args.shape
        for i in range(args.runs):
            run_id = f"load-{tag}-{i:03d}-{int(started)}"
            mine = datasets[i * args.datasets_per_run : (i + 1) * args.datasets_per_run]
            conf = run_conf(mine, args.models, work / "out", args)
            stack.api(
                "POST",
                f"/dags/{DAG_ID}/dagRuns",
                {"dag_run_id": run_id, "logical_date": None, "conf": conf},
            )
            runs[run_id] = mine
        runs.triggered_s = time.time() - started
        print(f"[load] {args.runs} runs triggered in {runs.triggered_s:.1f} s", file=sys.stderr)
        faults = []
        for i, fault in enumerate(f for f in args.faults.split(",") if f):
            deadline = started + (i + 1) * args.fault_gap
            while time.time() < deadline:
                time.sleep(1)
            faults.append(fire(stack, fault, slots.pool_slots))
        states: dict[str, str] = {}
        deadline = time.time() + args.timeout
        last_print = 0.0
        while len(states) < len(runs) and time.time() < deadline:
            # one request for every run's state (a request per run would load the API
            # server the benchmark measures)
            try:
                listed = dag_runs(stack)
            except OSError:
                listed = []  # the API server is restarting or busy: ask again
            for run in listed:
                if run["dag_run_id"] in runs and run["state"] in TERMINAL:
                    states[run["dag_run_id"]] = run["state"]
            if time.time() - last_print > 30:
                last_print = time.time()
                print(f"[load] {len(states)}/{len(runs)} runs done after {time.time() - started:.0f} s",
                      file=sys.stderr)  # fmt: skip
            time.sleep(5)
        finished = max(
            [
                ts(stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{r}")["end_date"]) or time.time()
                for r in states
            ]
            or [time.time()]
        )
        for run_id in runs:
            states.setdefault(run_id, "unfinished")
        cpu = cpu_used(cpu_before, cpu_by_component(stack))
        sampler.stop.set()
        sampler.join()
        result = summarize(
            stack, args, runs, started, finished, sampler.samples, faults, states, work, slots
        )
        return {**result, "cpu_seconds": cpu}
    finally:
        sampler.stop.set()
        if own_stack and not args.keep_stack:
            stack.run("stop", check=False)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--models", nargs="+", default=["geneformer", "scgpt"])
    p.add_argument("--cells", type=int, default=24, help="cells per dataset")
    p.add_argument("--cells-per-shard", type=int, default=1)
    p.add_argument("--datasets-per-run", type=int, default=1)
    p.add_argument("--shape", choices=("tasks", "warm"), default="tasks")
    p.add_argument("--same-data", action="store_true", help="every dataset from seed 0")
    p.add_argument("--worker-concurrency", type=int, help="Celery worker slots (default: stack's)")
    p.add_argument("--pool-slots", type=int, help="embed runners at once (default: stack's)")
    p.add_argument("--airflow-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for every Airflow component (repeatable)")  # fmt: skip
    p.add_argument("--faults", default="", help=f"comma-separated, each once: {', '.join(FAULTS)}")
    p.add_argument(
        "--fault-gap", type=float, default=60.0, help="seconds between faults (first after one gap)"
    )
    p.add_argument("--timeout", type=float, default=5400.0)
    p.add_argument("--digest", action="store_true", help="record each run's embedding digests")
    p.add_argument("--label", default="", help="key of this result in --out")
    p.add_argument("--out", type=Path, help="JSON file to merge the result into (under --label)")
    p.add_argument(
        "--work", type=Path, help="work dir (default: a new one under /tmp, removed after)"
    )
    p.add_argument("--keep-stack", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    unknown = [f for f in args.faults.split(",") if f and f not in FAULTS]
    if unknown:
        print(f"bench_load: unknown fault(s) {unknown}: known {', '.join(FAULTS)}", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="helical-load-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o711)  # the service users (postgres, redis, prometheus) enter the state dir
    try:
        result = load(args, work)
    finally:
        if args.work is None and not args.keep_stack:
            shutil.rmtree(work, ignore_errors=True)
    result.pop("digests", None) if not args.digest else None
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        doc = json.loads(args.out.read_text()) if args.out.exists() else {}
        doc[args.label or args.shape] = result
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    ok = result["runs_succeeded"] == result["runs"] and not result["data_problems"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
