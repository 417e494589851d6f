"""Wall time of `helical-runner report` on the demo: 2,000 cells, Geneformer + scGPT demo models.

Each report runs in its own process (as in a DAG task), timed from outside with
its peak RSS (bench_memory.measured); the per-phase seconds come from the
report's own metrics.json. CPU seconds (user + system) are recorded beside the
wall time: on a machine shared with other jobs they move far less. Cold: an empty numba cache folder (a fresh machine
or container); warm: the same folder again (the next report).

With ``--before REF`` the report module as it was at git REF runs interleaved
with the current one in the same session, on the same files, each with its own
empty numba cache folder first (``NUMBA_CACHE_DIR``), and their metrics are
compared. Prints one JSON object and writes it to benchmarks/results/report.json.

    nice .venvs/runner/bin/python benchmarks/bench_report.py [--before 88f9c9c] [--warm-runs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import RUNNER

# wall, peak RSS and CPU seconds (user + system) of one command in its own wrapper
# process; CPU seconds barely move with the other jobs sharing the machine, wall does
MEASURE = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); "
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode; "
    "wall = time.perf_counter() - t; u = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "print(rc, u.ru_maxrss * 1024, wall, u.ru_utime + u.ru_stime)"
)


def measured(cmd: list[str], env: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *cmd], env=env, capture_output=True, text=True, check=True
    )
    rc, peak, wall, cpu = out.stdout.split()
    if int(rc) != 0:
        raise SystemExit(f"command failed ({rc}): {' '.join(cmd)}")
    return {
        "wall_s": round(float(wall), 2),
        "cpu_s": round(float(cpu), 2),
        "peak_rss_mib": round(int(peak) / 2**20, 1),
    }


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "runners" / "helical-runner" / "src" / "helical_runner"
RESULT = ROOT / "benchmarks" / "results" / "report.json"
MODELS = ("geneformer", "scgpt")


def prepare(work: Path, cells: int, env: dict) -> tuple[Path, list[Path]]:
    """The demo dataset, the demo model bundle and one embedding per model."""
    dataset = work / "demo.h5ad"
    if not dataset.exists():
        subprocess.run([*RUNNER, "demo-data", "--output", str(dataset), "--cells", str(cells),
                        "--label-key", "cell_type"], env=env, check=True, capture_output=True)  # fmt: skip
    store = Path(env["HELICAL_RUNNER_MODEL_STORE"])
    if not (store / "store.json").exists():
        subprocess.run([*RUNNER, "models", "demo-bundle", "--to", str(store)], env=env,
                       check=True, capture_output=True)  # fmt: skip
    embeddings = []
    for model in MODELS:
        out = work / f"{model}.h5ad"
        if not out.exists():
            subprocess.run([*RUNNER, "embed", "--input", str(dataset), "--model", model,
                            "--output", str(out)], env=env, check=True, capture_output=True)  # fmt: skip
        embeddings.append(out)
    return dataset, embeddings


def package_at(ref: str, dest: Path) -> Path:
    """A copy of today's helical_runner package whose report.py is the one at git ``ref``."""
    copy = dest / "helical_runner"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    old = subprocess.run(
        ["git", "show", f"{ref}:runners/helical-runner/src/helical_runner/report.py"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    (copy / "report.py").write_text(old)
    return dest


def report_once(variant: str, cache: str, dataset: Path, embeddings: list[Path], work: Path,
                env: dict) -> dict:  # fmt: skip
    out = work / f"report-{variant}-{cache}"
    shutil.rmtree(out, ignore_errors=True)
    run = measured([*RUNNER, "report", "--dataset", str(dataset), "--embeddings",
                    *map(str, embeddings), "--output", str(out)], env)  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    run.update(variant=variant, cache=cache, report_seconds=metrics["seconds"],
               phase_seconds=metrics.get("phase_seconds"), results=metrics["results"],
               load_average=[round(x, 2) for x in os.getloadavg()])  # fmt: skip
    print(
        json.dumps({"progress": {k: v for k, v in run.items() if k != "results"}}), file=sys.stderr
    )
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--before", help="git ref of the report to compare with (e.g. 88f9c9c)")
    parser.add_argument("--warm-runs", type=int, default=2)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-report-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "CACHE_DIR_HELICAL_PREFIX": str(work / "home"),
        "HELICAL_RUNNER_MODEL_STORE": str(work / "store"),
        "HELICAL_RUNNER_GENE_SOURCES": str(ROOT / ".cache" / "runner-data"),
        "HELICAL_RUNNER_LOG_FORMAT": "json",
    }
    env.pop("NUMBA_CACHE_DIR", None)
    dataset, embeddings = prepare(work, args.cells, env)

    variants = {}
    for name in ("before", "after") if args.before else ("after",):
        cache = work / f"numba-{name}"
        shutil.rmtree(cache, ignore_errors=True)
        variants[name] = {**env, "HELICAL_RUNNER_CACHE": str(work / f"runner-cache-{name}")}
        if name == "before":  # the old report never chose a cache folder: give it an empty one
            path = package_at(args.before, work / "before-src")
            variants[name] |= {"NUMBA_CACHE_DIR": str(cache), "PYTHONPATH": str(path)}
        else:
            shutil.rmtree(work / f"runner-cache-{name}", ignore_errors=True)
    runs = []
    for cache in ["cold"] + [f"warm{i + 1}" for i in range(args.warm_runs)]:
        for name, variant_env in variants.items():
            runs.append(report_once(name, cache, dataset, embeddings, work, variant_env))

    summary = {}
    for name in variants:
        mine = [r for r in runs if r["variant"] == name]
        summary[name] = {
            "cold_wall_s": mine[0]["wall_s"],
            "warm_wall_s": [r["wall_s"] for r in mine[1:]],
            "cold_cpu_s": mine[0]["cpu_s"],
            "warm_cpu_s": [r["cpu_s"] for r in mine[1:]],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in mine),
            "cold_phase_seconds": mine[0]["phase_seconds"],
            "warm_phase_seconds": mine[-1]["phase_seconds"],
        }
    results = {r["variant"]: r["results"] for r in runs}
    same = None
    if "before" in results:
        diffs = [abs(results["before"][e][k] - results["after"][e][k])
                 for e in results["after"] for k in ("knn_accuracy", "silhouette")]  # fmt: skip
        same = {"max_abs_diff": max(diffs), "metrics": results["after"]}
    print(json.dumps({"progress": "done"}), file=sys.stderr)
    record = {
        "benchmark": "report",
        "dataset": {"cells": args.cells, "models": list(MODELS), "labels": "cell_type"},
        "cpus": os.cpu_count(),
        "before_ref": args.before,
        "summary": summary,
        "metrics_before_vs_after": same,
        "runs": [{k: v for k, v in r.items() if k != "results"} for r in runs],
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
