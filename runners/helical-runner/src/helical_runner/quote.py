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
    processes: int | None = None,
) -> dict[str, Any]:
    """The quote of one model over ``datasets`` (name, cells).

    :param processes: runner processes the shards are embedded by (the DAG's warm
        tasks: each pays ``startup_s`` once); default one per shard.
    """
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
    if processes and processes < len(shard_s):
        # a warm task's later shards start with the runner already up
        shard_s = [s - startup for s in shard_s]
        busy = sum(shard_s) + startup * processes
        wall = max(startup + max(shard_s, default=0.0), busy / min(parallel, processes))
    else:
        busy = sum(shard_s)
        wall = max(max(shard_s, default=0.0), busy / parallel)
    per_instance = int(row.get("gpus") or 0)
    # a job takes `gpus` of an instance's GPUs; a CPU job takes the whole instance
    instance_hours = busy / 3600 * (gpus / per_instance if gpus and per_instance else 1)
    return {
        "model": profile.model,
        "cells": cells,
        "shards": len(shard_s),
        "embed_tasks": min(processes or len(shard_s), len(shard_s)),
        # + a merge per dataset and a report per dataset
        "tasks": min(processes or len(shard_s), len(shard_s)) + 2 * len(datasets),
        "device": device if device == "cpu" else instance_device,
        "gpus_per_job": gpus,
        "instance": instance,
        "cells_per_second": rate,
        "startup_s": startup,
        "busy_s": round(busy, 1),
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


# --- a run's estimate beside what it measured (``helical-runner provenance``) -------

#: profile fields a run's ``profile_overrides`` may change that the quote reads
QUOTED_FIELDS = ("cells_per_shard", "cells_per_second", "startup_s", "resources")


def runner_seconds(timings: dict[str, Any]) -> float:
    """A runner's own seconds from a manifest's timings: process start to the end of its work."""
    return sum(float(timings.get(k) or 0.0) for k in ("startup_s", "setup_s", "total_s"))


def record_estimate(record: dict[str, Any], prices: Prices | None = None) -> dict[str, Any]:
    """The quote of a run from its provenance record: the validated datasets' cells (read
    from their headers by the validate step), the run's models with its profile
    overrides, on the device and with the parallel jobs the DAG planned for
    (``record["quote"]``). A model that cannot be quoted gets ``error`` instead."""
    from .profiles import load

    hints = record.get("quote") or {}
    device = hints.get("device", "cpu")
    parallel = max(1, int(hints.get("parallel") or 1))
    params = record.get("params") or {}
    overrides = params.get("profile_overrides") or {}
    datasets = [
        (d.get("name") or d.get("uri"), int(d["validation"]["n_cells"]))
        for d in record.get("datasets", [])
        if d.get("status") == "validated" and (d.get("validation") or {}).get("n_cells") is not None
    ]
    rows = []
    for model in params.get("models") or []:
        try:
            prices = prices or load_prices()
            changes = {k: v for k, v in (overrides.get(model) or {}).items() if k in QUOTED_FIELDS}
            profile = load(model).with_overrides(**changes)
            processes = (hints.get("tasks") or {}).get(model)
            rows.append(
                model_quote(
                    profile,
                    datasets,
                    device=device,
                    prices=prices,
                    parallel=parallel,
                    processes=processes,
                )
            )
        except BadInput as exc:
            rows.append({"model": model, "error": str(exc)})
    quoted = [r for r in rows if "error" not in r]
    return {
        "device": device,
        "parallel": parallel,
        "models": rows,
        "total": {
            k: round(sum(r[k] for r in quoted), 4)
            for k in ("busy_s", "wall_s", "device_hours", "cost_on_demand", "cost_spot")
        },
        "prices": {"taken": prices.taken, "currency": prices.currency} if prices else None,
    }


def record_measured(record: dict[str, Any]) -> dict[str, Any]:
    """What the run's merged outputs' manifests measured, per model: cells, shards, the
    runners' own seconds (their sum is the quote's ``busy_s``), device-hours, and the
    span from the first shard's start to the last one's end."""
    from datetime import datetime

    by_model: dict[str, dict[str, Any]] = {}
    for out in record.get("outputs", []):
        if out.get("status") != "merged" or not out.get("timings") or not out.get("model"):
            continue
        row = by_model.setdefault(
            out["model"],
            {"model": out["model"], "cells": 0, "shards": 0, "busy_s": 0.0, "spans": []},
        )
        row["cells"] += int(out.get("cells") or 0)
        row["shards"] += int(out.get("shards") or 0)
        row["busy_s"] += runner_seconds(out["timings"])
        if out.get("started_at") and out.get("finished_at"):
            row["spans"].append((out["started_at"], out["finished_at"]))
    rows = []
    for row in by_model.values():
        spans = row.pop("spans")
        if spans:
            start = min(datetime.fromisoformat(a) for a, _ in spans)
            end = max(datetime.fromisoformat(b) for _, b in spans)
            row["wall_s"] = round((end - start).total_seconds(), 1)
        row["busy_s"] = round(row["busy_s"], 1)
        gpus = int(((record.get("quote") or {}).get("gpus") or {}).get(row["model"]) or 0)
        row["device_hours"] = round(row["busy_s"] / 3600 * max(gpus, 1), 4)
        row["cells_per_second"] = round(row["cells"] / row["busy_s"], 3) if row["busy_s"] else None
        rows.append(row)
    return {"models": rows, "busy_s": round(sum(r["busy_s"] for r in rows), 1)}


def estimate_table(estimate: dict[str, Any], measured: dict[str, Any] | None = None) -> str:
    """The estimate (and, after a run, what was measured) as plain text for a task log."""
    seen = {r["model"]: r for r in (measured or {}).get("models", [])}
    cur = (estimate.get("prices") or {}).get("currency", "USD")
    lines = [
        f"quote on {estimate['device']}, {estimate['parallel']} job(s) at a time"
        + (f"; prices taken {estimate['prices']['taken']}" if estimate.get("prices") else "")
    ]
    for r in estimate["models"]:
        if "error" in r:
            lines.append(f"  {r['model']}: no quote: {r['error']}")
            continue
        line = (
            f"  {r['model']}: {r['cells']:,} cells, {r['shards']} shard(s) on {r['instance']}: "
            f"~{_duration(r['wall_s'])} wall, {r['busy_s']:.0f} runner-s, "
            f"{r['device_hours']:.4f} device-h, {cur} {r['cost_on_demand']:.4f} on-demand / "
            f"{r['cost_spot']:.4f} spot"
        )
        m = seen.get(r["model"])
        if m:
            line += f"; measured {m['busy_s']:.0f} runner-s"
            if m.get("wall_s") is not None:
                line += f", {_duration(m['wall_s'])} wall"
        lines.append(line)
    return "\n".join(lines)


# --- better quotes with use: profiles' cells/s and start-up from manifests ----------------


def measured_speeds(manifests: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    """(model, cpu|gpu) -> cells/s and start-up from shard manifests: cells over the
    shards' own seconds, and the mean start-up (interpreter, imports, setup) of the
    runner processes they came from."""
    acc: dict[tuple[str, str], dict[str, float]] = {}
    for m in manifests:
        if "shards" in m or m.get("outcome") != "success":
            continue  # a merged manifest (its shards are counted themselves) or a failure
        device = "cpu" if str(m.get("device", "cpu")).startswith("cpu") else "gpu"
        row = acc.setdefault(
            (m["model"]["name"], device), {"cells": 0, "work_s": 0.0, "startup_s": 0.0, "n": 0}
        )
        t = m.get("timings") or {}
        row["cells"] += int(m["selection"]["cells"])
        row["work_s"] += float(t.get("total_s") or 0.0)
        if "startup_s" in t:  # the process's first shard carries its start-up
            row["startup_s"] += float(t["startup_s"]) + float(t.get("setup_s") or 0.0)
            row["n"] += 1
    return {
        key: {
            "cells_per_second": round(r["cells"] / r["work_s"], 3) if r["work_s"] else None,
            "startup_s": round(r["startup_s"] / r["n"], 1) if r["n"] else None,
            "cells": r["cells"],
        }
        for key, r in acc.items()
    }


def refresh_profile_text(text: str, device: str, speed: dict[str, float]) -> str:
    """The profile YAML with ``cells_per_second[device]`` and ``startup_s`` replaced, its
    comments and every other line kept."""
    import re

    data = yaml.safe_load(text)
    rates = dict(data.get("cells_per_second") or {})
    if speed.get("cells_per_second"):
        rates[device] = speed["cells_per_second"]
    flow = "{" + ", ".join(f"{k}: {v}" for k, v in rates.items()) + "}"
    out, n = re.subn(r"(?m)^cells_per_second:.*$", f"cells_per_second: {flow}", text)
    if not n:
        out = out.rstrip("\n") + f"\ncells_per_second: {flow}\n"
    if speed.get("startup_s") is not None:
        out, n = re.subn(r"(?m)^startup_s:.*$", f"startup_s: {speed['startup_s']}", out)
        if not n:
            out = out.rstrip("\n") + f"\nstartup_s: {speed['startup_s']}\n"
    return out
