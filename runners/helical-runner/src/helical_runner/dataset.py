"""Streaming, read-only access to ``.h5ad`` files and Zarr stores of any size, through anndata's readers.

Annotations (obs, var, raw.var) are read with anndata's element API
(:func:`anndata.io.read_elem`), so every encoding anndata reads opens the same
way: categoricals, nullable and string arrays, and files written by old
anndata releases (obs/var as HDF5 compound datasets, ``raw.X``), which are
opened through :func:`anndata.read_h5ad` in backed mode. Sparse matrices are
opened with :func:`anndata.io.sparse_dataset` (CSR rows are sliced by
anndata); CSC rows and dense rows are read block by block through HDF5, so
memory depends on the chunk size, never on the dataset size.

Where the raw counts live (``layers["counts"]``, ``X`` or ``.raw``) is
decided from every stored value of each candidate, streamed, not a sample.
"""

from __future__ import annotations

import errno
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import BadInput, Transient

# Stored values read at a time when scanning (CSC rows, validation).
SCAN_BLOCK = 4_000_000
# Candidates for the raw counts, in order of preference.
COUNT_LOCATIONS = ("layers/counts", "X", "raw/X")


@dataclass
class Matrix:
    """One stored matrix (X, a layer or raw/X) and how to read its rows."""

    where: str  # "X", "layers/counts", "raw/X"
    fmt: str  # "csr", "csc", "dense"
    shape: tuple[int, int]
    dense: h5py.Dataset | None = field(default=None, repr=False)
    sparse: object = field(default=None, repr=False)  # anndata's backed CSR/CSC dataset

    def _part(self, name: str) -> h5py.Dataset:
        return self.sparse.group[name]

    @property
    def nnz(self) -> int:
        if self.fmt == "dense":
            return self.shape[0] * self.shape[1]
        return int(self._part("data").shape[0])

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``[start, stop)`` as CSR float32 (never densifies a sparse matrix)."""
        if self.fmt == "dense":
            return sp.csr_matrix(np.asarray(self.dense[start:stop], dtype=np.float32))
        if self.fmt == "csr":
            return sp.csr_matrix(self.sparse[start:stop], dtype=np.float32)
        return self._csc_rows(start, stop)

    def _csc_rows(self, start: int, stop: int) -> sp.csr_matrix:
        # Column-major storage: rows are scattered over every column, so scan
        # the stored values block by block and keep those in the row range
        # (anndata's own CSC row slicing would load the whole matrix).
        indptr = self._part("indptr")[:].astype(np.int64)
        columns = np.repeat(np.arange(self.shape[1], dtype=np.int64), np.diff(indptr))
        rows_out, cols_out, vals_out = [], [], []
        for lo in range(0, self.nnz, SCAN_BLOCK):
            hi = min(lo + SCAN_BLOCK, self.nnz)
            idx = self._part("indices")[lo:hi]
            keep = (idx >= start) & (idx < stop)
            if keep.any():
                rows_out.append(idx[keep] - start)
                cols_out.append(columns[lo:hi][keep])
                vals_out.append(self._part("data")[lo:hi][keep].astype(np.float32))
        if not rows_out:
            return sp.csr_matrix((stop - start, self.shape[1]), dtype=np.float32)
        coo = sp.coo_matrix(
            (np.concatenate(vals_out), (np.concatenate(rows_out), np.concatenate(cols_out))),
            shape=(stop - start, self.shape[1]),
        )
        return coo.tocsr()

    def value_blocks(self) -> Iterator[tuple[np.ndarray, int]]:
        """Every stored value in blocks, with the offset of the block's first value."""
        if self.fmt == "dense":
            rows_per_block = max(1, SCAN_BLOCK // max(1, self.shape[1]))
            for start in range(0, self.shape[0], rows_per_block):
                yield (
                    np.asarray(self.dense[start : start + rows_per_block]).ravel(),
                    start * self.shape[1],
                )
            return
        data = self._part("data")
        for lo in range(0, self.nnz, SCAN_BLOCK):
            yield data[lo : lo + SCAN_BLOCK], lo

    def row_of(self, offset: int) -> int:
        """The cell row of the stored value at ``offset`` (as counted by value_blocks)."""
        if self.fmt == "dense":
            return offset // max(1, self.shape[1])
        if self.fmt == "csc":
            return int(self._part("indices")[offset])
        indptr = self._part("indptr")[:]
        return int(np.searchsorted(indptr, offset, side="right") - 1)

    def stored_per_row(self) -> np.ndarray | None:
        """Stored values per cell when the layout tells it cheaply (CSR), else None."""
        if self.fmt != "csr":
            return None
        return np.diff(self._part("indptr")[:].astype(np.int64))


def _encoding(node) -> str:
    value = node.attrs.get("encoding-type", "")
    return value.decode() if isinstance(value, bytes) else str(value)


def _matrix(node, where: str) -> Matrix:
    """A Matrix over an HDF5 node written by any anndata release."""
    from anndata.io import sparse_dataset

    if _is_array(node):
        if node.ndim != 2:
            raise BadInput(f"{where} is not a 2-D matrix (shape {node.shape})")
        return Matrix(where, "dense", tuple(int(x) for x in node.shape), dense=node)
    enc = _encoding(node) or _legacy_sparse_format(node)
    if enc in ("csr", "csc"):
        enc += "_matrix"
    if enc not in ("csr_matrix", "csc_matrix") or not {"data", "indices", "indptr"} <= set(
        node.keys()
    ):
        raise BadInput(
            f"{where} is neither a dense array nor a CSR/CSC sparse matrix (encoding '{enc}')"
        )
    try:
        backed = sparse_dataset(node)
    except Exception as exc:
        raise BadInput(f"{where} is not a readable sparse matrix ({exc})") from exc
    shape = tuple(int(x) for x in backed.shape)
    return Matrix(where, enc[:3], shape, sparse=backed)


def _is_array(node) -> bool:
    if isinstance(node, h5py.Dataset):
        return True
    import zarr

    return isinstance(node, zarr.Array)


def is_zarr(path: Path) -> bool:
    """A Zarr store (a folder) rather than an HDF5 file."""
    return Path(path).is_dir()


def _open_zarr(path: Path, uri: str):
    import zarr

    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise BadInput(
            f"not a readable Zarr store ({type(exc).__name__}: {exc})", where=uri
        ) from exc


def _legacy_sparse_format(node) -> str:
    value = node.attrs.get("h5sparse_format", "")
    return value.decode() if isinstance(value, bytes) else str(value)


def _frame(value, where: str) -> pd.DataFrame:
    if not isinstance(value, pd.DataFrame):
        raise BadInput(f"{where} is not a dataframe")
    return value


def open_hdf5(path: Path, uri: str) -> h5py.File:
    """Open read-only; a file locked by a writer is transient, a damaged one bad input."""
    try:
        return h5py.File(path, "r")
    except FileNotFoundError as exc:
        raise BadInput("input file not found", where=uri) from exc
    except OSError as exc:
        text = str(exc)
        if (
            getattr(exc, "errno", None) in (errno.EAGAIN, errno.EBUSY)
            or "errno = 11" in text
            or "unable to lock file" in text
        ):
            raise Transient(
                "input file is locked by another process (still being written?)",
                where=uri,
                reason="io",
            ) from exc
        if isinstance(exc, PermissionError):
            raise BadInput("input file is not readable (permission denied)", where=uri) from exc
        raise BadInput(
            f"not a readable .h5ad file (truncated or corrupt HDF5: {text.split(';')[0]})",
            where=uri,
        ) from exc


class H5AD:
    """An opened ``.h5ad`` file: cells, genes, and where the raw counts are."""

    def __init__(self, path: Path, *, uri: str | None = None):
        self.path = Path(path)
        self.uri = uri or str(path)
        self.file = (
            _open_zarr(self.path, self.uri)
            if is_zarr(self.path)
            else open_hdf5(self.path, self.uri)
        )
        self._legacy = None  # AnnData opened backed, for files in pre-0.7 layouts
        self._counts: Matrix | None = None
        self._rejected: list[str] = []
        try:
            for key in ("obs", "var"):
                if key not in self.file:
                    raise BadInput(f"not an AnnData file: no '{key}' group", where=self.uri)
            if isinstance(self.file["obs"], h5py.Dataset):
                self._open_legacy()
            self.n_cells = self._n_cells()
            self.n_genes = self._n_genes()
        except BadInput:
            self.close()
            raise
        except (OSError, KeyError, ValueError, TypeError) as exc:
            self.close()
            raise BadInput(f"not a readable .h5ad file ({exc})", where=self.uri) from exc

    def _open_legacy(self) -> None:
        import anndata as ad

        self.file.close()
        try:
            self._legacy = ad.read_h5ad(self.path, backed="r")
        except Exception as exc:
            raise BadInput(
                f"anndata cannot read this file ({type(exc).__name__}: {exc})", where=self.uri
            ) from exc
        self.file = self._legacy.file._file

    def close(self) -> None:
        if self._legacy is not None:
            self._legacy.file.close()
            self._legacy = None
        elif isinstance(self.file, h5py.File) and self.file:
            self.file.close()

    def __enter__(self) -> H5AD:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- annotations ------------------------------------------------------

    def _read(self, key: str):
        from anndata.io import read_elem

        try:
            return read_elem(self.file[key])
        except BadInput:
            raise
        except Exception as exc:
            raise BadInput(
                f"cannot read {key}: {type(exc).__name__}: {exc}", where=self.uri
            ) from exc

    def _index_key(self, group) -> str:
        key = group.attrs.get("_index", "_index")
        return key.decode() if isinstance(key, bytes) else str(key)

    def _n_cells(self) -> int:
        if self._legacy is not None:
            return int(self._legacy.n_obs)
        group = self.file["obs"]
        key = self._index_key(group)
        if key not in group:
            raise BadInput("obs has no index", where=self.uri)
        return int(group[key].shape[0])

    @functools.cached_property
    def obs_names(self) -> pd.Index:
        """Cell names, read on first use (``annotate predict`` never needs them)."""
        return self._obs_names()

    def _obs_names(self) -> pd.Index:
        if self._legacy is not None:
            return pd.Index(self._legacy.obs_names.astype(str))
        group = self.file["obs"]
        key = self._index_key(group)
        if key not in group:
            raise BadInput("obs has no index", where=self.uri)
        return pd.Index(np.asarray(self._read(f"obs/{key}")).astype(object)).astype(str)

    def _n_genes(self) -> int:
        if self._legacy is not None:
            return int(self._legacy.n_vars)
        group = self.file["var"]
        key = self._index_key(group)
        if key not in group:
            raise BadInput("var has no index", where=self.uri)
        return int(group[key].shape[0])

    def obs(self) -> pd.DataFrame:
        if self._legacy is not None:
            return self._legacy.obs.copy()
        return _frame(self._read("obs"), "obs")

    def var(self, counts_where: str = "X") -> pd.DataFrame:
        """Gene annotations for the matrix at ``counts_where`` (raw.var for raw/X)."""
        if self._legacy is not None:
            legacy = self._legacy
            if counts_where == "raw/X" and legacy.raw is not None:
                return legacy.raw.var.copy()
            return legacy.var.copy()
        if counts_where == "raw/X" and "raw" in self.file and "var" in self.file["raw"]:
            return _frame(self._read("raw/var"), "raw/var")
        return _frame(self._read("var"), "var")

    # -- matrices ---------------------------------------------------------

    def matrix(self, where: str) -> Matrix | None:
        if self._legacy is not None:
            return self._legacy_matrix(where)
        node = self.file
        for part in where.split("/"):
            if part not in node:
                return None
            node = node[part]
        try:
            return _matrix(node, where)
        except BadInput as exc:
            raise BadInput(exc.message, where=self.uri) from exc

    def _legacy_matrix(self, where: str) -> Matrix | None:
        # pre-0.7 files name the raw matrix "raw.X" and mark sparse groups h5sparse_format
        names = {"X": "X", "raw/X": "raw.X", "layers/counts": "layers/counts"}
        name = names[where]
        if name not in self.file:
            return None
        try:
            return _matrix(self.file[name], where)
        except BadInput as exc:
            raise BadInput(exc.message, where=self.uri) from exc

    def candidates(self) -> list[Matrix]:
        """Matrices that may hold raw counts, in order of preference."""
        return [m for m in (self.matrix(w) for w in COUNT_LOCATIONS) if m is not None]

    def counts_matrix(self) -> Matrix:
        """The first candidate all of whose stored values are raw counts (streamed over the whole matrix)."""
        if self._counts is not None:
            return self._counts
        candidates = self.candidates()
        if not candidates:
            raise BadInput(
                "no expression matrix: looked for layers['counts'], X and raw/X", where=self.uri
            )
        rejected = []
        for m in candidates:
            problem = matrix_problem(m)
            if problem is None:
                self._counts = m
                self._rejected = rejected
                return m
            rejected.append(problem)
        looked = ", ".join(
            f"{w} ({'absent' if w not in {m.where for m in candidates} else 'present'})"
            for w in COUNT_LOCATIONS
        )
        raise BadInput(
            f"no raw counts anywhere (processed-only file?): looked in {looked}; "
            + "; ".join(rejected),
            where=self.uri,
        )

    @property
    def rejected_candidates(self) -> list[str]:
        """Why matrices preferred over the counts matrix were not used."""
        return list(self._rejected)


def matrix_problem(m: Matrix) -> str | None:
    """Why a matrix is not raw counts, judged on every stored value (None if it is)."""
    if m.shape[0] == 0 or m.shape[1] == 0:
        return None
    for block, offset in m.value_blocks():
        block = np.asarray(block)
        problem = values_problem(block)
        if problem:
            first = int(np.argmax(_bad_mask(block)))
            return f"{m.where} {problem} (first at cell row {m.row_of(offset + first)})"
    return None


def _bad_mask(values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values)
    return ~finite | (values < 0) | (np.mod(np.where(finite, values, 0), 1) != 0)


def values_problem(values: np.ndarray) -> str | None:
    if values.size == 0:
        return None
    if not np.isfinite(values).all():
        return "holds NaN or infinite values"
    if (values < 0).any():
        return "holds negative values: scaled data, not counts"
    if not np.all(np.mod(values, 1) == 0):
        return "holds non-integer values: normalised or log data, not counts"
    return None


def iter_chunks(start: int, stop: int, size: int) -> Iterator[tuple[int, int]]:
    for lo in range(start, stop, size):
        yield lo, min(lo + size, stop)


def chunk_count(start: int, stop: int, size: int) -> int:
    return math.ceil((stop - start) / size)
