"""s3:// input and output against moto's S3 server on loopback; model store mirror/fetch over S3."""

from __future__ import annotations

import json

import anndata as ad
import boto3
import numpy as np

from conftest import run


def test_s3_input_output_and_model_store(tmp_path, moto_s3, bundle, datasets):
    s3 = boto3.client("s3", endpoint_url=moto_s3)
    for bucket in ("data", "models", "outputs"):
        s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(datasets["symbol-csr"]), "data", "pbmc/sample.h5ad")

    assert run("models", "mirror", "--from", bundle, "--to", "s3://models/store/v1") == 0
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="models", Prefix="store/v1/")["Contents"]}
    assert "store/v1/store.json" in keys and "store/v1/scgpt/scGPT_CP/best_model.pt" in keys
    manifest = json.loads(s3.get_object(Bucket="models", Key="store/v1/store.json")["Body"].read())
    assert manifest["kind"] == "demo" and all(len(v) == 64 for v in manifest["files"].values())

    code = run(
        "embed",
        "--input",
        "s3://data/pbmc/sample.h5ad",
        "--model",
        "scgpt",
        "--output",
        "s3://outputs/run1/scgpt.h5ad",
        "--model-store",
        "s3://models/store/v1",
        "--cells",
        "0:400",
        "--cells-per-chunk",
        "150",
    )
    assert code == 0
    local = tmp_path / "scgpt.h5ad"
    s3.download_file("outputs", "run1/scgpt.h5ad", str(local))
    emb = ad.read_h5ad(local)
    assert emb.obsm["X_scgpt"].shape[0] == 400 and np.isfinite(emb.obsm["X_scgpt"]).all()
    remote_manifest = json.loads(
        s3.get_object(Bucket="outputs", Key="run1/scgpt.h5ad.manifest.json")["Body"].read()
    )
    assert remote_manifest["input"]["uri"] == "s3://data/pbmc/sample.h5ad"
    assert remote_manifest["model"]["store"]["uri"] == "s3://models/store/v1"
    left = s3.list_objects_v2(Bucket="outputs", Prefix="run1/scgpt.h5ad.partial/").get(
        "KeyCount", 0
    )
    assert left == 0, "parts on S3 are removed once the output is complete"


def test_bad_input_on_s3_leaves_nothing(moto_s3, bundle, tmp_path):
    s3 = boto3.client("s3", endpoint_url=moto_s3)
    s3.create_bucket(Bucket="bad")
    s3.put_object(Bucket="bad", Key="broken.h5ad", Body=b"not hdf5" * 50)
    code = run(
        "embed",
        "--input",
        "s3://bad/broken.h5ad",
        "--model",
        "scgpt",
        "--output",
        "s3://bad/out/e.h5ad",
        "--model-store",
        bundle,
    )
    assert code == 2
    assert s3.list_objects_v2(Bucket="bad", Prefix="out/").get("KeyCount", 0) == 0
    assert (
        run(
            "embed",
            "--input",
            "s3://bad/absent.h5ad",
            "--model",
            "scgpt",
            "--output",
            "s3://bad/out/e.h5ad",
            "--model-store",
            bundle,
        )
        == 2
    )


def test_offline_guard_blocks_helical_downloads(bundle, datasets, tmp_path):
    """With a store configured, a file helical asks for must come from the cache, never the network."""
    import pytest
    from helical.utils.downloader import Downloader

    from helical_runner.errors import BadInput
    from helical_runner.store import guard_helical_downloads

    guard_helical_downloads(tmp_path / "empty-cache")
    with pytest.raises(BadInput, match="not in the local model cache"):
        Downloader().download_via_name("scgpt/scGPT_CP/best_model.pt")
    with pytest.raises(BadInput, match="network"):
        Downloader().download_via_link(tmp_path / "x", "https://example.invalid/x")
