"""``precision: auto`` decided by measurement: time fp32 against the reduced candidate.

:func:`helical_runner.precision.resolve` stays the pre-filter: it proposes a
reduced precision only where the device has native units for it (CPU AMX
``amx_bf16``; CUDA capability 7.x/8.0+). When it does, the runner embeds a
few batches of the run's own first cells at fp32 and at the candidate with
the loaded model, and keeps the candidate only if it is at least
:data:`MIN_SPEEDUP` times faster *and* meets the profile's fidelity
thresholds (:mod:`helical_runner.fidelity`) on those cells; otherwise fp32.

The measurement is cached as one JSON file per key under
``$HELICAL_RUNNER_CALIBRATION_CACHE`` (else ``<runner cache>/calibration``,
the runner cache being ``$HELICAL_RUNNER_CACHE`` or
``~/.cache/helical-runner``). The key covers everything the timing depends
on: model and helical model name, the checksums of the model's files and the
adapter overrides, device, CPU model and precision flags (or the CUDA device
name and capability), torch version and the batch limits. A cached
measurement is re-judged against the current profile's thresholds, so
changing a threshold needs no new calibration.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import fidelity, storage
from .precision import PRECISION_FLAGS, cpu_flags

LOG = logging.getLogger("helical_runner.calibrate")
CACHE_ENV = "HELICAL_RUNNER_CALIBRATION_CACHE"
#: cells timed at each precision (after a warm-up batch): a few batches at the
#: profiles' batch sizes, seconds with the demo bundle
CALIBRATION_CELLS = 16
WARMUP_CELLS = 4
ROUNDS = 2
#: the candidate must beat fp32 by this much; a tie keeps fp32 (exact)
MIN_SPEEDUP = 1.05
FORMAT = 1


def cache_dir() -> Path:
    """Where calibrations are cached (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("HELICAL_RUNNER_CACHE") or storage.default_cache_dir()
    return Path(base) / "calibration"


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name from ``/proc/cpuinfo`` ('unknown' without one)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return "unknown"


def device_identity(device: str, flags: set[str] | None = None) -> dict[str, Any]:
    """What identifies the hardware a calibration was measured on."""
    import torch

    if device.startswith("cuda"):
        return {
            "kind": "cuda",
            "name": torch.cuda.get_device_name(),
            "capability": list(torch.cuda.get_device_capability()),
        }
    found = cpu_flags() if flags is None else flags
    return {
        "kind": "cpu",
        "cpu_model": cpu_model(),
        "flags": sorted(f for f in PRECISION_FLAGS if f in found),
        "threads": torch.get_num_threads(),
    }


def cache_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def identity(adapter, artifacts: dict, candidate: str, flags: set[str] | None = None) -> dict:
    """The calibration key's parts for ``adapter`` (loaded or not) and ``candidate``."""
    import torch

    profile = adapter.profile
    return {
        "format": FORMAT,
        "model": adapter.name,
        "helical_model_name": profile.helical_model_name,
        "artifacts": artifacts,
        "overrides": adapter.overrides,
        "device": device_identity(adapter.device, flags),
        "torch": torch.__version__,
        "batch_size": profile.batch_size,
        "max_tokens_per_batch": profile.max_tokens_per_batch,
        "candidate": candidate,
    }


@contextlib.contextmanager
def side_run(adapter, precision: str):
    """Run ``adapter`` at ``precision`` for a measurement that is not part of the run:
    its precision, batch latencies and time counters are restored afterwards."""
    saved = (adapter.precision, len(adapter.batch_latencies), adapter.preprocess_s, adapter.infer_s)
    adapter.precision = precision
    try:
        yield
    finally:
        adapter.precision = saved[0]
        del adapter.batch_latencies[saved[1] :]
        adapter.preprocess_s, adapter.infer_s = saved[2], saved[3]


def embed_at(adapter, prepared, precision: str) -> tuple[np.ndarray, float]:
    """``adapter.infer`` at ``precision`` on an already prepared chunk; (embeddings, seconds)."""
    with side_run(adapter, precision):
        t = time.perf_counter()
        out = np.asarray(adapter.infer(prepared), dtype=np.float32)
        return out, time.perf_counter() - t


def measure(adapter, chunk_of, candidate: str, policy: fidelity.Policy) -> dict[str, Any]:
    """Time fp32 and ``candidate`` on the first cells; their fidelity on the same cells.

    ``chunk_of(n)`` returns a fresh AnnData chunk of the run's first ``n`` cells
    with counts (fewer where the run has fewer).
    """
    warm = adapter.prepare(chunk_of(WARMUP_CELLS))
    for precision in ("fp32", candidate):  # first-call kernel set-up is not the steady rate
        embed_at(adapter, warm, precision)
    prepared = adapter.prepare(chunk_of(CALIBRATION_CELLS))
    seconds: dict[str, list[float]] = {"fp32": [], candidate: []}
    outputs = {}
    for _ in range(ROUNDS):
        for precision in seconds:
            outputs[precision], s = embed_at(adapter, prepared, precision)
            seconds[precision].append(s)
    best = {p: min(s) for p, s in seconds.items()}
    figures = fidelity.compare(outputs["fp32"], outputs[candidate], k=policy.knn_k)
    return {
        "cells": len(outputs["fp32"]),
        "rounds": ROUNDS,
        "seconds": {p: [round(x, 5) for x in s] for p, s in seconds.items()},
        "best_seconds": {p: round(x, 5) for p, x in best.items()},
        "speedup": round(best["fp32"] / best[candidate], 4) if best[candidate] else None,
        "fidelity": figures,
        "measured_at": datetime.now(UTC).isoformat(),
    }


def decide(measured: dict[str, Any], candidate: str, policy: fidelity.Policy) -> tuple[str, str]:
    """The precision a measurement supports under ``policy``, and why."""
    speedup = measured.get("speedup") or 0.0
    low = fidelity.shortfalls(measured["fidelity"], policy)
    if speedup < MIN_SPEEDUP:
        return "fp32", f"{candidate} measured {speedup:.2f}x fp32 (< {MIN_SPEEDUP}x): fp32"
    if low:
        return "fp32", f"{candidate} measured {speedup:.2f}x fp32 but {low[0]}: fp32"
    return candidate, f"{candidate} measured {speedup:.2f}x fp32, fidelity within the profile's"


def calibrate(
    adapter,
    artifacts: dict,
    candidate: str,
    policy: fidelity.Policy,
    chunk_of,
    *,
    load=None,
    flags: set[str] | None = None,
) -> dict[str, Any]:
    """Decide between fp32 and ``candidate``: from the cache, or by measuring (and caching).

    ``load()`` builds the model when a measurement is needed (it is not, on a
    cache hit). Returns the manifest's ``calibration`` record, whose ``chosen``
    is the precision to run and ``reason`` says why.
    """
    ident = identity(adapter, artifacts, candidate, flags)
    key = cache_key(ident)
    path = cache_dir() / f"{adapter.name}-{key}.json"
    measured, hit = None, False
    with contextlib.suppress(OSError, ValueError, KeyError):
        cached = json.loads(path.read_text())
        if cached.get("identity") == json.loads(json.dumps(ident)):
            measured, hit = cached["measured"], True
    t = time.perf_counter()
    if measured is None:
        if load is not None:
            load()
        measured = measure(adapter, chunk_of, candidate, policy)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with storage.atomic_local_file(path) as tmp:
                tmp.write_text(json.dumps({"identity": ident, "measured": measured}, indent=2))
        except OSError as exc:  # a read-only home: measure again next time, do not fail
            LOG.warning("calibration not cached: %s", exc)
    chosen, why = decide(measured, candidate, policy)
    record = {
        "candidate": candidate,
        "chosen": chosen,
        "reason": why,
        "cache_hit": hit,
        "cache_file": str(path),
        "key": key,
        "seconds_spent": round(time.perf_counter() - t, 4),
        "min_speedup": MIN_SPEEDUP,
        **measured,
        "device": ident["device"],
        "torch": ident["torch"],
    }
    LOG.info(
        "precision calibrated",
        extra={
            "candidate": candidate,
            "chosen": chosen,
            "speedup": measured.get("speedup"),
            "cache_hit": hit,
            "fidelity": fidelity.summary(measured["fidelity"]),
        },
    )
    return record
