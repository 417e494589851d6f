"""Runner adapter vs helical called directly: real-size shapes, realistic cell lengths.

Both sides run in this one process on the same cells, the same model files
and the same torch threads, alternating (helical, runner, helical, ...);
the medians of the rounds are compared, and the outputs must agree.

- helical direct: ``Geneformer``/``scGPT`` with their config, then
  ``process_data`` + ``get_embeddings``, as a user calls them.
- runner: the adapter (helical's classes and tokenizers; Geneformer without
  the masked-LM head; length-sorted, token-bounded batches), ``prepare`` +
  ``infer`` on the same AnnData.

Shapes (random weights written at helical's paths, fp32, CPU):
- Geneformer gf-6L-10M-i2048: 6 layers, 256 hidden, 4 heads, 512 intermediate,
  2,048 positions, 25,424-gene vocabulary (Geneformer v1's size).
- scGPT whole-human: 512-d, 12 layers, 8 heads, d_hid 512, its real
  60,694-gene vocabulary from the scgpt 0.2.4 wheel (scripts/bootstrap.sh
  runner_data), at most 1,200 tokens per cell.

Cell lengths: the real number of detected genes of scanpy's
``pbmc68k_reduced`` cells (``obs['n_genes']``, 700 PBMCs of 10x's 68k
dataset: mean 1,186, 1,001-2,605), sampled with a fixed seed; each cell gets
that many random expressed genes. Geneformer keeps up to 2,048 of them,
scGPT samples down to 1,200.

    nice .venvs/runner/bin/python benchmarks/bench_vs_helical.py \
        [--models geneformer,scgpt] [--cells 24] [--rounds 3] [--batch-size 8]

Prints JSON and writes benchmarks/results/vs_helical.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUNNER_DATA = ROOT / ".cache" / "runner-data"
RESULT = ROOT / "benchmarks" / "results" / "vs_helical.json"
GENEFORMER_VOCAB = 25_424
GENEFORMER_SHAPE = {"hidden": 256, "layers": 6, "heads": 4, "intermediate": 512}
SCGPT_SHAPE = {"embsize": 512, "nheads": 8, "d_hid": 512, "nlayers": 12}
GOALS = {"geneformer": 3.0, "scgpt": 1.5}


def real_cell_lengths(cells: int, seed: int = 0) -> np.ndarray:
    """Detected genes per cell of real PBMCs (pbmc68k_reduced obs['n_genes'])."""
    import anndata as ad

    adata = ad.read_h5ad(RUNNER_DATA / "datasets" / "pbmc68k_reduced.h5ad", backed="r")
    n_genes = adata.obs["n_genes"].to_numpy()
    return np.random.default_rng(seed).choice(n_genes, size=cells, replace=False)


def counts_with_lengths(lengths: np.ndarray, n_vars: int, seed: int = 1):
    """CSR raw counts: cell i expresses lengths[i] random genes (negative binomial + 1)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = np.concatenate([np.sort(rng.choice(n_vars, size=k, replace=False)) for k in lengths])
    data = (rng.negative_binomial(2, 0.3, size=indptr[-1]) + 1).astype(np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(len(lengths), n_vars))


def scgpt_vocabulary() -> list[str]:
    from helical_runner import store

    with zipfile.ZipFile(RUNNER_DATA / store.SCGPT_WHEEL) as wheel:
        vocab = json.loads(wheel.read(store.SCGPT_VOCAB_MEMBER))
    return [g for g in vocab if not g.startswith("<")]


def write_models(cache: Path, models: list[str]) -> dict[str, list[str]]:
    """Random real-size weights at helical's cache paths; the gene ids of each model."""
    from helical_runner import store

    genes = {}
    if "geneformer" in models:
        genes["geneformer"] = [f"ENSG{200000 + i:011d}" for i in range(GENEFORMER_VOCAB)]
        store.write_geneformer(cache, genes["geneformer"], "gf-6L-10M-i2048", **GENEFORMER_SHAPE)
    if "scgpt" in models:
        vocabulary = scgpt_vocabulary()
        store._write_scgpt(cache, vocabulary, SCGPT_SHAPE)
        # helical would try to map the vocabulary's 703 Ensembl-id entries to
        # symbols (a download); cells express only the symbol entries
        genes["scgpt"] = [g for g in vocabulary if not g.startswith("ENS")]
    return genes


def helical_direct(model: str, batch_size: int):
    """helical's own class, configured as a user would; returns embed(adata)."""
    if model == "geneformer":
        from helical.models.geneformer import Geneformer, GeneformerConfig

        m = Geneformer(GeneformerConfig(model_name="gf-6L-10M-i2048", batch_size=batch_size))

        def embed(adata):
            adata.var["ensembl_id"] = adata.var_names
            return m.get_embeddings(m.process_data(adata, gene_names="ensembl_id"))

        return embed
    from helical.models.scgpt import scGPT, scGPTConfig

    m = scGPT(scGPTConfig(batch_size=batch_size, **SCGPT_SHAPE))

    def embed(adata):
        adata.var["gene_name"] = adata.var_names
        return m.get_embeddings(m.process_data(adata, gene_names="gene_name"))

    return embed


def runner_adapter(model: str, batch_size: int):
    """The runner's adapter with its profile (batch size as helical's); returns (embed, adapter)."""
    from helical_runner import profiles
    from helical_runner.adapters import adapter_class

    cls = adapter_class(model)
    profile = profiles.load(model).with_overrides(batch_size=batch_size, precision="fp32")
    overrides = SCGPT_SHAPE if model == "scgpt" else {}
    adapter = cls(profile, device="cpu", precision="fp32", overrides=overrides)
    adapter.load()
    return (lambda adata: adapter.infer(adapter.prepare(adata))), adapter


def bench_model(model: str, genes: list[str], args) -> dict:
    import anndata as ad
    import pandas as pd

    lengths = real_cell_lengths(args.cells)
    X = counts_with_lengths(lengths, len(genes))
    obs = pd.DataFrame(index=[f"cell-{i}" for i in range(args.cells)])

    def fresh():
        return ad.AnnData(X=X.copy(), obs=obs.copy(), var=pd.DataFrame(index=genes))

    paths = {"helical_direct": helical_direct(model, args.batch_size)}
    paths["runner"], adapter = runner_adapter(model, args.batch_size)
    seconds = {name: [] for name in paths}
    outputs = {}
    for _ in range(args.rounds):
        for name, embed in paths.items():
            t = time.perf_counter()
            outputs[name] = np.asarray(embed(fresh()), dtype=np.float32)
            seconds[name].append(time.perf_counter() - t)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    diff = float(np.max(np.abs(outputs["runner"] - outputs["helical_direct"])))
    cap = 2048 if model == "geneformer" else 1200
    tokens = np.minimum(lengths + (model == "scgpt"), cap)
    speedup = median["helical_direct"] / median["runner"]
    return {
        "shape": (
            "gf-6L-10M-i2048: 6 layers, 256 hidden, 4 heads, 25,424-gene vocabulary"
            if model == "geneformer"
            else "scGPT whole-human: 512-d, 12 layers, 8 heads, d_hid 512, 60,694-gene vocabulary"
        ),
        "cells": args.cells,
        "tokens_per_cell": {
            "mean": round(float(tokens.mean()), 1),
            "min": int(tokens.min()),
            "max": int(tokens.max()),
            "cap": cap,
        },
        "batch_size": args.batch_size,
        "runner_max_tokens_per_batch": adapter.profile.max_tokens_per_batch,
        "runner_forward_batches": len(adapter.batch_latencies) // args.rounds,
        "seconds_per_round": {k: [round(x, 2) for x in v] for k, v in seconds.items()},
        "cells_per_second_median": {k: round(args.cells / v, 3) for k, v in median.items()},
        "speedup": round(speedup, 3),
        "speedup_goal": GOALS[model],
        "goal_met": speedup >= GOALS[model],
        "max_abs_diff": diff,
        "identical_within_1e-5": diff <= 1e-5,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="geneformer,scgpt")
    parser.add_argument("--cells", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args()
    models = args.models.split(",")

    work = Path(tempfile.mkdtemp(prefix="bench-vs-helical-"))
    os.environ["CACHE_DIR_HELICAL_PREFIX"] = str(work)
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    from helical_runner import store

    cache = store.helical_cache_dir()
    genes = write_models(cache, models)
    store.guard_helical_downloads(cache)
    results = {m: bench_model(m, genes[m], args) for m in models}
    report = {
        "what": "runner adapter vs helical direct, interleaved in one process, medians of rounds",
        "cell_lengths": (
            "real detected genes per cell: scanpy pbmc68k_reduced obs['n_genes'] "
            "(700 PBMCs; mean 1,186, 1,001-2,605), sampled with seed 0"
        ),
        "precision": "fp32",
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "models": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
