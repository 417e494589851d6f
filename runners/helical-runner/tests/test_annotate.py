"""`helical-runner annotate`: train on a labelled reference, label queries, report.

Reference and queries come from the demo generator with one seed, so they
share the cell-type programmes (the generator draws them from the seed) but
not their cells.
"""

from __future__ import annotations

import hashlib
import json
import signal

import anndata as ad
import numpy as np
import pytest

from conftest import run, run_captured, runner_process, wait_until
from helical_runner.demo_data import write_demo_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("annotate")
    return {
        "root": root,
        "reference": write_demo_dataset(root / "reference.h5ad", n_cells=600, seed=1),
        "query": write_demo_dataset(root / "query.h5ad", n_cells=300, seed=1),
    }


@pytest.fixture(scope="module")
def pca(data):
    out = data["root"] / "classifiers" / "pca.npz"
    code = run(
        "annotate", "train", "--reference", data["reference"], "--label-key", "cell_type",
        "--model", "pca", "--output", out,
    )  # fmt: skip
    assert code == 0
    return out


@pytest.fixture(scope="module")
def scgpt(data, bundle):
    """Real scGPT embeddings (demo weights) of reference and query, and a classifier on them."""
    made = {}
    for name in ("reference", "query"):
        made[name] = data["root"] / "embeddings" / f"{name}-scgpt.h5ad"
        assert run(
            "embed", "--input", data[name], "--model", "scgpt", "--output", made[name],
            "--model-store", bundle,
        ) == 0  # fmt: skip
    made["classifier"] = data["root"] / "classifiers" / "scgpt.npz"
    assert run(
        "annotate", "train", "--reference", made["reference"], "--label-key", "cell_type",
        "--model", "scgpt", "--output", made["classifier"],
    ) == 0  # fmt: skip
    return made


def test_a_reference_of_counts_is_embedded_first(data, bundle, scgpt, capsys):
    out = data["root"] / "classifiers-from-counts" / "scgpt.npz"
    code, _, err = run_captured(
        capsys, "annotate", "train", "--reference", data["reference"], "--label-key",
        "cell_type", "--model", "scgpt", "--output", out, "--model-store", bundle,
    )  # fmt: skip
    assert code == 0, err
    manifest = _manifest(out)
    embedded = out.with_name("scgpt.npz.reference-embeddings.h5ad")
    assert manifest["reference"]["uri"] == str(data["reference"])
    assert manifest["reference"]["features_uri"] == str(embedded)
    # the same weights and data as the explicit embed: the same embeddings, the same classifier
    np.testing.assert_array_equal(
        ad.read_h5ad(embedded).obsm["X_scgpt"], ad.read_h5ad(scgpt["reference"]).obsm["X_scgpt"]
    )
    assert manifest["scores"] == _manifest(scgpt["classifier"])["scores"]


def _manifest(path) -> dict:
    return json.loads(path.with_name(path.name + ".manifest.json").read_text())


def test_pca_baseline_scores_on_held_out_cells(pca):
    manifest = _manifest(pca)
    assert manifest["classifier"]["sha256"] == hashlib.sha256(pca.read_bytes()).hexdigest()
    scores = manifest["scores"]
    assert scores["macro_f1"] > 0.9  # the demo cell types are separable by construction
    split = manifest["split"]
    assert split["held_out_cells"] + split["train_cells"] == 600
    assert scores["held_out_cells"] == split["held_out_cells"] == pytest.approx(120, abs=3)
    # stratified: each class holds out ~20% of its cells
    reference = ad.read_h5ad(manifest["reference"]["uri"])
    sizes = reference.obs["cell_type"].value_counts()
    for name, row in scores["per_class"].items():
        assert row["support"] == pytest.approx(0.2 * sizes[name], abs=1)
        assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
    matrix = np.array(scores["confusion"]["matrix"])
    assert matrix.sum() == split["held_out_cells"]
    assert manifest["feature_space"]["kind"] == "genes"
    assert manifest["feature_space"]["genes"] == 2000


def test_train_again_finds_the_classifier_done(data, pca, capsys):
    before = pca.stat().st_mtime_ns
    code, out, _ = run_captured(
        capsys, "annotate", "train", "--reference", data["reference"], "--label-key",
        "cell_type", "--model", "pca", "--output", pca,
    )  # fmt: skip
    assert code == 0 and json.loads(out)["macro_f1"] > 0.9
    assert pca.stat().st_mtime_ns == before


def test_predict_labels_a_query_and_names_its_classifier(data, pca, capsys):
    out = data["root"] / "labelled" / "query-pca.h5ad"
    code, stdout, _ = run_captured(
        capsys, "annotate", "predict", "--classifier", pca, "--input", data["query"],
        "--output", out, "--cells-per-chunk", "64",
    )  # fmt: skip
    assert code == 0, stdout
    labelled, truth = ad.read_h5ad(out), ad.read_h5ad(data["query"])
    assert list(labelled.obs_names) == list(truth.obs_names)
    agree = labelled.obs["pca_label"].astype(str) == truth.obs["cell_type"].astype(str)
    assert agree.mean() > 0.9
    confidence = labelled.obs["pca_label_confidence"].to_numpy()
    assert ((confidence >= 0) & (confidence <= 1)).all()
    proba = labelled.obsm["pca_label_probabilities"]
    assert proba.shape == (300, 5)
    np.testing.assert_allclose(proba.max(axis=1), confidence, rtol=1e-6)
    manifest = _manifest(out)
    assert manifest["classifier"]["sha256"] == hashlib.sha256(pca.read_bytes()).hexdigest()
    assert manifest["reference"]["uri"] == str(data["reference"])
    assert manifest["held_out_scores"]["macro_f1"] > 0.9
    assert manifest["chunks"] == 5 and manifest["unknown_cells"] == int((confidence < 0.5).sum())
    assert not out.with_name(out.name + ".partial").exists()


def test_low_confidence_cells_are_marked_unknown(data, pca, capsys):
    # Another seed draws other cell-type programmes: this "query" matches no reference type.
    stranger = write_demo_dataset(data["root"] / "stranger.h5ad", n_cells=200, seed=7)
    out = data["root"] / "labelled" / "stranger.h5ad"
    code, _, err = run_captured(
        capsys, "annotate", "predict", "--classifier", pca, "--input", stranger, "--output", out,
        "--min-confidence", "0.9",
    )  # fmt: skip
    assert code == 0, err
    labels = ad.read_h5ad(out).obs["pca_label"]
    assert (labels == "unknown").mean() > 0.5
    confident = ad.read_h5ad(out).obs["pca_label_confidence"] >= 0.9
    assert (labels[confident] != "unknown").all()


def test_scgpt_classifier_and_report_beside_the_baseline(data, pca, scgpt, capsys):
    manifest = _manifest(scgpt["classifier"])
    assert manifest["feature_space"] == {"kind": "embedding", "model": "scgpt", "key": "X_scgpt",
                                         "dim": manifest["feature_space"]["dim"]}  # fmt: skip
    assert manifest["reference"]["embedding_manifest"]["artifacts"]
    assert manifest["reference"]["embedding_manifest"]["demo_weights"] is True
    out = data["root"] / "labelled" / "query-scgpt.h5ad"
    assert run("annotate", "predict", "--classifier", scgpt["classifier"],
               "--input", scgpt["query"], "--output", out) == 0  # fmt: skip
    assert "scgpt_label" in ad.read_h5ad(out).obs
    report = data["root"] / "report"
    code, out_text, _ = run_captured(
        capsys, "annotate", "report", "--classifiers", scgpt["classifier"], pca.parent,
        "--predictions", out, "--output", report,
    )  # fmt: skip
    assert code == 0
    assert json.loads(out_text) == {"report": str(report / "annotation.html")}
    page = (report / "annotation.html").read_text()
    for name in ("confusion_pca.png", "confusion_scgpt.png", "macro_f1.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert name in page
    assert "scgpt" in page and "pca (baseline)" in page and "DEMO weights" in page
    summary = json.loads((report / "annotation.json").read_text())
    assert list(summary["models"]) == ["scgpt", "pca"]
    assert summary["models"]["pca"]["macro_f1"] > 0.9


# ------------------------------------------------------------------- bad input


def _one_class(root):
    path = write_demo_dataset(root / "one-class.h5ad", n_cells=100, seed=1)
    adata = ad.read_h5ad(path)
    adata.obs["cell_type"] = "T cell"
    adata.write_h5ad(path)
    return path


BAD = {
    "no label key": (
        lambda d, s: ["train", "--reference", d["reference"], "--label-key", "celltype",
                      "--model", "pca"], "no label column 'celltype'"),
    "one class": (
        lambda d, s: ["train", "--reference", _one_class(d["root"]), "--label-key", "cell_type",
                      "--model", "pca"], "only 'T cell'"),
    "reference of another model": (
        lambda d, s: ["train", "--reference", s["reference"], "--label-key", "cell_type",
                      "--model", "geneformer"], "no X_geneformer embedding"),
    "classifier of another model": (
        lambda d, s: ["predict", "--classifier", s["classifier"], "--input", d["query"]],
        "no X_scgpt embedding"),
    "pca classifier on embeddings": (
        lambda d, s: ["predict", "--classifier", d["root"] / "classifiers" / "pca.npz",
                      "--input", s["query"]], "no expression matrix"),
    "query missing genes": (
        lambda d, s: ["predict", "--classifier", d["root"] / "classifiers" / "pca.npz",
                      "--input", write_demo_dataset(d["root"] / "fewer-genes.h5ad", n_cells=50,
                                                    n_genes=1500, seed=1)],
        "lacks 500 of the classifier's 2,000 genes"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(data, pca, scgpt, capsys, case):
    build, message = BAD[case]
    out = data["root"] / "bad" / f"{case.replace(' ', '-')}.out"
    code, _, err = run_captured(capsys, "annotate", *build(data, scgpt), "--output", out)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("helical-runner:")]
    assert len(lines) == 1 and message in lines[0], err
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_tampered_classifier_is_refused(data, pca, capsys, tmp_path):
    copy = tmp_path / "pca.npz"
    blob = bytearray(pca.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    copy.write_bytes(bytes(blob))
    copy.with_name("pca.npz.manifest.json").write_text(
        pca.with_name("pca.npz.manifest.json").read_text()
    )
    code, _, err = run_captured(capsys, "annotate", "predict", "--classifier", copy,
                                "--input", data["query"], "--output", tmp_path / "o.h5ad")  # fmt: skip
    assert code == 2 and "checksum" in err
    assert not (tmp_path / "o.h5ad").exists()


# ---------------------------------------------------------------------- resume


def test_sigkill_then_resume_equals_uninterrupted(data, pca, tmp_path):
    query = write_demo_dataset(tmp_path / "big-query.h5ad", n_cells=40000, seed=1)
    args = ["--classifier", pca, "--input", query, "--cells-per-chunk", "100"]
    killed = tmp_path / "killed" / "labels.h5ad"
    proc = runner_process("annotate", "predict", *args, "--output", killed)
    partial = killed.with_name("labels.h5ad.partial")

    def parts_done():
        return len(list(partial.glob("*/cells-*.npy"))) >= 3 or proc.poll() is not None

    wait_until(parts_done, 120, "three finished chunks", interval=0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "run ended before it could be killed"
    before = len(list(partial.glob("*/cells-*.npy")))
    assert 3 <= before < 400
    assert not killed.exists() and not killed.with_name("labels.h5ad.manifest.json").exists()

    resumed = runner_process("annotate", "predict", *args, "--output", killed)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    manifest = _manifest(killed)
    assert manifest["chunks"] == 400 and manifest["resumed_chunks"] >= before
    assert not partial.exists()

    clean = tmp_path / "clean" / "labels.h5ad"
    full = runner_process("annotate", "predict", *args, "--output", clean)
    _, err = full.communicate(timeout=300)
    assert full.returncode == 0, err
    a, b = ad.read_h5ad(killed), ad.read_h5ad(clean)
    assert list(a.obs_names) == list(b.obs_names)
    assert (a.obs["pca_label"] == b.obs["pca_label"]).all()
    np.testing.assert_array_equal(a.obs["pca_label_confidence"], b.obs["pca_label_confidence"])
    np.testing.assert_array_equal(
        a.obsm["pca_label_probabilities"], b.obsm["pca_label_probabilities"]
    )
