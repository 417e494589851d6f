"""200 shards of one dataset through a real scheduler: where does the time go?

Starts Airflow 3 (LocalExecutor, SQLite, loopback) with the real runner and
the demo model store, triggers ``helical_embedding`` on one 2,000-cell dataset
with ``cells_per_shard=10`` (200 mapped embed tasks) and prints JSON:

- ``wall_s``: trigger to run end; ``embed_phase_s``: first embed start to last end.
- ``runner_compute_s``: sum of the runner's own ``timings.total_s`` (manifests).
- ``task_time_s``: sum of the embed task instances' durations (Airflow's view).
- ``overhead_per_task_s``: (task_time_s - runner_compute_s) / shards: per task,
  what is not the runner computing (task process start, runner process start
  and imports, model load is inside the runner so NOT counted here).
- ``scheduling_gap_per_task_s``: (embed_phase_s * slots - task_time_s) / shards:
  idle executor slot time between tasks (scheduler/executor latency).

    .venvs/airflow/bin/python benchmarks/bench_shards.py [--cells 2000] [--cells-per-shard 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "workflow"))
from harness import Airflow  # noqa: E402

RUNNER = REPO / ".venvs/runner/bin/helical-runner"
MODEL = "geneformer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--cells-per-shard", type=int, default=10)
    parser.add_argument(
        "--parallelism", type=int, default=2, help="LocalExecutor slots (2 cores here)"
    )
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        tmp = Path(tmp)
        env = {
            "CACHE_DIR_HELICAL_PREFIX": str(tmp / "cache"),
            "HELICAL_RUNNER_MODEL_STORE": str(tmp / "store"),
            "HELICAL_OUTPUT_ROOT": str(tmp / "runs"),
        }

        def run(*cmd: str) -> None:
            subprocess.run(
                [str(RUNNER), *cmd], env={**os.environ, **env}, check=True, capture_output=True
            )

        run("models", "demo-bundle", "--to", env["HELICAL_RUNNER_MODEL_STORE"])
        data = tmp / "data" / "bench.h5ad"
        run("demo-data", "--output", str(data), "--cells", str(args.cells))

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
        embeds = [ti for ti in tis if ti.task_id.startswith("embed_") and ti.map_index >= 0]
        manifests = list((tmp / "runs").glob(f"*/bench/shards/{MODEL}/*.h5ad.manifest.json"))
        compute = sum(json.loads(m.read_text())["timings"]["total_s"] for m in manifests)
        load = sum(json.loads(m.read_text())["timings"]["load_s"] for m in manifests)
        task_time = sum(ti.duration or 0 for ti in embeds)
        phase = (
            max(ti.end_date for ti in embeds) - min(ti.start_date for ti in embeds)
        ).total_seconds()
        n = len(embeds)
        result = {
            "benchmark": "bench_shards",
            "state": state,
            "shards": n,
            "succeeded": sum(str(ti.state.value) == "success" for ti in embeds),
            "cells": args.cells,
            "cells_per_shard": args.cells_per_shard,
            "model": MODEL,
            "model_weights": "demo bundle (tiny random weights)",
            "executor": f"LocalExecutor, parallelism {args.parallelism}, SQLite",
            "wall_s": round(wall_s, 1),
            "embed_phase_s": round(phase, 1),
            "runner_compute_s": round(compute, 1),
            "runner_model_load_s": round(load, 1),
            "task_time_s": round(task_time, 1),
            "overhead_per_task_s": round((task_time - compute) / n, 2),
            "scheduling_gap_per_task_s": round((phase * args.parallelism - task_time) / n, 2),
            "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}",
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    sys.exit(0 if state == "success" and result["succeeded"] == n else 1)


if __name__ == "__main__":
    main()
