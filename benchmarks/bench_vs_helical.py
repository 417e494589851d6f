"""Runner adapter vs helical called directly: real-size shapes, realistic cell lengths.

Both sides run in this one process on the same cells, the same model files
and the same torch threads, alternating (helical, runner, helical, ...);
the medians of the rounds are compared, and the outputs must agree.

- helical direct: ``Geneformer``/``scGPT`` with their config, then
  ``process_data`` + ``get_embeddings``, as a user calls them.
- runner: the adapter (helical's classes and tokenizers; Geneformer without
  the masked-LM head; length-sorted, token-bounded batches), ``prepare`` +
  ``infer`` on the same AnnData.

Precisions: both sides at fp32, and at reduced precision side by side:
helical direct under ``torch.autocast("cpu", dtype=torch.bfloat16)`` around
``get_embeddings`` (what a user would write), and the runner at the
precision ``auto`` picks on this machine: :func:`helical_runner.calibrate.calibrate`
with a fresh cache (its flags pre-filter, timing and fidelity rule), then the
adapter at that precision. Fidelity against fp32 on the same cells
(:func:`helical_runner.fidelity.compare`): per-cell cosine (min, p1, median)
and kNN label-transfer agreement with the sampled PBMCs' ``bulk_labels``
(random weights: the agreement says whether neighbourhoods survive the
precision change, not whether labels are right). The CPU model and its
precision flags are in the JSON.

Shapes (random weights written at helical's paths, CPU):
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
        [--models geneformer,scgpt] [--cells 24] [--rounds 3] [--batch-size 8] \
        [--precisions fp32,auto]

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
GOALS = {"geneformer": 3.0, "scgpt": 1.5, "uce": 1.5}
FIDELITY_GOAL = {"min_cosine": 0.99, "median_cosine": 0.999}


def _policy():
    from helical_runner.fidelity import Policy

    return Policy()


POLICY = None  # the profiles' default fidelity policy, set in main() (after imports)


def real_cells(cells: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Detected genes per cell of real PBMCs (pbmc68k_reduced obs['n_genes']) and
    the same cells' ``bulk_labels``."""
    import anndata as ad

    adata = ad.read_h5ad(RUNNER_DATA / "datasets" / "pbmc68k_reduced.h5ad", backed="r")
    n_genes = adata.obs["n_genes"].to_numpy()
    labels = adata.obs["bulk_labels"].astype(str).to_numpy()
    picked = np.random.default_rng(seed).choice(len(n_genes), size=cells, replace=False)
    return n_genes[picked], labels[picked]


def real_cell_lengths(cells: int, seed: int = 0) -> np.ndarray:
    """Detected genes per cell of real PBMCs (pbmc68k_reduced obs['n_genes'])."""
    return real_cells(cells, seed)[0]


def cpu_facts() -> dict:
    """CPU model and the flags that matter for reduced precision (/proc/cpuinfo)."""
    from helical_runner.calibrate import cpu_model
    from helical_runner.precision import PRECISION_FLAGS, cpu_flags, resolve

    flags = cpu_flags()
    return {
        "cpu_model": cpu_model(),
        "precision_flags": sorted(f for f in PRECISION_FLAGS if f in flags),
        "auto_prefilter": resolve("auto", "cpu").__dict__,
    }


def bf16_autocast(fn):
    """``fn`` under CPU bf16 autocast, as a user would wrap helical's get_embeddings."""
    import torch

    def wrapped(adata):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn(adata)

    return wrapped


def pick_auto(adapter, chunk_of) -> dict:
    """What the runner's ``precision: auto`` picks here: its pre-filter, then its
    calibration with a fresh cache (so it measures), on these cells."""
    from helical_runner import calibrate
    from helical_runner.precision import resolve

    resolved = resolve("auto", adapter.device)
    if resolved.precision == "fp32":
        return {"chosen": "fp32", "reason": resolved.reason, "calibrated": False}
    old = os.environ.get(calibrate.CACHE_ENV)
    os.environ[calibrate.CACHE_ENV] = tempfile.mkdtemp(prefix="bench-calibration-")
    try:
        record = calibrate.calibrate(
            adapter, {"bench": "random weights"}, resolved.precision, POLICY, chunk_of
        )
    finally:
        if old is None:
            os.environ.pop(calibrate.CACHE_ENV, None)
        else:
            os.environ[calibrate.CACHE_ENV] = old
    keep = ("candidate", "chosen", "reason", "cells", "best_seconds", "speedup", "fidelity")
    return {
        **{k: record[k] for k in keep},
        "prefilter": resolved.reason,
        "calibrated": True,
        "calibration_seconds": record["seconds_spent"],
    }


def fidelity_of(outputs: dict, reference: str, candidate: str, labels) -> dict | None:
    from helical_runner import fidelity

    if candidate not in outputs or reference not in outputs:
        return None
    return fidelity.compare(outputs[reference], outputs[candidate], labels, k=POLICY.knn_k)


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
    """The runner's adapter with its profile (batch size as helical's), at fp32; returns
    (embed, adapter). Set ``adapter.precision`` to run it at another precision."""
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

    lengths, labels = real_cells(args.cells)
    X = counts_with_lengths(lengths, len(genes))
    obs = pd.DataFrame(index=[f"cell-{i}" for i in range(args.cells)])

    def fresh(n=None):
        rows = slice(0, n)
        return ad.AnnData(
            X=X[rows].copy(), obs=obs.iloc[rows].copy(), var=pd.DataFrame(index=genes)
        )

    helical = helical_direct(model, args.batch_size)
    runner, adapter = runner_adapter(model, args.batch_size)
    precisions = args.precisions.split(",")
    paths = {"helical_direct": helical, "runner": runner}
    auto = None
    if "auto" in precisions:
        auto = pick_auto(adapter, fresh)
        paths["helical_direct_bf16"] = bf16_autocast(helical)
        if auto["chosen"] != "fp32":
            paths[f"runner_{auto['chosen']}"] = runner
    if "fp32" not in precisions:
        paths = {k: v for k, v in paths.items() if k not in ("helical_direct", "runner")}
    seconds = {name: [] for name in paths}
    outputs = {}
    for _ in range(args.rounds):
        for name, embed in paths.items():
            adapter.precision = name.split("_")[-1] if name.startswith("runner_") else "fp32"
            t = time.perf_counter()
            outputs[name] = np.asarray(embed(fresh()), dtype=np.float32)
            seconds[name].append(time.perf_counter() - t)
    adapter.precision = "fp32"
    median = {name: statistics.median(s) for name, s in seconds.items()}
    diff = float(np.max(np.abs(outputs["runner"] - outputs["helical_direct"])))
    cap = 2048 if model == "geneformer" else 1200
    tokens = np.minimum(lengths + (model == "scgpt"), cap)
    speedup = median["helical_direct"] / median["runner"]
    result = {
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
        "seconds_per_round": {k: [round(x, 2) for x in v] for k, v in seconds.items()},
        "cells_per_second_median": {k: round(args.cells / v, 3) for k, v in median.items()},
        "speedup": round(speedup, 3),
        "speedup_goal": GOALS[model],
        "goal_met": speedup >= GOALS[model],
        "max_abs_diff": diff,
        "identical_within_1e-5": diff <= 1e-5,
    }
    if auto is not None:
        result.update(precision_summary(model, auto, median, outputs, labels))
    return result


def precision_summary(model: str, auto: dict, median: dict, outputs: dict, labels) -> dict:
    """The reduced-precision side of one model's comparison."""
    chosen = auto["chosen"]
    runner_auto = "runner" if chosen == "fp32" else f"runner_{chosen}"
    fid = {
        f"{runner_auto}_vs_runner_fp32": fidelity_of(outputs, "runner", runner_auto, labels),
        "helical_direct_bf16_vs_helical_direct_fp32": fidelity_of(
            outputs, "helical_direct", "helical_direct_bf16", labels
        ),
    }
    auto_speedup = median["helical_direct"] / median[runner_auto]
    runner_fid = fid[f"{runner_auto}_vs_runner_fp32"] or {}
    cos = runner_fid.get("cosine") or {"min": 1.0, "median": 1.0}
    return {
        "auto": auto,
        "fidelity_vs_fp32_same_cells": fid,
        "speedup_auto_vs_helical_fp32": round(auto_speedup, 3),
        "speedup_auto_vs_helical_bf16": round(
            median["helical_direct_bf16"] / median[runner_auto], 3
        ),
        "speedup_runner_bf16_vs_helical_bf16": (
            round(median["helical_direct_bf16"] / median["runner_bf16"], 3)
            if "runner_bf16" in median
            else None
        ),
        "goal_auto_met": bool(
            auto_speedup >= GOALS[model]
            and cos["min"] >= FIDELITY_GOAL["min_cosine"]
            and cos["median"] >= FIDELITY_GOAL["median_cosine"]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="geneformer,scgpt")
    parser.add_argument("--cells", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precisions", default="fp32,auto")
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args()
    models = args.models.split(",")
    global POLICY
    POLICY = _policy()

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
        "precision": "fp32 both sides; then helical direct under bf16 autocast and the runner "
        "at the precision auto picks (calibrated here)",
        "device": "cpu",
        **cpu_facts(),
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
