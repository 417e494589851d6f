"""Runner vs helical called directly, same real-size Geneformer shape, same cells.

gf-6L-10M-i2048 architecture (6 layers, 256 hidden, 4 heads, 2048 tokens,
~25k-gene vocabulary) with random weights, written at helical's paths.
helical direct = `process_data` + `get_embeddings` on the whole AnnData.
Runner = `helical-runner embed` (streamed chunks, encoder without the
masked-LM head). Goal: >= 1.5x cells/s with max |diff| <= 1e-4 in fp32.

    .venvs/runner/bin/python benchmarks/bench_geneformer.py [--cells 100] [--batch-size 8]
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
        kind="random-real-shape", files=store.checksums(root), source="bench_geneformer"
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


HELICAL_DIRECT = """
import json, sys, time
import anndata as ad, numpy as np
from helical_runner.store import guard_helical_downloads
guard_helical_downloads()
from helical.models.geneformer import Geneformer, GeneformerConfig
adata = ad.read_h5ad(sys.argv[1])
adata.var["ensembl_id"] = adata.var_names
model = Geneformer(GeneformerConfig(model_name="gf-6L-10M-i2048", batch_size=int(sys.argv[2]), device="cpu"))
t = time.perf_counter()
dataset = model.process_data(adata, gene_names="ensembl_id")
t1 = time.perf_counter()
emb = model.get_embeddings(dataset)
t2 = time.perf_counter()
np.save(sys.argv[3], np.asarray(emb, dtype=np.float32))
print(json.dumps({"preprocess_s": t1 - t, "embed_s": t2 - t1}))
"""


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    work, data, env = prepare("bench-geneformer-", args.cells)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "helical_runner.cli",
            "models",
            "fetch",
            "--from",
            str(work / "store"),
        ],
        env=env,
        check=True,
        capture_output=True,
    )

    t = time.perf_counter()
    direct = subprocess.run(
        [
            sys.executable,
            "-c",
            HELICAL_DIRECT,
            str(data),
            str(args.batch_size),
            str(work / "direct.npy"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if direct.returncode:
        raise SystemExit(direct.stderr[-3000:])
    direct_wall = time.perf_counter() - t
    direct_t = json.loads(direct.stdout.strip().splitlines()[-1])

    out = work / "runner.h5ad"
    manifest, runner_wall = runner_embed(
        work, data, out, precision="fp32", device="cpu", batch_size=args.batch_size, env=env
    )

    import anndata as ad

    ours = ad.read_h5ad(out).obsm["X_geneformer"]
    theirs = np.load(work / "direct.npy")
    direct_cps = args.cells / (direct_t["preprocess_s"] + direct_t["embed_s"])
    runner_compute = sum(manifest["timings"][k] for k in ("read_s", "preprocess_s", "embed_s"))
    runner_cps = args.cells / runner_compute
    print(
        json.dumps(
            {
                "model_shape": "gf-6L-10M-i2048 (random weights)",
                "cells": args.cells,
                "tokens_per_cell": 2048,
                "batch_size": args.batch_size,
                "precision": "fp32",
                "device": "cpu",
                "helical_direct": {
                    "cells_per_second": round(direct_cps, 3),
                    **{k: round(v, 2) for k, v in direct_t.items()},
                    "process_wall_s": round(direct_wall, 1),
                },
                "runner": {
                    "cells_per_second": round(runner_cps, 3),
                    **{
                        k: manifest["timings"][k]
                        for k in ("read_s", "preprocess_s", "embed_s", "load_s")
                    },
                    "peak_rss_mib": round(manifest["peak_rss_bytes"] / 2**20, 1),
                    "process_wall_s": round(runner_wall, 1),
                },
                "speedup": round(runner_cps / direct_cps, 3),
                "speedup_goal": 1.5,
                "max_abs_diff": float(np.max(np.abs(ours - theirs))),
                "identical_within_1e-4": bool(np.max(np.abs(ours - theirs)) <= 1e-4),
                "cpu_count": os.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
