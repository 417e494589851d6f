"""Real-world files: public datasets shipped in registry packages, the shapes atlases
ship, and the ways a real user's run could lose or misread data.

The datasets come from scanpy's source distribution (fetched by the bootstrap):
a 10x Cell Ranger 3 PBMC file (chr21 genes, 1,107 cells), a 10x Visium file
(100 spots, Ensembl ids only) and ``pbmc68k_reduced`` (processed, written by
an old anndata: obs/var as HDF5 compound datasets).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from conftest import RUNNER_DATA, run, run_captured
from helical_runner import storage, store
from helical_runner.demo_data import write_demo_dataset
from helical_runner.store import demo_gene_ids
from helical_runner.validation import EMPTY_FLAG

DATASETS = RUNNER_DATA / "datasets"
MODELS = ("geneformer", "scgpt", "uce")
# Hand-measured (see test_hand_measured_mapping): genes of the 10x PBMC file found in
# each demo-bundle vocabulary. scGPT/UCE: its symbols in scgpt 0.2.4's
# default_census_vocab.json; Geneformer: its Ensembl ids in org.Hs.eg.db.
TENX_GENES = 507
TENX_MAPPED = {"scgpt": 450, "uce": 450, "geneformer": 312}


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def untouched():
    """Register input files; each must be byte-identical when the test ends."""
    seen: dict[Path, str] = {}

    def register(path: Path) -> Path:
        seen[Path(path)] = sha(path)
        return Path(path)

    yield register
    for path, digest in seen.items():
        assert sha(path) == digest, f"{path} was modified"


@pytest.fixture(scope="session")
def real(tmp_path_factory) -> dict[str, Path]:
    """The real datasets as users would hold them (10x files converted by scanpy's reader)."""
    import scanpy as sc

    root = tmp_path_factory.mktemp("real")
    tenx = sc.read_10x_h5(DATASETS / "10x_v3_pbmc_chr21.h5")  # symbols index, var['gene_ids']
    tenx.write_h5ad(root / "tenx.h5ad")
    visium = sc.read_10x_h5(DATASETS / "visium_v1_filtered.h5")  # Ensembl ids only
    visium.var_names = visium.var["gene_ids"].astype(str)
    visium.write_h5ad(root / "visium.h5ad")
    return {
        "tenx": root / "tenx.h5ad",
        "visium": root / "visium.h5ad",
        "legacy": DATASETS / "pbmc68k_reduced.h5ad",
        "tenx_adata": tenx,
    }


def validate_json(path, model=None, bundle=None) -> tuple[int, dict]:
    args = ["validate", "--input", str(path), "--json"]
    if model:
        args += ["--model", model, "--model-store", str(bundle)]
    proc = subprocess.run(
        [sys.executable, "-m", "helical_runner.cli", *args], capture_output=True, text=True
    )
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, (json.loads(lines[-1]) if lines else {"stderr": proc.stderr})


def embedded(path: Path) -> tuple[ad.AnnData, np.ndarray, dict]:
    out = ad.read_h5ad(path)
    key = next(k for k in out.obsm if k.startswith("X_"))
    manifest = json.loads(Path(str(path) + ".manifest.json").read_text())
    return out, np.asarray(out.obsm[key]), manifest


# ---------------------------------------------------------------- real datasets


def test_hand_measured_mapping(real):
    """The vocabularies are the real ones: measure the 10x file's overlap by hand."""
    with zipfile.ZipFile(RUNNER_DATA / store.SCGPT_WHEEL) as wheel:
        vocab = json.loads(wheel.read(store.SCGPT_VOCAB_MEMBER))
    assert len(vocab) == 60694
    with gzip.open(RUNNER_DATA / store.HUMAN_GENES, "rt") as fh:
        human = pd.read_csv(fh, sep="\t", dtype=str)
    var = real["tenx_adata"].var
    upper = {k.upper() for k in vocab}
    assert len(var) == TENX_GENES
    assert int(var.index.str.upper().isin(upper).sum()) == TENX_MAPPED["scgpt"]
    assert int(var["gene_ids"].isin(set(human["ensembl_id"])).sum()) == TENX_MAPPED["geneformer"]


@pytest.mark.parametrize("model", MODELS)
def test_real_10x_validates_and_embeds(model, real, bundle, tmp_path, untouched):
    src = untouched(real["tenx"])
    code, report = validate_json(src, model, bundle)
    assert code == 0, report
    assert report["counts_location"] == "X"
    assert report["genes_mapped"] == TENX_MAPPED[model]
    assert report["genes_mapped_fraction"] == round(TENX_MAPPED[model] / TENX_GENES, 4)
    if model == "scgpt":
        assert report["genes_mapped_fraction"] >= 0.80
    out = tmp_path / f"{model}.h5ad"
    cells = 120
    assert run("embed", "--input", src, "--model", model, "--model-store", bundle,
               "--output", out, "--cells", f"0:{cells}") == 0  # fmt: skip
    result, emb, manifest = embedded(out)
    assert list(result.obs_names) == list(real["tenx_adata"].obs_names[:cells])
    assert emb.shape[0] == cells and np.isfinite(emb).all()
    assert manifest["genes_mapped_fraction"] == report["genes_mapped_fraction"]
    assert manifest["counts_location"] == "X"


@pytest.mark.parametrize("model", ["scgpt", "geneformer"])
def test_real_visium_ensembl_only(model, real, bundle, tmp_path, untouched):
    """Ensembl ids only: scGPT gets symbols through the bundle's real gene table."""
    src = untouched(real["visium"])
    code, report = validate_json(src, model, bundle)
    assert code == 0, report
    # hand-measured: 70 of the 100 ids are in org.Hs.eg.db, 68 of their symbols in scGPT's vocabulary
    assert report["genes_mapped"] == {"geneformer": 70, "scgpt": 68}[model]
    out = tmp_path / "v.h5ad"
    assert run("embed", "--input", src, "--model", model, "--model-store", bundle,
               "--output", out) == 0  # fmt: skip
    _, emb, _ = embedded(out)
    assert emb.shape[0] == 100 and np.isfinite(emb).all()


def test_legacy_processed_file_is_refused_with_reason(real, capsys, untouched):
    """pbmc68k_reduced: compound obs/var from an old anndata; scaled X, log data in .raw."""
    src = untouched(real["legacy"])
    code, _, err = run_captured(capsys, "validate", "--input", src)
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert "X holds negative values: scaled data" in line
    assert "raw/X holds non-integer values" in line
    assert "looked in layers/counts (absent), X (present), raw/X (present)" in line
    from helical_runner.dataset import H5AD

    with H5AD(src) as h5:  # annotations read through anndata, categoricals included
        obs = h5.obs()
        assert isinstance(obs["bulk_labels"].dtype, pd.CategoricalDtype)
        assert h5.n_cells == 700 and len(h5.var("raw/X")) == 765


# ---------------------------------------------------------------- shapes atlases ship


def _shapes(adata: ad.AnnData, root: Path) -> dict[str, Path]:
    """The same real cells in the layouts public atlases and converters write."""
    counts = sp.csr_matrix(adata.X, dtype=np.float32)
    symbols = adata.var_names.astype(str)
    ensembl = adata.var["gene_ids"].astype(str).to_numpy()
    obs = pd.DataFrame(
        {"donor": pd.Categorical(["a", "b"] * (adata.n_obs // 2) + ["a"] * (adata.n_obs % 2))},
        index=adata.obs_names,
    )
    paths = {}
    plain = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=symbols))
    plain.write_h5ad(paths.setdefault("plain", root / "plain.h5ad"))
    # CELLxGENE schema: Ensembl index, symbols in feature_name, normalised X, counts in raw
    totals = np.asarray(counts.sum(axis=1)).ravel()
    totals[totals == 0] = 1
    lognorm = sp.csr_matrix(counts.multiply(1e4 / totals[:, None]))
    lognorm.data = np.log1p(lognorm.data)
    var = pd.DataFrame({"feature_name": pd.Categorical(symbols)}, index=ensembl)
    cxg = ad.AnnData(X=lognorm.astype(np.float32), obs=obs, var=var)
    cxg.raw = ad.AnnData(X=counts, obs=obs, var=var)
    cxg.write_h5ad(paths.setdefault("cellxgene", root / "cellxgene.h5ad"))
    # gzip-compressed, chunked, CSC, versioned Ensembl ids with symbols in a column
    versioned = pd.DataFrame({"gene_symbols": symbols}, index=[f"{e}.7" for e in ensembl])
    ad.AnnData(X=counts.tocsc(), obs=obs, var=versioned).write_h5ad(
        paths.setdefault("gzip-csc", root / "gzip-csc.h5ad"), compression="gzip"
    )
    # Zarr: the other format scverse and the Census tooling write
    dense = ad.AnnData(X=counts.toarray(), obs=obs, var=pd.DataFrame(index=symbols))
    dense.write_zarr(paths.setdefault("zarr", root / "dense.zarr"))
    return paths


@pytest.fixture(scope="session")
def shapes(real, tmp_path_factory):
    return _shapes(real["tenx_adata"][:60].copy(), tmp_path_factory.mktemp("shapes"))


def test_shapes_are_detected_and_reported(shapes, bundle):
    code, cxg = validate_json(shapes["cellxgene"], "scgpt", bundle)
    assert code == 0, cxg
    assert cxg["counts_location"] == "raw/X"
    assert cxg["gene_id_source"] == "var['feature_name']"
    assert any("X holds non-integer values" in n for n in cxg["notes"])
    code, gz = validate_json(shapes["gzip-csc"], "geneformer", bundle)
    assert code == 0, gz
    assert (gz["matrix_format"], gz["gene_id_source"]) == ("csc", "var index")
    assert any("carry versions" in n for n in gz["notes"])


@pytest.fixture(scope="session")
def plain_embedding(shapes, bundle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain") / "plain.h5ad"
    assert run("embed", "--input", shapes["plain"], "--model", "scgpt", "--model-store", bundle,
               "--output", out) == 0  # fmt: skip
    return out


@pytest.mark.parametrize("shape", ["cellxgene", "gzip-csc", "zarr"])
def test_shapes_embed_like_plain_csr(shape, shapes, plain_embedding, bundle, tmp_path, untouched):
    """Same cells, other layout: the very same embeddings, obs kept."""
    src = shapes[shape]
    before = storage.sha256_file(src)
    out = tmp_path / "out.h5ad"
    assert run("embed", "--input", src, "--model", "scgpt", "--model-store", bundle,
               "--output", out) == 0  # fmt: skip
    assert storage.sha256_file(src) == before
    a, ea, _ = embedded(plain_embedding)
    b, eb, _ = embedded(out)
    assert list(a.obs_names) == list(b.obs_names)
    assert list(b.obs["donor"]) == list(a.obs["donor"])
    np.testing.assert_allclose(ea, eb, rtol=1e-5, atol=1e-6)


def test_mouse_ids_get_a_species_message(tmp_path, bundle, capsys, untouched):
    mouse = [f"ENSMUSG{i:011d}" for i in range(1, 51)]
    path = tmp_path / "mouse.h5ad"
    ad.AnnData(
        X=sp.csr_matrix(np.ones((20, 50), dtype=np.float32)),
        var=pd.DataFrame(index=mouse),
    ).write_h5ad(path)
    untouched(path)
    code, _, err = run_captured(
        capsys, "validate", "--input", path, "--model", "geneformer", "--model-store", bundle
    )
    assert code == 2
    assert "mouse Ensembl ids" in err and "covers human genes" in err and "0.0%" in err


def test_mixed_identifiers_map_each_row_its_own_way(tmp_path, bundle):
    ensembl, symbols = demo_gene_ids(40)
    mixed = ensembl[:20] + symbols[20:]  # some rows only have a symbol
    path = tmp_path / "mixed.h5ad"
    ad.AnnData(
        X=sp.csr_matrix(np.ones((5, 40), np.float32)), var=pd.DataFrame(index=mixed)
    ).write_h5ad(path)
    code, report = validate_json(path, "geneformer", bundle)
    assert code == 0 and report["genes_mapped"] == 40, report
    assert report["gene_id_type"] == "mixed ensembl/symbol"


# ---------------------------------------------------------------- the cases under "Why"


def test_output_equal_to_input_is_refused_and_input_kept(tmp_path, bundle, untouched):
    src = untouched(write_demo_dataset(tmp_path / "mine.h5ad", n_cells=30, n_genes=100))
    assert run("embed", "--input", src, "--model", "scgpt", "--model-store", bundle,
               "--output", src) == 2  # fmt: skip
    link = tmp_path / "alias.h5ad"
    link.symlink_to(src)
    assert run("embed", "--input", src, "--model", "scgpt", "--model-store", bundle,
               "--output", link) == 2  # fmt: skip
    assert not Path(str(src) + ".partial").exists()
    assert not Path(str(src) + ".manifest.json").exists()


def test_output_folder_or_unwritable_refused_before_model_loads(real, tmp_path, bundle, capsys):
    folder = tmp_path / "already-a-folder"
    folder.mkdir()
    code, _, err = run_captured(capsys, "embed", "--input", real["tenx"], "--model", "scgpt",
                                "--model-store", bundle, "--output", folder)  # fmt: skip
    assert code == 2 and "existing folder" in err
    assert '"msg": "embedding"' not in err  # refused before any model work
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run_captured(capsys, "embed", "--input", real["tenx"], "--model", "scgpt",
                                "--model-store", bundle, "--output", blocker / "out.h5ad")  # fmt: skip
    assert code == 2 and "not a folder" in err
    assert not list(tmp_path.glob("**/*.partial"))


@pytest.fixture(scope="session")
def awkward(tmp_path_factory) -> dict[str, Path]:
    """scanpy.read_10x_h5's layout (Ensembl index, var['gene_symbols']) with repeated
    symbols, an empty droplet and a cell whose only counts are in a gene no model knows."""
    ensembl, symbols = demo_gene_ids(200)
    symbols = list(symbols)
    for i in (10, 11, 12):  # three columns repeat the symbols of columns 0, 1, 2
        symbols[i] = symbols[i - 10]
    ensembl = [*ensembl, "ENSG99999999999"]
    symbols = [*symbols, "NOT-A-GENE"]
    rng = np.random.default_rng(0)
    X = rng.poisson(1.0, size=(40, 201)).astype(np.float32)
    X[:, 200] = 0
    X[3] = 0  # empty droplet
    X[7] = 0
    X[7, 200] = 5  # counts only in the unknown gene
    var = pd.DataFrame({"gene_symbols": symbols}, index=ensembl)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(["T", "B"] * 20)}, index=[f"bc-{i}" for i in range(40)]
    )
    root = tmp_path_factory.mktemp("awkward")
    ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=var).write_h5ad(root / "awkward.h5ad")
    # the same cells with the repeated columns summed by hand
    summed = X[:, :200].copy()
    summed[:, :3] += summed[:, 10:13]
    keep = [i for i in range(200) if i not in (10, 11, 12)]
    ad.AnnData(
        X=sp.csr_matrix(summed[:, keep]),
        obs=obs,
        var=pd.DataFrame(index=[symbols[i] for i in keep]),
    ).write_h5ad(root / "summed.h5ad")
    return {"awkward": root / "awkward.h5ad", "summed": root / "summed.h5ad"}


@pytest.mark.parametrize("model", MODELS)
def test_empty_cells_and_repeated_symbols_one_way_for_every_model(
    model, awkward, bundle, tmp_path, untouched
):
    src = untouched(awkward["awkward"])
    code, report = validate_json(src, model, bundle)
    assert code == 0, report
    assert report["cells_without_counts"] == 2
    assert report["duplicate_genes"] == (0 if model == "geneformer" else 3)
    out = tmp_path / "out.h5ad"
    assert run("embed", "--input", src, "--model", model, "--model-store", bundle,
               "--output", out) == 0  # fmt: skip
    result, emb, manifest = embedded(out)
    assert emb.shape[0] == 40 and np.isfinite(emb).all()
    assert list(result.obs_names[result.obs[EMPTY_FLAG]]) == ["bc-3", "bc-7"]
    assert not emb[[3, 7]].any() and emb[[0, 1, 2]].any(axis=1).all()
    assert manifest["cells_without_counts"] == 2
    assert manifest["duplicate_genes_summed"] == report["duplicate_genes"]
    if model == "scgpt":
        summed = tmp_path / "summed.h5ad"
        assert run("embed", "--input", awkward["summed"], "--model", model,
                   "--model-store", bundle, "--output", summed) == 0  # fmt: skip
        keep = [i for i in range(40) if i not in (3, 7)]
        np.testing.assert_allclose(emb[keep], embedded(summed)[1][keep], rtol=1e-5, atol=1e-6)
        report_dir = tmp_path / "report"
        assert run("report", "--dataset", src, "--embeddings", out, "--output", report_dir) == 0
        metrics = json.loads((report_dir / "metrics.json").read_text())
        assert metrics["cells_without_counts_excluded"] == 2
        assert metrics["cells_evaluated"] == 38


def test_counts_location_judged_on_the_whole_matrix(tmp_path, untouched):
    """Log-normalised X whose first 300 rows are empty; counts in .raw."""
    ensembl, _ = demo_gene_ids(50)
    rng = np.random.default_rng(1)
    counts = rng.poisson(2.0, size=(400, 50)).astype(np.float32)
    counts[:300] = 0
    lognorm = np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4)
    adata = ad.AnnData(X=sp.csr_matrix(lognorm.astype(np.float32)), var=pd.DataFrame(index=ensembl))
    adata.raw = ad.AnnData(X=sp.csr_matrix(counts), var=pd.DataFrame(index=ensembl))
    path = tmp_path / "late.h5ad"
    adata.write_h5ad(path)
    untouched(path)
    code, report = validate_json(path)
    assert code == 0, report
    assert report["counts_location"] == "raw/X", report
    assert any("X holds non-integer values" in n and "row 300" in n for n in report["notes"])


def test_locked_input_is_transient(real, tmp_path):
    path = tmp_path / "busy.h5ad"
    path.write_bytes(real["tenx"].read_bytes())
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import h5py, sys; f = h5py.File(sys.argv[1], 'r+'); print('open', flush=True); sys.stdin.read()",
         str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "open"
        proc = subprocess.run(
            [sys.executable, "-m", "helical_runner.cli", "validate", "--input", str(path)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert proc.returncode == 75, proc.stderr
        assert "locked by another process" in proc.stderr
    finally:
        holder.stdin.close()
        holder.wait(30)


def test_stale_input_sha256_is_refused(real, bundle, tmp_path, capsys, untouched):
    src = untouched(real["tenx"])
    code, _, err = run_captured(capsys, "embed", "--input", src, "--model", "scgpt",
                                "--model-store", bundle, "--output", tmp_path / "o.h5ad",
                                "--input-sha256", "0" * 64)  # fmt: skip
    assert code == 2 and "does not match --input-sha256" in err
    assert not (tmp_path / "o.h5ad").exists()


@pytest.mark.parametrize(
    "entry", ["../escaped.txt", "/tmp/absolute-escape.txt", "scgpt/../../escaped.txt", "via-link/x"]
)
def test_store_paths_are_confined_to_the_cache(entry, tmp_path, capsys):
    source = tmp_path / "store"
    source.mkdir()
    (source / "x").write_text("payload")
    digest = hashlib.sha256(b"payload").hexdigest()
    (source / store.STORE_MANIFEST).write_text(
        json.dumps({"kind": "mirror", "files": {entry: digest}})
    )
    cache = store.helical_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    if entry.startswith("via-link"):
        (cache / "via-link").unlink(missing_ok=True)
        (cache / "via-link").symlink_to(outside)
    code, _, err = run_captured(capsys, "models", "fetch", "--from", source)
    assert code == 2, err
    assert "outside the model cache" in err or "symbolic link" in err
    assert not list(outside.iterdir())
    assert not (cache.parent / "escaped.txt").exists()
    assert not Path("/tmp/absolute-escape.txt").exists()
    (cache / "via-link").unlink(missing_ok=True)


def test_outputs_follow_the_umask_and_secrets_stay_private(tmp_path):
    old = os.umask(0o022)
    try:
        public, private = tmp_path / "shard.h5ad", tmp_path / "secret"
        with storage.atomic_local_file(public) as tmp:
            tmp.write_text("x")
        with storage.atomic_local_file(private, private=True) as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert public.stat().st_mode & 0o777 == 0o644
    assert private.stat().st_mode & 0o777 == 0o600


def test_internal_error_leaves_its_traceback_in_the_log(real, capsys, monkeypatch):
    from helical_runner import validation

    def broken(obs):
        raise RuntimeError("forced bug")

    monkeypatch.setattr(validation, "label_columns", broken)
    code, _, err = run_captured(capsys, "validate", "--input", real["tenx"])
    assert code == 1
    record = json.loads(next(line for line in err.splitlines() if '"internal error"' in line))
    assert "Traceback" in record["traceback"] and "in broken" in record["traceback"]
    last = err.strip().splitlines()[-1]
    assert "forced bug" in last and "field 'traceback'" in last


# ---------------------------------------------------------------- S3


@pytest.fixture
def s3_input(moto_s3, real):
    client = storage.s3_client()
    client.create_bucket(Bucket="user-data")
    client.upload_file(str(real["tenx"]), "user-data", "pbmc/tenx.h5ad")
    yield "s3://user-data/pbmc/tenx.h5ad"
    for obj in client.list_objects_v2(Bucket="user-data").get("Contents", []):
        client.delete_object(Bucket="user-data", Key=obj["Key"])
    client.delete_bucket(Bucket="user-data")


def test_s3_input_cache_is_private_and_checked(s3_input, real, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("HELICAL_RUNNER_CACHE", str(cache))
    first = storage.LocalInput(s3_input).path()
    assert sha(first) == sha(real["tenx"])
    assert cache.stat().st_mode & 0o777 == 0o700
    assert first.parent.stat().st_mode & 0o777 == 0o700
    assert first.stat().st_mode & 0o777 == 0o600
    # the object changes: the cached copy must not be reused
    storage.s3_client().upload_file(str(real["legacy"]), "user-data", "pbmc/tenx.h5ad")
    second = storage.LocalInput(s3_input).path()
    assert sha(second) == sha(real["legacy"])
    # a tampered cached copy (other size) is replaced too
    second.write_bytes(b"planted")
    assert sha(storage.LocalInput(s3_input).path()) == sha(real["legacy"])


def test_s3_configuration_errors_are_bad_input(s3_input, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HELICAL_RUNNER_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv(storage.S3_ENDPOINT_ENV, "not a url")
    monkeypatch.setattr(storage, "_S3_CLIENT", None)
    code, _, err = run_captured(capsys, "validate", "--input", s3_input)
    assert code == 2 and "bad S3 endpoint" in err
    monkeypatch.undo()
    monkeypatch.setenv("HELICAL_RUNNER_CACHE", str(tmp_path / "c"))
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(storage, "_S3_CLIENT", None)
    code, _, err = run_captured(capsys, "validate", "--input", s3_input)
    assert code == 2 and "S3 is not configured" in err
    monkeypatch.setattr(storage, "_S3_CLIENT", None)


def test_rows_read_through_anndata_match_h5py_and_scanpy(real):
    """h5py sees what the runner reads: one row per cell, same order."""
    from helical_runner.dataset import H5AD

    with H5AD(real["tenx"]) as h5, h5py.File(real["tenx"]) as fh:
        assert list(h5.obs_names[:5]) == [n.decode() for n in fh["obs/_index"][:5]]
        m = h5.counts_matrix()
        assert (m.rows(0, 10) != sp.csr_matrix(real["tenx_adata"].X[:10])).nnz == 0


def test_zarr_store_on_s3(moto_s3, shapes, bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("HELICAL_RUNNER_CACHE", str(tmp_path / "cache"))
    client = storage.s3_client()
    client.create_bucket(Bucket="zarr-data")
    root = shapes["zarr"]
    for file in root.rglob("*"):
        if file.is_file():
            client.upload_file(str(file), "zarr-data", f"atlas/dense.zarr/{file.relative_to(root)}")
    uri = "s3://zarr-data/atlas/dense.zarr"
    code, report = validate_json(uri, "scgpt", bundle)  # a subprocess: sees moto's settings
    assert code == 0, report
    assert (report["counts_location"], report["matrix_format"]) == ("X", "dense")
    local = storage.LocalInput(uri).path()
    assert local.is_dir() and local.stat().st_mode & 0o777 == 0o700
    assert storage.sha256_file(local) == storage.sha256_file(root)
