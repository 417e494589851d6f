"""Streaming, read-only access to ``.h5ad`` files of any size.

The file is opened through HDF5 and never loaded whole: rows are read chunk
by chunk from CSR, CSC or dense matrices, so memory depends on the chunk
size, not the dataset size. Raw counts are found in ``layers["counts"]``,
``X`` or ``.raw``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import BadInput

# Blocks of stored values read at a time when scanning (CSC rows, validation).
SCAN_BLOCK = 4_000_000


@dataclass
class Matrix:
    """One stored matrix (X, a layer or raw/X) and how to read its rows."""

    where: str  # "X", "layers/counts", "raw/X"
    fmt: str  # "csr", "csc", "dense"
    shape: tuple[int, int]
    node: h5py.Group | h5py.Dataset = field(repr=False)

    @property
    def nnz(self) -> int:
        if self.fmt == "dense":
            return self.shape[0] * self.shape[1]
        return int(self.node["data"].shape[0])

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``[start, stop)`` as CSR float32 (never densifies a sparse matrix)."""
        n_genes = self.shape[1]
        if self.fmt == "dense":
            return sp.csr_matrix(np.asarray(self.node[start:stop], dtype=np.float32))
        if self.fmt == "csr":
            indptr = self.node["indptr"][start : stop + 1].astype(np.int64)
            lo, hi = int(indptr[0]), int(indptr[-1])
            data = self.node["data"][lo:hi].astype(np.float32)
            indices = self.node["indices"][lo:hi]
            return sp.csr_matrix((data, indices, indptr - lo), shape=(stop - start, n_genes))
        return self._csc_rows(start, stop)

    def _csc_rows(self, start: int, stop: int) -> sp.csr_matrix:
        # Column-major storage: rows are scattered over every column, so scan
        # the stored values block by block and keep those in the row range.
        indptr = self.node["indptr"][:].astype(np.int64)
        columns = np.repeat(np.arange(self.shape[1], dtype=np.int64), np.diff(indptr))
        rows_out, cols_out, vals_out = [], [], []
        for lo in range(0, self.nnz, SCAN_BLOCK):
            hi = min(lo + SCAN_BLOCK, self.nnz)
            idx = self.node["indices"][lo:hi]
            keep = (idx >= start) & (idx < stop)
            if keep.any():
                rows_out.append(idx[keep] - start)
                cols_out.append(columns[lo:hi][keep])
                vals_out.append(self.node["data"][lo:hi][keep].astype(np.float32))
        if not rows_out:
            return sp.csr_matrix((stop - start, self.shape[1]), dtype=np.float32)
        coo = sp.coo_matrix(
            (np.concatenate(vals_out), (np.concatenate(rows_out), np.concatenate(cols_out))),
            shape=(stop - start, self.shape[1]),
        )
        return coo.tocsr()

    def value_blocks(self) -> Iterator[tuple[np.ndarray, int]]:
        """Stored values in blocks, with the row of the first value when known (for messages)."""
        if self.fmt == "dense":
            rows_per_block = max(1, SCAN_BLOCK // max(1, self.shape[1]))
            for start in range(0, self.shape[0], rows_per_block):
                yield np.asarray(self.node[start : start + rows_per_block]).ravel(), start
            return
        for lo in range(0, self.nnz, SCAN_BLOCK):
            yield self.node["data"][lo : lo + SCAN_BLOCK], -1


def _encoding(node) -> str:
    value = node.attrs.get("encoding-type", "")
    return value.decode() if isinstance(value, bytes) else str(value)


def _matrix(node, where: str) -> Matrix:
    if isinstance(node, h5py.Dataset):
        if node.ndim != 2:
            raise BadInput(f"{where} is not a 2-D matrix (shape {node.shape})")
        return Matrix(where, "dense", tuple(int(x) for x in node.shape), node)
    enc = _encoding(node)
    if enc not in ("csr_matrix", "csc_matrix") or not {"data", "indices", "indptr"} <= set(
        node.keys()
    ):
        raise BadInput(
            f"{where} is neither a dense array nor a CSR/CSC sparse matrix (encoding '{enc}')"
        )
    shape = tuple(int(x) for x in node.attrs["shape"])
    return Matrix(where, enc[:3], shape, node)


def _read_frame(node, where: str) -> pd.DataFrame:
    from anndata.io import read_elem

    try:
        frame = read_elem(node)
    except Exception as exc:
        raise BadInput(f"cannot read {where}: {exc}") from exc
    if not isinstance(frame, pd.DataFrame):
        raise BadInput(f"{where} is not a dataframe")
    return frame


class H5AD:
    """An opened ``.h5ad`` file: cells, genes, and where the raw counts are."""

    def __init__(self, path: Path, *, uri: str | None = None):
        self.path = Path(path)
        self.uri = uri or str(path)
        try:
            self.file = h5py.File(self.path, "r")
        except FileNotFoundError as exc:
            raise BadInput("input file not found", where=self.uri) from exc
        except OSError as exc:
            raise BadInput(
                f"not a readable .h5ad file (truncated or corrupt HDF5: {str(exc).split(';')[0]})",
                where=self.uri,
            ) from exc
        try:
            for key in ("obs", "var"):
                if key not in self.file:
                    raise BadInput(f"not an AnnData file: no '{key}' group", where=self.uri)
            self.obs_names = self._index(self.file["obs"], "obs")
            self.n_cells = len(self.obs_names)
            self.n_genes = self._length(self.file["var"], "var")
        except BadInput:
            self.file.close()
            raise
        except (OSError, KeyError, ValueError) as exc:
            self.file.close()
            raise BadInput(f"not a readable .h5ad file ({exc})", where=self.uri) from exc

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> H5AD:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _index_key(group) -> str:
        key = group.attrs.get("_index", "_index")
        return key.decode() if isinstance(key, bytes) else str(key)

    def _index(self, group, where: str) -> pd.Index:
        key = self._index_key(group)
        if key not in group:
            raise BadInput(f"{where} has no index", where=self.uri)
        values = group[key][:]
        return pd.Index([v.decode() if isinstance(v, bytes) else str(v) for v in values])

    def _length(self, group, where: str) -> int:
        key = self._index_key(group)
        if key not in group:
            raise BadInput(f"{where} has no index", where=self.uri)
        return int(group[key].shape[0])

    # -- what is in the file ----------------------------------------------

    def matrix(self, where: str) -> Matrix | None:
        node = self.file
        for part in where.split("/"):
            if part not in node:
                return None
            node = node[part]
        try:
            return _matrix(node, where)
        except BadInput as exc:
            raise BadInput(exc.message, where=self.uri) from exc

    def var(self, counts_where: str = "X") -> pd.DataFrame:
        """Gene annotations for the matrix at ``counts_where`` (``raw/var`` for raw/X)."""
        if counts_where == "raw/X" and "raw" in self.file and "var" in self.file["raw"]:
            return _read_frame(self.file["raw/var"], "raw/var")
        return _read_frame(self.file["var"], "var")

    def obs(self) -> pd.DataFrame:
        return _read_frame(self.file["obs"], "obs")

    def candidates(self) -> list[Matrix]:
        """Matrices that may hold raw counts, in order of preference."""
        found = []
        for where in ("layers/counts", "X", "raw/X"):
            m = self.matrix(where)
            if m is not None:
                found.append(m)
        return found

    def counts_matrix(self) -> Matrix:
        """The first candidate whose values look like raw counts (checked on a sample)."""
        candidates = self.candidates()
        if not candidates:
            raise BadInput("no expression matrix (X, layers['counts'] or raw/X)", where=self.uri)
        rejected = []
        for m in candidates:
            problem = sample_problem(m)
            if problem is None:
                return m
            rejected.append(f"{m.where}: {problem}")
        raise BadInput(
            "no raw non-negative integer counts found (" + "; ".join(rejected) + ")", where=self.uri
        )


def sample_problem(m: Matrix, n_rows: int = 256) -> str | None:
    """Why a matrix does not look like raw counts, judged on its first rows (None if it does)."""
    rows = min(n_rows, m.shape[0])
    if rows == 0 or m.shape[1] == 0:
        return None
    return values_problem(m.rows(0, rows).data)


def values_problem(values: np.ndarray) -> str | None:
    if values.size == 0:
        return None
    if not np.isfinite(values).all():
        return "contains NaN or infinite values"
    if (values < 0).any():
        return "contains negative values"
    if not np.all(np.mod(values, 1) == 0):
        return "contains non-integer values (normalised data?)"
    return None


def iter_chunks(start: int, stop: int, size: int) -> Iterator[tuple[int, int]]:
    for lo in range(start, stop, size):
        yield lo, min(lo + size, stop)


def chunk_count(start: int, stop: int, size: int) -> int:
    return math.ceil((stop - start) / size)
