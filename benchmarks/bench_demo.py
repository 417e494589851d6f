"""`make demo`, task by task: where the demo's DAG run spends its time.

Runs ``scripts/demo.sh`` (Airflow's in-process test run of ``helical_embedding``
on the 2,000-cell demo dataset with Geneformer and scGPT, SQLite, local
backend), then reads what the run itself recorded and prints JSON:

- ``dag_run_s``: the demo's own "finished in N s" (the ``airflow dags test`` command);
- ``tasks``: every task instance of that run with its duration (Airflow's DB);
- ``embed``: per shard, the runner manifest's timings (interpreter start-up,
  imports, model load, first batch, forward passes) and peak RSS;
- ``report_phases``: the report's own per-phase seconds (``metrics.json``).

    .venvs/runner/bin/python benchmarks/bench_demo.py [--runs 2] [--output benchmarks/results/demo.json]

The first run of a fresh checkout also installs the environments; run it
once before measuring (``make demo``), or use ``--runs 2`` and read the last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sqlite3
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STATE = REPO / ".airflow"


def one_run() -> dict:
    started = time.perf_counter()
    proc = subprocess.run(
        ["bash", str(REPO / "scripts/demo.sh")], cwd=REPO, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(
            f"bench_demo: scripts/demo.sh failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
        )
    found = re.search(r"helical_embedding finished in (\d+) s", proc.stdout)
    run_dir = Path(re.search(r"run folder:\s+(\S+)", proc.stdout).group(1))
    with sqlite3.connect(STATE / "airflow.db") as db:
        (run_id,) = db.execute(
            "select run_id from dag_run where dag_id='helical_embedding' order by start_date desc limit 1"
        ).fetchone()
        rows = db.execute(
            "select task_id, map_index, rendered_map_index,"
            " (julianday(end_date) - julianday(start_date)) * 86400"
            " from task_instance where run_id=? and start_date is not null order by start_date",
            (run_id,),
        ).fetchall()
    tasks = [
        {
            "task": task if index < 0 else f"{task}[{label or index}]",
            "seconds": round(seconds, 2),
        }
        for task, index, label, seconds in rows
    ]
    embed = []
    for manifest in sorted((REPO / run_dir).glob("*/shards/*/*.manifest.json")):
        m = json.loads(manifest.read_text())
        embed.append(
            {
                "shard": f"{m['model']['name']} {m['selection']['start']}:{m['selection']['stop']}",
                "process_shard_index": (m.get("process") or {}).get("index"),
                "timings_s": m.get("timings"),
                "peak_rss_mib": round(m["peak_rss_bytes"] / 2**20, 1),
                "precision": m.get("precision"),
            }
        )
    report = {}
    for metrics in (REPO / run_dir).glob("*/report/metrics.json"):
        data = json.loads(metrics.read_text())
        report = {"seconds": data.get("seconds"), "phases_s": data.get("phase_seconds")}
    return {
        "dag_run_s": int(found.group(1)) if found else None,
        "demo_wall_s": round(wall, 1),
        "run_id": run_id,
        "tasks": tasks,
        "task_seconds_total": round(sum(t["seconds"] for t in tasks), 1),
        "embed": embed,
        "report": report,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    runs = [one_run() for _ in range(args.runs)]
    result = {
        "what": "scripts/demo.sh: 2,000 demo cells, Geneformer + scGPT demo bundle, cells_per_shard 1000",
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "before_issue_11": {
            "dag_run_s": 238,
            "note": "as measured for issue 11 (fresh clone, quiet re-runs)",
        },
        "runs": runs,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
