"""Bad input: one clear line naming the problem, exit code 2, nothing at the output URI."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from conftest import run_captured
from helical_runner.errors import EXIT_BAD_INPUT
from helical_runner.store import demo_gene_ids

ENSEMBL, _ = demo_gene_ids()


def write(path, X, *, obs_names=None, var_names=None):
    n, g = X.shape
    obs = pd.DataFrame(index=obs_names if obs_names is not None else [f"c{i}" for i in range(n)])
    var = pd.DataFrame(index=var_names if var_names is not None else ENSEMBL[:g])
    ad.AnnData(X=X, obs=obs, var=var).write_h5ad(path)
    return path


def counts(n=40, g=60, seed=0):
    return sp.csr_matrix(np.random.default_rng(seed).poisson(1.0, size=(n, g)).astype(np.float32))


def make_missing(tmp):
    return tmp / "nope.h5ad"


def make_truncated(tmp):
    good = write(tmp / "good.h5ad", counts())
    data = good.read_bytes()
    bad = tmp / "truncated.h5ad"
    bad.write_bytes(data[: len(data) // 2])
    return bad


def make_garbage(tmp):
    bad = tmp / "garbage.h5ad"
    bad.write_bytes(b"this is not HDF5 at all\n" * 100)
    return bad


def make_zero_cells(tmp):
    return write(tmp / "zero-cells.h5ad", sp.csr_matrix((0, 60), dtype=np.float32))


def make_zero_genes(tmp):
    return write(tmp / "zero-genes.h5ad", sp.csr_matrix((40, 0), dtype=np.float32), var_names=[])


def make_non_integer(tmp):
    X = counts()
    X.data = X.data * 0.37
    return write(tmp / "normalised.h5ad", X)


def make_negative(tmp):
    X = counts().toarray()
    X[5, 3] = -2
    return write(tmp / "negative.h5ad", X)


def make_nan(tmp):
    X = counts().toarray()
    X[7, 1] = np.nan
    return write(tmp / "nan.h5ad", X)


def make_unmappable(tmp):
    return write(tmp / "unmappable.h5ad", counts(), var_names=[f"NOTAGENE{i}" for i in range(60)])


def make_duplicates(tmp):
    names = [f"c{i}" for i in range(40)]
    names[10] = "c3"
    return write(tmp / "duplicates.h5ad", counts(), obs_names=names)


CASES = {
    "missing file": (make_missing, "not found"),
    "truncated file": (make_truncated, "truncated or corrupt"),
    "corrupt file": (make_garbage, "truncated or corrupt"),
    "zero cells": (make_zero_cells, "zero cells"),
    "zero genes": (make_zero_genes, "zero genes"),
    "non-integer counts": (make_non_integer, "non-integer"),
    "negative counts": (make_negative, "negative"),
    "NaN": (make_nan, "NaN"),
    "no mappable genes": (make_unmappable, "no gene maps onto"),
    "duplicated cell names": (make_duplicates, "duplicated cell names"),
}


def assert_clean_failure(code, err, needle, out):
    assert code == EXIT_BAD_INPUT, err
    lines = [line for line in err.splitlines() if line.startswith("helical-runner:")]
    assert len(lines) == 1, err
    assert needle.lower() in lines[0].lower(), lines[0]
    leftovers = sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name))
    assert leftovers == [], f"left behind: {leftovers}"


@pytest.mark.parametrize("case", list(CASES))
def test_embed_rejects_bad_input(case, tmp_path, bundle, capsys):
    make, needle = CASES[case]
    source = make(tmp_path)
    out = tmp_path / "out" / "emb.h5ad"
    out.parent.mkdir()
    code, _, err = run_captured(
        capsys,
        "embed",
        "--input",
        source,
        "--model",
        "geneformer",
        "--output",
        out,
        "--model-store",
        bundle,
    )
    assert_clean_failure(code, err, needle, out)


@pytest.mark.parametrize("case", list(CASES))
def test_validate_reports_the_same_problem(case, tmp_path, bundle, capsys):
    make, needle = CASES[case]
    code, _out, err = run_captured(
        capsys,
        "validate",
        "--input",
        make(tmp_path),
        "--model",
        "geneformer",
        "--model-store",
        bundle,
    )
    assert code == EXIT_BAD_INPUT
    assert needle.lower() in err.lower()


def test_unknown_model(tmp_path, bundle, datasets, capsys):
    out = tmp_path / "emb.h5ad"
    code, _, err = run_captured(
        capsys,
        "embed",
        "--input",
        datasets["ensembl-csr"],
        "--model",
        "gpt5",
        "--output",
        out,
        "--model-store",
        bundle,
    )
    assert_clean_failure(code, err, "unknown model 'gpt5'", out)


@pytest.mark.parametrize("cells", ["5:2", "abc", "3000:4000", "-4:10", "10"])
def test_bad_cell_range(cells, tmp_path, bundle, datasets, capsys):
    out = tmp_path / "emb.h5ad"
    code, _, err = run_captured(
        capsys,
        "embed",
        "--input",
        datasets["ensembl-csr"],
        "--model",
        "scgpt",
        "--output",
        out,
        "--model-store",
        bundle,
        f"--cells={cells}",
    )
    assert_clean_failure(code, err, "bad cell range", out)


def test_corrupt_model_store_is_refused(tmp_path, bundle, datasets, capsys):
    import shutil

    broken = tmp_path / "store"
    shutil.copytree(bundle, broken)
    weights = broken / "scgpt" / "scGPT_CP" / "best_model.pt"
    weights.write_bytes(weights.read_bytes()[:-100])
    import os

    # a fresh cache, so the damaged file has to be fetched (and checked)
    os.environ["CACHE_DIR_HELICAL_PREFIX"], old = (
        str(tmp_path / "cache"),
        os.environ["CACHE_DIR_HELICAL_PREFIX"],
    )
    try:
        out = tmp_path / "emb.h5ad"
        code, _, err = run_captured(
            capsys,
            "embed",
            "--input",
            datasets["ensembl-csr"],
            "--model",
            "scgpt",
            "--output",
            out,
            "--model-store",
            broken,
        )
    finally:
        os.environ["CACHE_DIR_HELICAL_PREFIX"] = old
    assert_clean_failure(code, err, "checksum mismatch", out)


def test_scgpt_checkpoint_that_does_not_fit_is_refused(tmp_path, bundle, datasets, capsys):
    """helical's loader would silently keep random weights for mismatched tensors."""
    import json
    import shutil

    wrong = tmp_path / "store"
    shutil.copytree(bundle, wrong)
    info = json.loads((wrong / "store.json").read_text())
    info["overrides"]["scgpt"]["embsize"] = 48  # the checkpoint was built with 32
    (wrong / "store.json").write_text(json.dumps(info))
    out = tmp_path / "emb.h5ad"
    code, _, err = run_captured(
        capsys,
        "embed",
        "--input",
        datasets["ensembl-csr"],
        "--model",
        "scgpt",
        "--output",
        out,
        "--model-store",
        wrong,
        "--cells",
        "0:50",
    )
    assert_clean_failure(code, err, "does not fit the model", out)
