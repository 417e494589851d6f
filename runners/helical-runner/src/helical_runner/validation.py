"""Prove a dataset is usable before any GPU time is spent.

Checks: readable, non-empty, raw non-negative integer counts (and where),
no NaN/inf, unique cell names, gene identifiers present and, for a model,
the fraction that maps onto its vocabulary. Everything is streamed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import genes
from .dataset import H5AD, Matrix, iter_chunks, values_problem
from .errors import BadInput

LABEL_MAX_CLASSES = 1000
ROWS_PER_CHECK = 8192


@dataclass
class Report:
    input: str
    ok: bool = True
    n_cells: int = 0
    n_genes: int = 0
    counts_location: str | None = None
    matrix_format: str | None = None
    nnz: int | None = None
    gene_id_type: str | None = None
    gene_id_source: str | None = None
    model: str | None = None
    model_gene_id: str | None = None
    genes_mapped: int | None = None
    genes_mapped_fraction: float | None = None
    label_columns: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def fail(self, problem: str) -> None:
        self.ok = False
        self.problems.append(problem)

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"dataset      {self.input}", f"status       {'OK' if self.ok else 'NOT USABLE'}"]
        lines.append(f"cells        {self.n_cells:,}")
        lines.append(f"genes        {self.n_genes:,}")
        if self.counts_location:
            lines.append(
                f"raw counts   {self.counts_location} ({self.matrix_format}, {self.nnz:,} stored values)"
            )
        if self.gene_id_type:
            lines.append(f"gene ids     {self.gene_id_type} from {self.gene_id_source}")
        if self.model and self.genes_mapped_fraction is not None:
            lines.append(
                f"model        {self.model} needs {self.model_gene_id}: {self.genes_mapped:,} genes mapped "
                f"({self.genes_mapped_fraction:.1%})"
            )
        if self.label_columns:
            lines.append(f"label columns {', '.join(self.label_columns)}")
        lines += [f"note         {n}" for n in self.notes]
        lines += [f"PROBLEM      {p}" for p in self.problems]
        return "\n".join(lines)


def label_columns(obs: pd.DataFrame) -> list[str]:
    found = []
    for col in obs.columns:
        series = obs[col]
        if isinstance(series.dtype, pd.CategoricalDtype) or series.dtype == object:
            classes = series.nunique(dropna=True)
            if 1 < classes <= min(LABEL_MAX_CLASSES, max(2, len(obs) // 2)):
                found.append(str(col))
    return found


def scan_counts(m: Matrix, start: int, stop: int) -> str | None:
    """Stream the counts in rows [start, stop); the first problem found, naming the row."""
    if start == 0 and stop == m.shape[0] and m.fmt != "csr":
        for block, _ in m.value_blocks():
            problem = values_problem(np.asarray(block))
            if problem:
                return f"{m.where} {problem}"
        return None
    for lo, hi in iter_chunks(start, stop, ROWS_PER_CHECK):
        rows = m.rows(lo, hi)
        problem = values_problem(rows.data)
        if problem:
            bad = _first_bad_row(rows)
            return f"{m.where} {problem} (first at cell row {lo + bad})"
    return None


def _first_bad_row(rows) -> int:
    data = rows.data
    bad = ~np.isfinite(data) | (data < 0) | (np.mod(np.nan_to_num(data), 1) != 0)
    first = int(np.argmax(bad))
    return int(np.searchsorted(rows.indptr, first, side="right") - 1)


def validate(
    h5: H5AD,
    *,
    adapter=None,
    cache: Path | None = None,
    cells: tuple[int, int] | None = None,
) -> tuple[Report, Matrix | None, np.ndarray | None]:
    """Validate ``h5`` (optionally a row range, optionally for a model).

    Returns the report, the counts matrix, and the per-gene identifiers
    spelled as the model's vocabulary ('' for unmapped) when a model is given.
    """
    report = Report(input=h5.uri, n_cells=h5.n_cells, n_genes=h5.n_genes)
    if h5.n_cells == 0:
        report.fail("zero cells in the dataset")
    if h5.n_genes == 0:
        report.fail("zero genes in the dataset")
    if not report.ok:
        return report, None, None
    if h5.obs_names.has_duplicates:
        dup = h5.obs_names[h5.obs_names.duplicated()]
        report.fail(f"duplicated cell names: {len(dup):,} duplicates, e.g. '{dup[0]}'")

    start, stop = cells or (0, h5.n_cells)
    try:
        counts = h5.counts_matrix()
    except BadInput as exc:
        report.fail(exc.message)
        return report, None, None
    report.counts_location, report.matrix_format, report.nnz = counts.where, counts.fmt, counts.nnz
    if counts.shape[0] != h5.n_cells:
        report.fail(f"{counts.where} has {counts.shape[0]} rows but obs has {h5.n_cells} cells")
        return report, counts, None
    if counts.fmt == "csc" and (stop - start) < h5.n_cells:
        report.notes.append(
            "counts are stored CSC: each chunk rescans the matrix; CSR is much faster"
        )
    problem = scan_counts(counts, start, stop)
    if problem:
        report.fail(problem)

    var = h5.var(counts.where)
    if len(var) != counts.shape[1]:
        report.fail(f"{counts.where} has {counts.shape[1]} genes but its var has {len(var)}")
        return report, counts, None
    try:
        ids = genes.find_ids(var)
    except BadInput as exc:
        report.fail(exc.message)
        return report, counts, None
    report.gene_id_type = ids.kind
    report.gene_id_source = ids.ensembl_source or ids.symbol_source
    try:
        report.label_columns = label_columns(h5.obs())
    except BadInput as exc:
        report.fail(exc.message)

    resolved = None
    if adapter is not None:
        report.model = adapter.name
        report.model_gene_id = adapter.gene_id
        try:
            table = genes.load_gene_table(cache) if cache else None
            identifiers, source = genes.model_identifiers(ids, adapter.gene_id, table)
            vocabulary = adapter.vocabulary(cache)
        except BadInput as exc:
            report.fail(exc.message)
            return report, counts, None
        except OSError as exc:
            report.fail(
                f"model vocabulary unavailable ({exc.strerror}: {exc.filename}); fetch the model store first"
            )
            return report, counts, None
        resolved = genes.to_vocabulary(identifiers, vocabulary)
        report.gene_id_source = source
        report.genes_mapped = int((resolved != "").sum())
        report.genes_mapped_fraction = round(genes.mapped_fraction(resolved), 4)
        if report.genes_mapped == 0:
            report.fail(
                f"no gene maps onto the {adapter.name} vocabulary (identifiers from {source})"
            )
    return report, counts, resolved
