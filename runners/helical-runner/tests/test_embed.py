"""embed: right shapes for every model, gene-id kind and matrix layout; identical results across layouts."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest

from conftest import run, run_captured

MODELS = ("geneformer", "scgpt", "uce")


@pytest.fixture(scope="module")
def full_runs(tmp_path_factory, bundle, datasets):
    """Each model over the whole 2,000-cell Ensembl/CSR dataset."""
    out = tmp_path_factory.mktemp("full")
    results = {}
    for model in MODELS:
        target = out / f"{model}.h5ad"
        code = run(
            "embed",
            "--input",
            datasets["ensembl-csr"],
            "--model",
            model,
            "--output",
            target,
            "--model-store",
            bundle,
            "--cells-per-chunk",
            "512",
        )
        assert code == 0
        results[model] = target
    return results


@pytest.mark.parametrize("model", MODELS)
def test_full_dataset_embeds_one_row_per_cell_in_order(full_runs, datasets, model):
    emb = ad.read_h5ad(full_runs[model])
    src = ad.read_h5ad(datasets["ensembl-csr"], backed="r")
    matrix = emb.obsm[f"X_{model}"]
    assert matrix.shape[0] == 2000 and matrix.shape[1] > 0
    assert matrix.dtype == np.float32 and np.isfinite(matrix).all()
    assert list(emb.obs_names) == list(src.obs_names)
    assert list(emb.obs["cell_type"]) == list(src.obs["cell_type"])
    assert emb.n_vars == 0, "the output must not copy X"
    manifest = json.loads(full_runs[model].with_name(f"{model}.h5ad.manifest.json").read_text())
    assert manifest["outcome"] == "success" and manifest["demo_weights"] is True
    assert manifest["selection"]["cells"] == 2000 and manifest["chunks"] == 4
    assert manifest["genes_mapped_fraction"] == 1.0
    for key in ("load_s", "preprocess_s", "embed_s", "total_s"):
        assert manifest["timings"][key] >= 0
    assert manifest["cells_per_second"] > 0 and manifest["peak_rss_bytes"] > 0
    assert set(manifest["versions"]) >= {"helical", "torch", "python"}
    assert all(len(v) == 64 for v in manifest["model"]["artifacts"].values())
    assert not full_runs[model].with_name(f"{model}.h5ad.partial").exists()


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("ids", ["ensembl", "symbol"])
@pytest.mark.parametrize("layout", ["csr", "csc", "dense"])
def test_layouts_and_gene_ids_give_the_same_embeddings(
    tmp_path, bundle, datasets, full_runs, model, ids, layout
):
    """The same counts stored CSR/CSC/dense, keyed by Ensembl ids or symbols, embed identically."""
    target = tmp_path / "part.h5ad"
    code = run(
        "embed",
        "--input",
        datasets[f"{ids}-{layout}"],
        "--model",
        model,
        "--output",
        target,
        "--model-store",
        bundle,
        "--cells",
        "100:220",
        "--cells-per-chunk",
        "512",
    )
    assert code == 0
    got = ad.read_h5ad(target)
    assert got.obsm[f"X_{model}"].shape[0] == 120
    assert list(got.obs_names) == [f"cell-{i:07d}" for i in range(100, 220)]
    # scGPT and UCE sample genes with fixed seeds per chunk, so the reference is
    # the same cells embedded as one chunk from the CSR/Ensembl file.
    ref_target = tmp_path / "ref.h5ad"
    assert (
        run(
            "embed",
            "--input",
            datasets["ensembl-csr"],
            "--model",
            model,
            "--output",
            ref_target,
            "--model-store",
            bundle,
            "--cells",
            "100:220",
            "--cells-per-chunk",
            "512",
        )
        == 0
    )
    ref = ad.read_h5ad(ref_target).obsm[f"X_{model}"]
    np.testing.assert_allclose(got.obsm[f"X_{model}"], ref, atol=1e-5)


@pytest.mark.parametrize("where", ["layers", "raw"])
def test_counts_found_in_layers_and_raw(tmp_path, bundle, datasets, where, capsys):
    code, out, _ = run_captured(
        capsys,
        "validate",
        "--input",
        datasets[where],
        "--model",
        "geneformer",
        "--model-store",
        bundle,
        "--json",
    )
    assert code == 0
    report = json.loads(out)
    assert report["counts_location"] == ("layers/counts" if where == "layers" else "raw/X")
    target = tmp_path / "o.h5ad"
    assert (
        run(
            "embed",
            "--input",
            datasets[where],
            "--model",
            "scgpt",
            "--output",
            target,
            "--model-store",
            bundle,
        )
        == 0
    )
    assert ad.read_h5ad(target).obsm["X_scgpt"].shape[0] == 300


def test_rerun_of_a_complete_output_returns_at_once(tmp_path, bundle, datasets, full_runs):
    manifest_path = full_runs["scgpt"].with_name("scgpt.h5ad.manifest.json")
    before = manifest_path.read_text()
    mtime = full_runs["scgpt"].stat().st_mtime_ns
    assert (
        run(
            "embed",
            "--input",
            datasets["ensembl-csr"],
            "--model",
            "scgpt",
            "--output",
            full_runs["scgpt"],
            "--model-store",
            bundle,
            "--cells-per-chunk",
            "512",
        )
        == 0
    )
    assert manifest_path.read_text() == before
    assert full_runs["scgpt"].stat().st_mtime_ns == mtime


def test_merge_of_shards_equals_a_single_run(tmp_path, bundle, datasets, full_runs):
    shards = []
    for lo, hi in ((0, 700), (700, 2000)):
        target = tmp_path / f"shard-{lo}.h5ad"
        assert (
            run(
                "embed",
                "--input",
                datasets["ensembl-csr"],
                "--model",
                "geneformer",
                "--output",
                target,
                "--model-store",
                bundle,
                "--cells",
                f"{lo}:{hi}",
                "--cells-per-chunk",
                "512",
            )
            == 0
        )
        shards.append(target)
    merged = tmp_path / "merged.h5ad"
    assert run("merge", "--output", merged, *shards) == 0
    got = ad.read_h5ad(merged)
    ref = ad.read_h5ad(full_runs["geneformer"])
    assert list(got.obs_names) == list(ref.obs_names)
    np.testing.assert_allclose(got.obsm["X_geneformer"], ref.obsm["X_geneformer"], atol=1e-5)
    manifest = json.loads((tmp_path / "merged.h5ad.manifest.json").read_text())
    assert manifest["selection"]["cells"] == 2000 and len(manifest["shards"]) == 2


def test_report_compares_models_with_a_pca_baseline(tmp_path, datasets, full_runs):
    out = tmp_path / "report"
    assert (
        run(
            "report",
            "--dataset",
            datasets["ensembl-csr"],
            "--embeddings",
            full_runs["geneformer"],
            full_runs["scgpt"],
            "--output",
            out,
            "--max-cells",
            "600",
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["results"]) == {"pca_baseline", "geneformer", "scgpt"}
    # the synthetic cell types are separable: the baseline must transfer labels well
    assert metrics["results"]["pca_baseline"]["knn_accuracy"] > 0.9
    assert metrics["demo_weights"] is True
    for name in ("umap_pca_baseline.png", "umap_geneformer.png", "umap_scgpt.png", "metrics.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert "DEMO weights" in page and "umap_scgpt.png" in page and "manifest: geneformer" in page


def test_report_reads_and_writes_s3(moto_s3, datasets, full_runs):
    """On Kubernetes the run root is s3://: the report must land there, not stay in the pod."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_s3)
    s3.create_bucket(Bucket="reports")
    s3.upload_file(str(datasets["ensembl-csr"]), "reports", "in/a.h5ad")
    emb = full_runs["geneformer"]
    s3.upload_file(str(emb), "reports", "run/a/embeddings/geneformer.h5ad")
    s3.upload_file(
        f"{emb}.manifest.json", "reports", "run/a/embeddings/geneformer.h5ad.manifest.json"
    )
    code = run(
        "report",
        "--dataset",
        "s3://reports/in/a.h5ad",
        "--embeddings",
        "s3://reports/run/a/embeddings/geneformer.h5ad",
        "--output",
        "s3://reports/run/a/report",
        "--max-cells",
        "300",
    )
    assert code == 0
    listed = s3.list_objects_v2(Bucket="reports", Prefix="run/a/report/")["Contents"]
    assert {o["Key"].rsplit("/", 1)[1] for o in listed} == {
        "report.html",
        "metrics.json",
        "metrics.png",
        "umap_pca_baseline.png",
        "umap_geneformer.png",
    }
    page = s3.get_object(Bucket="reports", Key="run/a/report/report.html")["Body"].read()
    assert b"umap_geneformer.png" in page and b"manifest: geneformer" in page
    metrics = json.loads(
        s3.get_object(Bucket="reports", Key="run/a/report/metrics.json")["Body"].read()
    )
    assert metrics["cells_evaluated"] == 300 and metrics["dataset"] == "s3://reports/in/a.h5ad"
