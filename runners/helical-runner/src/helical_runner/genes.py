"""Gene identifiers: find them in ``var``, and map between Ensembl ids and symbols.

Datasets arrive with symbols or (versioned) Ensembl ids, in the index or in
a column. Each model adapter declares which kind it needs; this module finds
the best source and translates through the gene table of the model store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import BadInput
from .store import GENE_TABLES

ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{11}(\.\d+)?$")
ENSEMBL_COLUMNS = ("ensembl_id", "gene_ids", "gene_id", "feature_id", "ensembl")
SYMBOL_COLUMNS = ("gene_symbols", "gene_symbol", "feature_name", "gene_name", "symbol", "gene")


def strip_version(ids: pd.Series) -> pd.Series:
    return ids.str.replace(r"\.\d+$", "", regex=True)


# Ensembl gene id prefixes of common non-human species (for a plain message).
ENSEMBL_SPECIES = {
    "ENSMUS": "mouse",
    "ENSRNO": "rat",
    "ENSDAR": "zebrafish",
    "ENSMMU": "macaque",
    "ENSMFA": "macaque",
    "ENSGAL": "chicken",
    "ENSSSC": "pig",
    "ENSBTA": "cow",
}


@dataclass
class GeneIds:
    """The identifiers found in a dataset's var (NaN where a row has none of that kind)."""

    ensembl: pd.Series | None  # version-stripped, aligned with var rows
    symbols: pd.Series | None  # as written in the dataset, aligned with var rows
    ensembl_source: str | None
    symbol_source: str | None
    versioned: bool = False

    @property
    def kind(self) -> str:
        if self.ensembl is not None and self.symbols is not None:
            mixed = self.ensembl_source == self.symbol_source
            return "mixed ensembl/symbol" if mixed else "ensembl+symbol"
        return "ensembl" if self.ensembl is not None else "symbol"


def find_ids(var: pd.DataFrame) -> GeneIds:
    """Locate Ensembl ids and symbols among var's index and usual columns.

    A source holding both kinds (an index of Ensembl ids where a few rows are
    symbols) provides each row's identifier of the kind it has.
    """
    sources: list[tuple[str, pd.Series]] = [
        ("var index", pd.Series(var.index.astype(str), dtype=object))
    ]
    for col in (*ENSEMBL_COLUMNS, *SYMBOL_COLUMNS):
        if col in var.columns:
            sources.append((f"var['{col}']", var[col].astype(str).reset_index(drop=True)))
    ensembl = symbols = None
    ensembl_source = symbol_source = None
    versioned = False
    for name, values in sources:
        values = values.str.strip()
        is_ensembl = values.str.match(ENSEMBL_RE)
        frac = float(is_ensembl.mean()) if len(values) else 0.0
        usable = values.str.len().gt(0).mean() > 0.5 and not _numeric(values)
        if frac > 0 and ensembl is None and (frac >= 0.5 or usable):
            upper = values.str.upper()
            versioned = bool(upper[is_ensembl].str.contains(r"\.\d+$").any())
            ensembl = strip_version(upper).where(is_ensembl)
            ensembl_source = name
        if frac < 1 and symbols is None and usable:
            symbols = values.where(~is_ensembl & values.str.len().gt(0))
            symbol_source = name
    if ensembl is None and symbols is None:
        raise BadInput("no gene identifiers found in var (need Ensembl ids or gene symbols)")
    return GeneIds(ensembl, symbols, ensembl_source, symbol_source, versioned)


def _numeric(values: pd.Series) -> bool:
    return bool(values.str.fullmatch(r"\d+").mean() > 0.5)


def load_gene_table(cache: Path) -> pd.DataFrame | None:
    """Ensembl id <-> symbol table from the model store (None if the store has none)."""
    for name in GENE_TABLES:
        path = cache / name
        if path.is_file():
            table = pd.read_csv(path, dtype=str).dropna()
            if not {"ensembl_id", "gene_name"} <= set(table.columns):
                raise BadInput("gene table needs columns ensembl_id and gene_name", where=str(path))
            table["ensembl_id"] = strip_version(table["ensembl_id"].str.upper())
            return table
    return None


def model_identifiers(
    ids: GeneIds, want: str, table: pd.DataFrame | None
) -> tuple[np.ndarray, str]:
    """One identifier per gene in the kind the model wants ('' where none), and how it was got.

    Rows that lack the wanted kind are translated from the other kind through
    the model store's gene table, when it has one.
    """
    have = ids.ensembl if want == "ensembl" else ids.symbols
    other = ids.symbols if want == "ensembl" else ids.ensembl
    source = ids.ensembl_source if want == "ensembl" else ids.symbol_source
    if have is None and table is None:
        raise BadInput(
            f"the model needs {'Ensembl ids' if want == 'ensembl' else 'gene symbols'} and the model "
            "store has no gene table to translate the dataset's identifiers"
        )
    n = len(other if have is None else have)
    result = pd.Series([np.nan] * n, dtype=object) if have is None else have.copy()
    missing = result.isna()
    if missing.any() and other is not None and table is not None:
        if want == "ensembl":
            # a symbol may name several ids: keep the first, as Ensembl's canonical order does
            keys = table["gene_name"].str.upper()
            lookup = table.assign(key=keys).drop_duplicates("key").set_index("key")["ensembl_id"]
            translated = other[missing].str.upper().map(lookup)
        else:
            lookup = table.drop_duplicates("ensembl_id").set_index("ensembl_id")["gene_name"]
            translated = other[missing].map(lookup)
        if translated.notna().any():
            result[missing] = translated
            source = "gene table" if have is None else f"{source} + gene table"
    return result.fillna("").to_numpy(dtype=object), source


def to_vocabulary(identifiers: np.ndarray, vocabulary: set[str]) -> np.ndarray:
    """Each identifier spelled as the model's vocabulary spells it ('' when unknown).

    Matching ignores case: symbols such as 'C1orf112' are written with
    varying case across datasets, and Ensembl ids are upper-case anyway.
    """
    spelled = {v.upper(): v for v in vocabulary}
    return np.array(
        [spelled.get(str(i).upper(), "") if i else "" for i in identifiers], dtype=object
    )


def mapped_fraction(resolved: np.ndarray) -> float:
    return float(np.mean(resolved != "")) if len(resolved) else 0.0
