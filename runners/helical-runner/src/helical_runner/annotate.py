"""Cell-type annotation: a classifier learnt on a labelled reference, transferred to queries.

``train`` fits a one-vs-rest logistic regression
(scikit-learn's ``SGDClassifier``, log loss) in streamed mini-batches on
either

* the embeddings of a reference: an ``embed`` output (``obsm["X_<model>"]``
  plus the dataset's ``obs``, labels included), or the reference dataset
  itself, which ``train`` then embeds first with ``embed`` (beside the
  classifier, reused by later trainings), or
* for the baseline model ``pca``: the reference's raw counts, log-normalised
  and projected by an incremental PCA fitted on the training cells,

so memory depends on the chunk size, never on the reference size. A
stratified share of the labelled cells is held out; macro-F1, per-class
precision/recall and the confusion matrix on those cells go into the
classifier's manifest.

The classifier is one ``.npz`` of plain arrays (no pickle) plus
``<output>.manifest.json`` with its sha256, the feature space (model and
embedding key, or the gene list), the reference and the scores.

``predict`` streams a query (embeddings of the same model, or counts for
``pca``), writes per-chunk class probabilities as resumable parts (the same
machinery as ``embed``), and assembles an ``.h5ad`` with
``obs["<model>_label"]`` (``unknown`` below the confidence threshold),
``obs["<model>_label_confidence"]`` and ``obsm["<model>_label_probabilities"]``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from . import genes, metrics, output, storage
from .dataset import H5AD, iter_chunks
from .embed import MANIFEST_SUFFIX, Parts, run_key, versions
from .errors import BadInput

LOG = logging.getLogger("helical_runner.annotate")

BASELINE = "pca"
UNKNOWN = "unknown"
KIND = "helical_annotation_classifier"
HELD_OUT_FRACTION = 0.2
MIN_CELLS_PER_CLASS = 2
PCA_COMPONENTS = 50
EMBEDDING_ROWS_PER_CHUNK = 8192
# dense values per counts chunk (cells x genes) for the PCA baseline: 16 MiB of float32
COUNTS_VALUES_PER_CHUNK = 1 << 22
TARGET_SUM = 1e4


# ------------------------------------------------------------------ features


class EmbeddingFeatures:
    """Rows of ``obsm["X_<model>"]`` of an ``embed`` output, read chunk by chunk."""

    kind = "embedding"

    def __init__(self, h5: H5AD, model: str):
        self.h5 = h5
        self.model = model
        self.key = output.embedding_key(model)
        obsm = h5.file.get("obsm")
        found = sorted(k for k in (obsm or {}) if k.startswith("X_"))
        if obsm is None or self.key not in obsm:
            raise BadInput(
                f"no {self.key} embedding in obsm (found {found or 'none'}); give the output of "
                f"'helical-runner embed --model {model}'"
                + (" or counts for the pca baseline" if model != BASELINE else ""),
                where=h5.uri,
            )
        self.dset = obsm[self.key]
        self.dim = int(self.dset.shape[1])
        self.rows_per_chunk = EMBEDDING_ROWS_PER_CHUNK

    def rows(self, lo: int, hi: int) -> np.ndarray:
        return np.asarray(self.dset[lo:hi], dtype=np.float32)

    def space(self) -> dict:
        return {"kind": self.kind, "model": self.model, "key": self.key, "dim": self.dim}


def gene_keys(h5: H5AD, counts_where: str) -> tuple[np.ndarray, str]:
    """One comparable identifier per gene: version-less Ensembl id, else upper-case symbol."""
    ids = genes.find_ids(h5.var(counts_where))
    if ids.ensembl is not None:
        return ids.ensembl.fillna("").to_numpy(dtype=str), "ensembl"
    return ids.symbols.str.upper().fillna("").to_numpy(dtype=str), "symbol"


class CountsFeatures:
    """Log-normalised counts of a fixed gene list (the baseline's input), read chunk by chunk.

    Totals are taken over the listed genes only, so a query's extra genes
    do not change the values the classifier sees.
    """

    kind = "genes"

    def __init__(self, h5: H5AD, gene_list: np.ndarray | None = None, id_kind: str | None = None):
        self.h5 = h5
        self.counts = h5.counts_matrix()
        keys, kind = gene_keys(h5, self.counts.where)
        if gene_list is None:
            keep = np.flatnonzero(keys != "")
            _, first = np.unique(keys[keep], return_index=True)
            self.columns = keep[np.sort(first)]
            self.genes = keys[self.columns]
            self.id_kind = kind
        else:
            if id_kind != kind:
                raise BadInput(
                    f"the classifier's genes are {id_kind} identifiers, the query's are {kind}",
                    where=h5.uri,
                )
            position = pd.Series(np.arange(len(keys)), index=keys)
            position = position[~position.index.duplicated()]
            missing = [g for g in gene_list if g not in position.index]
            if missing:
                raise BadInput(
                    f"the query lacks {len(missing):,} of the classifier's {len(gene_list):,} "
                    f"genes (e.g. '{missing[0]}'); the pca classifier needs every one",
                    where=h5.uri,
                )
            self.columns = position.loc[list(gene_list)].to_numpy()
            self.genes = np.asarray(gene_list, dtype=str)
            self.id_kind = kind
        if not len(self.genes):
            raise BadInput("no usable gene identifiers in var", where=h5.uri)
        self.dim = len(self.genes)
        self.rows_per_chunk = int(np.clip(COUNTS_VALUES_PER_CHUNK // self.dim, 256, 8192))

    def rows(self, lo: int, hi: int) -> np.ndarray:
        x = self.counts.rows(lo, hi)[:, self.columns].toarray()
        totals = x.sum(axis=1, keepdims=True)
        totals[totals == 0] = 1.0
        return np.log1p(x * (TARGET_SUM / totals)).astype(np.float32)

    def space(self) -> dict:
        digest = hashlib.sha256("\n".join(self.genes).encode()).hexdigest()
        return {
            "kind": self.kind,
            "id_kind": self.id_kind,
            "genes": self.dim,
            "genes_sha256": digest,
        }


def open_features(h5: H5AD, model: str):
    return CountsFeatures(h5) if model == BASELINE else EmbeddingFeatures(h5, model)


# ---------------------------------------------------------------- classifier


@dataclass
class Classifier:
    """Everything prediction needs, as plain arrays (what the ``.npz`` holds)."""

    classes: np.ndarray
    coef: np.ndarray  # (classes or 1, features)
    intercept: np.ndarray
    scale_mean: np.ndarray
    scale_std: np.ndarray
    pca_components: np.ndarray | None = None
    pca_mean: np.ndarray | None = None
    genes: np.ndarray | None = None

    def features(self, x: np.ndarray) -> np.ndarray:
        if self.pca_components is not None:
            x = (x - self.pca_mean) @ self.pca_components.T
        return (x - self.scale_mean) / self.scale_std

    def proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities as scikit-learn's one-vs-rest log-loss model gives them."""
        scores = self.features(x) @ self.coef.T + self.intercept
        p = 1.0 / (1.0 + np.exp(-np.clip(scores, -50, 50)))
        if p.shape[1] == 1:
            return np.hstack([1 - p, p]).astype(np.float32)
        total = p.sum(axis=1, keepdims=True)
        total[total == 0] = 1.0
        return (p / total).astype(np.float32)

    def to_bytes(self) -> bytes:
        arrays = {k: v for k, v in vars(self).items() if v is not None}
        arrays["classes"] = np.asarray(self.classes, dtype=str)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Classifier:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return cls(**{k: npz[k] for k in npz.files})


class _Scaler:
    """Running mean/variance over chunks (Welford, merged per chunk)."""

    def __init__(self, dim: int):
        self.n = 0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros(dim)

    def add(self, x: np.ndarray) -> None:
        if not len(x):
            return
        n, mean = len(x), x.mean(axis=0)
        m2 = ((x - mean) ** 2).sum(axis=0)
        delta = mean - self.mean
        total = self.n + n
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.n * n / total
        self.n = total

    def std(self) -> np.ndarray:
        std = np.sqrt(self.m2 / max(1, self.n))
        std[std < 1e-8] = 1.0
        return std


# --------------------------------------------------------------------- train


@dataclass
class TrainRequest:
    reference: str
    label_key: str
    model: str
    output: str
    epochs: int = 5
    seed: int = 0
    held_out_fraction: float = HELD_OUT_FRACTION
    model_store: str | None = None
    device: str = "auto"
    pushgateway: str | None = None
    run_labels: dict[str, str] = field(default_factory=dict)


def _needs_embedding(path: Path, model: str) -> bool:
    """True for a dataset of counts; False for an ``embed`` output (of this model or another)."""
    import h5py

    with h5py.File(path, "r") as fh:
        embedded = [k for k in fh.get("obsm", {}) if k.startswith("X_")]
        has_counts = any(w in fh for w in ("X", "layers/counts", "raw/X"))
    return output.embedding_key(model) not in embedded and (has_counts or not embedded)


def _embed_reference(req: TrainRequest, out: storage.Location) -> str:
    """Embed a reference given as counts, beside the classifier (resumable and idempotent:
    ``embed``'s own run key makes a second training reuse it)."""
    from .embed import EmbedRequest, embed

    target = out.with_suffix(".reference-embeddings.h5ad")
    LOG.info("embedding the reference first", extra={"model": req.model, "output": target.uri})
    embed(
        EmbedRequest(
            input=req.reference,
            model=req.model,
            output=target.uri,
            device=req.device,
            model_store=req.model_store,
            pushgateway=req.pushgateway,
            run_labels=dict(req.run_labels),
            progress=False,
        )
    )
    return target.uri


def reference_labels(h5: H5AD, label_key: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per cell the index of its class (-1 where unlabelled or in a class too small to
    learn), the classes (sorted), and the classes left out. Reads only the label column:
    4 bytes a cell, whatever else obs holds."""
    from anndata.io import read_elem

    obs = h5.file["obs"]
    index_key = obs.attrs.get("_index", "_index")
    if label_key not in obs or label_key == (
        index_key.decode() if isinstance(index_key, bytes) else index_key
    ):
        order = [
            v.decode() if isinstance(v, bytes) else str(v)
            for v in obs.attrs.get("column-order", [])
        ]
        raise BadInput(
            f"the reference has no label column '{label_key}' in obs "
            f"(columns: {', '.join(order[:10]) or 'none'})",
            where=h5.uri,
        )
    column = pd.Categorical(read_elem(obs[label_key]))
    names = column.categories.astype(str).to_numpy()
    codes = column.codes.astype(np.int32)
    counts = np.bincount(codes[codes >= 0], minlength=len(names))
    usable = (counts >= MIN_CELLS_PER_CLASS) & (names != "")
    small = sorted(
        str(n) for n, c in zip(names, counts, strict=True) if 0 < c < MIN_CELLS_PER_CLASS
    )
    classes = np.array(sorted(names[usable]), dtype=str)
    if len(classes) < 2:
        found = f"only '{classes[0]}'" if len(classes) else "no labelled cells"
        raise BadInput(
            f"label '{label_key}' has {found}: a classifier needs at least two classes "
            f"with {MIN_CELLS_PER_CLASS}+ cells each",
            where=h5.uri,
        )
    if UNKNOWN in classes:
        raise BadInput(f"'{UNKNOWN}' is reserved for low-confidence cells; rename that label")
    # category index -> class index (or -1), applied to every cell
    remap = np.full(len(names) + 1, -1, dtype=np.int32)
    remap[:-1][usable] = np.searchsorted(classes, names[usable])
    return remap[codes], classes, small


def held_out_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Stratified: each class keeps ``fraction`` of its cells (at least one) for evaluation."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for code in np.unique(labels[labels >= 0]):
        rows = np.flatnonzero(labels == code)
        n = max(1, round(len(rows) * fraction))
        mask[rng.choice(rows, size=min(n, len(rows) - 1), replace=False)] = True
    return mask


def _rebatched(chunks, minimum: int):
    """Join small row blocks until each has ``minimum`` rows (IncrementalPCA needs it)."""
    pending: list[np.ndarray] = []
    size = 0
    for block in chunks:
        if not len(block):
            continue
        pending.append(block)
        size += len(block)
        if size >= minimum:
            yield np.vstack(pending)
            pending, size = [], 0
    if pending:
        yield np.vstack(pending)


def train(req: TrainRequest) -> dict:
    """Fit (or find already fitted) one classifier; returns its manifest."""
    from sklearn.linear_model import SGDClassifier

    started_at = datetime.now(UTC)
    t0 = time.perf_counter()
    out = storage.parse(req.output)
    manifest_loc = out.with_suffix(MANIFEST_SUFFIX)
    if req.epochs < 1 or not 0 < req.held_out_fraction < 1:
        raise BadInput("--epochs must be >= 1 and --held-out between 0 and 1")
    local = storage.LocalInput(req.reference).path()
    reference_sha = storage.sha256_file(local)
    features_uri = req.reference
    if req.model != BASELINE and _needs_embedding(local, req.model):
        features_uri = _embed_reference(req, out)
    embedding = _embedding_manifest_summary(features_uri, req.model)
    with H5AD(storage.LocalInput(features_uri).path(), uri=features_uri) as h5:
        features = open_features(h5, req.model)
        labels, classes, small = reference_labels(h5, req.label_key)
        key = run_key(
            kind=KIND,
            reference_sha256=reference_sha,
            embedding=embedding,
            label_key=req.label_key,
            model=req.model,
            epochs=req.epochs,
            seed=req.seed,
            held_out=req.held_out_fraction,
        )
        previous = _complete(out, manifest_loc, key)
        if previous:
            LOG.info("classifier already trained for this reference; nothing to do")
            return previous
        held = held_out_mask(labels, req.held_out_fraction, req.seed)
        train_rows = (labels >= 0) & ~held
        LOG.info(
            "training",
            extra={
                "reference": req.reference,
                "model": req.model,
                "classes": len(classes),
                "train_cells": int(train_rows.sum()),
                "held_out_cells": int(held.sum()),
            },
        )
        chunks = list(iter_chunks(0, h5.n_cells, features.rows_per_chunk))
        clf = Classifier(
            classes=classes,
            coef=np.zeros(0),
            intercept=np.zeros(0),
            scale_mean=np.zeros(0),
            scale_std=np.zeros(0),
        )
        workdir = Path(tempfile.mkdtemp(prefix="helical-annotate-"))
        try:
            source = features
            if req.model == BASELINE:
                source = _fit_pca(features, chunks, train_rows, clf, workdir)
            scaler = _Scaler(source.dim)
            for lo, hi in chunks:
                scaler.add(source.rows(lo, hi)[train_rows[lo:hi]].astype(np.float64))
            clf.scale_mean = scaler.mean.astype(np.float32)
            clf.scale_std = scaler.std().astype(np.float32)
            sgd = SGDClassifier(loss="log_loss", alpha=1e-4, random_state=req.seed)
            rng = np.random.default_rng(req.seed)
            for _ in range(req.epochs):
                for i in rng.permutation(len(chunks)):
                    lo, hi = chunks[i]
                    pick = np.flatnonzero(train_rows[lo:hi])
                    if not len(pick):
                        continue
                    pick = rng.permutation(pick)
                    x = (source.rows(lo, hi)[pick] - clf.scale_mean) / clf.scale_std
                    sgd.partial_fit(x, labels[lo:hi][pick], classes=np.arange(len(classes)))
            clf.coef = sgd.coef_.astype(np.float32)
            clf.intercept = sgd.intercept_.astype(np.float32)
            scores = _evaluate(clf, features, chunks, labels, held)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        train_s = time.perf_counter() - t0
        if req.model == BASELINE:
            clf.genes = features.genes
        blob = clf.to_bytes()
        manifest = {
            "kind": KIND,
            "run_key": key,
            "outcome": "success",
            "model": req.model,
            "classifier": {
                "uri": out.uri,
                "sha256": hashlib.sha256(blob).hexdigest(),
                "bytes": len(blob),
                "type": "one-vs-rest logistic regression (sklearn SGDClassifier, log loss)",
                "epochs": req.epochs,
                "pca_components": None
                if clf.pca_components is None
                else int(clf.pca_components.shape[0]),
            },
            "feature_space": features.space(),
            "reference": {
                "uri": req.reference,
                "sha256": reference_sha,
                "cells": h5.n_cells,
                "label_key": req.label_key,
                "labelled_cells": int((labels >= 0).sum()),
                "classes": classes.tolist(),
                "classes_left_out": small,
                "features_uri": features_uri,
                "embedding_manifest": embedding,
            },
            "split": {
                "held_out_fraction": req.held_out_fraction,
                "stratified": True,
                "seed": req.seed,
                "train_cells": int(train_rows.sum()),
                "held_out_cells": int(held.sum()),
            },
            "scores": scores,
            "train_seconds": round(train_s, 3),
            "peak_rss_bytes": metrics.peak_rss_bytes(),
            "versions": versions(),
            "run_labels": dict(req.run_labels),
            "host": socket.gethostname(),
            "started_at": started_at.isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
        }
    storage.write_bytes(out, blob)
    storage.write_json(manifest_loc, manifest)
    labels_ = metrics.labels_for(req.model, "cpu", "", Path(req.reference).name, {**req.run_labels})
    metrics.push_gauges(
        req.pushgateway,
        labels_,
        {
            "helical_runner_annotate_train_seconds": ("Classifier training time", train_s),
            "helical_runner_annotate_macro_f1": (
                "Held-out macro-F1 of the classifier",
                scores["macro_f1"],
            ),
        },
    )
    LOG.info("trained", extra={"output": out.uri, "macro_f1": scores["macro_f1"]})
    return manifest


def _fit_pca(features, chunks, train_rows, clf: Classifier, workdir: Path):
    """Incremental PCA on the training cells; returns a reader of the projected rows."""
    from sklearn.decomposition import IncrementalPCA

    n_train = int(train_rows.sum())
    n_comp = max(2, min(PCA_COMPONENTS, features.dim, n_train))
    ipca = IncrementalPCA(n_components=n_comp)
    blocks = (features.rows(lo, hi)[train_rows[lo:hi]] for lo, hi in chunks)
    for block in _rebatched(blocks, n_comp):
        if len(block) >= n_comp:
            ipca.partial_fit(block)
    clf.pca_components = ipca.components_.astype(np.float32)
    clf.pca_mean = ipca.mean_.astype(np.float32)
    # project once into a disk-backed array: the epochs then read n x components, not counts
    n = chunks[-1][1] if chunks else 0
    projected = np.lib.format.open_memmap(
        workdir / "projected.npy", mode="w+", dtype=np.float32, shape=(n, n_comp)
    )
    for lo, hi in chunks:
        projected[lo:hi] = (features.rows(lo, hi) - clf.pca_mean) @ clf.pca_components.T
    projected.flush()

    class Projected:
        dim = n_comp

        @staticmethod
        def rows(lo: int, hi: int) -> np.ndarray:
            return np.asarray(projected[lo:hi])

    return Projected


def _evaluate(clf: Classifier, features, chunks, labels, held) -> dict:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    truth, guess = [], []
    for lo, hi in chunks:
        pick = np.flatnonzero(held[lo:hi])
        if len(pick):
            proba = clf.proba(features.rows(lo, hi)[pick])
            truth.append(labels[lo:hi][pick])
            guess.append(proba.argmax(axis=1))
    y, p = np.concatenate(truth), np.concatenate(guess)
    names = clf.classes.tolist()
    index = list(range(len(names)))
    prec, rec, f1, support = precision_recall_fscore_support(y, p, labels=index, zero_division=0)
    return {
        "held_out_cells": len(y),
        "accuracy": round(float(np.mean(y == p)), 4),
        "macro_f1": round(float(np.mean(f1)), 4),
        "per_class": {
            n: {
                "precision": round(float(prec[i]), 4),
                "recall": round(float(rec[i]), 4),
                "f1": round(float(f1[i]), 4),
                "support": int(support[i]),
            }
            for i, n in enumerate(names)
        },
        "confusion": {
            "labels": names,
            "matrix": confusion_matrix(y, p, labels=index).tolist(),
            "rows": "true label",
            "columns": "predicted label",
        },
    }


def _embedding_manifest_summary(uri: str, model: str) -> dict | None:
    """Which weights made an embedding (from the manifest beside it), if there is one."""
    if model == BASELINE:
        return None
    loc = storage.parse(uri).with_suffix(MANIFEST_SUFFIX)
    if not storage.exists(loc):
        return None
    manifest = storage.read_json(loc)
    return {
        "model": (manifest.get("model") or {}).get("name"),
        "artifacts": (manifest.get("model") or {}).get("artifacts"),
        "demo_weights": manifest.get("demo_weights"),
        "input_sha256": (manifest.get("input") or {}).get("sha256"),
    }


def _complete(out: storage.Location, manifest_loc: storage.Location, key: str) -> dict | None:
    if storage.exists(manifest_loc) and storage.exists(out):
        previous = storage.read_json(manifest_loc)
        if previous.get("run_key") == key and previous.get("outcome") == "success":
            return previous
    return None


# ------------------------------------------------------------------- predict


@dataclass
class PredictRequest:
    classifier: str
    input: str
    output: str
    min_confidence: float = 0.5
    cells_per_chunk: int | None = None
    pushgateway: str | None = None
    run_labels: dict[str, str] = field(default_factory=dict)


def load_classifier(uri: str) -> tuple[Classifier, dict]:
    """The classifier and its manifest, checked against each other (checksum, kind)."""
    loc = storage.parse(uri)
    manifest_loc = loc.with_suffix(MANIFEST_SUFFIX)
    if not storage.exists(loc) or not storage.exists(manifest_loc):
        raise BadInput("classifier or its manifest not found (train one first)", where=uri)
    manifest = storage.read_json(manifest_loc)
    if manifest.get("kind") != KIND:
        raise BadInput("not a helical-runner annotation classifier manifest", where=uri)
    blob = storage.read_bytes(loc)
    if hashlib.sha256(blob).hexdigest() != manifest["classifier"]["sha256"]:
        raise BadInput("classifier file does not match the checksum in its manifest", where=uri)
    return Classifier.from_bytes(blob), manifest


def _query_features(h5: H5AD, clf: Classifier, manifest: dict):
    model, space = manifest["model"], manifest["feature_space"]
    if model == BASELINE:
        return CountsFeatures(h5, clf.genes, space["id_kind"])
    features = EmbeddingFeatures(h5, model)
    if features.dim != space["dim"]:
        raise BadInput(
            f"{features.key} has dim {features.dim}, the classifier was trained on dim "
            f"{space['dim']}: another {model} model",
            where=h5.uri,
        )
    trained_on = (manifest["reference"].get("embedding_manifest") or {}).get("artifacts")
    made_with = (_embedding_manifest_summary(h5.uri, model) or {}).get("artifacts")
    if trained_on and made_with and trained_on != made_with:
        raise BadInput(
            f"the query's {model} embeddings were made with other model weights than the "
            "classifier's reference (artifact checksums differ)",
            where=h5.uri,
        )
    return features


def write_predictions(
    path: Path, *, source: H5AD, columns: dict, key: str, blocks, dim: int, provenance: dict
) -> None:
    """The query's ``obs`` (copied inside HDF5, never loaded) plus the new columns, and the
    probabilities streamed into ``obsm[key]``: memory does not grow with the query.

    :param columns: name -> ``(codes, categories)`` for a categorical, or an array.
    """
    import anndata as ad
    import h5py

    skeleton = ad.AnnData()
    skeleton.uns["helical_runner"] = json.dumps(provenance, sort_keys=True, default=str)
    skeleton.write_h5ad(path)
    n = source.n_cells
    with h5py.File(path, "r+") as fh:
        del fh["obs"]
        source.file.copy(source.file["obs"], fh, name="obs")
        obs = fh["obs"]
        order = [
            v.decode() if isinstance(v, bytes) else str(v)
            for v in obs.attrs.get("column-order", [])
        ]
        for name, values in columns.items():
            if name in obs:
                del obs[name]  # labelling an already labelled file: the new labels win
            if isinstance(values, tuple):
                group = obs.create_group(name)
                group.attrs.update(
                    {"encoding-type": "categorical", "encoding-version": "0.2.0", "ordered": False}
                )
                codes = group.create_dataset("codes", data=values[0])
                codes.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
                cats = group.create_dataset(
                    "categories", data=np.array(values[1], dtype=object), dtype=h5py.string_dtype()
                )
                cats.attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
            else:
                data = obs.create_dataset(name, data=values)
                data.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        obs.attrs["column-order"] = np.array(
            [c for c in order if c not in columns] + list(columns), dtype=object
        )
        obsm = fh.require_group("obsm")
        dset = obsm.create_dataset(
            key, shape=(n, dim), dtype="float32", chunks=(max(1, min(n, 4096)), dim) if n else None
        )
        dset.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        row = 0
        for block in blocks:
            dset[row : row + len(block)] = block
            row += len(block)
        if row != n:
            raise RuntimeError(f"wrote {row} probability rows for {n} cells")


def predict(req: PredictRequest) -> dict:
    """Label (or resume labelling, or find labelled) one query; returns the manifest."""
    started_at = datetime.now(UTC)
    t0 = time.perf_counter()
    if not 0 <= req.min_confidence < 1:
        raise BadInput("--min-confidence must be in [0, 1)")
    if req.cells_per_chunk is not None and req.cells_per_chunk < 1:
        raise BadInput("--cells-per-chunk must be positive")
    out = storage.parse(req.output)
    manifest_loc = out.with_suffix(MANIFEST_SUFFIX)
    clf, cmanifest = load_classifier(req.classifier)
    model = cmanifest["model"]
    local = storage.LocalInput(req.input).path()
    input_sha = storage.sha256_file(local)
    with H5AD(local, uri=req.input) as h5:
        features = _query_features(h5, clf, cmanifest)
        per_chunk = req.cells_per_chunk or features.rows_per_chunk
        key = run_key(
            kind="annotate-predict",
            classifier_sha256=cmanifest["classifier"]["sha256"],
            input_sha256=input_sha,
            min_confidence=req.min_confidence,
            cells_per_chunk=per_chunk,
        )
        previous = _complete(out, manifest_loc, key)
        if previous:
            LOG.info("query already labelled with this classifier; nothing to do")
            return previous
        chunks = list(iter_chunks(0, h5.n_cells, per_chunk))
        workdir = Path(tempfile.mkdtemp(prefix="helical-annotate-"))
        parts = Parts(out, key[:16], workdir)
        try:
            finished = parts.done()
            todo = [c for c in chunks if Parts.name(*c) not in finished]
            LOG.info(
                "labelling",
                extra={
                    "input": req.input,
                    "model": model,
                    "cells": h5.n_cells,
                    "chunks": len(chunks),
                    "resumed_chunks": len(chunks) - len(todo),
                },
            )
            t = time.perf_counter()
            for lo, hi in todo:
                parts.save(lo, hi, clf.proba(features.rows(lo, hi)))
            predict_s = time.perf_counter() - t
            cells_this_run = sum(hi - lo for lo, hi in todo)
            names = [*clf.classes.tolist(), UNKNOWN]
            codes = np.empty(h5.n_cells, dtype=np.int16)
            confidence = np.empty(h5.n_cells, dtype=np.float32)
            for lo, hi in chunks:
                proba = parts.load(lo, hi)
                codes[lo:hi] = proba.argmax(axis=1)
                confidence[lo:hi] = proba.max(axis=1)
            codes[confidence < req.min_confidence] = len(clf.classes)
            label_col, conf_col = f"{model}_label", f"{model}_label_confidence"
            counts = dict(
                zip(names, np.bincount(codes, minlength=len(names)).tolist(), strict=True)
            )
            manifest = {
                "kind": "helical_annotation_predictions",
                "run_key": key,
                "outcome": "success",
                "model": model,
                "input": {"uri": req.input, "sha256": input_sha, "cells": h5.n_cells},
                "classifier": {
                    "uri": req.classifier,
                    "sha256": cmanifest["classifier"]["sha256"],
                    "feature_space": cmanifest["feature_space"],
                },
                "reference": cmanifest["reference"],
                "held_out_scores": {
                    k: cmanifest["scores"][k] for k in ("macro_f1", "accuracy", "per_class")
                },
                "columns": {
                    "label": label_col,
                    "confidence": conf_col,
                    "probabilities": f"obsm['{model}_label_probabilities']",
                },
                "min_confidence": req.min_confidence,
                "label_counts": counts,
                "unknown_cells": counts[UNKNOWN],
                "chunks": len(chunks),
                "resumed_chunks": len(chunks) - len(todo),
                "cells_per_second": round(cells_this_run / predict_s, 1) if predict_s else None,
                "output": out.uri,
                "versions": versions(),
                "run_labels": dict(req.run_labels),
                "host": socket.gethostname(),
                "started_at": started_at.isoformat(),
            }

            def write(path: Path) -> None:
                write_predictions(
                    path,
                    source=h5,
                    columns={label_col: (codes, names), conf_col: confidence},
                    key=f"{model}_label_probabilities",
                    blocks=(parts.load(lo, hi) for lo, hi in chunks),
                    dim=len(clf.classes),
                    provenance=manifest,
                )

            if out.is_s3:
                write(workdir / "labels.h5ad")
                storage.put_file(workdir / "labels.h5ad", out)
            else:
                with storage.atomic_local_file(out.path) as tmp:
                    write(tmp)
            manifest.update(
                seconds=round(time.perf_counter() - t0, 3),
                peak_rss_bytes=metrics.peak_rss_bytes(),
                finished_at=datetime.now(UTC).isoformat(),
            )
            storage.write_json(manifest_loc, manifest)
            parts.remove_all()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    metrics.push_gauges(
        req.pushgateway,
        metrics.labels_for(model, "cpu", "", Path(req.input).name, dict(req.run_labels)),
        {
            "helical_runner_annotate_cells_per_second": (
                "Cells labelled per second",
                manifest["cells_per_second"] or 0.0,
            ),
            "helical_runner_annotate_unknown_fraction": (
                "Share of cells left unknown (low confidence)",
                manifest["unknown_cells"] / max(1, h5.n_cells),
            ),
        },
    )
    LOG.info("labelled", extra={"output": out.uri, "unknown_cells": manifest["unknown_cells"]})
    return manifest
