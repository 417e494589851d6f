"""cells/s, memory and embedding drift of `helical-runner embed` per precision.

The real-size Geneformer shape of bench_geneformer.py (gf-6L-10M-i2048, random
weights, 2,048 tokens per cell) embedded once per precision on one device;
each reduced precision is compared with fp32 on the same cells (max |diff|,
mean cosine similarity). On CPU the runner turns fp16 into fp32 (it says so
and the manifest records the precision used), so CPU runs default to fp32 and
bf16; CUDA runs to all three.

    .venvs/runner/bin/python benchmarks/bench_precision.py [--device cpu|cuda] \
        [--cells 64] [--batch-size 8] [--precisions fp32,fp16,bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_geneformer import prepare, runner_embed


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
                "precisions": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
