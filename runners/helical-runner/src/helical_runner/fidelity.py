"""How far a reduced-precision embedding is from fp32 on the same cells.

Every run that is not fp32 embeds a sample of its cells twice, at fp32 and
at the chosen precision, with the same loaded model, and compares them:

- per-cell cosine similarity of the two embeddings (min, 1st percentile,
  median, mean);
- on labelled data (the profile's ``fidelity.label_key`` column of obs),
  kNN label-transfer agreement: each sampled cell gets the majority label of
  its ``k`` nearest other sampled cells (cosine), once in fp32 space and
  once in reduced-precision space; the agreement is the fraction of cells
  whose two predicted labels are the same.

The sample is the first ``sample_cells`` cells (default 256) of the shard's
cell range, those with counts in the model's genes: deterministic, so a re-run
measures the same cells. A process that embeds several shards with one loaded
model measures on the first shard it embeds and records those figures in
every later shard's manifest (``measured_on_an_earlier_shard: true``). The profile's thresholds decide whether the
run goes on: below them it fails with a :class:`~helical_runner.errors.BadInput`
(exit 2, nothing written) or, with ``on_low_fidelity: fp32``, runs at fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BadInput

#: the profile's ``fidelity`` keys and their defaults
DEFAULTS: dict[str, Any] = {
    "sample_cells": 256,
    "min_cosine": 0.99,
    "min_median_cosine": 0.999,
    "min_knn_agreement": None,
    "knn_k": 10,
    "label_key": "cell_type",
    "on_low_fidelity": "fail",
}
ON_LOW = ("fail", "fp32")


@dataclass(frozen=True)
class Policy:
    """The profile's fidelity thresholds and what to do below them."""

    sample_cells: int = DEFAULTS["sample_cells"]
    min_cosine: float = DEFAULTS["min_cosine"]
    min_median_cosine: float = DEFAULTS["min_median_cosine"]
    min_knn_agreement: float | None = DEFAULTS["min_knn_agreement"]
    knn_k: int = DEFAULTS["knn_k"]
    label_key: str | None = DEFAULTS["label_key"]
    on_low_fidelity: str = DEFAULTS["on_low_fidelity"]

    @classmethod
    def from_profile(cls, section: dict | None, where: str = "profile") -> Policy:
        """Validate a profile's ``fidelity`` mapping (missing keys take the defaults)."""
        section = dict(section or {})
        unknown = sorted(set(section) - set(DEFAULTS))
        if unknown:
            raise BadInput(f"fidelity has unknown keys {', '.join(unknown)}", where=where)
        merged = {**DEFAULTS, **section}
        for key in ("sample_cells", "knn_k"):
            value = merged[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BadInput(
                    f"fidelity.{key} must be a positive integer, not {value!r}", where=where
                )
        for key in ("min_cosine", "min_median_cosine", "min_knn_agreement"):
            value = merged[key]
            if value is None and key == "min_knn_agreement":
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not -1 <= value <= 1
            ):
                raise BadInput(
                    f"fidelity.{key} must be a number in [-1, 1], not {value!r}", where=where
                )
        if merged["on_low_fidelity"] not in ON_LOW:
            raise BadInput(
                f"fidelity.on_low_fidelity must be one of {', '.join(ON_LOW)}, "
                f"not {merged['on_low_fidelity']!r}",
                where=where,
            )
        return cls(**merged)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in DEFAULTS}


def cosine_per_cell(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``candidate`` with the same row of ``reference``.

    Rows that are zero in both count as 1 (identical), zero in one only as 0.
    """
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {candidate.shape}")
    dot = np.einsum("ij,ij->i", reference, candidate)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    both_zero = norms == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(both_zero, 1.0, dot / np.where(both_zero, 1.0, norms))
    same_zero = both_zero & ~np.any(reference, axis=1) & ~np.any(candidate, axis=1)
    cos[both_zero & ~same_zero] = 0.0
    return np.clip(cos, -1.0, 1.0)


def knn_predict(embeddings: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Each row's majority label among its ``k`` nearest other rows (cosine; ties: the
    label of the nearer neighbours first, then the smaller label code)."""
    x = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms == 0, 1.0, norms)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    k = max(1, min(k, len(x) - 1))
    codes, labels = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    votes = np.zeros((len(x), len(codes)))
    # nearer neighbours weigh a little more, so ties break the same way in both spaces
    weights = 1.0 + 1e-6 * np.arange(k, 0, -1)
    np.add.at(
        votes, (np.repeat(np.arange(len(x)), k), labels[nearest].ravel()), np.tile(weights, len(x))
    )
    return votes.argmax(axis=1)


def compare(
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    k: int = DEFAULTS["knn_k"],
) -> dict[str, Any]:
    """Fidelity figures of ``candidate`` against ``reference`` (fp32) on the same cells.

    Returns
    -------
    dict
        ``cells``, ``cosine`` {min, p1, median, mean}, ``max_abs_diff`` and, when
        ``labels`` are given for at least 3 cells, ``knn_agreement``, ``knn_k``.
    """
    cos = cosine_per_cell(reference, candidate)
    result: dict[str, Any] = {"cells": len(cos)}
    if len(cos):
        result["cosine"] = {
            "min": float(cos.min()),
            "p1": float(np.quantile(cos, 0.01)),
            "median": float(np.median(cos)),
            "mean": float(cos.mean()),
        }
        result["max_abs_diff"] = float(np.max(np.abs(reference - candidate)))
    else:
        result["cosine"] = None
        result["max_abs_diff"] = None
    if labels is not None and len(cos) >= 3:
        k = max(1, min(k, len(cos) - 1))
        agree = knn_predict(reference, labels, k) == knn_predict(candidate, labels, k)
        result["knn_agreement"] = float(agree.mean())
        result["knn_k"] = int(k)
    return result


def shortfalls(figures: dict[str, Any], policy: Policy) -> list[str]:
    """What in ``figures`` falls below ``policy``'s thresholds (empty: it passes)."""
    found = []
    cosine = figures.get("cosine")
    if cosine is None:
        return found
    if cosine["min"] < policy.min_cosine:
        found.append(f"min cosine {cosine['min']:.6f} < {policy.min_cosine}")
    if cosine["median"] < policy.min_median_cosine:
        found.append(f"median cosine {cosine['median']:.6f} < {policy.min_median_cosine}")
    agreement = figures.get("knn_agreement")
    if (
        policy.min_knn_agreement is not None
        and agreement is not None
        and agreement < policy.min_knn_agreement
    ):
        found.append(f"kNN label agreement {agreement:.4f} < {policy.min_knn_agreement}")
    return found


def summary(figures: dict[str, Any]) -> str:
    """One short line of the figures, for logs and error messages."""
    cosine = figures.get("cosine") or {}
    text = (
        f"{figures.get('cells', 0)} cells, cosine min {cosine.get('min', float('nan')):.6f} "
        f"p1 {cosine.get('p1', float('nan')):.6f} median {cosine.get('median', float('nan')):.6f}"
    )
    if figures.get("knn_agreement") is not None:
        text += f", kNN agreement {figures['knn_agreement']:.4f}"
    return text
