"""The mutations of `make mutate` (tools/mutate.py): small plausible bugs and the tests that kill them.

Extend the list of its area (one file of this package each) with every new objective and sampler
(and every new estimator the yardstick reports): add at least one realistic one-token bug of its core
computation, with the few targeted tests that must fail on it. A mutation's `original` must occur
exactly once in its file; when the code moves, `make mutate` reports it NOT APPLIED, and the snippet
is updated here.
"""
from __future__ import annotations

from . import decoders, model, objectives, orders, platform, sampling
from .base import Mutation

# one list per area (the files in this package); a new objective or sampler extends its area's list
MUTATIONS: tuple[Mutation, ...] = (*objectives.MUTATIONS, *model.MUTATIONS, *sampling.MUTATIONS,
                                   *decoders.MUTATIONS, *platform.MUTATIONS, *orders.MUTATIONS)

__all__ = ["MUTATIONS", "Mutation"]


def _check(mutations: tuple[Mutation, ...]) -> None:
    ids = [m.id for m in mutations]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate mutation ids: {', '.join(duplicates)}")
    for m in mutations:
        if m.original == m.replacement or not m.tests:
            raise ValueError(f"mutation {m.id}: needs a change and at least one test")


_check(MUTATIONS)
