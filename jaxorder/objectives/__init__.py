"""Order families behind one interface: loss(params, batch, rng, cfg) and nll(params, batch, rng, cfg)."""
from __future__ import annotations

from types import ModuleType

from jaxorder.objectives import bd3, l2r, mdm, r2l

REGISTRY: dict[str, ModuleType] = {"l2r": l2r, "r2l": r2l, "mdm": mdm, "bd3": bd3}


def get(name: str) -> ModuleType:
    if name not in REGISTRY:
        raise ValueError(f"unknown objective '{name}'; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]
