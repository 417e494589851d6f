"""Model resource profiles: read from the runner's YAML files, never from its code.

The profile YAML is the single source of truth (docs/contracts.md). The
Airflow environment cannot import ``helical_runner`` (clashing pins), so this
module reads the same files with PyYAML.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

PROFILES_DIR_ENV = "HELICAL_PROFILES_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PROFILES_DIR = REPO_ROOT / "runners/helical-runner/src/helical_runner/profiles"

# Fields the runner accepts as command-line overrides, and their flags.
RUNNER_FLAGS = {
    "batch_size": "--batch-size",
    "cells_per_chunk": "--cells-per-chunk",
    "precision": "--precision",
}
# Fields the DAG itself uses (the last two size embed tasks: helical_workflow.plan).
DAG_FIELDS = {"cells_per_shard", "timeout_minutes", "resources", "cells_per_second", "startup_s"}
OVERRIDABLE = set(RUNNER_FLAGS) | DAG_FIELDS


class ProfileError(ValueError):
    """A profile is missing, malformed, or an override is not allowed."""


def profiles_dir() -> Path:
    """The folder of ``<model>.yaml`` profiles (env ``HELICAL_PROFILES_DIR`` wins)."""
    return Path(os.environ.get(PROFILES_DIR_ENV) or DEFAULT_PROFILES_DIR)


def available_models() -> list[str]:
    """Model names that have a profile, sorted."""
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_profile(model: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The profile of ``model`` with ``overrides`` merged in, checked.

    :param model: model name (file ``<model>.yaml`` in :func:`profiles_dir`).
    :param overrides: fields to replace, e.g. ``{"cells_per_shard": 500}``;
        only :data:`OVERRIDABLE` fields, nested dicts merged key by key.
    :raises ProfileError: unknown model, unknown override, invalid value.
    """
    known = available_models()
    # A name, never a path: only a profile that exists in the folder (no '../x').
    if not isinstance(model, str) or model not in known:
        raise ProfileError(
            f"unknown model {model!r}: no profile of that name in {profiles_dir()} "
            f"(known: {', '.join(known) or 'none'})"
        )
    path = profiles_dir() / f"{model}.yaml"
    profile = yaml.safe_load(path.read_text()) or {}
    overrides = overrides or {}
    unknown = sorted(set(overrides) - OVERRIDABLE)
    if unknown:
        raise ProfileError(
            f"profile override(s) {unknown} for '{model}' not allowed "
            f"(allowed: {sorted(OVERRIDABLE)})"
        )
    profile = _deep_merge(profile, overrides)
    for field in ("cells_per_shard", "timeout_minutes"):
        value = profile.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ProfileError(
                f"profile '{model}': {field} must be a positive integer, not {value!r}"
            )
    speeds = profile.get("cells_per_second") or {}
    startup = profile.get("startup_s", 0)
    if (
        not isinstance(speeds, dict)
        or set(speeds) - {"cpu", "gpu"}
        or not all(v is None or _positive_number(v) for v in speeds.values())
    ):
        raise ProfileError(
            f"profile '{model}': cells_per_second must map cpu and/or gpu to positive numbers "
            f"(or null: not measured), not {speeds!r}"
        )
    if not _positive_number(startup) and startup != 0:
        raise ProfileError(f"profile '{model}': startup_s must be a number >= 0, not {startup!r}")
    return profile


def _positive_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def cells_per_second(profile: dict[str, Any], *, gpus: bool) -> float | None:
    """The profile's measured throughput of one runner on the device it will get
    (its GPU when it asks for one and ``gpus``, else CPU); None when not measured."""
    kind = "gpu" if gpus and gpu_type(profile) else "cpu"
    return (profile.get("cells_per_second") or {}).get(kind)


def gpu_type(profile: dict[str, Any]) -> str | None:
    """The GPU type a profile asks for, or None for CPU-only work."""
    gpu = (profile.get("resources") or {}).get("gpu") or {}
    return gpu.get("type") if int(gpu.get("count", 0) or 0) > 0 else None


def pool_name(profile: dict[str, Any]) -> str:
    """Airflow pool of a profile's jobs: ``gpu-<type>``, or ``cpu-runners`` without a GPU."""
    kind = gpu_type(profile)
    return f"gpu-{kind}" if kind else "cpu-runners"


def known_pools() -> list[str]:
    """Pools of every profile on disk: the DAG declares one embed task per pool."""
    return sorted({pool_name(load_profile(m)) for m in available_models()})


def runner_overrides(profile_overrides: dict[str, Any]) -> list[str]:
    """Command-line flags carrying the runner-side overrides of a profile."""
    args: list[str] = []
    for field, flag in RUNNER_FLAGS.items():
        if field in profile_overrides:
            args += [flag, str(profile_overrides[field])]
    return args
