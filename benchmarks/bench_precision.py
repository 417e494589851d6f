"""cells/s, memory and embedding drift of `helical-runner embed` per precision.

The real-size Geneformer shape (gf-6L-10M-i2048: 6 layers, 256 hidden, 4
heads, 25,424-gene vocabulary, random weights at helical's paths; 2,048
tokens per cell) embedded by `helical-runner embed` once per precision;
each reduced precision is compared with fp32 on the same cells (max |diff|,
mean cosine similarity). On CPU the runner turns fp16 into fp32 (it says so
and the manifest records the precision used), so CPU runs default to fp32 and
bf16; CUDA runs to all three. The JSON also records the CPU's precision flags
(/proc/cpuinfo) and what ``--precision auto`` resolves to on this machine.

    .venvs/runner/bin/python benchmarks/bench_precision.py [--device cpu|cuda] \
        [--cells 64] [--batch-size 8] [--precisions fp32,fp16,bf16]
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

import numpy as np

VOCAB = 25_424  # genes in Geneformer v1's token dictionary
EXPRESSED = 2_600  # genes detected per cell: more than 2048, so every cell fills the context


def build_store(root: Path) -> list[str]:
    from helical_runner import store

    ensembl = [f"ENSG{200000 + i:011d}" for i in range(VOCAB)]
    store.write_geneformer(
        root, ensembl, "gf-6L-10M-i2048", hidden=256, layers=6, heads=4, intermediate=512
    )
    info = store.StoreInfo(
        kind="random-real-shape", files=store.checksums(root), source="bench_precision"
    )
    (root / store.STORE_MANIFEST).write_text(json.dumps(info.to_json()))
    return ensembl


def build_data(path: Path, ensembl: list[str], cells: int) -> None:
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    rows, cols, vals = [], [], []
    for c in range(cells):
        genes = rng.choice(len(ensembl), size=EXPRESSED, replace=False)
        rows.append(np.full(EXPRESSED, c))
        cols.append(genes)
        vals.append(rng.negative_binomial(2, 0.3, size=EXPRESSED) + 1)
    X = sp.csr_matrix(
        (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
        shape=(cells, len(ensembl)),
    )
    obs = pd.DataFrame(index=[f"cell-{i}" for i in range(cells)])
    ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=ensembl)).write_h5ad(path)


def prepare(prefix: str, cells: int) -> tuple[Path, Path, dict]:
    """A temporary work folder with the random real-shape store and ``cells`` cells;
    the environment (helical's cache inside it) every subprocess must use."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    env = {
        **os.environ,
        "CACHE_DIR_HELICAL_PREFIX": str(work / "home"),
        "HELICAL_RUNNER_LOG_FORMAT": "json",
        "TQDM_DISABLE": "1",
    }
    os.environ.update(env)
    ensembl = build_store(work / "store")
    data = work / "cells.h5ad"
    build_data(data, ensembl, cells)
    return work, data, env


def runner_embed(
    work: Path, data: Path, out: Path, *, precision: str, device: str, batch_size: int, env: dict
) -> tuple[dict, float]:
    """`helical-runner embed` of the whole file with the store under ``work``: (manifest, wall s)."""
    t = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "helical_runner.cli",
            "embed",
            "--input",
            str(data),
            "--model",
            "geneformer",
            "--output",
            str(out),
            "--model-store",
            str(work / "store"),
            "--precision",
            precision,
            "--device",
            device,
            "--batch-size",
            str(batch_size),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"embed {precision}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    wall = time.perf_counter() - t
    return json.loads(out.with_name(out.name + ".manifest.json").read_text()), wall


def embed(work: Path, data: Path, precision: str, args, env: dict) -> dict:
    out = work / f"{precision}.h5ad"
    manifest, wall = runner_embed(
        work,
        data,
        out,
        precision=precision,
        device=args.device,
        batch_size=args.batch_size,
        env=env,
    )
    import anndata as ad

    compute = sum(manifest["timings"][k] for k in ("read_s", "preprocess_s", "embed_s"))
    return {
        "embedding": np.asarray(ad.read_h5ad(out).obsm["X_geneformer"], dtype=np.float32),
        "result": {
            "precision_used": manifest["precision"],
            "precision_reason": manifest.get("precision_reason"),
            "device_used": manifest["device"],
            "cells_per_second": round(args.cells / compute, 3),
            "embed_s": manifest["timings"]["embed_s"],
            "load_s": manifest["timings"]["load_s"],
            "batch_latency_p50_s": manifest["batch_latency_p50_s"],
            "batch_latency_p95_s": manifest["batch_latency_p95_s"],
            "peak_rss_mib": round(manifest["peak_rss_bytes"] / 2**20, 1),
            "peak_gpu_memory_mib": round(manifest["peak_gpu_memory_bytes"] / 2**20, 1),
            "process_wall_s": round(wall, 1),
        },
    }


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def drift(emb: np.ndarray, ref: np.ndarray) -> dict:
    cos = np.sum(emb * ref, axis=1) / (
        np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12
    )
    return {
        "max_abs_diff_vs_fp32": float(np.max(np.abs(emb - ref))),
        "mean_cosine_vs_fp32": round(float(np.mean(cos)), 6),
        "min_cosine_vs_fp32": round(float(np.min(cos)), 6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--cells", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--precisions", help="comma-separated; default fp32,bf16 on cpu, fp32,fp16,bf16 on cuda"
    )
    args = parser.parse_args()
    default = "fp32,bf16" if args.device == "cpu" else "fp32,fp16,bf16"
    precisions = (args.precisions or default).split(",")
    if precisions[0] != "fp32":
        precisions = ["fp32", *[p for p in precisions if p != "fp32"]]

    work, data, env = prepare("bench-precision-", args.cells)

    runs = {p: embed(work, data, p, args, env) for p in precisions}
    ref = runs["fp32"]["embedding"]
    results = {}
    for p, run in runs.items():
        results[p] = run["result"]
        if p != "fp32":
            results[p].update(drift(run["embedding"], ref))
            results[p]["speedup_vs_fp32"] = round(
                run["result"]["cells_per_second"] / runs["fp32"]["result"]["cells_per_second"], 3
            )

    from helical_runner.precision import PRECISION_FLAGS, cpu_flags, resolve

    flags = cpu_flags()
    auto = resolve("auto", args.device)
    gpu = None
    if args.device == "cuda":
        import torch

        gpu = torch.cuda.get_device_name(0)
    print(
        json.dumps(
            {
                "model_shape": "gf-6L-10M-i2048 (random weights)",
                "cells": args.cells,
                "tokens_per_cell": 2048,
                "batch_size": args.batch_size,
                "device": args.device,
                "gpu": gpu,
                "cpu_count": os.cpu_count(),
                "machine": platform.machine(),
                "cpu_model": cpu_model(),
                "cpu_precision_flags": {f: f in flags for f in PRECISION_FLAGS},
                "auto_resolves_to": {"precision": auto.precision, "reason": auto.reason},
                "precisions": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
