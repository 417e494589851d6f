"""A time and cost quote before a run: ``helical-runner plan``.

For each model: the datasets' cells (from the files' headers: the length of the
obs index, no matrix read), the shards the profile's ``cells_per_shard`` makes,
the embed tasks, the instance the profile's device runs on, and from the
profile's measured ``cells_per_second`` and ``startup_s``:

    shard seconds  = startup_s + cells / cells_per_second[device]
    device-hours   = sum of shard seconds / 3600   (x GPUs per job on a GPU)
    wall seconds   = max(longest shard, sum of shard seconds / parallel jobs)
    cost           = instance-hours x the price table's on-demand and spot price

The price table (``data/prices.yaml``, dated) maps devices to instance types;
``--prices FILE`` or ``HELICAL_RUNNER_PRICES`` replaces it. Every figure is an
estimate from the profile's numbers, which say where they were measured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import BadInput
from .profiles import Profile

PRICES = Path(__file__).parent / "data" / "prices.yaml"
PRICES_ENV = "HELICAL_RUNNER_PRICES"


@dataclass(frozen=True)
class Prices:
    taken: str
    currency: str
    source: str
    instances: dict[str, dict[str, Any]]
    device_instances: dict[str, str]
    where: str

    def instance_for(self, device_key: str, model: str) -> tuple[str, dict[str, Any]]:
        name = self.device_instances.get(device_key)
        if not name:
            raise BadInput(
                f"no instance type for device '{device_key}' (model {model}) in the price table",
                where=self.where,
            )
        row = self.instances.get(name)
        if not row:
            raise BadInput(f"no price for instance type '{name}'", where=self.where)
        return name, row


def load_prices(path: str | None = None) -> Prices:
    where = path or os.environ.get(PRICES_ENV) or str(PRICES)
    file = Path(where)
    if not file.is_file():
        raise BadInput("price table not found", where=where)
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise BadInput(f"price table is not valid YAML: {exc}", where=where) from exc
    if not isinstance(data, dict):
        raise BadInput("price table must be a YAML mapping", where=where)
    missing = [k for k in ("taken", "instances", "device_instances") if not data.get(k)]
    if missing:
        raise BadInput(f"price table misses {', '.join(missing)}", where=where)
    for name, row in data["instances"].items():
        for key in ("on_demand", "spot"):
            value = (row or {}).get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise BadInput(
                    f"instance '{name}': {key} must be a price per hour >= 0, not {value!r}",
                    where=where,
                )
    return Prices(
        taken=str(data["taken"]),
        currency=str(data.get("currency", "USD")),
        source=str(data.get("source", "")),
        instances=data["instances"],
        device_instances=data["device_instances"],
        where=where,
    )


def dataset_cells(path: str) -> int:
    """Cells of an ``.h5ad`` from its header (the obs index), no matrix read."""
    from .dataset import H5AD

    if not Path(path).exists():
        raise BadInput("dataset not found", where=path)
    with H5AD(Path(path), uri=path) as h5:
        return int(h5.n_cells)


def _device_key(profile: Profile, device: str) -> tuple[str, str, int]:
    """(cells/s key, price-table device, GPUs per job) for ``cpu`` or ``gpu``."""
    if device == "cpu":
        return "cpu", "cpu", 0
    gpu = (profile.resources or {}).get("gpu") or {}
    if not gpu.get("count"):
        raise BadInput(f"profile {profile.model} asks for no GPU", where=profile.source)
    return "gpu", str(gpu.get("type", "gpu")), int(gpu["count"])


def model_quote(
    profile: Profile,
    datasets: list[tuple[str, int]],
    *,
    device: str,
    prices: Prices,
    parallel: int = 1,
) -> dict[str, Any]:
    """The quote of one model over ``datasets`` (name, cells)."""
    if parallel < 1:
        raise BadInput(f"--parallel must be >= 1, not {parallel}")
    rate_key, instance_device, gpus = _device_key(profile, device)
    rates = profile.cells_per_second or {}
    rate = rates.get(rate_key) or rates.get(instance_device)
    if not rate:
        raise BadInput(
            f"profile {profile.model} has no measured cells_per_second for {rate_key} "
            f"(it has: {', '.join(sorted(rates)) or 'none'}); quote another --device or add "
            "the figure from a run's manifest",
            where=profile.source,
        )
    startup = float(profile.startup_s or 0.0)
    instance, row = prices.instance_for(instance_device, profile.model)
    shard_s: list[float] = []
    cells = 0
    for _, n in datasets:
        cells += n
        for start in range(0, n, profile.cells_per_shard):
            shard_s.append(startup + min(profile.cells_per_shard, n - start) / rate)
    busy = sum(shard_s)
    wall = max(max(shard_s, default=0.0), busy / parallel)
    per_instance = int(row.get("gpus") or 0)
    # a job takes `gpus` of an instance's GPUs; a CPU job takes the whole instance
    instance_hours = busy / 3600 * (gpus / per_instance if gpus and per_instance else 1)
    return {
        "model": profile.model,
        "cells": cells,
        "shards": len(shard_s),
        "embed_tasks": len(shard_s),
        "tasks": len(shard_s) + 2 * len(datasets),  # + a merge and a report per dataset
        "device": device if device == "cpu" else instance_device,
        "gpus_per_job": gpus,
        "instance": instance,
        "cells_per_second": rate,
        "startup_s": startup,
        "wall_s": round(wall, 1),
        "device_hours": round(busy / 3600 * max(gpus, 1), 4),
        "cost_on_demand": round(instance_hours * float(row["on_demand"]), 4),
        "cost_spot": round(instance_hours * float(row["spot"]), 4),
    }


def quote(
    inputs: list[str],
    profiles: list[Profile],
    *,
    device: str = "cpu",
    prices: Prices,
    parallel: int = 1,
) -> dict[str, Any]:
    if not inputs:
        raise BadInput("give at least one --input dataset")
    datasets = [(Path(p).stem, dataset_cells(p)) for p in inputs]
    rows = [
        model_quote(p, datasets, device=device, prices=prices, parallel=parallel) for p in profiles
    ]
    return {
        "datasets": [
            {"name": n, "uri": u, "cells": c} for (n, c), u in zip(datasets, inputs, strict=True)
        ],
        "models": rows,
        "total": {
            "tasks": sum(r["tasks"] for r in rows) + len(datasets) + 1,  # + validate, provenance
            "wall_s": round(sum(r["wall_s"] for r in rows), 1),
            "device_hours": round(sum(r["device_hours"] for r in rows), 4),
            "cost_on_demand": round(sum(r["cost_on_demand"] for r in rows), 4),
            "cost_spot": round(sum(r["cost_spot"] for r in rows), 4),
        },
        "parallel": parallel,
        "prices": {"taken": prices.taken, "currency": prices.currency, "source": prices.source},
    }


def table(q: dict[str, Any]) -> str:
    """The quote as a plain-text table."""
    cur = q["prices"]["currency"]
    head = ["model", "cells", "shards", "tasks", "device", "instance", "wall", "device-h"]
    head += [f"{cur} on-demand", f"{cur} spot"]

    def money(row: dict[str, Any]) -> list[str]:
        return [f"{row['device_hours']:.3f}", f"{row['cost_on_demand']:.2f}",
                f"{row['cost_spot']:.2f}"]  # fmt: skip

    def cells_of(row: dict[str, Any]) -> list[str]:
        return [row["model"], f"{row['cells']:,}", str(row["shards"]), str(row["tasks"])]

    rows = [
        [*cells_of(r), r["device"], r["instance"], _duration(r["wall_s"]), *money(r)]
        for r in q["models"]
    ]
    t = q["total"]
    rows.append(["total", "", "", str(t["tasks"]), "", "", _duration(t["wall_s"]), *money(t)])
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [head, *rows]
    ]
    cells = sum(d["cells"] for d in q["datasets"])
    lines.insert(
        0,
        f"{len(q['datasets'])} dataset(s), {cells:,} cells; {q['parallel']} job(s) at a time; "
        "models run one after another",
    )
    lines.append(f"prices taken {q['prices']['taken']}: {q['prices']['source']}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
