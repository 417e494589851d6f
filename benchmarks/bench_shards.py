"""200 shards of one dataset through a real scheduler: where does the time go?

Starts Airflow 3 (LocalExecutor, SQLite, loopback) with the real runner and
the demo model store, triggers ``helical_embedding`` on one 2,000-cell dataset
with ``cells_per_shard=10`` (200 shards; the planner puts runs of them in warm
embed tasks, one runner process each) and prints JSON:

- ``wall_s``: trigger to run end (acceptance: <= 1/4 of the 2,365 s measured
  with one task and one runner process per shard, before warm runners).
- ``tasks``: per embed task, its shards, Airflow duration, the runner's
  once-per-process costs (``startup_s`` process start to the runner's embed
  code, ``import_s`` torch + helical, ``model_load_s``, ``first_batch_s``) and
  ``unaccounted_s``: the task's duration minus the runner's own account
  (start-up + set-up + every shard's ``total_s``): Airflow's task process,
  the runner's exit, and the subprocess plumbing.
- ``fixed_cost_per_shard_after_first_s``: for every shard but the first of its
  task, ``total_s - read_s - preprocess_s - embed_s`` from its manifest: what a
  shard costs beyond reading and embedding its cells (validation share,
  output and manifest writing, bookkeeping). Acceptance: <= 1 s.
- ``direct``: the runner alone (no Airflow) on ``--direct-shards`` shards: its
  process wall vs its own account, i.e. the exit time it cannot record itself.

    .venvs/airflow/bin/python benchmarks/bench_shards.py [--cells 2000] [--cells-per-shard 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "workflow"))
from harness import Airflow  # noqa: E402

RUNNER = REPO / ".venvs/runner/bin/helical-runner"
MODEL = "geneformer"
# benchmarks/results/shards.json before warm runners (one runner process per shard)
BEFORE_WALL_S = 2365.4


def runner_account(manifests: list[dict]) -> float:
    """What the runner's manifests account for: start-up, set-up, every shard."""
    first = [m for m in manifests if "startup_s" in m["timings"]]
    once = sum(m["timings"]["startup_s"] + m["timings"].get("setup_s", 0.0) for m in first)
    return once + sum(m["timings"]["total_s"] for m in manifests)


def fixed_costs(manifests: list[dict]) -> list[float]:
    """Per shard after the first of its process: time beyond reading and embedding."""
    return [
        m["timings"]["total_s"]
        - sum(m["timings"].get(k, 0.0) for k in ("read_s", "preprocess_s", "embed_s"))
        for m in manifests
        if "startup_s" not in m["timings"]
    ]


def by_process(manifests: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for m in manifests:
        groups[(m["host"], m["process"]["pid"])].append(m)
    return {k: sorted(v, key=lambda m: m["selection"]["start"]) for k, v in groups.items()}


def direct_run(tmp: Path, env: dict, data: Path, shards: int, per: int) -> dict:
    """The runner on its own over ``shards`` shards: process wall vs its own account."""
    out = tmp / "direct"
    args = [str(RUNNER), "embed", "--input", str(data), "--model", MODEL]
    for i in range(shards):
        args += ["--cells", f"{i * per}:{(i + 1) * per}", "--output", str(out / f"{i:05d}.h5ad")]
    t0 = time.monotonic()
    subprocess.run(args, env=env, check=True, capture_output=True)
    wall = time.monotonic() - t0
    manifests = [json.loads(p.read_text()) for p in sorted(out.glob("*.manifest.json"))]
    account = runner_account(manifests)
    first = next(m for m in manifests if "startup_s" in m["timings"])
    costs = fixed_costs(manifests)
    return {
        "shards": shards,
        "process_wall_s": round(wall, 2),
        "runner_account_s": round(account, 2),
        "exit_and_unaccounted_s": round(wall - account, 2),
        "once_per_process_s": {
            k: first["process"][k]
            for k in ("startup_s", "import_s", "model_load_s", "first_batch_s")
        },
        "fixed_cost_per_shard_after_first_s": {
            "mean": round(statistics.mean(costs), 3),
            "max": round(max(costs), 3),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--cells-per-shard", type=int, default=10)
    parser.add_argument(
        "--parallelism", type=int, default=2, help="LocalExecutor slots (2 cores here)"
    )
    parser.add_argument("--direct-shards", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        tmp = Path(tmp)
        env = {
            "CACHE_DIR_HELICAL_PREFIX": str(tmp / "cache"),
            "HELICAL_RUNNER_MODEL_STORE": str(tmp / "store"),
            "HELICAL_OUTPUT_ROOT": str(tmp / "runs"),
            # the DAG only reads datasets under these roots (helical_workflow.inputs)
            "HELICAL_DATASET_ROOTS": str(tmp / "data"),
        }
        full_env = {**os.environ, **env, "HELICAL_RUNNER_LOG_FORMAT": "json"}

        def run(*cmd: str) -> None:
            subprocess.run([str(RUNNER), *cmd], env=full_env, check=True, capture_output=True)

        run("models", "demo-bundle", "--to", env["HELICAL_RUNNER_MODEL_STORE"])
        data = tmp / "data" / "bench.h5ad"
        run("demo-data", "--output", str(data), "--cells", str(args.cells))
        direct = direct_run(tmp, full_env, data, args.direct_shards, args.cells_per_shard)

        with Airflow(tmp / "airflow-home", parallelism=args.parallelism, extra_env=env) as af:
            t0 = time.monotonic()
            run_id = af.trigger(
                {
                    "datasets": [str(data)],
                    "models": [MODEL],
                    "profile_overrides": {MODEL: {"cells_per_shard": args.cells_per_shard}},
                }
            )
            state = af.wait(run_id, args.timeout)
            wall_s = time.monotonic() - t0
            tis = af.task_instances(run_id)
            failed = [ti for ti in tis if str(ti.state.value) in ("failed", "upstream_failed")]
            if state != "success" or failed:
                for ti in failed:
                    print(f"--- {ti.task_id}[{ti.map_index}]\n{af.log(run_id, ti)[-3000:]}")
                sys.exit(f"run {state}: {[ti.task_id for ti in failed]}")
        embeds = sorted(
            (ti for ti in tis if ti.task_id.startswith("embed_") and ti.map_index >= 0),
            key=lambda ti: ti.map_index,
        )
        paths = (tmp / "runs").glob(f"*/bench/shards/{MODEL}/*.h5ad.manifest.json")
        manifests = [json.loads(p.read_text()) for p in paths]
        processes = sorted(
            by_process(manifests).values(), key=lambda ms: ms[0]["selection"]["start"]
        )
        costs = fixed_costs(manifests)
        phase = (
            max(ti.end_date for ti in embeds) - min(ti.start_date for ti in embeds)
        ).total_seconds()
        tasks = []
        for ti, ms in zip(embeds, processes, strict=False):
            first = next(m for m in ms if "startup_s" in m["timings"])
            tasks.append(
                {
                    "label": ti.rendered_map_index,
                    "shards": len(ms),
                    "duration_s": round(ti.duration or 0, 1),
                    "runner_account_s": round(runner_account(ms), 1),
                    "unaccounted_s": round((ti.duration or 0) - runner_account(ms), 1),
                    **{
                        k: first["process"][k]
                        for k in ("startup_s", "import_s", "model_load_s", "first_batch_s")
                    },
                }
            )
        result = {
            "benchmark": "bench_shards",
            "state": state,
            "shards": len(manifests),
            "embed_tasks": len(embeds),
            "succeeded": sum(str(ti.state.value) == "success" for ti in embeds),
            "cells": args.cells,
            "cells_per_shard": args.cells_per_shard,
            "model": MODEL,
            "model_weights": "demo bundle (tiny random weights)",
            "executor": f"LocalExecutor, parallelism {args.parallelism}, SQLite",
            "wall_s": round(wall_s, 1),
            "wall_s_before_warm_runners": BEFORE_WALL_S,
            "wall_goal_s": round(BEFORE_WALL_S / 4, 1),
            "embed_phase_s": round(phase, 1),
            "tasks": tasks,
            "fixed_cost_per_shard_after_first_s": {
                "mean": round(statistics.mean(costs), 3) if costs else None,
                "p95": round(sorted(costs)[int(0.95 * (len(costs) - 1))], 3) if costs else None,
                "max": round(max(costs), 3) if costs else None,
                "goal": 1.0,
            },
            "direct": direct,
            "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}",
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    ok = (
        state == "success"
        and result["succeeded"] == len(embeds)
        and len(manifests) == len(range(0, args.cells, args.cells_per_shard))
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
