"""Model adapters, by name."""

from __future__ import annotations

from ..errors import BadInput
from .base import Adapter
from .geneformer import GeneformerAdapter
from .scgpt import ScGPTAdapter
from .uce import UCEAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    a.name: a for a in (GeneformerAdapter, ScGPTAdapter, UCEAdapter)
}


def adapter_class(name: str) -> type[Adapter]:
    try:
        return ADAPTERS[name.lower()]
    except KeyError:
        raise BadInput(
            f"unknown model '{name}' (available: {', '.join(sorted(ADAPTERS))})"
        ) from None


__all__ = ["ADAPTERS", "Adapter", "adapter_class"]
