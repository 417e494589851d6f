"""Reduced precision: fidelity vs fp32 in every non-fp32 manifest, its thresholds, and
``auto`` decided by a cached calibration.

Nothing here depends on the host CPU: runs ask for bf16 explicitly (honoured on
any CPU, native units or not) or force the CPU flags ``auto`` sees.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import run, run_captured
from helical_runner import calibrate, fidelity, precision, profiles
from helical_runner.errors import EXIT_BAD_INPUT, BadInput

AMX = {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}
NO_AMX = {"avx512f", "avx512_bf16"}  # an AMD EPYC seen in CI: no AMX


def manifest_of(out: Path) -> dict:
    return json.loads(out.with_name(out.name + ".manifest.json").read_text())


def profile_with(tmp_path: Path, model: str, **fidelity_keys) -> Path:
    data = yaml.safe_load(Path(profiles.PROFILES_DIR, f"{model}.yaml").read_text())
    data["fidelity"] = fidelity_keys
    path = tmp_path / f"{model}-fidelity.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory, datasets):
    """The first 300 cells of the symbol dataset (scGPT and UCE) and the Ensembl one."""
    import anndata as ad

    root = tmp_path_factory.mktemp("fidelity-data")
    made = {}
    for name in ("symbol-csr", "ensembl-csr"):
        adata = ad.read_h5ad(datasets[name])[:300].copy()
        made[name] = root / f"{name}.h5ad"
        adata.write_h5ad(made[name])
    return made


@pytest.fixture
def flags(monkeypatch):
    """Force the CPU flags precision's pre-filter and the calibration key see."""

    def force(found: set[str]) -> None:
        monkeypatch.setattr(precision, "cpu_flags", lambda *a: set(found))
        monkeypatch.setattr(calibrate, "cpu_flags", lambda *a: set(found))

    return force


# ---------------------------------------------------------------- the measure


def test_compare_figures():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 16)).astype(np.float32)
    same = fidelity.compare(ref, ref.copy(), labels=np.repeat(["a", "b"], 25))
    assert same["cells"] == 50 and same["cosine"]["min"] == pytest.approx(1.0)
    assert same["knn_agreement"] == 1.0 and same["max_abs_diff"] == 0.0
    noisy = ref + rng.normal(scale=0.3, size=ref.shape).astype(np.float32)
    figures = fidelity.compare(ref, noisy)
    cos = figures["cosine"]
    assert cos["min"] <= cos["p1"] <= cos["median"] < 1.0 and "knn_agreement" not in figures
    assert fidelity.shortfalls(figures, fidelity.Policy()) != []
    assert fidelity.shortfalls(same, fidelity.Policy(min_cosine=1 - 1e-9)) == []


def test_cosine_of_zero_rows():
    zero, one = np.zeros((1, 3)), np.ones((1, 3))
    assert fidelity.cosine_per_cell(zero, zero)[0] == 1.0
    assert fidelity.cosine_per_cell(zero, one)[0] == 0.0


@pytest.mark.parametrize(
    "section, needle",
    [
        ({"min_cosine": 2}, "min_cosine"),
        ({"on_low_fidelity": "ignore"}, "on_low_fidelity"),
        ({"sample_cells": 0}, "sample_cells"),
        ({"min_cosin": 0.9}, "unknown keys"),
    ],
)
def test_profile_fidelity_section_is_checked(tmp_path, section, needle):
    with pytest.raises(BadInput, match=needle):
        profiles.load(str(profile_with(tmp_path, "scgpt", **section)))


# ---------------------------------------------------------------- runs


def test_bf16_run_records_fidelity(tmp_path, bundle, small):
    out = tmp_path / "bf16.h5ad"
    code = run(
        "embed", "--input", small["symbol-csr"], "--model", "scgpt", "--output", out,
        "--model-store", bundle, "--precision", "bf16",
    )  # fmt: skip
    assert code == 0
    manifest = manifest_of(out)
    assert manifest["precision"] == "bf16" and manifest["calibration"] is None
    fid = manifest["fidelity"]
    assert fid["passed"] is True and fid["against"] == "fp32" and fid["cells"] == 256
    assert set(fid["cosine"]) == {"min", "p1", "median", "mean"}
    assert 0.99 <= fid["cosine"]["min"] <= fid["cosine"]["median"] <= 1.0
    assert fid["label_key"] == "cell_type" and 0.0 <= fid["knn_agreement"] <= 1.0
    assert manifest["timings"]["fidelity_s"] > 0


def test_fp32_run_measures_nothing(tmp_path, bundle, small):
    out = tmp_path / "fp32.h5ad"
    code = run(
        "embed", "--input", small["symbol-csr"], "--model", "scgpt", "--output", out,
        "--model-store", bundle, "--precision", "fp32",
    )  # fmt: skip
    assert code == 0
    manifest = manifest_of(out)
    assert manifest["fidelity"] is None and "fidelity_s" not in manifest["timings"]


def test_low_fidelity_fails_cleanly(tmp_path, bundle, small, capsys):
    """Threshold 1.0: bf16 never reaches it; one clear line, exit 2, nothing written."""
    prof = profile_with(tmp_path, "scgpt", min_cosine=1.0, min_median_cosine=1.0)
    out = tmp_path / "out" / "emb.h5ad"
    out.parent.mkdir()
    code, _, err = run_captured(
        capsys, "embed", "--input", small["symbol-csr"], "--model", "scgpt", "--output", out,
        "--model-store", bundle, "--precision", "bf16", "--profile", prof,
    )  # fmt: skip
    assert code == EXIT_BAD_INPUT, err
    lines = [line for line in err.splitlines() if line.startswith("helical-runner:")]
    assert len(lines) == 1, err
    assert "below the profile's fidelity thresholds" in lines[0]
    assert "min cosine" in lines[0] and "< 1.0" in lines[0]
    assert sorted(p.name for p in out.parent.iterdir()) == []


def test_low_fidelity_falls_back_to_fp32(tmp_path, bundle, small):
    prof = profile_with(tmp_path, "scgpt", min_cosine=1.0, on_low_fidelity="fp32")
    out = tmp_path / "emb.h5ad"
    code = run(
        "embed", "--input", small["symbol-csr"], "--model", "scgpt", "--output", out,
        "--model-store", bundle, "--precision", "bf16", "--profile", prof,
    )  # fmt: skip
    assert code == 0
    manifest = manifest_of(out)
    assert manifest["precision"] == "fp32"
    assert (
        manifest["fidelity"]["passed"] is False and manifest["fidelity"]["fell_back_to"] == "fp32"
    )
    assert "on_low_fidelity: fp32" in manifest["precision_reason"]


# ---------------------------------------------------------------- auto


def test_auto_without_amx_is_fp32_unmeasured(tmp_path, bundle, small, flags):
    flags(NO_AMX)
    out = tmp_path / "emb.h5ad"
    code = run(
        "embed", "--input", small["ensembl-csr"], "--model", "geneformer", "--output", out,
        "--model-store", bundle,
    )  # fmt: skip
    assert code == 0
    manifest = manifest_of(out)
    assert manifest["precision"] == "fp32" and manifest["precision_requested"] == "auto"
    assert manifest["calibration"] is None and manifest["fidelity"] is None
    assert "no AMX" in manifest["precision_reason"]


def test_auto_with_amx_calibrates_once(tmp_path, bundle, small, flags, monkeypatch):
    flags(AMX)
    monkeypatch.setenv(calibrate.CACHE_ENV, str(tmp_path / "calibration"))
    manifests = []
    for name in ("first", "second"):
        out = tmp_path / f"{name}.h5ad"
        code = run(
            "embed", "--input", small["ensembl-csr"], "--model", "geneformer", "--output", out,
            "--model-store", bundle,
        )  # fmt: skip
        assert code == 0
        manifests.append(manifest_of(out))
    first, second = (m["calibration"] for m in manifests)
    assert first["cache_hit"] is False and second["cache_hit"] is True
    assert first["candidate"] == "bf16" and first["chosen"] in ("fp32", "bf16")
    assert set(first["best_seconds"]) == {"fp32", "bf16"} and first["speedup"] > 0
    assert first["fidelity"]["cosine"]["min"] > 0.99
    assert first["device"]["flags"] == sorted(AMX)
    assert second["chosen"] == first["chosen"] and second["speedup"] == first["speedup"]
    assert len(list((tmp_path / "calibration").glob("geneformer-*.json"))) == 1
    for m in manifests:
        assert m["precision"] == first["chosen"] and "calibrated" in m["precision_reason"]
        assert (m["fidelity"] is None) == (m["precision"] == "fp32")
    assert manifests[0]["timings"]["calibration_s"] > 0


def test_decide_needs_speed_and_fidelity():
    good = {"cells": 8, "cosine": {"min": 0.999, "p1": 0.999, "median": 0.9999, "mean": 0.9999}}
    bad = {**good, "cosine": {**good["cosine"], "min": 0.9}}
    policy = fidelity.Policy()
    assert calibrate.decide({"speedup": 2.0, "fidelity": good}, "bf16", policy)[0] == "bf16"
    assert calibrate.decide({"speedup": 1.01, "fidelity": good}, "bf16", policy)[0] == "fp32"
    chosen, why = calibrate.decide({"speedup": 2.0, "fidelity": bad}, "bf16", policy)
    assert chosen == "fp32" and "min cosine" in why


def test_shards_of_one_process_share_one_measurement(tmp_path, bundle, small):
    a, b = tmp_path / "a.h5ad", tmp_path / "b.h5ad"
    code = run(
        "embed", "--input", small["symbol-csr"], "--model", "scgpt", "--model-store", bundle,
        "--precision", "bf16", "--cells", "0:150", "--output", a, "--cells", "150:300",
        "--output", b,
    )  # fmt: skip
    assert code == 0
    first, second = manifest_of(a)["fidelity"], manifest_of(b)["fidelity"]
    assert first["cells"] == 150 and "measured_on_an_earlier_shard" not in first
    assert second["measured_on_an_earlier_shard"] is True
    assert second["cosine"] == first["cosine"]
    assert "fidelity_s" not in manifest_of(b)["timings"]
