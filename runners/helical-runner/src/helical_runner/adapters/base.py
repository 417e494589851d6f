"""What every model adapter provides, and the precision/latency wrapper they share.

Adding a model = one adapter module + one profile YAML. An adapter names the
helical artifacts it loads, the gene identifiers it needs, reads its
vocabulary, builds the helical model through helical's public classes, and
embeds one in-memory chunk.
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..profiles import Profile


class Adapter(abc.ABC):
    #: adapter name used on the command line and in profiles
    name: ClassVar[str]
    #: identifiers the model's vocabulary is keyed on: "ensembl" or "symbol"
    gene_id: ClassVar[str]

    def __init__(
        self, profile: Profile, *, device: str, precision: str, overrides: dict | None = None
    ):
        self.profile = profile
        self.device = device
        self.precision = precision
        self.overrides = dict(overrides or {})
        self.batch_latencies: list[float] = []
        self.preprocess_s = 0.0
        self.infer_s = 0.0
        self.model = None

    @abc.abstractmethod
    def artifact_files(self) -> list[str]:
        """helical cache-relative paths this model loads."""

    @abc.abstractmethod
    def vocabulary(self, cache: Path) -> set[str]:
        """Gene identifiers the model knows (read from its artifacts, no model load)."""

    @abc.abstractmethod
    def load(self) -> None:
        """Build the helical model (artifacts must already be in helical's cache)."""

    @abc.abstractmethod
    def prepare(self, chunk):
        """helical's process_data on an AnnData chunk whose var index holds this model's identifiers."""

    @abc.abstractmethod
    def infer(self, prepared) -> np.ndarray:
        """helical's get_embeddings on a prepared chunk: (cells, dim) float32."""

    def embed(self, chunk) -> np.ndarray:
        """Embed one chunk, timing preprocessing and inference separately."""
        start = time.perf_counter()
        prepared = self.prepare(chunk)
        mid = time.perf_counter()
        embeddings = np.asarray(self.infer(prepared), dtype=np.float32)
        self.preprocess_s += mid - start
        self.infer_s += time.perf_counter() - mid
        return embeddings

    def close(self) -> None:  # noqa: B027 - most adapters hold nothing to release
        """Release scratch space; the adapter is not used afterwards."""

    # -- shared helpers ---------------------------------------------------

    def autocast(self):
        """Autocast context for the chosen precision (innermost, so it wins over helical's)."""
        import torch

        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        return torch.autocast(
            device_type=device_type, dtype=dtype or torch.float32, enabled=dtype is not None
        )

    def timed(self, fn):
        """Wrap a forward function: apply precision and record each batch's latency."""
        import torch

        cuda = self.device.startswith("cuda")

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            with self.autocast():
                out = fn(*args, **kwargs)
            if cuda:
                torch.cuda.synchronize()
            self.batch_latencies.append(time.perf_counter() - start)
            return _as_float32(out)

        return wrapper


def length_batches(lengths: Sequence[int], *, max_tokens: int, max_items: int) -> list[np.ndarray]:
    """Group items of varying length into batches of similar length.

    Items are taken longest first (a batch that does not fit shows up at
    once, not after an hour) and a batch grows while ``items x its longest
    item`` stays within ``max_tokens`` and it holds at most ``max_items``. An
    item longer than ``max_tokens`` gets a batch of its own. Padding each
    batch to its own longest item then wastes little, and the padded batch,
    hence activation memory, is bounded by the token budget whatever the
    lengths are.

    Parameters
    ----------
    lengths
        Token count of each item, in input order (shape ``(n,)``).
    max_tokens
        Upper bound on ``len(batch) * max(lengths[batch])``.
    max_items
        Upper bound on ``len(batch)`` (the profile's ``batch_size``).

    Returns
    -------
    list of int64 arrays
        Input positions of each batch; together a permutation of ``range(n)``.
        Ties keep input order (stable sort), so the grouping is deterministic.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, min(max_items, max_tokens // longest, len(order) - start))
        batches.append(order[start : start + size])
        start += size
    return batches


def run_length_batched(
    lengths: Sequence[int],
    embed_batch: Callable[[np.ndarray], np.ndarray],
    *,
    max_tokens: int,
    max_items: int,
) -> np.ndarray:
    """Embed items in :func:`length_batches` order; return rows in input order.

    ``embed_batch(positions)`` receives the input positions of one batch
    (longest first) and returns one row per position, in that order. The
    result's row ``i`` is item ``i``'s row, so callers never see the
    reordering.

    Returns
    -------
    np.ndarray
        ``(n, dim)`` float32.
    """
    out = None
    for positions in length_batches(lengths, max_tokens=max_tokens, max_items=max_items):
        rows = np.asarray(embed_batch(positions), dtype=np.float32)
        if out is None:
            out = np.empty((len(lengths), rows.shape[1]), dtype=np.float32)
        out[positions] = rows
    return out if out is not None else np.empty((0, 0), dtype=np.float32)


def _as_float32(out):
    """helical turns outputs into numpy arrays, which have no bfloat16: hand back float32."""
    import torch

    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, tuple):
        return tuple(_as_float32(o) for o in out)
    return out


@contextlib.contextmanager
def working_directory(path: Path):
    """Some helical models write scratch files into the current directory."""
    import os

    previous = Path.cwd()
    path.mkdir(parents=True, exist_ok=True)
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)
