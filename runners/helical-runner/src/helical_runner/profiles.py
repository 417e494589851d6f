"""Resource profiles: one YAML per model, shared by the runner, the DAG and the pod specs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from .errors import BadInput

PROFILES_DIR = Path(__file__).parent / "profiles"
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
REQUIRED = (
    "model",
    "helical_model_name",
    "gene_id",
    "embedding_dim",
    "precision",
    "batch_size",
    "max_tokens_per_batch",
    "cells_per_chunk",
    "cells_per_shard",
    "timeout_minutes",
    "resources",
)
# Read by the DAG's planner only (how much work one embed task gets); optional.
PLANNING = ("cells_per_second", "startup_s")
# Optional: thresholds for runs that are not fp32 (fidelity.py; defaults apply when absent).
OPTIONAL = ("fidelity",)


@dataclasses.dataclass(frozen=True)
class Profile:
    model: str
    helical_model_name: str
    gene_id: str
    embedding_dim: int
    precision: str
    batch_size: int
    #: cells x padded length of one forward batch: bounds activation memory
    max_tokens_per_batch: int
    cells_per_chunk: int
    cells_per_shard: int
    timeout_minutes: int
    resources: dict[str, Any]
    cells_per_second: dict[str, float] | None = None
    startup_s: float | None = None
    #: reduced-precision fidelity thresholds and policy (:class:`~.fidelity.Policy`)
    fidelity: dict[str, Any] | None = None
    source: str = ""

    def with_overrides(self, **changes: Any) -> Profile:
        clean = {k: v for k, v in changes.items() if v is not None}
        if "fidelity" in clean:  # an override changes the keys it names, keeps the rest
            clean["fidelity"] = {**(self.fidelity or {}), **clean["fidelity"]}
        return validate(dataclasses.replace(self, **clean))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fidelity_policy(self):
        """The validated fidelity policy (defaults for keys the profile leaves out)."""
        from .fidelity import Policy

        return Policy.from_profile(self.fidelity, where=self.source or self.model)


def available() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load(name_or_path: str) -> Profile:
    """Load a profile by model name (built-in) or by path to a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise BadInput(
            f"unknown profile '{name_or_path}' (built-in: {', '.join(available())})",
            where=str(path),
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise BadInput(f"profile is not valid YAML: {exc}", where=str(path)) from exc
    if not isinstance(data, dict):
        raise BadInput("profile must be a YAML mapping", where=str(path))
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise BadInput(f"profile misses {', '.join(missing)}", where=str(path))
    unknown = sorted(set(data) - set(REQUIRED) - set(PLANNING) - set(OPTIONAL))
    if unknown:
        raise BadInput(f"profile has unknown keys {', '.join(unknown)}", where=str(path))
    return validate(Profile(**data, source=str(path)))


def validate(profile: Profile) -> Profile:
    where = profile.source or profile.model
    if profile.precision not in PRECISIONS:
        raise BadInput(
            f"precision must be one of {', '.join(PRECISIONS)}, not '{profile.precision}'",
            where=where,
        )
    if profile.gene_id not in ("ensembl", "symbol"):
        raise BadInput(
            f"gene_id must be 'ensembl' or 'symbol', not '{profile.gene_id}'", where=where
        )
    for key in (
        "batch_size",
        "max_tokens_per_batch",
        "cells_per_chunk",
        "cells_per_shard",
        "timeout_minutes",
        "embedding_dim",
    ):
        value = getattr(profile, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadInput(f"{key} must be a positive integer, not {value!r}", where=where)
    profile.fidelity_policy()  # raises BadInput on a bad fidelity section
    return profile
