"""Prove a dataset is usable before any GPU time is spent.

Checks: readable, non-empty, raw non-negative integer counts (and where,
judged on every stored value), no NaN/inf, unique cell names, gene
identifiers present and, for a model, the fraction that maps onto its
vocabulary, repeated identifiers (summed) and cells without counts (embedded
as zeros and flagged). Everything is streamed.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import genes
from .dataset import H5AD, Matrix, iter_chunks
from .errors import BadInput

LABEL_MAX_CLASSES = 1000
ROWS_PER_CHECK = 8192
# obs column of embedding outputs marking cells embedded as zeros (no counts to embed)
EMPTY_FLAG = "helical_runner_no_counts"


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
    duplicate_genes: int = 0
    cells_without_counts: int | None = None
    label_columns: list[str] = field(default_factory=list)
    # rows (relative to the validated range) without counts in the model's genes; not reported
    empty_rows = np.zeros(0, dtype=np.int64)
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


def row_totals(m: Matrix, start: int, stop: int, columns: np.ndarray | None = None) -> np.ndarray:
    """Per-cell sum of the counts in rows [start, stop) (only ``columns`` when given), streamed."""
    totals = np.zeros(stop - start, dtype=np.float64)
    if m.fmt == "csc":
        # one pass over the stored values instead of one rescan per row chunk
        indptr = m._part("indptr")[:].astype(np.int64)
        value_columns = np.repeat(np.arange(m.shape[1], dtype=np.int64), np.diff(indptr))
        keep_column = np.ones(m.shape[1], bool) if columns is None else np.zeros(m.shape[1], bool)
        if columns is not None:
            keep_column[columns] = True
        for block, lo in m.value_blocks():
            hi = lo + len(block)
            rows = m._part("indices")[lo:hi].astype(np.int64)
            keep = (rows >= start) & (rows < stop) & keep_column[value_columns[lo:hi]]
            totals += np.bincount(rows[keep] - start, weights=block[keep], minlength=stop - start)
        return totals
    for lo, hi in iter_chunks(start, stop, ROWS_PER_CHECK):
        rows = m.rows(lo, hi)
        if columns is not None:
            rows = rows[:, columns]
        totals[lo - start : hi - start] = np.asarray(rows.sum(axis=1)).ravel()
    return totals


def duplicated_identifiers(resolved: np.ndarray) -> tuple[int, str | None]:
    """(gene columns that share a model identifier with an earlier column, an example)."""
    named = pd.Series(resolved[resolved != ""])
    dup = named[named.duplicated()]
    return len(dup), (str(dup.iloc[0]) if len(dup) else None)


def _species_hint(ids: genes.GeneIds, fraction: float) -> str | None:
    """A plain message when the dataset's Ensembl ids are not human."""
    if ids.ensembl is None or not len(ids.ensembl):
        return None
    prefixes = ids.ensembl.str.extract(r"^(ENS[A-Z]*)G", expand=False).dropna()
    if prefixes.empty:
        return None
    top = prefixes.value_counts().index[0]
    if top == "ENS":
        return None
    species = genes.ENSEMBL_SPECIES.get(top, f"non-human ({top}G...)")
    return (
        f"the genes are {species} Ensembl ids ({top}G...): this model covers human genes, "
        f"and {fraction:.1%} of the dataset's genes were found in it"
    )


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
    (report,), counts, resolved = validate_ranges(
        h5, adapter=adapter, cache=cache, ranges=[cells or (0, h5.n_cells)]
    )
    return report, counts, resolved


def validate_ranges(
    h5: H5AD,
    *,
    adapter=None,
    cache: Path | None = None,
    ranges: list[tuple[int, int]],
) -> tuple[list[Report], Matrix | None, np.ndarray | None]:
    """:func:`validate` for several row ranges at once (the shards of one runner):
    the file, genes and vocabulary are checked once, the cells of each range on
    their own; one report per range."""
    report, counts, resolved, columns, complete = _validate_file(h5, adapter=adapter, cache=cache)
    if not complete:
        return [copy.deepcopy(report) for _ in ranges], counts, resolved
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    totals = row_totals(counts, lo, hi, columns)
    reports = []
    for start, stop in ranges:
        one = copy.deepcopy(report)
        if counts.fmt == "csc" and (stop - start) < h5.n_cells:
            one.notes.append(
                "counts are stored CSC: each chunk rescans the matrix; CSR is much faster"
            )
        reports.append(_check_cells(one, h5, totals[start - lo : stop - lo], start, adapter))
    return reports, counts, resolved


def _validate_file(h5: H5AD, *, adapter=None, cache: Path | None = None):
    """Everything but the cells: (report, counts, resolved identifiers, the model's
    columns, whether the cells can be checked: False after a failure that stops here)."""
    report = Report(input=h5.uri, n_cells=h5.n_cells, n_genes=h5.n_genes)
    if h5.n_cells == 0:
        report.fail("zero cells in the dataset")
    if h5.n_genes == 0:
        report.fail("zero genes in the dataset")
    if not report.ok:
        return report, None, None, None, False
    if h5.obs_names.has_duplicates:
        dup = h5.obs_names[h5.obs_names.duplicated()]
        report.fail(f"duplicated cell names: {len(dup):,} duplicates, e.g. '{dup[0]}'")

    try:
        counts = h5.counts_matrix()
    except BadInput as exc:
        report.fail(exc.message)
        return report, None, None, None, False
    report.counts_location, report.matrix_format, report.nnz = counts.where, counts.fmt, counts.nnz
    report.notes += [f"not used for counts: {r}" for r in h5.rejected_candidates]
    if counts.shape[0] != h5.n_cells:
        report.fail(f"{counts.where} has {counts.shape[0]} rows but obs has {h5.n_cells} cells")
        return report, counts, None, None, False
    var = h5.var(counts.where)
    if len(var) != counts.shape[1]:
        report.fail(f"{counts.where} has {counts.shape[1]} genes but its var has {len(var)}")
        return report, counts, None, None, False
    try:
        ids = genes.find_ids(var)
    except BadInput as exc:
        report.fail(exc.message)
        return report, counts, None, None, False
    report.gene_id_type = ids.kind
    report.gene_id_source = ids.ensembl_source or ids.symbol_source
    if ids.versioned:
        report.notes.append(
            f"Ensembl ids in {ids.ensembl_source} carry versions; matched without them"
        )
    try:
        report.label_columns = label_columns(h5.obs())
    except BadInput as exc:
        report.fail(exc.message)

    resolved = None
    columns = None
    if adapter is not None:
        report.model = adapter.name
        report.model_gene_id = adapter.gene_id
        try:
            table = genes.load_gene_table(cache) if cache else None
            identifiers, source = genes.model_identifiers(ids, adapter.gene_id, table)
            vocabulary = adapter.vocabulary(cache)
        except BadInput as exc:
            report.fail(exc.message)
            return report, counts, None, None, False
        except OSError as exc:
            report.fail(
                f"model vocabulary unavailable ({exc.strerror}: {exc.filename}); fetch the model store first"
            )
            return report, counts, None, None, False
        resolved = genes.to_vocabulary(identifiers, vocabulary)
        report.gene_id_source = source
        report.genes_mapped = int((resolved != "").sum())
        report.genes_mapped_fraction = round(genes.mapped_fraction(resolved), 4)
        hint = _species_hint(ids, report.genes_mapped_fraction)
        if report.genes_mapped == 0:
            report.fail(
                hint
                or f"no gene maps onto the {adapter.name} vocabulary (identifiers from {source})"
            )
            return report, counts, resolved, None, False
        if hint:
            report.notes.append(hint)
        report.duplicate_genes, example = duplicated_identifiers(resolved)
        if report.duplicate_genes:
            report.notes.append(
                f"{report.duplicate_genes:,} gene columns repeat an identifier of another column "
                f"(e.g. '{example}'): their counts are summed per cell"
            )
        columns = np.flatnonzero(resolved != "")
    return report, counts, resolved, columns, True


def _check_cells(report: Report, h5: H5AD, totals: np.ndarray, start: int, adapter) -> Report:
    """Cells of rows ``start:start + len(totals)`` without counts: flagged, or a failure."""
    empty = np.flatnonzero(totals == 0)
    report.cells_without_counts = len(empty)
    report.empty_rows = empty
    if len(empty) == len(totals):
        report.fail(
            f"none of the {len(totals):,} cells has counts"
            + (f" in the {adapter.name} genes" if adapter is not None else "")
        )
    elif len(empty):
        names = ", ".join(f"'{n}'" for n in h5.obs_names[start + empty[:3]])
        where = f" in the {adapter.name} genes" if adapter is not None else ""
        report.notes.append(
            f"{len(empty):,} cells have no counts{where} (e.g. {names}): they get an all-zero "
            f"embedding and obs['{EMPTY_FLAG}'] = True"
        )
    return report
