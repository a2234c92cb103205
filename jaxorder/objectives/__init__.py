"""Order families, one file each, each ending with its registered `Objective` (see `base`).

This import list is the table of contents: adding a family means adding its file here.
"""
from __future__ import annotations

from jaxorder.objectives import ao_ar, bd3, ilm, l2r, latent_order, learned_order, mdm, r2l  # noqa: F401  (registration)
from jaxorder.objectives.base import (
    OWN_PARAMS,
    Objective,
    Option,
    OrderScoring,
    all_objectives,
    get,
    of,
    register,
)

__all__ = ["OWN_PARAMS", "Objective", "Option", "OrderScoring", "all_objectives", "get", "of", "register"]
