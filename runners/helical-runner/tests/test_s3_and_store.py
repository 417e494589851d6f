"""s3:// input and output against moto's S3 server on loopback; model store mirror/fetch over S3."""

from __future__ import annotations

import json

import anndata as ad
import boto3
import numpy as np

from conftest import run, run_captured


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


def test_ls_lists_h5ad_under_prefixes_and_folders(moto_s3, tmp_path, capsys):
    s3 = boto3.client("s3", endpoint_url=moto_s3)
    s3.create_bucket(Bucket="lake")
    for key in ("atlas/b.h5ad", "atlas/a.h5ad", "atlas/deep/c.h5ad", "atlas/notes.txt", "x.h5ad"):
        s3.put_object(Bucket="lake", Key=key, Body=b"-")
    (tmp_path / "two.h5ad").write_bytes(b"-")
    (tmp_path / "one.h5ad").write_bytes(b"-")
    code, out, _ = run_captured(capsys, "ls", "s3://lake/atlas/", str(tmp_path))
    assert code == 0
    assert json.loads(out)["datasets"] == {
        "s3://lake/atlas/": [
            "s3://lake/atlas/a.h5ad",
            "s3://lake/atlas/b.h5ad",
            "s3://lake/atlas/deep/c.h5ad",
        ],
        str(tmp_path): [str(tmp_path / "one.h5ad"), str(tmp_path / "two.h5ad")],
    }
    code, _, err = run_captured(capsys, "ls", str(tmp_path / "missing"))
    assert code == 2 and "no such file or folder" in err


def test_provenance_is_written_to_s3_with_the_manifests_read_there(moto_s3, capsys):
    import base64
    import zlib

    s3 = boto3.client("s3", endpoint_url=moto_s3)
    s3.create_bucket(Bucket="prov")
    manifest = {
        "selection": {"cells": 120},
        "model": {"artifacts": {"model.safetensors": "ab" * 32}},
        "versions": {"helical": "1.0"},
        "demo_weights": True,
    }
    s3.put_object(
        Bucket="prov", Key="run/a/embeddings/gf.h5ad.manifest.json", Body=json.dumps(manifest)
    )
    record = {
        "run_id": "r1",
        "outputs": [
            {"output": "s3://prov/run/a/embeddings/gf.h5ad", "status": "merged"},
            {"output": "s3://prov/run/b/embeddings/gf.h5ad", "status": "missing"},
        ],
    }
    packed = base64.urlsafe_b64encode(zlib.compress(json.dumps(record).encode())).decode()
    code, out, _ = run_captured(
        capsys, "provenance", "--output", "s3://prov/run/provenance.json", "--record-z", packed
    )
    assert code == 0 and json.loads(out)["provenance"] == "s3://prov/run/provenance.json"
    written = json.loads(s3.get_object(Bucket="prov", Key="run/provenance.json")["Body"].read())
    merged, missing = written["outputs"]
    assert merged["cells"] == 120 and merged["versions"] == {"helical": "1.0"}
    assert merged["model_artifacts"] == {"model.safetensors": "ab" * 32} and merged["demo_weights"]
    assert missing == {"output": "s3://prov/run/b/embeddings/gf.h5ad", "status": "missing"}
    code, _, err = run_captured(
        capsys, "provenance", "--output", "s3://prov/run/p2.json", "--record-z", "not-base64!"
    )
    assert code == 2 and "--record-z" in err
    assert s3.list_objects_v2(Bucket="prov", Prefix="run/p2.json").get("KeyCount", 0) == 0
