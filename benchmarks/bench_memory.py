"""Peak memory of the runner does not grow with the dataset.

(a) peak RSS of `helical-runner embed` (demo bundle) on 10k vs 200k cells
    (goal: ratio <= 1.2), and
(b) peak RSS of `helical-runner validate` streaming a 1M-cell file.

Each measurement runs in its own wrapper process, so ru_maxrss of its
children is exactly the runner's peak. Prints one JSON object.

    .venvs/runner/bin/python benchmarks/bench_memory.py [--model scgpt] [--large 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNNER = [sys.executable, "-m", "helical_runner.cli"]
MEASURE = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); "
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode; "
    "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, time.perf_counter() - t)"
)


def measured(cmd: list[str], env: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *cmd], env=env, capture_output=True, text=True, check=True
    )
    rc, peak, wall = out.stdout.split()
    if int(rc) != 0:
        raise SystemExit(f"command failed ({rc}): {' '.join(cmd)}")
    return {"peak_rss_mib": round(int(peak) / 2**20, 1), "wall_s": round(float(wall), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="scgpt")
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=200_000)
    parser.add_argument("--validate-cells", type=int, default=1_000_000)
    parser.add_argument("--genes", type=int, default=500)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "CACHE_DIR_HELICAL_PREFIX": str(work / "home"),
        "HELICAL_RUNNER_LOG_FORMAT": "json",
    }
    # the demo bundle's real vocabularies (scripts/bootstrap.sh runner fetches them)
    sources = Path(__file__).resolve().parents[1] / ".cache" / "runner-data"
    if sources.is_dir():
        env.setdefault("HELICAL_RUNNER_GENE_SOURCES", str(sources))
    subprocess.run(
        [*RUNNER, "models", "demo-bundle", "--to", str(work / "store")],
        env=env,
        check=True,
        capture_output=True,
    )
    env["HELICAL_RUNNER_MODEL_STORE"] = str(work / "store")

    vocabularies = json.loads((work / "store" / "store.json").read_text()).get("vocabularies")
    result: dict = {
        "model": args.model,
        "genes": args.genes,
        "vocabularies": vocabularies,
        "embed": {},
    }
    for cells in (args.small, args.large):
        data = work / f"cells-{cells}.h5ad"
        if not data.exists():
            subprocess.run(
                [
                    *RUNNER,
                    "demo-data",
                    "--output",
                    str(data),
                    "--cells",
                    str(cells),
                    "--genes",
                    str(args.genes),
                ],
                env=env,
                check=True,
                capture_output=True,
            )
        out = work / f"emb-{cells}.h5ad"
        for stale in work.glob(f"emb-{cells}.h5ad*"):
            subprocess.run(["rm", "-rf", str(stale)], check=True)
        run = measured(
            [*RUNNER, "embed", "--input", str(data), "--model", args.model, "--output", str(out)],
            env,
        )
        manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
        run.update(
            cells=cells,
            input_mib=round(data.stat().st_size / 2**20, 1),
            cells_per_second=manifest["cells_per_second"],
            chunks=manifest["chunks"],
        )
        result["embed"][str(cells)] = run
        print(json.dumps({"progress": run}), file=sys.stderr)
    small, large = result["embed"][str(args.small)], result["embed"][str(args.large)]
    result["embed_peak_rss_ratio"] = round(large["peak_rss_mib"] / small["peak_rss_mib"], 3)
    result["embed_goal_ratio"] = 1.2
    result["embed_goal_met"] = result["embed_peak_rss_ratio"] <= 1.2

    big = work / f"cells-{args.validate_cells}.h5ad"
    if not big.exists():
        t = time.perf_counter()
        subprocess.run(
            [
                *RUNNER,
                "demo-data",
                "--output",
                str(big),
                "--cells",
                str(args.validate_cells),
                "--genes",
                str(args.genes),
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        result["validate_generate_s"] = round(time.perf_counter() - t, 1)
    val = measured([*RUNNER, "validate", "--input", str(big), "--model", args.model], env)
    val.update(cells=args.validate_cells, input_mib=round(big.stat().st_size / 2**20, 1))
    result["validate"] = val
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
