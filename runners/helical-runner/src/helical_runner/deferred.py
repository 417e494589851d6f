"""Modules helical imports but the runner's embedding path never uses, run on first use.

``import helical.models.geneformer`` (likewise scgpt, uce) imports scanpy, which
imports scikit-learn, scipy.stats, numba and matplotlib: 2-4 s of every runner
start, for functions the embedding path does not call (scanpy's preprocessing
runs only for options the runner leaves off). :func:`defer` puts a placeholder
in ``sys.modules`` that runs the real module the first time anything uses it
(an attribute, or one of its submodules), so nothing changes for code that
does use it, and helical is imported unmodified.
"""

from __future__ import annotations

import importlib.util
import sys
import types

#: what helical's model modules import at the top but embeddings never need
HEAVY_UNUSED = ("scanpy",)
#: names a deferred package re-exports from a light one, served without running it
#: (UCE's modules do ``from scanpy import AnnData``; it is anndata's class)
REEXPORTS = {"scanpy": {"AnnData": ("anndata", "AnnData")}}


class _OnFirstUse(types.ModuleType):
    """A package whose code has not run yet; its first use runs it in place.

    Probes of module metadata (``hasattr(m, "__file__")``, as ``inspect`` and
    torch's operator registry do for every module) answer without running it.
    """

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        _run(self)
        return getattr(self, attr)


def _run(module: types.ModuleType) -> None:
    if type(module) is not _OnFirstUse:
        return
    module.__class__ = types.ModuleType
    module.__spec__.loader.exec_module(module)


class _SubmoduleFirst:
    """Import hook: a submodule imported before its deferred package was used runs
    the package first (as a normal import would), then imports as usual."""

    def find_spec(self, name: str, path=None, target=None):
        package = sys.modules.get(name.partition(".")[0])
        if "." in name and type(package) is _OnFirstUse:
            _run(package)
        return None


def defer(*names: str) -> None:
    """Defer each of ``names`` (top-level packages) not imported yet."""
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        for attr, (source, source_attr) in REEXPORTS.get(name, {}).items():
            setattr(module, attr, getattr(importlib.import_module(source), source_attr))
        module.__class__ = _OnFirstUse
        sys.modules[name] = module
    if not any(isinstance(f, _SubmoduleFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, _SubmoduleFirst())


def is_deferred(name: str) -> bool:
    """True while ``name`` is a placeholder nothing has used yet."""
    return type(sys.modules.get(name)) is _OnFirstUse
