"""Turn the user's ``datasets`` parameter into concrete ``.h5ad`` URIs, inside allowed roots.

A DAG trigger may only read datasets under the roots the platform allows and
write outputs under the output roots, so one user's trigger cannot read or
overwrite another's prefix. The roots are settings of the deployment:

``HELICAL_DATASET_ROOTS``  comma-separated folders / ``s3://`` prefixes datasets may come
                          from (default: ``<repo>/data`` and ``<repo>/runs``)
``HELICAL_OUTPUT_ROOTS``   where outputs may go (default: ``HELICAL_OUTPUT_ROOT``, else
                          ``<repo>/runs``)

On AWS the chart sets them to the datasets and outputs buckets (or a team's
prefixes in them); IRSA policies grant the runner role the same prefixes
(docs/aws.md), so the check here and the one in IAM agree.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASET_ROOTS_ENV = "HELICAL_DATASET_ROOTS"
OUTPUT_ROOTS_ENV = "HELICAL_OUTPUT_ROOTS"


class InputError(ValueError):
    """A dataset or output parameter names nothing usable, or lies outside the allowed roots."""


def allowed_roots(kind: str) -> list[str]:
    """The roots ``kind`` ("datasets" or "outputs") must lie under, normalised.

    Local roots are resolved (symlinks followed); ``s3://`` roots end with ``/``.
    """
    env = DATASET_ROOTS_ENV if kind == "datasets" else OUTPUT_ROOTS_ENV
    configured = os.environ.get(env, "")
    if configured.strip():
        roots = [r.strip() for r in configured.split(",") if r.strip()]
    elif kind == "datasets":
        roots = [str(REPO_ROOT / "data"), str(REPO_ROOT / "runs")]
    else:
        roots = [os.environ.get("HELICAL_OUTPUT_ROOT") or str(REPO_ROOT / "runs")]
    return [
        r.rstrip("/") + "/" if r.startswith("s3://") else str(Path(r).expanduser().resolve())
        for r in roots
    ]


def _normalise(spec: str) -> str:
    """``s3://`` URIs with ``..``/``.`` segments folded; local paths resolved."""
    if spec.startswith("s3://"):
        bucket, _, key = spec[len("s3://") :].partition("/")
        if not bucket:
            raise InputError(f"'{spec}' names no bucket")
        folded = posixpath.normpath("/" + key).lstrip("/") if key else ""
        if folded == ".":
            folded = ""
        return f"s3://{bucket}/{folded}" + ("/" if spec.endswith("/") and folded else "")
    return str(Path(spec).expanduser().resolve())


def confine(spec: str, kind: str) -> str:
    """``spec`` normalised, if it lies under one of :func:`allowed_roots`.

    :raises InputError: it lies outside them (with the roots and the setting to change).
    """
    spec = str(spec).strip()
    if not spec:
        raise InputError(f"empty {kind} path")
    if "://" in spec and not spec.startswith("s3://"):
        raise InputError(f"{kind} '{spec}': only local paths and s3:// URIs are supported")
    normal = _normalise(spec)
    roots = allowed_roots(kind)
    for root in roots:
        if root.startswith("s3://"):
            if (normal.rstrip("/") + "/").startswith(root):
                return normal
        elif not normal.startswith("s3://") and Path(normal).is_relative_to(root):
            return normal
    env = DATASET_ROOTS_ENV if kind == "datasets" else OUTPUT_ROOTS_ENV
    raise InputError(
        f"{kind} '{spec}' is outside the allowed roots {roots}; "
        f"use a path under one of them (the platform sets {env})"
    )


def check_output_root(spec: str) -> str:
    """The ``output_root`` parameter, normalised and confined to the output roots."""
    return confine(spec, "outputs")


def expand_datasets(specs: list[str], *, list_s3: Callable[[str], list[str]]) -> list[str]:
    """Files stay as they are; folders and S3 prefixes become their ``.h5ad`` files.

    :param specs: local paths (file or folder) and ``s3://`` URIs (object or prefix).
    :param list_s3: the ``.h5ad`` URIs under an ``s3://`` prefix. The DAG asks the
        runner (``helical-runner ls``): only runner pods may read the datasets bucket.
    :returns: unique URIs in the order given (a folder's files sorted by name).
    :raises InputError: a path that does not exist, a folder/prefix with no ``.h5ad``,
        or anything (a symlink's target included) outside :func:`allowed_roots`.
    """
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        raise InputError(
            "no datasets given: set the 'datasets' parameter to files, folders or s3:// prefixes"
        )
    uris: list[str] = []
    for spec in specs:
        spec = confine(spec, "datasets")
        if spec.startswith("s3://"):
            found = [spec] if spec.endswith(".h5ad") else list_s3(spec)
            found = [confine(u, "datasets") for u in found]
        else:
            path = Path(spec)
            if path.is_dir():
                # A symlink inside an allowed folder may point anywhere: confine each file.
                found = [confine(str(p), "datasets") for p in sorted(path.glob("*.h5ad"))]
            elif path.exists():
                found = [spec]
            else:
                raise InputError(f"dataset '{spec}' does not exist")
        if not found:
            raise InputError(f"no .h5ad files under '{spec}'")
        uris += [u for u in found if u not in uris]
    return uris


def dataset_names(uris: list[str]) -> dict[str, str]:
    """A short, unique, path-safe name per URI (file stem; ``-2``, ``-3`` on clashes)."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for uri in uris:
        stem = uri.rstrip("/").rsplit("/", 1)[-1].removesuffix(".h5ad") or "dataset"
        stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in stem)
        name, n = stem, 1
        while name in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name)
        names[uri] = name
    return names
