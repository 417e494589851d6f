"""Peak memory of `helical-runner annotate` does not grow with the data.

(a) `annotate predict` with the pca baseline classifier (counts in, the
    heavier path) on a 10k- vs a 200k-cell query (goal: ratio <= 1.2);
(b) the same for a classifier on 512-d embeddings, on embed-format query
    files of 10k vs 200k cells (random vectors: memory, not accuracy);
(c) `annotate train` (pca) on a 20k- vs a 200k-cell reference.

Each command runs in its own measuring process (bench_memory.measured), so
ru_maxrss is exactly the runner's peak. Prints one JSON object.

    .venvs/runner/bin/python benchmarks/bench_annotate.py [--small 10000] [--large 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import RUNNER, measured

DIM = 512


def demo_data(path: Path, cells: int, genes: int, env: dict) -> Path:
    if not path.exists():
        subprocess.run([*RUNNER, "demo-data", "--output", str(path), "--cells", str(cells),
                        "--genes", str(genes), "--seed", "5"], env=env, check=True, capture_output=True)  # fmt: skip
    return path


def embedding_file(path: Path, cells: int) -> Path:
    """An `embed`-format output (obs with cell_type, obsm X_scgpt) of random class-shifted vectors."""
    import numpy as np
    import pandas as pd

    from helical_runner import output

    if path.exists():
        return path
    rng = np.random.default_rng(cells)
    labels = rng.integers(0, 5, size=cells)
    centres = rng.normal(size=(5, DIM)).astype(np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type-{i}" for i in labels])},
                       index=pd.Index([f"cell-{i:07d}" for i in range(cells)]))  # fmt: skip

    def blocks():
        for lo in range(0, cells, 50_000):
            part = labels[lo : lo + 50_000]
            yield centres[part] + rng.normal(size=(len(part), DIM)).astype(np.float32)

    output.write_embeddings(path, obs=obs, key="X_scgpt", dim=DIM, blocks=blocks(), provenance={})
    return path


def predict(classifier: Path, query: Path, work: Path, env: dict) -> dict:
    out = work / f"labelled-{query.stem}-{classifier.stem}.h5ad"
    subprocess.run(["rm", "-rf", str(out), f"{out}.manifest.json", f"{out}.partial"], check=True)
    run = measured([*RUNNER, "annotate", "predict", "--classifier", str(classifier),
                    "--input", str(query), "--output", str(out)], env)  # fmt: skip
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    run.update(cells=manifest["input"]["cells"], chunks=manifest["chunks"],
               cells_per_second=manifest["cells_per_second"],
               input_mib=round(query.stat().st_size / 2**20, 1))  # fmt: skip
    print(json.dumps({"progress": run}), file=sys.stderr)
    return run


def train(reference: Path, model: str, out: Path, env: dict) -> dict:
    subprocess.run(["rm", "-f", str(out), f"{out}.manifest.json"], check=True)
    run = measured([*RUNNER, "annotate", "train", "--reference", str(reference), "--label-key",
                    "cell_type", "--model", model, "--output", str(out)], env)  # fmt: skip
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    run.update(cells=manifest["reference"]["cells"], macro_f1=manifest["scores"]["macro_f1"],
               train_seconds=manifest["train_seconds"])  # fmt: skip
    print(json.dumps({"progress": run}), file=sys.stderr)
    return run


def ratio(runs: dict, small: int, large: int) -> dict:
    value = round(runs[str(large)]["peak_rss_mib"] / runs[str(small)]["peak_rss_mib"], 3)
    return {"runs": runs, "peak_rss_ratio": value, "goal_ratio": 1.2, "goal_met": value <= 1.2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=200_000)
    parser.add_argument("--reference-small", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=500)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-annotate-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HELICAL_RUNNER_LOG_FORMAT": "json"}

    result: dict = {"genes": args.genes, "embedding_dim": DIM}
    # (c) training, and the classifiers the predictions use
    # one file per size: the large reference is also the large query
    refs = {n: demo_data(work / f"cells-{n}.h5ad", n, args.genes, env)
            for n in (args.reference_small, args.large)}  # fmt: skip
    runs = {str(n): train(p, "pca", work / f"pca-{n}.npz", env) for n, p in refs.items()}
    result["train_pca"] = ratio(runs, args.reference_small, args.large)
    pca = work / f"pca-{args.reference_small}.npz"
    emb_ref = embedding_file(work / "reference-emb.h5ad", args.reference_small)
    scgpt = work / "scgpt.npz"
    result["train_embedding"] = train(emb_ref, "scgpt", scgpt, env)
    # (a) and (b)
    runs = {}
    for n in (args.small, args.large):
        runs[str(n)] = predict(
            pca, demo_data(work / f"query-{n}.h5ad", n, args.genes, env), work, env
        )
    result["predict_pca"] = ratio(runs, args.small, args.large)
    runs = {}
    for n in (args.small, args.large):
        runs[str(n)] = predict(scgpt, embedding_file(work / f"query-emb-{n}.h5ad", n), work, env)
    result["predict_embedding"] = ratio(runs, args.small, args.large)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
