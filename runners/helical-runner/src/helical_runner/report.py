"""Evaluate embeddings of one dataset against a PCA baseline; write an HTML report.

For each embedding (and the baseline: PCA of log-normalised counts of the
same cells): kNN label-transfer accuracy (stratified 5-fold, k=15), silhouette
of the labels, and a UMAP coloured by label. Large datasets are evaluated on a
deterministic subsample of at most ``max_cells`` cells.

Speed: each embedding's exact neighbour graph is computed once and shared by
the kNN label transfer and the UMAP (umap-learn's ``precomputed_knn``), and
numba's compiled code is cached in a private folder, so a second report does
not compile UMAP again. Metrics use every evaluated cell (silhouette: a fixed
sample of ``SILHOUETTE_SAMPLE``); a UMAP shows at most ``PLOT_MAX_POINTS``
cells, and the page says when it is a sample.
"""

from __future__ import annotations

import atexit
import html
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import storage
from .dataset import H5AD, iter_chunks
from .embed import MANIFEST_SUFFIX
from .errors import BadInput
from .validation import EMPTY_FLAG

LOG = logging.getLogger(__name__)
K_NEIGHBORS = 15
CV_FOLDS = 5
PCA_COMPONENTS = 50
# silhouette needs every pairwise distance (a neighbour graph cannot give it):
# above this many cells it is computed on a fixed random sample, as before
SILHOUETTE_SAMPLE = 5000
# a UMAP scatter draws at most this many cells (a deterministic sample above it)
PLOT_MAX_POINTS = 20_000
UMAP_NEIGHBORS = 15
# umap-learn's own choice above 10,000 cells; its 500 below that cost 2.5x the
# layout time for a picture that looks the same at this size
UMAP_EPOCHS = 200
NUMBA_CACHE_ENV = "NUMBA_CACHE_DIR"


def _subsample(n: int, max_cells: int) -> np.ndarray:
    if n <= max_cells:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size=max_cells, replace=False))


def _counts_rows(h5: H5AD, rows: np.ndarray) -> sp.csr_matrix:
    """The selected rows' counts, read chunk by chunk (bounded memory)."""
    counts = h5.counts_matrix()
    picked = []
    for lo, hi in iter_chunks(0, h5.n_cells, 8192):
        inside = rows[(rows >= lo) & (rows < hi)]
        if len(inside):
            picked.append(counts.rows(lo, hi)[inside - lo])
    return sp.vstack(picked, format="csr")


def use_numba_cache() -> Path:
    """Point numba's on-disk cache at a private folder; returns the folder.

    numba keeps compiled machine code there and loads it back in later
    processes, so the folder must be this user's alone (0700): whoever can
    write it can make the report run their code. ``$NUMBA_CACHE_DIR`` set by
    the caller wins; otherwise ``<runner cache>/numba`` (``$HELICAL_RUNNER_CACHE``
    or ``~/.cache/helical-runner``). Where that cannot be written (a container
    with a read-only HOME) a private temp folder removed at exit: the report
    still works, it only compiles again.
    """
    if os.environ.get(NUMBA_CACHE_ENV):
        folder = Path(os.environ[NUMBA_CACHE_ENV])
    else:
        base = Path(os.environ.get("HELICAL_RUNNER_CACHE") or storage.default_cache_dir())
        try:
            folder = storage.private_folder(base / "numba")
            with tempfile.TemporaryFile(dir=folder):
                pass
        except (OSError, BadInput) as exc:
            folder = Path(tempfile.mkdtemp(prefix="helical-runner-numba-"))
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            LOG.warning(
                "numba cache folder not writable; compiling into a temp folder this time",
                extra={"folder": str(base / "numba"), "reason": str(exc)},
            )
        os.environ[NUMBA_CACHE_ENV] = str(folder)
    if "numba" in sys.modules:  # imported already: make it read the setting again
        from numba.core import config

        config.reload_config()
    return folder


def _import_umap():
    """umap-learn, with its jitted functions cached on disk like pynndescent's.

    umap-learn's graph and layout functions are not declared ``cache=True``,
    so every process compiled them again (seconds per report on 2 cores).
    Turning numba's cache on for its module-level functions before their
    first call keeps that code in the folder ``use_numba_cache`` chose.
    """
    import umap
    import umap.layouts
    import umap.spectral
    import umap.umap_
    import umap.utils
    from numba.core.dispatcher import Dispatcher

    for module in (umap.umap_, umap.layouts, umap.spectral, umap.utils):
        for value in vars(module).values():
            if isinstance(value, Dispatcher) and value.stats.cache_path is None:
                value.enable_caching()
    return umap


def pca_baseline(counts: sp.csr_matrix) -> np.ndarray:
    import anndata as ad
    import scanpy as sc

    adata = ad.AnnData(X=counts.astype(np.float32))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    n_comps = max(2, min(PCA_COMPONENTS, min(adata.shape) - 1))
    sc.pp.pca(adata, n_comps=n_comps, random_state=0)
    return np.asarray(adata.obsm["X_pca"], dtype=np.float32)


@dataclass(frozen=True)
class NeighbourGraph:
    """Each cell's nearest cells in one embedding, nearest first, the cell itself included.

    ``indices``: (cells, k) int32 row numbers; ``distances``: (cells, k) float32 euclidean.
    """

    indices: np.ndarray
    distances: np.ndarray


def neighbour_graph(emb: np.ndarray, k: int) -> NeighbourGraph:
    """Exact euclidean k nearest neighbours of every row of ``emb`` (cells x dims)."""
    from sklearn.neighbors import NearestNeighbors

    dist, idx = NearestNeighbors(n_neighbors=min(k, len(emb))).fit(emb).kneighbors(emb)
    return NeighbourGraph(indices=idx.astype(np.int32), distances=dist.astype(np.float32))


def _folds(labels: np.ndarray) -> int:
    """Cross-validation folds the labels allow (0: no kNN transfer, one class)."""
    classes, counts = np.unique(labels, return_counts=True)
    return int(min(CV_FOLDS, counts.min())) if len(classes) > 1 else 0


def graph_size(labels: np.ndarray | None) -> int:
    """Neighbours to keep per cell so that, after dropping a cell's own fold, the kNN vote
    almost always still has ``K_NEIGHBORS`` (twice the expected need; the rest is looked up)."""
    folds = _folds(labels) if labels is not None else 0
    if folds < 2:
        return UMAP_NEIGHBORS
    return max(UMAP_NEIGHBORS, math.ceil(2 * K_NEIGHBORS * folds / (folds - 1)) + 1)


def knn_transfer_accuracy(
    emb: np.ndarray, codes: np.ndarray, folds: int, graph: NeighbourGraph
) -> float:
    """Mean accuracy over stratified folds of a majority vote of ``K_NEIGHBORS`` training cells.

    What ``cross_val_score(KNeighborsClassifier(15), emb, labels, cv=StratifiedKFold(folds,
    shuffle=True, random_state=0))`` computes (uniform weights, ties to the lowest class),
    read from the shared graph: a held-out cell's nearest training cells are its nearest
    graph neighbours outside its own fold. A cell with too few of those (rare) is looked
    up among its fold's training cells directly.
    """
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import NearestNeighbors

    n = len(codes)
    splits = list(
        StratifiedKFold(n_splits=folds, shuffle=True, random_state=0).split(np.zeros(n), codes)
    )
    fold_of = np.empty(n, dtype=np.int64)
    for fold, (_, test) in enumerate(splits):
        fold_of[test] = fold
    k = min(K_NEIGHBORS, n - 1, min(len(train) for train, _ in splits))
    outside = fold_of[graph.indices] != fold_of[:, None]
    nearest_outside = np.argsort(~outside, axis=1, kind="stable")[:, :k]
    neighbours = np.take_along_axis(graph.indices, nearest_outside, axis=1).astype(np.int64)
    short = np.flatnonzero(outside.sum(axis=1) < k)
    for fold, (train, _) in enumerate(splits):
        rows = short[fold_of[short] == fold]
        if len(rows):
            found = NearestNeighbors(n_neighbors=k).fit(emb[train]).kneighbors(emb[rows])[1]
            neighbours[rows] = train[found]
    n_classes = int(codes.max()) + 1
    tally = np.zeros((n, n_classes), dtype=np.int64)
    np.add.at(tally, (np.repeat(np.arange(n), k), codes[neighbours].ravel()), 1)
    predicted = tally.argmax(axis=1)
    return float(np.mean([np.mean(predicted[test] == codes[test]) for _, test in splits]))


def label_metrics(emb: np.ndarray, labels: np.ndarray, graph: NeighbourGraph | None = None) -> dict:
    """kNN label transfer (from ``graph``, computed here when not given) and silhouette."""
    from sklearn.metrics import silhouette_score

    classes, codes = np.unique(labels, return_inverse=True)
    folds = _folds(labels)
    result = {"classes": len(classes)}
    if folds >= 2:
        graph = graph or neighbour_graph(emb, graph_size(labels))
        result["knn_accuracy"] = round(knn_transfer_accuracy(emb, codes, folds, graph), 4)
        result["silhouette"] = round(
            float(
                silhouette_score(
                    emb, labels, sample_size=min(SILHOUETTE_SAMPLE, len(labels)), random_state=0
                )
            ),
            4,
        )
    return result


def umap_coords(emb: np.ndarray, graph: NeighbourGraph) -> np.ndarray:
    """2-d UMAP of ``emb`` built on ``graph`` (no neighbour search of its own)."""
    umap = _import_umap()
    n_neighbors = min(UMAP_NEIGHBORS, len(emb) - 1)
    # copies: umap-learn marks disconnected neighbours in these arrays in place
    knn = (graph.indices[:, :n_neighbors].copy(), graph.distances[:, :n_neighbors].copy(), None)
    with warnings.catch_warnings():
        # without a search index only `transform` of new cells is unavailable: not used here
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]")
        reducer = umap.UMAP(
            n_neighbors=n_neighbors,
            n_epochs=UMAP_EPOCHS,
            random_state=0,
            n_jobs=1,
            precomputed_knn=knn,
        )
        return reducer.fit_transform(emb)


def warm_numba_cache(cells: int = 300) -> Path:
    """Compile the report's numba code into the cache now (bootstrap calls this once per
    runner environment), so a user's first report loads it instead of compiling
    (~45 s on 2 cores). Returns the cache folder."""
    folder = use_numba_cache()
    emb = np.random.default_rng(0).normal(size=(cells, 16)).astype(np.float32)
    umap_coords(emb, neighbour_graph(emb, UMAP_NEIGHBORS))
    return folder


def umap_figure(coords: np.ndarray, labels: np.ndarray | None, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=110)
    if labels is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=3, alpha=0.7)
    else:
        for name in pd.unique(labels):
            sel = labels == name
            ax.scatter(coords[sel, 0], coords[sel, 1], s=3, alpha=0.7, label=str(name))
        ax.legend(markerscale=4, fontsize=7, frameon=False, loc="best")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def metrics_figure(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    keys = [k for k in ("knn_accuracy", "silhouette") if all(k in results[n] for n in names)]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(4.5 * max(1, len(keys)), 3.4), dpi=110)
    axes = np.atleast_1d(axes)
    for ax, key in zip(axes, keys, strict=False):
        values = [results[n][key] for n in names]
        ax.bar(
            names, values, color=["#999999" if n == "pca_baseline" else "#3b78b5" for n in names]
        )
        ax.set_title(key.replace("_", " "), fontsize=10)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


class _Phases:
    """Seconds spent per phase of the report, summed over embeddings."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._mark = time.perf_counter()

    def done(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + now - self._mark, 3)
        self._mark = now


def build_report(
    *,
    dataset: str,
    embeddings: list[str],
    out_dir: Path,
    label_key: str,
    max_cells: int,
    plot_max_points: int = PLOT_MAX_POINTS,
) -> Path:
    started = time.perf_counter()
    phases = _Phases()
    use_numba_cache()
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = [_load_embedding(uri) for uri in embeddings]
    # cells without counts got all-zero embeddings (flagged): nothing to evaluate there
    flagged = pd.Index([]).append([f for _, _, _, f in loaded]).unique()
    with H5AD(storage.LocalInput(dataset).path(), uri=dataset) as h5:
        obs = h5.obs()
        usable = np.flatnonzero(~h5.obs_names.isin(flagged))
        if len(usable) == 0:
            raise BadInput("no cell of the dataset has counts to evaluate", where=dataset)
        rows = usable[_subsample(len(usable), max_cells)]
        labels = None
        if label_key in obs.columns:
            labels = obs[label_key].astype(str).to_numpy()[rows]
        else:
            LOG.warning(
                "no label column; metrics need labels, only UMAPs are drawn",
                extra={"label_key": label_key},
            )
        counts = _counts_rows(h5, rows)
        cell_names = h5.obs_names[rows]
    phases.done("read")
    embs: dict[str, np.ndarray] = {"pca_baseline": pca_baseline(counts)}
    phases.done("pca")
    manifests = {}
    for uri, (frame, name, manifest, _) in zip(embeddings, loaded, strict=True):
        missing = cell_names.difference(frame.index)
        if len(missing):
            raise BadInput(
                f"embedding lacks {len(missing)} cells of the dataset, e.g. '{missing[0]}'",
                where=uri,
            )
        embs[name] = frame.loc[cell_names].to_numpy(dtype=np.float32)
        manifests[name] = manifest
    phases.done("read")

    # the UMAPs draw every evaluated cell up to plot_max_points, else a fixed sample
    plot_rows = _subsample(len(rows), plot_max_points)
    plot_sampled = len(plot_rows) < len(rows)
    plot_labels = labels[plot_rows] if labels is not None else None
    results: dict[str, dict] = {}
    figures: dict[str, str] = {}
    for name, emb in embs.items():
        results[name] = {"cells": len(emb), "dim": int(emb.shape[1])}
        graph = None
        if labels is not None:
            graph = neighbour_graph(emb, graph_size(labels))
            phases.done("neighbours")
            results[name].update(label_metrics(emb, labels, graph))
            phases.done("metrics")
        if graph is None or plot_sampled:
            graph = neighbour_graph(emb[plot_rows], UMAP_NEIGHBORS)
            phases.done("neighbours")
        coords = umap_coords(emb[plot_rows], graph)
        phases.done("umap")
        fig = f"umap_{name}.png"
        umap_figure(coords, plot_labels, f"{name} ({emb.shape[1]}-d)", out_dir / fig)
        figures[name] = fig
        phases.done("figures")
    if labels is not None:
        metrics_figure(results, out_dir / "metrics.png")
        phases.done("figures")
    demo = any(m.get("demo_weights") for m in manifests.values())
    summary = {
        "dataset": dataset,
        "label_key": label_key if labels is not None else None,
        "cells_evaluated": len(rows),
        "cells_plotted": len(plot_rows),
        "cells_without_counts_excluded": len(flagged),
        "demo_weights": demo,
        "results": results,
        "seconds": round(time.perf_counter() - started, 2),
        "phase_seconds": phases.seconds,
    }
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    page = out_dir / "report.html"
    page.write_text(_html(summary, figures, manifests, labels is not None))
    return page


def _load_embedding(uri: str) -> tuple[pd.DataFrame, str, dict, pd.Index]:
    """(embeddings by cell name, model name, manifest, cells flagged as without counts)."""
    import anndata as ad

    loc = storage.parse(uri)
    path = storage.LocalInput(uri).path()
    adata = ad.read_h5ad(path)
    keys = [k for k in adata.obsm if k.startswith("X_")]
    if len(keys) != 1:
        raise BadInput(f"expected one X_<model> embedding, found {keys}", where=uri)
    names = adata.obs_names.astype(str)
    frame = pd.DataFrame(np.asarray(adata.obsm[keys[0]]), index=names)
    flagged = names[adata.obs[EMPTY_FLAG].to_numpy(bool)] if EMPTY_FLAG in adata.obs else names[:0]
    manifest_loc = loc.with_suffix(MANIFEST_SUFFIX)
    manifest = storage.read_json(manifest_loc) if storage.exists(manifest_loc) else {}
    return frame, keys[0][2:], manifest, pd.Index(flagged)


def _html(
    summary: dict, figures: dict[str, str], manifests: dict[str, dict], with_labels: bool
) -> str:
    esc = html.escape
    cols = ["cells", "dim"] + (["classes", "knn_accuracy", "silhouette"] if with_labels else [])
    head = "".join(f"<th>{esc(c)}</th>" for c in ["embedding", *cols])
    body = "".join(
        "<tr>"
        + f"<td>{esc(name)}</td>"
        + "".join(f"<td>{esc(str(r.get(c, '')))}</td>" for c in cols)
        + "</tr>"
        for name, r in summary["results"].items()
    )
    banner = (
        '<p class="demo">Made with DEMO weights (tiny random models): numbers show the pipeline works, '
        "not what the models can do.</p>"
        if summary["demo_weights"]
        else ""
    )
    figs = "".join(
        f'<figure><img src="{esc(f)}" alt="UMAP of {esc(n)}"><figcaption>{esc(n)}</figcaption></figure>'
        for n, f in figures.items()
    )
    labels_text = (
        f", labels from <code>{esc(summary['label_key'])}</code>"
        if summary["label_key"]
        else ", no labels"
    )
    metrics_img = '<img src="metrics.png" alt="metrics by embedding">' if with_labels else ""
    details = "".join(
        f"<details><summary>manifest: {esc(n)}</summary><pre>{esc(json.dumps(m, indent=2, sort_keys=True))}</pre>"
        "</details>"
        for n, m in manifests.items()
    )
    evaluated, plotted = summary["cells_evaluated"], summary["cells_plotted"]
    silhouette_text = (
        f"a fixed sample of {SILHOUETTE_SAMPLE:,} cells"
        if evaluated > SILHOUETTE_SAMPLE
        else "all cells"
    )
    plot_note = (
        f'<p class="note">Each UMAP draws a random sample of {plotted:,} of the {evaluated:,} '
        f"evaluated cells; the metrics use all {evaluated:,}.</p>"
        if plotted < evaluated
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>helical-workflow report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
figure {{ display: inline-block; margin: .5rem; }} img {{ max-width: 520px; }}
.note {{ color: #555; }}
.demo {{ background: #fff3cd; padding: .5rem 1rem; border-left: 4px solid #e0a800; }}
pre {{ background: #f6f6f6; padding: .5rem; overflow-x: auto; font-size: 12px; }}
</style></head><body>
<h1>Embedding report</h1>
<p>Dataset <code>{esc(summary["dataset"])}</code>: {summary["cells_evaluated"]:,} cells evaluated{
        labels_text
    }.
kNN label transfer: {K_NEIGHBORS} neighbours, stratified {CV_FOLDS}-fold;
silhouette: {silhouette_text}; baseline: PCA of log-normalised counts.</p>
{banner}
<h2>Metrics</h2><table><tr>{head}</tr>{body}</table>
{metrics_img}
<h2>UMAPs</h2>{plot_note}{figs}
<h2>Provenance</h2>{details}
</body></html>
"""
