"""Embedding outputs: an ``.h5ad`` with ``obs`` and ``obsm["X_<model>"]``, no copy of ``X``.

The embedding matrix is streamed into an HDF5 dataset block by block, so
writing 10 million cells needs no more memory than writing 2,000 (beyond
``obs`` itself).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd

from .errors import BadInput

ROWS_PER_COPY = 65536


def embedding_key(model: str) -> str:
    return f"X_{model}"


def write_embeddings(
    path: Path,
    *,
    obs: pd.DataFrame,
    key: str,
    dim: int,
    blocks: Iterable[np.ndarray],
    provenance: dict,
) -> None:
    """Write ``obs`` and the embedding blocks (in row order) to ``path``."""
    n = len(obs)
    skeleton = ad.AnnData(obs=obs, var=pd.DataFrame(index=pd.Index([], dtype=str)))
    skeleton.uns["helical_runner"] = json.dumps(provenance, sort_keys=True, default=str)
    skeleton.write_h5ad(path)
    with h5py.File(path, "r+") as fh:
        obsm = fh.require_group("obsm")
        obsm.attrs.setdefault("encoding-type", "dict")
        obsm.attrs.setdefault("encoding-version", "0.1.0")
        dset = obsm.create_dataset(
            key, shape=(n, dim), dtype="float32", chunks=(max(1, min(n, 4096)), dim) if n else None
        )
        dset.attrs["encoding-type"] = "array"
        dset.attrs["encoding-version"] = "0.2.0"
        row = 0
        for block in blocks:
            block = np.asarray(block, dtype=np.float32)
            if block.ndim != 2 or block.shape[1] != dim:
                raise ValueError(f"embedding block of shape {block.shape} does not fit dim {dim}")
            dset[row : row + len(block)] = block
            row += len(block)
        if row != n:
            raise ValueError(f"wrote {row} embedding rows for {n} cells")


def read_embedding_info(path: Path) -> tuple[str, int, int]:
    """(obsm key, cells, dim) of an embeddings file written by this module."""
    with h5py.File(path, "r") as fh:
        keys = [k for k in fh.get("obsm", {}) if k.startswith("X_")]
        if len(keys) != 1:
            raise BadInput(
                f"expected one X_<model> embedding in obsm, found {keys}", where=str(path)
            )
        n, dim = fh["obsm"][keys[0]].shape
        return keys[0], int(n), int(dim)


def stream_rows(path: Path, key: str) -> Iterable[np.ndarray]:
    with h5py.File(path, "r") as fh:
        dset = fh["obsm"][key]
        for lo in range(0, dset.shape[0], ROWS_PER_COPY):
            yield dset[lo : lo + ROWS_PER_COPY]


def merge(paths: list[Path], dest: Path, *, provenance: dict) -> tuple[int, int]:
    """Concatenate embedding files in the given order into ``dest``, streaming.

    Returns (cells, dim). Every input must carry the same embedding key and dim.
    """
    if not paths:
        raise BadInput("merge needs at least one shard")
    infos = [read_embedding_info(p) for p in paths]
    keys = {k for k, _, _ in infos}
    dims = {d for _, _, d in infos}
    if len(keys) != 1 or len(dims) != 1:
        raise BadInput(f"shards disagree on embedding key/dim: {sorted(keys)} {sorted(dims)}")
    key, dim = keys.pop(), dims.pop()
    obs_parts = []
    for p in paths:
        part = ad.read_h5ad(p, backed="r")
        obs_parts.append(part.obs.copy())
        part.file.close()
    obs = pd.concat(obs_parts)
    if obs.index.has_duplicates:
        dup = obs.index[obs.index.duplicated()][0]
        raise BadInput(f"shards overlap: cell '{dup}' appears twice")

    def blocks():
        for p in paths:
            yield from stream_rows(p, key)

    write_embeddings(dest, obs=obs, key=key, dim=dim, blocks=blocks(), provenance=provenance)
    return len(obs), dim
