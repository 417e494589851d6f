"""Which floating-point precision a run uses, and why.

``auto`` picks a reduced precision only where the device computes it
natively, because without fast units half precision is slower than fp32,
not faster: on this project's 2-core AMD EPYC (AVX512-BF16, no AMX) bf16
autocast ran real-size Geneformer at 0.77x of fp32 (0.86 vs 1.12 cells/s,
benchmarks/results/precision_cpu.json).

- CUDA: bf16 from compute capability 8.0 (Ampere) on, fp16 on 7.x (tensor
  cores without bf16), fp32 below.
- CPU: bf16 only with AMX tiles (``amx_bf16``), the units oneDNN's bf16
  matrix multiplications are fast on; AVX512-BF16 alone measured slower than
  fp32 here, so it is not enough. fp16 never (no CPU path is faster).

This is the pre-filter only: where it proposes a reduced precision for
``auto``, :mod:`helical_runner.calibrate` measures it against fp32 (speed and
fidelity, cached) before it is used. An explicit ``fp32``/``bf16`` is
honoured as asked; ``fp16`` on CPU falls back to fp32 as before. The manifest
records the result and the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

LOG = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")
#: CPU flags that matter for reduced precision, recorded by the benchmarks
PRECISION_FLAGS = ("amx_bf16", "amx_tile", "amx_fp16", "avx512_bf16", "avx512_fp16", "avx512f")


@dataclass(frozen=True)
class Resolved:
    """The precision a run uses and a short reason a person can check."""

    precision: str
    reason: str


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def cuda_capability() -> tuple[int, int] | None:
    """Compute capability of the current CUDA device, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability())


def resolve(
    requested: str,
    device: str,
    *,
    flags: set[str] | None = None,
    capability: tuple[int, int] | None = None,
) -> Resolved:
    """The precision to run ``requested`` (auto|fp32|fp16|bf16) with on ``device``.

    ``flags`` and ``capability`` default to what this machine reports; tests
    pass them to check other machines' rules.
    """
    cuda = device.startswith("cuda")
    if requested == "auto":
        if cuda:
            cap = capability if capability is not None else cuda_capability()
            if cap is not None and cap >= (8, 0):
                return Resolved(
                    "bf16", f"auto: CUDA capability {cap[0]}.{cap[1]} runs bf16 natively"
                )
            if cap is not None and cap >= (7, 0):
                return Resolved(
                    "fp16", f"auto: CUDA capability {cap[0]}.{cap[1]} runs fp16 natively, not bf16"
                )
            return Resolved("fp32", f"auto: CUDA capability {cap} has no fast half precision")
        found = cpu_flags() if flags is None else flags
        if "amx_bf16" in found:
            return Resolved("bf16", "auto: CPU has AMX (amx_bf16)")
        extra = " (avx512_bf16 alone measured slower than fp32)" if "avx512_bf16" in found else ""
        return Resolved("fp32", f"auto: CPU has no AMX bf16 units{extra}")
    if requested == "fp16" and not cuda:
        LOG.warning("fp16 is not supported for CPU inference; using fp32")
        return Resolved("fp32", "fp16 requested; CPU inference has no fp16 path")
    return Resolved(requested, f"{requested} requested")
