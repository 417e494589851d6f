"""The embedding run: validated dataset -> chunks -> model adapter -> parts -> output + manifest.

Resumable and idempotent: a run is keyed by (input sha256, model, model
artifact checksums, parameters). Each finished chunk is saved as a part
under ``<output>.partial/<key>/``; a re-run skips finished parts, and a run
whose output and manifest already exist for the same key returns at once.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import (
    __version__,
    calibrate,
    deferred,
    fidelity,
    logs,
    metrics,
    output,
    profiles,
    storage,
    store,
)
from .adapters import Adapter, adapter_class
from .dataset import H5AD, iter_chunks
from .errors import BadInput, RunnerError, Transient
from .precision import resolve as resolve_precision
from .validation import EMPTY_FLAG, validate_ranges

LOG = logging.getLogger("helical_runner.embed")
MANIFEST_SUFFIX = ".manifest.json"
PARTIAL_SUFFIX = ".partial"


@dataclass
class Shard:
    """One output of an embed run: rows ``cells`` ('START:STOP', None = all) to ``output``."""

    output: str
    cells: str | None = None


@dataclass
class EmbedRequest:
    """An embed run over one input and model: ``output`` (and ``cells``) for one shard,
    or ``shards`` for several, embedded in turn with the model loaded once."""

    input: str
    model: str
    output: str | None = None
    profile: str | None = None
    cells: str | None = None
    batch_size: int | None = None
    cells_per_chunk: int | None = None
    precision: str | None = None
    device: str = "auto"
    model_store: str | None = None
    input_sha256: str | None = None
    pushgateway: str | None = None
    run_labels: dict[str, str] = field(default_factory=dict)
    progress: bool = True
    shards: list[Shard] = field(default_factory=list)
    #: keys of the profile's ``fidelity`` section to override for this run
    fidelity: dict | None = None

    def __post_init__(self) -> None:
        if self.output is not None:
            if self.shards:
                raise ValueError("give either output (and cells) or shards, not both")
            self.shards = [Shard(output=self.output, cells=self.cells)]
        if not self.shards:
            raise ValueError("an embed run needs an output")


def parse_cells(spec: str | None, n_cells: int) -> tuple[int, int]:
    """'START:STOP' (either side optional, STOP clipped to the dataset) -> (start, stop)."""
    if not spec:
        return 0, n_cells
    left, sep, right = spec.partition(":")
    try:
        if not sep:
            raise ValueError
        start = int(left) if left.strip() else 0
        stop = min(int(right), n_cells) if right.strip() else n_cells
    except ValueError:
        raise BadInput(
            f"bad cell range '{spec}': use START:STOP with integers, e.g. 0:5000"
        ) from None
    if start < 0 or start >= stop:
        raise BadInput(
            f"bad cell range '{spec}': the dataset has {n_cells:,} cells (rows 0..{n_cells - 1})"
        )
    return start, stop


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise BadInput("device 'cuda' requested but no CUDA device is visible")
    if requested not in ("cpu", "cuda"):
        raise BadInput(f"device must be auto, cpu or cuda, not '{requested}'")
    return requested


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version(), "helical_runner": __version__}
    for pkg in ("helical", "torch", "transformers", "anndata", "numpy"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            found[pkg] = "absent"
    return found


def prepare_model_cache(
    model_store: str | None, files: list[str]
) -> tuple[store.StoreInfo | None, dict[str, str]]:
    """Fetch the model's artifacts from the store into helical's cache; checksums of what will load."""
    cache = store.helical_cache_dir()
    info = store.fetch(model_store, files=files) if model_store else None
    missing = [f for f in files if not (cache / f).is_file()]
    if missing:
        raise BadInput(
            f"model artifacts missing from helical's cache ({missing[0]} and {len(missing) - 1} more); "
            "set --model-store (or HELICAL_RUNNER_MODEL_STORE), or run 'helical-runner models pull'"
        )
    # From here on helical may only read its cache: no network, no deletions.
    store.guard_helical_downloads(cache)
    checksums = (
        {f: info.files[f] for f in files}
        if info
        else {f: store.storage.sha256_file(cache / f) for f in files}
    )
    return info, checksums


class Parts:
    """Finished chunks of one run key, kept locally and (for S3 outputs) mirrored to S3."""

    def __init__(self, out: storage.Location, key: str, workdir: Path):
        self.key = key
        self.remote = out.with_suffix(PARTIAL_SUFFIX).child(key) if out.is_s3 else None
        self.local = (workdir / key) if out.is_s3 else Path(out.uri + PARTIAL_SUFFIX) / key
        self.root = out.with_suffix(PARTIAL_SUFFIX)

    @staticmethod
    def name(lo: int, hi: int) -> str:
        return f"cells-{lo:012d}-{hi:012d}.npy"

    def done(self) -> set[str]:
        names = {p.name for p in self.local.glob("cells-*.npy")}
        if self.remote is not None:
            names |= {n for n in storage.list_names(self.remote) if n.endswith(".npy")}
        return names

    def save(self, lo: int, hi: int, embeddings: np.ndarray) -> None:
        if not self.local.exists():
            # first part of this key: parts of runs with other parameters are useless now
            self.remove_other_keys()
            self.local.mkdir(parents=True, exist_ok=True)
        path = self.local / self.name(lo, hi)
        with storage.atomic_local_file(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, embeddings)
        if self.remote is not None:
            storage.put_file(path, self.remote.child(path.name))

    def load(self, lo: int, hi: int) -> np.ndarray:
        path = self.local / self.name(lo, hi)
        if not path.is_file() and self.remote is not None:
            storage.get_file(self.remote.child(path.name), path)
        return np.load(path)

    def remove_other_keys(self) -> None:
        if self.root.is_s3:
            return
        for other in Path(self.root.uri).glob("*"):
            if other.is_dir() and other.name != self.key:
                shutil.rmtree(other, ignore_errors=True)

    def remove_all(self) -> None:
        storage.delete_tree(self.root)
        if self.remote is not None:
            shutil.rmtree(self.local, ignore_errors=True)


def gene_layout(
    resolved: np.ndarray, adapter: Adapter
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """How dataset columns become the genes helical sees, identically for every model.

    Returns (columns x genes 0/1 matrix that sums columns sharing an identifier,
    the genes' names, which genes are in the model's vocabulary).
    """
    if adapter.gene_id == "ensembl":
        # Keep every gene, as helical would see the whole dataset: per-cell totals
        # (Geneformer's normalisation) must not depend on which genes map.
        names = np.where(resolved != "", resolved, [f"unmapped-{i}" for i in range(len(resolved))])
    else:
        names = resolved
    keep = np.flatnonzero(names != "")
    unique, target = np.unique(names[keep].astype(str), return_inverse=True)
    combine = sp.csr_matrix(
        (np.ones(len(keep), dtype=np.float32), (keep, target)), shape=(len(names), len(unique))
    )
    in_vocabulary = (
        ~pd.Index(unique).str.startswith("unmapped-") if len(unique) else np.zeros(0, bool)
    )
    return combine, unique, np.asarray(in_vocabulary, dtype=bool)


def build_chunk(rows, obs_names: pd.Index, layout) -> tuple[ad.AnnData, np.ndarray]:
    """The in-memory AnnData helical sees for one chunk (raw counts, model identifiers in var),
    restricted to cells with counts in the model's genes; and the mask of those cells."""
    combine, names, in_vocabulary = layout
    X = sp.csr_matrix(rows @ combine)
    has_counts = np.asarray(X[:, np.flatnonzero(in_vocabulary)].sum(axis=1)).ravel() > 0
    var = pd.DataFrame(index=pd.Index(names.astype(str)))
    chunk = ad.AnnData(X=X[has_counts], obs=pd.DataFrame(index=obs_names[has_counts]), var=var)
    return chunk, has_counts


def check_output_location(out: storage.Location, source: storage.Location) -> None:
    """Refuse, before anything is loaded or written, outputs that would destroy the input
    or that cannot be written (an existing folder, an unwritable folder)."""
    written = [out, out.with_suffix(MANIFEST_SUFFIX), out.with_suffix(PARTIAL_SUFFIX)]
    if source.is_s3 or out.is_s3:
        if any(
            w.uri == source.uri or w.uri.startswith(source.uri.rstrip("/") + "/") for w in written
        ):
            raise BadInput("output would overwrite the input", where=out.uri)
        return
    src = os.path.realpath(source.uri)
    for w in written:
        real = os.path.realpath(w.uri)
        if real == src or real.startswith(src.rstrip(os.sep) + os.sep):
            raise BadInput(
                f"output would overwrite the input ({w.uri} is {source.uri}); choose another --output",
                where=out.uri,
            )
    if out.path.is_dir():
        raise BadInput(
            "output is an existing folder; give a file name such as out.h5ad", where=out.uri
        )
    storage.check_writable_folder(out.path.parent, what="output")


def run_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def embed(req: EmbedRequest) -> dict:
    """Run (or resume, or skip) a one-shard embedding job; returns its manifest."""
    if len(req.shards) != 1:
        raise ValueError("embed() runs one shard; use embed_shards() for several")
    return embed_shards(req)[0]


def embed_shards(req: EmbedRequest) -> list[dict]:
    """Run (or resume, or skip) each shard of ``req`` in turn with one loaded model;
    returns their manifests, in order.

    Shared by all shards: the profile, the model store and adapter (imported and
    loaded once, when the first shard needs it), the input's hash, its validation
    and gene layout. Each shard keeps its own run key, parts, output and manifest,
    exactly as a one-shard run would write them.
    """
    t0 = time.perf_counter()
    adapter_cls = adapter_class(req.model)
    profile = profiles.load(req.profile or adapter_cls.name)
    if profile.model != adapter_cls.name:
        raise BadInput(
            f"profile is for model '{profile.model}', not '{adapter_cls.name}'",
            where=profile.source,
        )
    profile = profile.with_overrides(
        batch_size=req.batch_size,
        cells_per_chunk=req.cells_per_chunk,
        precision=req.precision,
        fidelity=req.fidelity,
    )
    policy = profile.fidelity_policy()
    outs = [storage.parse(shard.output) for shard in req.shards]
    repeated = [o.uri for i, o in enumerate(outs) if o.uri in {p.uri for p in outs[:i]}]
    if repeated:
        raise BadInput("two shards have the same output", where=repeated[0])
    for out in outs:
        check_output_location(out, storage.parse(req.input))

    t = time.perf_counter()
    import_model_stack(adapter_cls.name)
    import_s = time.perf_counter() - t
    device = resolve_device(req.device)
    resolved_precision = resolve_precision(profile.precision, device)
    precision = resolved_precision.precision
    # auto with native reduced-precision units: measured before it is used (calibrate.py)
    candidate = precision if profile.precision == "auto" and precision != "fp32" else None
    model_store = req.model_store or os.environ.get(store.STORE_ENV)
    probe = adapter_cls(profile, device=device, precision=precision)
    store_info, artifacts = prepare_model_cache(model_store, probe.artifact_files())
    demo = bool(store_info and store_info.is_demo)
    overrides = store_info.overrides.get(adapter_cls.name, {}) if store_info else {}
    adapter = adapter_cls(profile, device=device, precision=precision, overrides=overrides)
    if demo:
        LOG.warning(
            "DEMO WEIGHTS: tiny randomly initialised models; embeddings are not biologically meaningful"
        )

    source = storage.LocalInput(req.input)
    t_read = time.perf_counter()
    local_path = source.path()
    input_sha = storage.sha256_file(local_path)
    if req.input_sha256 and req.input_sha256.lower() != input_sha:
        raise BadInput(
            f"input does not match --input-sha256 (expected {req.input_sha256[:12]}..., "
            f"found {input_sha[:12]}...): it changed since it was validated",
            where=req.input,
        )
    process = _Process(
        shards=len(req.shards),
        entered=t0,
        startup_s=_process_age_s() - (time.perf_counter() - t0),
        import_s=import_s,
        hash_s=time.perf_counter() - t_read,
    )
    try:
        with H5AD(local_path, uri=req.input) as h5:
            t = time.perf_counter()
            ranges = [
                parse_cells(shard.cells, h5.n_cells) if h5.n_cells else (0, 0)
                for shard in req.shards
            ]
            reports, counts, resolved = validate_ranges(
                h5, adapter=adapter, cache=store.helical_cache_dir(), ranges=ranges
            )
            for report, (start, stop) in zip(reports, ranges, strict=True):
                if not report.ok:
                    where = f"{req.input} (cells {start}:{stop})" if len(ranges) > 1 else req.input
                    raise BadInput(report.problems[0], where=where)
            process.validate_s = time.perf_counter() - t
            job = _Job(
                req=req,
                h5=h5,
                counts=counts,
                resolved=resolved,
                adapter=adapter,
                profile=profile,
                device=device,
                precision=precision,
                precision_reason=resolved_precision.reason,
                policy=policy,
                artifacts=artifacts,
                overrides=overrides,
                model_store=model_store,
                store_info=store_info,
                input_sha=input_sha,
                process=process,
            )
            if candidate is not None:
                job.calibrate(candidate, ranges[0][0])
            return [
                job.shard(i, out, start, stop, report)
                for i, (out, (start, stop), report) in enumerate(
                    zip(outs, ranges, reports, strict=True)
                )
            ]
    finally:
        adapter.close()


def _process_age_s() -> float:
    """Seconds since this process started (interpreter start-up and imports included)."""
    try:
        import psutil

        return max(0.0, time.time() - psutil.Process().create_time())
    except Exception:  # no /proc (exotic platforms): unknown, not fatal
        return 0.0


@dataclass
class _Process:
    """Once-per-process costs, charged to the first shard this process works on.

    ``startup_s``: process start to entering :func:`embed_shards` (interpreter and
    the runner's own imports); ``import_s``: torch and helical's model module;
    ``load_s``: building the model; ``first_batch_s``: the first forward batch.
    """

    shards: int
    entered: float
    startup_s: float
    import_s: float
    hash_s: float
    validate_s: float = 0.0
    load_s: float | None = None
    first_batch_s: float | None = None
    charged: bool = False
    load_charged: bool = False
    layout: tuple | None = None

    def to_json(self, index: int) -> dict:
        return {
            "pid": os.getpid(),
            "shards": self.shards,
            "index": index,
            "startup_s": round(self.startup_s, 4),
            "import_s": _round(self.import_s),
            "model_load_s": _round(self.load_s),
            "first_batch_s": _round(self.first_batch_s),
            # an exit after the last manifest is written cannot be timed by the process
            # itself: the runner flushes its logs and leaves with os._exit (cli.entry)
            "exit": "os._exit after flushing logs",
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@dataclass
class _Job:
    """What every shard of one runner invocation shares."""

    req: EmbedRequest
    h5: H5AD
    counts: object
    resolved: np.ndarray
    adapter: Adapter
    profile: profiles.Profile
    device: str
    precision: str
    precision_reason: str
    policy: fidelity.Policy
    artifacts: dict
    overrides: dict
    model_store: str | None
    store_info: store.StoreInfo | None
    input_sha: str
    process: _Process
    obs_frame: pd.DataFrame | None = None
    #: the manifest's ``calibration`` record (auto runs whose device offered a candidate)
    calibration: dict | None = None
    #: seconds the calibration took, charged to the first shard's timings
    calibration_s: float | None = None
    #: why the process fell back to fp32 after a fidelity shortfall, once it has
    fell_back: dict | None = None
    #: the fidelity record of the first shard this process embedded at reduced precision
    measured: dict | None = None

    def obs(self, start: int, stop: int) -> pd.DataFrame:
        """Rows ``start:stop`` of the input's obs (read once per process)."""
        if self.obs_frame is None:
            self.obs_frame = self.h5.obs()
            self.obs_frame.index = self.obs_frame.index.astype(str)
        return self.obs_frame.iloc[start:stop].copy()

    def load_model(self, run: metrics.RunMetrics | None = None) -> None:
        """Build the model: once per process, when the first shard (or the
        calibration, or a fidelity check) needs it."""
        if self.process.load_s is None:
            t = time.perf_counter()
            self.adapter.load()
            self.process.load_s = time.perf_counter() - t
            # Everything imported and loaded so far lives until exit: keep it out of
            # the garbage collector's full scans between shards.
            gc.freeze()
        if run is not None and not self.process.load_charged:
            self.process.load_charged = True
            run.add_time("load_s", self.process.load_s)

    def layout(self):
        """The input's gene layout for this model (computed once per process)."""
        if self.process.layout is None:
            self.process.layout = gene_layout(self.resolved, self.adapter)
        return self.process.layout

    def sample(self, lo: int, hi: int, label_key: str | None = None):
        """Rows ``lo:hi`` as a chunk (cells with counts only) and those cells' labels
        from obs ``label_key`` (None when the input has no such column)."""
        chunk, has_counts = build_chunk(
            self.counts.rows(lo, hi), self.h5.obs_names[lo:hi], self.layout()
        )
        labels = None
        if label_key:
            obs = self.obs(lo, hi)
            if label_key in obs.columns:
                labels = obs[label_key].astype(str).to_numpy()[has_counts]
        return chunk, labels

    def calibrate(self, candidate: str, start: int) -> None:
        """Decide ``auto`` between fp32 and ``candidate`` (cached measurement on the
        first cells from ``start``); sets the precision every shard then runs."""
        t = time.perf_counter()
        stop = self.h5.n_cells

        def chunk_of(n: int):
            return self.sample(start, min(stop, start + n))[0]

        record = calibrate.calibrate(
            self.adapter,
            self.artifacts,
            candidate,
            self.policy,
            chunk_of,
            load=self.load_model,
        )
        self.calibration = record
        self.calibration_s = time.perf_counter() - t
        self.precision = record["chosen"]
        self.adapter.precision = self.precision
        self.precision_reason = f"{self.precision_reason}; calibrated: {record['reason']}" + (
            " (cached)" if record["cache_hit"] else ""
        )

    def check_fidelity(self, start: int, stop: int, where: str) -> dict:
        """Embed the shard's first cells at fp32 and at the run's precision and compare;
        fail (BadInput) or fall back to fp32 below the profile's thresholds."""
        policy = self.policy
        t = time.perf_counter()
        self.load_model()
        chunk, labels = self.sample(start, min(stop, start + policy.sample_cells), policy.label_key)
        if chunk.n_obs == 0:
            figures = fidelity.compare(np.zeros((0, 0)), np.zeros((0, 0)))
        else:
            prepared = self.adapter.prepare(chunk)
            reference, _ = calibrate.embed_at(self.adapter, prepared, "fp32")
            candidate, _ = calibrate.embed_at(self.adapter, prepared, self.precision)
            figures = fidelity.compare(reference, candidate, labels, k=policy.knn_k)
        low = fidelity.shortfalls(figures, policy)
        record = {
            "precision": self.precision,
            "against": "fp32",
            "sample": f"first {policy.sample_cells} cells of the shard with counts (rows {start}:"
            f"{min(stop, start + policy.sample_cells)})",
            **figures,
            "label_key": policy.label_key if labels is not None else None,
            "thresholds": {
                "min_cosine": policy.min_cosine,
                "min_median_cosine": policy.min_median_cosine,
                "min_knn_agreement": policy.min_knn_agreement,
            },
            "on_low_fidelity": policy.on_low_fidelity,
            "passed": not low,
            "shortfalls": low,
            "seconds": round(time.perf_counter() - t, 4),
        }
        LOG.info(
            "fidelity measured",
            extra={
                "precision": self.precision,
                "passed": not low,
                "figures": fidelity.summary(figures),
            },
        )
        if low and policy.on_low_fidelity == "fail":
            raise BadInput(
                f"{self.precision} embeddings are below the profile's fidelity thresholds against "
                f"fp32: {'; '.join(low)} ({fidelity.summary(figures)}); run with --precision fp32 "
                "or set fidelity.on_low_fidelity: fp32 in the profile",
                where=where,
                reason="low_fidelity",
            )
        if low:
            LOG.warning(
                "fidelity below the profile's thresholds: running fp32",
                extra={"precision": self.precision, "shortfalls": low},
            )
            record["fell_back_to"] = "fp32"
            self.fell_back = record
            self.precision_reason = (
                f"{self.precision_reason}; {self.precision} fidelity below thresholds "
                f"({low[0]}): fp32 (on_low_fidelity: fp32)"
            )
            self.precision = "fp32"
            self.adapter.precision = "fp32"
        else:
            self.measured = record
        return record

    def _key_and_previous(self, out, start: int, stop: int) -> tuple[str, dict | None]:
        """This shard's run key at the current precision, and its manifest when the
        output is already complete for that key (None otherwise)."""
        profile = self.profile
        key = run_key(
            input_sha256=self.input_sha,
            model=self.adapter.name,
            helical_model_name=profile.helical_model_name,
            artifacts=self.artifacts,
            overrides=self.overrides,
            cells=[start, stop],
            batch_size=profile.batch_size,
            cells_per_chunk=profile.cells_per_chunk,
            precision=self.precision,
            device=self.device,
        )
        manifest_loc = out.with_suffix(MANIFEST_SUFFIX)
        if storage.exists(manifest_loc) and storage.exists(out):
            previous = storage.read_json(manifest_loc)
            if previous.get("run_key") == key and previous.get("outcome") == "success":
                LOG.info(
                    "output already complete for this input, model and parameters; nothing to do",
                    extra={"output": out.uri},
                )
                return key, previous
        return key, None

    def shard(self, index: int, out, start: int, stop: int, report) -> dict:
        """Run (or resume, or skip) one shard; returns its manifest."""
        started_at = datetime.now(UTC)
        t0 = time.perf_counter()
        req, adapter, profile, h5 = self.req, self.adapter, self.profile, self.h5
        manifest_loc = out.with_suffix(MANIFEST_SUFFIX)
        key, previous = self._key_and_previous(out, start, stop)
        if previous is not None:
            return previous
        fidelity_record = None
        if self.precision != "fp32" and self.measured is not None:
            # one measurement per process: later shards carry the first shard's figures
            fidelity_record = {**self.measured, "measured_on_an_earlier_shard": True}
        elif self.precision != "fp32":
            where = f"{req.input} (cells {start}:{stop})" if len(req.shards) > 1 else req.input
            fidelity_record = self.check_fidelity(start, stop, where)
            if self.precision == "fp32":  # fell back: another run key
                key, previous = self._key_and_previous(out, start, stop)
                if previous is not None:
                    return previous
        elif self.fell_back is not None:
            fidelity_record = {**self.fell_back, "measured_on_an_earlier_shard": True}

        run_labels = dict(req.run_labels)
        if len(req.shards) > 1:
            run_labels["shard"] = f"{start}:{stop}"
        labels = metrics.labels_for(
            adapter.name, self.device, self.precision, Path(req.input).name, run_labels
        )
        run = metrics.RunMetrics(labels=labels, pushgateway=req.pushgateway)
        if self.process.load_s is not None:
            self.load_model(run)  # built by the calibration or a fidelity check: charge it here
        if fidelity_record is not None and not fidelity_record.get("measured_on_an_earlier_shard"):
            run.add_time("fidelity_s", fidelity_record["seconds"])
        if self.calibration_s is not None and not self.process.charged:
            run.add_time("calibration_s", self.calibration_s)
        if not self.process.charged:
            self.process.charged = True
            # setup: from entering embed_shards to this first shard (profile, imports,
            # model store, input hash, validation); import, hash and validate also apart
            run.add_time("startup_s", self.process.startup_s)
            run.add_time("setup_s", time.perf_counter() - self.process.entered)
            run.add_time("import_s", self.process.import_s)
            run.add_time("hash_s", self.process.hash_s)
            run.add_time("validate_s", self.process.validate_s)
        demo = bool(self.store_info and self.store_info.is_demo)
        workdir = Path(tempfile.mkdtemp(prefix="helical-runner-"))
        parts = Parts(out, key[:16], workdir)
        # the adapter's counters run for the whole process: this shard's share
        batches_before = len(adapter.batch_latencies)
        counters = (adapter.preprocess_s, adapter.infer_s, batches_before)
        try:
            chunks = list(iter_chunks(start, stop, profile.cells_per_chunk))
            finished = parts.done()
            todo = [(lo, hi) for lo, hi in chunks if Parts.name(lo, hi) not in finished]
            resumed = len(chunks) - len(todo)
            run.cells_done = sum(hi - lo for lo, hi in chunks) - sum(hi - lo for lo, hi in todo)
            LOG.info(
                "embedding",
                extra={
                    "input": req.input,
                    "model": adapter.name,
                    "cells": stop - start,
                    "chunks": len(chunks),
                    "resumed_chunks": resumed,
                    "device": self.device,
                    "precision": self.precision,
                    "batch_size": profile.batch_size,
                    "demo_weights": demo,
                    "shard": f"{index + 1}/{len(req.shards)}",
                },
            )
            dim = None
            if todo:
                self.load_model(run)
                dim = _embed_chunks(
                    h5,
                    self.counts,
                    self.layout(),
                    adapter,
                    todo,
                    parts,
                    run,
                    stop - start,
                    req.progress,
                    counters,
                )
                if self.process.first_batch_s is None and adapter.batch_latencies:
                    self.process.first_batch_s = adapter.batch_latencies[0]
                    run.add_time("first_batch_s", self.process.first_batch_s)

            obs = self.obs(start, stop)
            empty = np.zeros(stop - start, dtype=bool)
            empty[report.empty_rows] = True
            obs[EMPTY_FLAG] = empty
            if dim is None:
                dim = next(w for w in (parts.load(*c).shape[1] for c in chunks) if w)
            manifest = {
                "run_key": key,
                "outcome": "success",
                "demo_weights": demo,
                "input": {
                    "uri": req.input,
                    "sha256": self.input_sha,
                    "cells": h5.n_cells,
                    "genes": h5.n_genes,
                },
                "selection": {"start": start, "stop": stop, "cells": stop - start},
                "counts_location": report.counts_location,
                "matrix_format": report.matrix_format,
                "genes_mapped": report.genes_mapped,
                "genes_mapped_fraction": report.genes_mapped_fraction,
                "duplicate_genes_summed": report.duplicate_genes,
                "cells_without_counts": report.cells_without_counts,
                "gene_id_source": report.gene_id_source,
                "model": {
                    "name": adapter.name,
                    "helical_model_name": profile.helical_model_name,
                    "artifacts": self.artifacts,
                    "store": {
                        "uri": self.model_store,
                        "kind": self.store_info.kind if self.store_info else None,
                    },
                    "overrides": self.overrides,
                },
                "profile": profile.to_json(),
                "embedding": {
                    "key": output.embedding_key(adapter.name),
                    "dim": dim,
                    "dtype": "float32",
                },
                "output": out.uri,
                "versions": versions(),
                "device": self.device,
                "precision": self.precision,
                "precision_requested": profile.precision,
                "precision_reason": self.precision_reason,
                "calibration": self.calibration,
                "fidelity": fidelity_record,
                "batch_size": profile.batch_size,
                "cells_per_chunk": profile.cells_per_chunk,
                "chunks": len(chunks),
                "resumed_chunks": resumed,
                "run_labels": run_labels,
                "host": socket.gethostname(),
                "process": self.process.to_json(index),
                "started_at": started_at.isoformat(),
            }
            t = time.perf_counter()
            _write_output(out, obs, chunks, parts, dim, adapter.name, manifest, workdir)
            run.add_time("write_s", time.perf_counter() - t)
            run.add_time("total_s", time.perf_counter() - t0)
            latencies = adapter.batch_latencies[batches_before:]
            manifest.update(
                timings={k: round(v, 4) for k, v in run.timings.items()},
                cells_per_second=round(run.cells_per_second(), 3),
                batches=len(latencies),
                batch_latency_p50_s=_quantile(latencies, 0.5),
                batch_latency_p95_s=_quantile(latencies, 0.95),
                peak_rss_bytes=metrics.peak_rss_bytes(),
                peak_gpu_memory_bytes=metrics.peak_gpu_bytes(),
                finished_at=datetime.now(UTC).isoformat(),
            )
            storage.write_json(manifest_loc, manifest)
            parts.remove_all()
            run.push(latencies, final=True)
            LOG.info(
                "done",
                extra={
                    "output": out.uri,
                    "cells": stop - start,
                    "cells_per_second": manifest["cells_per_second"],
                    "demo_weights": demo,
                },
            )
            return manifest
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def import_model_stack(model: str) -> None:
    """Import torch and helical's module of ``model`` (what loading it needs), so the
    manifest can tell import time from model-building time; what helical imports but
    embeddings never use is deferred (:mod:`helical_runner.deferred`)."""
    import importlib

    deferred.defer(*deferred.HEAVY_UNUSED)
    import torch  # noqa: F401

    with contextlib.suppress(ImportError):  # a model helical does not ship: load() says so
        importlib.import_module(f"helical.models.{model}")
    logs.reclaim_root()  # importing helical adds its own root log handler


def _quantile(values: list[float], q: float) -> float | None:
    return round(float(np.quantile(values, q)), 5) if values else None


def _embed_chunks(
    h5, counts, layout, adapter, todo, parts, run, total, show_bar, counters=(0.0, 0.0, 0)
) -> int | None:
    """Embed and save each chunk of ``todo``; ``counters``: the adapter's preprocessing
    and inference seconds and batches before this shard (they run for the whole process)."""
    bar = None
    if show_bar and not logs.json_mode() and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(
            total=total, initial=run.cells_done, unit="cells", desc=f"{adapter.name}", disable=False
        )
    dim = None
    for lo, hi in todo:
        t = time.perf_counter()
        rows = counts.rows(lo, hi)
        chunk, has_counts = build_chunk(rows, h5.obs_names[lo:hi], layout)
        run.add_time("read_s", time.perf_counter() - t)
        try:
            embeddings = adapter.embed(chunk) if has_counts.any() else None
        except RunnerError:
            raise
        except MemoryError as exc:
            raise Transient(
                "out of memory while embedding", where=f"cells {lo}:{hi}", reason="oom"
            ) from exc
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower():
                raise Transient(
                    f"out of memory while embedding: {exc}".split("\n")[0],
                    where=f"cells {lo}:{hi}",
                    reason="oom",
                ) from exc
            raise
        if embeddings is None:
            embeddings = np.zeros((hi - lo, 0), dtype=np.float32)  # widened when written
        else:
            if embeddings.shape[0] != int(has_counts.sum()):
                raise RunnerError(
                    f"model returned {embeddings.shape[0]} embeddings for {int(has_counts.sum())} cells",
                    where=f"cells {lo}:{hi}",
                )
            full = np.zeros((hi - lo, embeddings.shape[1]), dtype=np.float32)
            full[has_counts] = embeddings
            embeddings = full
        parts.save(lo, hi, embeddings)
        dim = max(dim or 0, embeddings.shape[1]) or None
        run.cells_done += hi - lo
        run.cells_this_run += hi - lo
        run.timings["preprocess_s"] = adapter.preprocess_s - counters[0]
        run.timings["embed_s"] = adapter.infer_s - counters[1]
        if bar is not None:
            bar.update(hi - lo)
        else:
            LOG.info(
                "chunk done",
                extra={
                    "cells_done": run.cells_done,
                    "cells_total": total,
                    "cells_per_second": round(run.cells_per_second(), 2),
                },
            )
        run.push(adapter.batch_latencies[counters[2] :])
    if bar is not None:
        bar.close()
    return dim


def _write_output(out, obs, chunks, parts, dim, model, manifest, workdir) -> None:
    """Assemble parts into the final file; it appears at ``out`` whole or not at all."""

    def write(path: Path) -> None:
        # chunks whose cells all lacked counts were saved zero-width
        blocks = (
            part if part.shape[1] else np.zeros((hi - lo, dim), dtype=np.float32)
            for (lo, hi), part in ((c, parts.load(*c)) for c in chunks)
        )
        output.write_embeddings(
            path,
            obs=obs,
            key=output.embedding_key(model),
            dim=dim,
            blocks=blocks,
            provenance=manifest,
        )

    if out.is_s3:
        local = workdir / "output.h5ad"
        write(local)
        storage.put_file(local, out)
        return
    with storage.atomic_local_file(out.path) as tmp:
        write(tmp)
