"""Evaluate embeddings of one dataset against a PCA baseline; write an HTML report.

For each embedding (and the baseline: PCA of log-normalised counts of the
same cells): kNN label-transfer accuracy (5-fold, k=15), silhouette of the
labels, and a UMAP coloured by label. Large datasets are evaluated on a
deterministic subsample of at most ``max_cells`` cells.
"""

from __future__ import annotations

import html
import json
import logging
import time
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
PCA_COMPONENTS = 50
SILHOUETTE_SAMPLE = 5000


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


def pca_baseline(counts: sp.csr_matrix) -> np.ndarray:
    import anndata as ad
    import scanpy as sc

    adata = ad.AnnData(X=counts.astype(np.float32))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    n_comps = max(2, min(PCA_COMPONENTS, min(adata.shape) - 1))
    sc.pp.pca(adata, n_comps=n_comps, random_state=0)
    return np.asarray(adata.obsm["X_pca"], dtype=np.float32)


def label_metrics(emb: np.ndarray, labels: np.ndarray) -> dict:
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    classes, counts = np.unique(labels, return_counts=True)
    folds = int(min(5, counts.min())) if len(classes) > 1 else 0
    result = {"classes": len(classes)}
    if folds >= 2:
        knn = KNeighborsClassifier(n_neighbors=min(K_NEIGHBORS, len(labels) - 1))
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
        result["knn_accuracy"] = round(float(cross_val_score(knn, emb, labels, cv=cv).mean()), 4)
        result["silhouette"] = round(
            float(
                silhouette_score(
                    emb, labels, sample_size=min(SILHOUETTE_SAMPLE, len(labels)), random_state=0
                )
            ),
            4,
        )
    return result


def umap_figure(emb: np.ndarray, labels: np.ndarray | None, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import umap

    coords = umap.UMAP(n_neighbors=min(15, len(emb) - 1), random_state=0, n_jobs=1).fit_transform(
        emb
    )
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


def build_report(
    *, dataset: str, embeddings: list[str], out_dir: Path, label_key: str, max_cells: int
) -> Path:
    started = time.perf_counter()
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
        embs: dict[str, np.ndarray] = {"pca_baseline": pca_baseline(_counts_rows(h5, rows))}
        cell_names = h5.obs_names[rows]
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

    results: dict[str, dict] = {}
    figures: dict[str, str] = {}
    for name, emb in embs.items():
        results[name] = {"cells": len(emb), "dim": int(emb.shape[1])}
        if labels is not None:
            results[name].update(label_metrics(emb, labels))
        fig = f"umap_{name}.png"
        umap_figure(emb, labels, f"{name} ({emb.shape[1]}-d)", out_dir / fig)
        figures[name] = fig
    if labels is not None:
        metrics_figure(results, out_dir / "metrics.png")
    demo = any(m.get("demo_weights") for m in manifests.values())
    summary = {
        "dataset": dataset,
        "label_key": label_key if labels is not None else None,
        "cells_evaluated": len(rows),
        "cells_without_counts_excluded": len(flagged),
        "demo_weights": demo,
        "results": results,
        "seconds": round(time.perf_counter() - started, 2),
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
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>helical-workflow report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
figure {{ display: inline-block; margin: .5rem; }} img {{ max-width: 520px; }}
.demo {{ background: #fff3cd; padding: .5rem 1rem; border-left: 4px solid #e0a800; }}
pre {{ background: #f6f6f6; padding: .5rem; overflow-x: auto; font-size: 12px; }}
</style></head><body>
<h1>Embedding report</h1>
<p>Dataset <code>{esc(summary["dataset"])}</code>: {summary["cells_evaluated"]:,} cells evaluated{
        labels_text
    }.
kNN label transfer: {
        K_NEIGHBORS
    } neighbours, stratified 5-fold; baseline: PCA of log-normalised counts.</p>
{banner}
<h2>Metrics</h2><table><tr>{head}</tr>{body}</table>
{metrics_img}
<h2>UMAPs</h2>{figs}
<h2>Provenance</h2>{details}
</body></html>
"""
