"""Run measurements: timings, memory, batch latency; pushed to a Pushgateway when configured.

The numbers always land in the run manifest; the Pushgateway push is a
best-effort extra that never fails a run.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import sys
import time
import urllib.parse
from dataclasses import dataclass, field

LOG = logging.getLogger(__name__)
PUSHGATEWAY_ENV = "HELICAL_RUNNER_PUSHGATEWAY"
JOB = "helical_runner"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LABELS = ("model", "device", "precision", "dataset", "dag_id", "task_id", "run_id", "shard")


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_gpu_bytes() -> int:
    try:
        import torch

        return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else 0
    except Exception:  # torch missing or CUDA driver trouble: report no GPU use
        return 0


@dataclass
class RunMetrics:
    labels: dict[str, str]
    pushgateway: str | None = None
    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    cells_done: int = 0
    cells_this_run: int = 0

    def add_time(self, key: str, seconds: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + seconds

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def cells_per_second(self) -> float:
        compute = (
            self.timings.get("embed_s", 0.0)
            + self.timings.get("preprocess_s", 0.0)
            + self.timings.get("read_s", 0.0)
        )
        return self.cells_this_run / compute if compute > 0 else 0.0

    def push(self, latencies: list[float], *, final: bool = False) -> None:
        """Replace this run's series on the Pushgateway (no-op when none is configured)."""
        url = self.pushgateway or os.environ.get(PUSHGATEWAY_ENV)
        if not url:
            return
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, push_to_gateway

        registry = CollectorRegistry()
        names = list(self.labels)
        values = [self.labels[n] for n in names]

        def gauge(name: str, doc: str, value: float) -> None:
            Gauge(name, doc, names, registry=registry).labels(*values).set(value)

        Counter(
            "helical_runner_cells_processed", "Cells embedded so far", names, registry=registry
        ).labels(*values).inc(self.cells_done)
        gauge(
            "helical_runner_cells_per_second",
            "Embedding throughput of this run",
            self.cells_per_second(),
        )
        gauge(
            "helical_runner_model_load_seconds",
            "Time to load the model",
            self.timings.get("load_s", 0.0),
        )
        gauge("helical_runner_duration_seconds", "Wall time of the run so far", self.elapsed)
        gauge("helical_runner_peak_rss_bytes", "Peak resident memory", peak_rss_bytes())
        gauge("helical_runner_rss_bytes", "Resident memory now", rss_bytes())
        gauge("helical_runner_peak_gpu_memory_bytes", "Peak GPU memory allocated", peak_gpu_bytes())
        gauge(
            "helical_runner_last_success",
            "1 when the run finished successfully",
            1.0 if final else 0.0,
        )
        Counter(
            "helical_runner_cpu_seconds", "CPU time used by the runner", names, registry=registry
        ).labels(*values).inc(cpu_seconds())
        hist = Histogram(
            "helical_runner_batch_latency_seconds",
            "Model forward latency per batch",
            names,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ).labels(*values)
        for seconds in latencies:
            hist.observe(seconds)
        _send(push_to_gateway, url, registry, self.labels)


def push_failure(pushgateway: str | None, labels: dict[str, str], reason: str) -> None:
    """Count a failed run by reason, keeping the run's other series (POST, not PUT)."""
    url = pushgateway or os.environ.get(PUSHGATEWAY_ENV)
    if not url:
        return
    from prometheus_client import CollectorRegistry, Counter, pushadd_to_gateway

    registry = CollectorRegistry()
    names = list(labels)
    Counter(
        "helical_runner_failures", "Failed runs by reason", [*names, "reason"], registry=registry
    ).labels(*labels.values(), reason).inc()
    _send(pushadd_to_gateway, url, registry, labels)


def _send(method, url: str, registry, labels: dict[str, str]) -> None:
    grouping = {
        k: v for k, v in labels.items() if k in ("dag_id", "task_id", "run_id", "shard") and v
    }
    grouping.setdefault("instance", f"{socket.gethostname()}-{os.getpid()}")
    try:
        method(url, job=JOB, registry=registry, grouping_key=grouping, timeout=5)
    except Exception as exc:  # metrics must never fail a run
        safe = redact_url(url)
        error = str(exc).replace(url, safe)
        password = urllib.parse.urlsplit(url).password
        if password:
            error = error.replace(password, "***")
        LOG.warning("could not push metrics", extra={"pushgateway": safe, "error": error})


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@``: safe to log."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


def labels_for(
    model: str, device: str, precision: str, dataset: str, run_labels: dict[str, str]
) -> dict[str, str]:
    labels = {"model": model, "device": device, "precision": precision, "dataset": dataset}
    for key in LABELS:
        labels.setdefault(key, run_labels.get(key, ""))
    return labels


def push_gauges(
    pushgateway: str | None, labels: dict[str, str], gauges: dict[str, tuple[str, float]]
) -> None:
    """Push a few gauges (name -> (help, value)) for one job's labels; best effort, like :meth:`RunMetrics.push`."""
    url = pushgateway or os.environ.get(PUSHGATEWAY_ENV)
    if not url:
        return
    from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

    registry = CollectorRegistry()
    names = list(labels)
    for name, (doc, value) in gauges.items():
        Gauge(name, doc, names, registry=registry).labels(*labels.values()).set(value)
    _send(pushadd_to_gateway, url, registry, labels)
