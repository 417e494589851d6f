"""Turn the user's ``datasets`` parameter into concrete ``.h5ad`` URIs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


class InputError(ValueError):
    """A dataset parameter names nothing usable."""


def expand_datasets(specs: list[str], *, list_s3: Callable[[str], list[str]]) -> list[str]:
    """Files stay as they are; folders and S3 prefixes become their ``.h5ad`` files.

    :param specs: local paths (file or folder) and ``s3://`` URIs (object or prefix).
    :param list_s3: the ``.h5ad`` URIs under an ``s3://`` prefix. The DAG asks the
        runner (``helical-runner ls``): only runner pods may read the datasets bucket.
    :returns: unique URIs in the order given (a folder's files sorted by name).
    :raises InputError: a path that does not exist, or a folder/prefix with no ``.h5ad``.
    """
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        raise InputError(
            "no datasets given: set the 'datasets' parameter to files, folders or s3:// prefixes"
        )
    uris: list[str] = []
    for spec in specs:
        spec = str(spec).strip()
        if spec.startswith("s3://"):
            found = [spec] if spec.endswith(".h5ad") else list_s3(spec)
        else:
            path = Path(spec).expanduser().resolve()
            if path.is_dir():
                found = [str(p) for p in sorted(path.glob("*.h5ad"))]
            elif path.exists():
                found = [str(path)]
            else:
                raise InputError(f"dataset '{spec}' does not exist (resolved to {path})")
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
