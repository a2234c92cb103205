"""Order families behind one interface: loss(params, batch, rng, cfg) and nll(params, batch, rng, cfg)."""
from __future__ import annotations

from types import ModuleType

from jaxorder.objectives import ao_ar, bd3, l2r, latent_order, mdm, r2l

REGISTRY: dict[str, ModuleType] = {"l2r": l2r, "r2l": r2l, "mdm": mdm, "bd3": bd3,
                                   "ao_ar": ao_ar, "latent_order": latent_order}


def get(name: str) -> ModuleType:
    if name not in REGISTRY:
        raise ValueError(f"unknown objective '{name}'; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]
