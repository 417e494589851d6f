"""Synthetic single-cell data: negative-binomial raw counts with cell-type structure.

Genes come from the demo model bundle's universe (so every model can map
them); cell types differ by up-regulated gene programmes, so label transfer
on a good embedding beats chance. Large CSR files are written in row blocks
and never held in memory whole.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import storage
from .errors import BadInput
from .store import demo_gene_ids

CELL_TYPES = ("T cell", "B cell", "monocyte", "NK cell", "erythrocyte")
ROWS_PER_BLOCK = 20000
IN_MEMORY_LIMIT = 300_000


def _gene_names(n_genes: int, gene_ids: str) -> list[str]:
    ensembl, symbols = demo_gene_ids(max(n_genes, 1))
    if gene_ids == "symbol":
        return symbols[:n_genes]
    if gene_ids == "ensembl-versioned":
        return [f"{g}.{1 + i % 9}" for i, g in enumerate(ensembl[:n_genes])]
    return ensembl[:n_genes]


class _Generator:
    def __init__(self, n_genes: int, seed: int):
        self.rng = np.random.default_rng(seed)
        base = self.rng.lognormal(mean=-1.0, sigma=1.2, size=n_genes)
        self.means = np.tile(base, (len(CELL_TYPES), 1))
        programme = max(1, n_genes // 20)
        for t in range(len(CELL_TYPES)):
            genes = self.rng.choice(n_genes, size=programme, replace=False)
            self.means[t, genes] *= 6.0
        self.dispersion = 2.0

    def block(self, labels: np.ndarray) -> sp.csr_matrix:
        mu = self.means[labels] * self.rng.lognormal(
            0.0, 0.3, size=(len(labels), 1)
        )  # library size
        p = self.dispersion / (self.dispersion + mu)
        counts = self.rng.negative_binomial(self.dispersion, p).astype(np.float32)
        return sp.csr_matrix(counts)


def write_demo_dataset(
    path: Path,
    *,
    n_cells: int = 2000,
    n_genes: int = 2000,
    gene_ids: str = "ensembl",
    layout: str = "csr",
    counts_in: str = "X",
    label_key: str = "cell_type",
    seed: int = 0,
) -> Path:
    """Write a synthetic ``.h5ad`` atomically and return its path."""
    if n_cells < 0 or n_genes < 0:
        raise BadInput("cells and genes must be non-negative")
    path = Path(path)
    gen = _Generator(max(n_genes, 1), seed)
    labels = gen.rng.integers(0, len(CELL_TYPES), size=n_cells)
    obs = pd.DataFrame(
        {label_key: pd.Categorical([CELL_TYPES[i] for i in labels], categories=list(CELL_TYPES))},
        index=pd.Index([f"cell-{i:07d}" for i in range(n_cells)]),
    )
    var = pd.DataFrame(index=pd.Index(_gene_names(n_genes, gene_ids)))
    with storage.atomic_local_file(path) as tmp:
        if layout == "csr" and counts_in == "X":
            _write_streaming(tmp, obs, var, labels, gen)
        else:
            if n_cells > IN_MEMORY_LIMIT:
                raise BadInput(
                    f"{layout}/{counts_in} demo data is built in memory: at most {IN_MEMORY_LIMIT:,} cells"
                )
            _write_in_memory(tmp, obs, var, labels, gen, layout, counts_in)
    return path


def _blocks(labels: np.ndarray, gen: _Generator, n_genes: int):
    for lo in range(0, len(labels), ROWS_PER_BLOCK):
        block = gen.block(labels[lo : lo + ROWS_PER_BLOCK])
        yield (
            block[:, :n_genes] if n_genes else sp.csr_matrix((block.shape[0], 0), dtype=np.float32)
        )


def _write_streaming(path: Path, obs: pd.DataFrame, var: pd.DataFrame, labels, gen) -> None:
    ad.AnnData(obs=obs, var=var).write_h5ad(path)
    n_cells, n_genes = len(obs), len(var)
    with h5py.File(path, "r+") as fh:
        if "X" in fh:
            del fh["X"]
        group = fh.create_group("X")
        group.attrs["encoding-type"] = "csr_matrix"
        group.attrs["encoding-version"] = "0.1.0"
        group.attrs["shape"] = (n_cells, n_genes)
        data = group.create_dataset(
            "data", shape=(0,), maxshape=(None,), dtype="float32", chunks=(1 << 18,)
        )
        indices = group.create_dataset(
            "indices", shape=(0,), maxshape=(None,), dtype="int32", chunks=(1 << 18,)
        )
        indptr = group.create_dataset("indptr", shape=(n_cells + 1,), dtype="int64")
        indptr[0] = 0
        row, nnz = 0, 0
        for block in _blocks(labels, gen, n_genes):
            k = block.nnz
            data.resize((nnz + k,))
            indices.resize((nnz + k,))
            data[nnz:] = block.data
            indices[nnz:] = block.indices
            indptr[row + 1 : row + 1 + block.shape[0]] = block.indptr[1:] + nnz
            row += block.shape[0]
            nnz += k


def _write_in_memory(path, obs, var, labels, gen, layout, counts_in) -> None:
    blocks = list(_blocks(labels, gen, len(var)))
    counts = (
        sp.vstack(blocks, format="csr")
        if blocks
        else sp.csr_matrix((0, len(var)), dtype=np.float32)
    )
    stored = {"csr": counts, "csc": counts.tocsc(), "dense": counts.toarray()}[layout]
    if counts_in == "X":
        adata = ad.AnnData(X=stored, obs=obs, var=var)
    else:
        totals = np.asarray(counts.sum(axis=1)).ravel()
        totals[totals == 0] = 1.0
        normalised = sp.csr_matrix(counts.multiply(1e4 / totals[:, None]))
        normalised.data = np.log1p(normalised.data)
        normalised = {"csr": normalised, "csc": normalised.tocsc(), "dense": normalised.toarray()}[
            layout
        ]
        adata = ad.AnnData(X=normalised.astype(np.float32), obs=obs, var=var)
        if counts_in == "layers":
            adata.layers["counts"] = stored
        else:
            adata.raw = ad.AnnData(X=stored, obs=obs, var=var)
    adata.write_h5ad(path)
