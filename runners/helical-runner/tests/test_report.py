"""report: metrics read from the shared neighbour graph equal scikit-learn's own, UMAPs are
sampled above a cell count with a note on the page, numba's cache is private and survives a
read-only HOME."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import silhouette_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from helical_runner import report
from helical_runner.demo_data import write_demo_dataset


def blobs(n: int, classes: int, dim: int, seed: int, spread: float = 1.5):
    """Overlapping gaussian clusters: label transfer is neither perfect nor chance."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, classes, size=n)
    centres = rng.normal(size=(classes, dim)) * spread
    emb = (centres[codes] + rng.normal(size=(n, dim))).astype(np.float32)
    return emb, np.array([f"type {c}" for c in codes])


def sklearn_knn_accuracy(emb: np.ndarray, labels: np.ndarray, folds: int) -> float:
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    return float(cross_val_score(KNeighborsClassifier(n_neighbors=15), emb, labels, cv=cv).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_a_straightforward_sklearn_computation(seed):
    emb, labels = blobs(400, classes=4, dim=8, seed=seed)
    got = report.label_metrics(emb, labels)
    expected = sklearn_knn_accuracy(emb, labels, 5)
    assert 0.4 < expected < 0.99  # a case where neighbours matter
    assert got["knn_accuracy"] == round(expected, 4)
    assert got["silhouette"] == pytest.approx(silhouette_score(emb, labels), abs=5e-5)
    assert got["classes"] == 4


def test_knn_transfer_with_cells_whose_graph_neighbours_share_their_fold():
    """A graph too short for many cells (only the 15 nearest): they are looked up directly."""
    emb, labels = blobs(300, classes=3, dim=6, seed=3)
    codes = np.unique(labels, return_inverse=True)[1]
    short_graph = report.neighbour_graph(emb, 16)
    got = report.knn_transfer_accuracy(emb, codes, 5, short_graph)
    assert got == pytest.approx(sklearn_knn_accuracy(emb, labels, 5), abs=1e-12)


def test_knn_transfer_with_a_rare_class_uses_fewer_folds():
    emb, labels = blobs(200, classes=3, dim=6, seed=4)
    labels[:3] = "rare"  # 3 cells: 3 folds, as before
    got = report.label_metrics(emb, labels)
    assert got["knn_accuracy"] == round(sklearn_knn_accuracy(emb, labels, 3), 4)


@pytest.fixture
def toy_run(tmp_path):
    """A 400-cell dataset and a 16-d embedding of it that carries its labels, with noise."""
    dataset = write_demo_dataset(tmp_path / "toy.h5ad", n_cells=400, n_genes=300)
    obs = ad.read_h5ad(dataset, backed="r").obs
    rng = np.random.default_rng(5)
    codes = obs["cell_type"].cat.codes.to_numpy()
    emb = rng.normal(size=(len(codes), 16)) + 2.0 * np.eye(16)[codes]
    embedding = tmp_path / "toy_model.h5ad"
    ad.AnnData(
        obs=pd.DataFrame(index=obs.index.astype(str)), obsm={"X_toy": emb.astype(np.float32)}
    ).write_h5ad(embedding)
    return dataset, embedding


def build(toy_run, out: Path, **kwargs) -> tuple[dict, str]:
    dataset, embedding = toy_run
    page = report.build_report(
        dataset=str(dataset),
        embeddings=[str(embedding)],
        out_dir=out,
        label_key="cell_type",
        max_cells=20000,
        **kwargs,
    )
    return json.loads((out / "metrics.json").read_text()), page.read_text()


def test_umaps_are_sampled_above_the_threshold_and_the_page_says_so(tmp_path, toy_run):
    full, full_page = build(toy_run, tmp_path / "full")
    sampled, page = build(toy_run, tmp_path / "sampled", plot_max_points=150)
    assert full["cells_plotted"] == 400 and "random sample" not in full_page
    assert sampled["cells_plotted"] == 150 and sampled["cells_evaluated"] == 400
    assert "Each UMAP draws a random sample of 150 of the 400 evaluated cells" in page
    # metrics use every evaluated cell whatever the plots draw
    assert sampled["results"] == full["results"]
    assert sampled["results"]["toy"]["cells"] == 400
    for name in ("umap_pca_baseline.png", "umap_toy.png", "metrics.png"):
        assert (tmp_path / "sampled" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(sampled["phase_seconds"]) >= {"read", "pca", "neighbours", "metrics", "umap"}


def test_without_labels_only_umaps_are_drawn(tmp_path, toy_run):
    dataset, embedding = toy_run
    report.build_report(dataset=str(dataset), embeddings=[str(embedding)], out_dir=tmp_path,
                        label_key="absent", max_cells=300, plot_max_points=200)  # fmt: skip
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["results"]["toy"] == {"cells": 300, "dim": 16}
    assert metrics["cells_plotted"] == 200 and (tmp_path / "umap_toy.png").is_file()
    assert not (tmp_path / "metrics.png").exists()


def test_umap_compiled_code_is_kept_in_the_runner_numba_cache(tmp_path, toy_run):
    build(toy_run, tmp_path / "out")
    import umap.layouts

    layout = umap.layouts._nb_optimize_layout_euclidean_single_epoch
    folder = Path(layout.stats.cache_path)
    assert folder.is_relative_to(Path(os.environ[report.NUMBA_CACHE_ENV]))
    assert list(folder.glob("layouts._optimize_layout_euclidean_single_epoch-*.nbi"))


# A fresh interpreter: chooses the numba cache, then compiles (or loads) one cached function.
CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from helical_runner.report import use_numba_cache
    folder = use_numba_cache()
    import jitted
    assert jitted.triple(2) == 6
    print(folder, jitted.triple.stats.cache_hits.total())
    """
)


def child(tmp_path: Path, env: dict) -> tuple[Path, int, str]:
    (tmp_path / "jitted.py").write_text(
        "import numba\n\n@numba.njit(cache=True)\ndef triple(x):\n    return 3 * x\n"
    )
    env = {k: v for k, v in os.environ.items() if k != report.NUMBA_CACHE_ENV} | env
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    folder, hits = done.stdout.split()
    return Path(folder), int(hits), done.stderr


def test_numba_cache_is_a_private_folder_reused_by_the_next_process(tmp_path):
    env = {"HELICAL_RUNNER_CACHE": str(tmp_path / "runner-cache")}
    folder, hits, _ = child(tmp_path, env)
    assert folder == tmp_path / "runner-cache" / "numba"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert list(folder.rglob("jitted.triple-*.nbi")) and hits == 0
    assert child(tmp_path, env)[1] == 1  # the second process loads instead of compiling


def test_numba_cache_falls_back_to_a_temp_folder_when_the_cache_is_not_writable(tmp_path):
    """Like a container whose HOME is read-only: the report must still run."""
    blocker = tmp_path / "read-only-home"
    blocker.write_text("a file where the cache folder would have to be created")
    folder, hits, stderr = child(tmp_path, {"HELICAL_RUNNER_CACHE": str(blocker / "cache")})
    assert folder.name.startswith("helical-runner-numba-") and hits == 0
    assert "numba cache folder not writable" in stderr
    assert not folder.exists()  # removed when the process ended
