"""The `order` option of the any-order samplers: a generation order named by the caller.

Values (`jaxorder.orders` parses them, the same specs as `eval --orders` and `score --order`):
`random` (a uniform order drawn from the key, the `random` sampler's), `l2r`, `r2l`, `perm:5,1-4,0,6-`
(every row) or `perm@FILE` (one line for every row, or exactly one line per row). An explicit order is
a permutation of ALL L positions of the row, given (prompt/template) positions included, so one spec
means the same with or without a prompt; the given positions are skipped: they are conditioned on
first, in position order, as in every any-order sampler, and the open ones are generated in the
order the spec lists them.
"""
from __future__ import annotations

import numpy as np

from jaxorder import orders
from jaxorder.config import ConfigError

RANDOM = "random"
VALUES = "random, l2r, r2l, perm:INDICES (e.g. perm:5,1-4,0,6-) or perm@FILE"


def explicit_order(text: str, tokens_BL: np.ndarray, mask_id: int) -> np.ndarray | None:
    """The order [B, L] (position at each step, all L positions) of a non-random `order` option, None
    for `random`; a bad spec is a one-line ConfigError."""
    if text == RANDOM:
        return None
    B, L = tokens_BL.shape
    try:
        return orders.row_orders(text, B, L, "--order")
    except ConfigError as e:
        given = int((tokens_BL[0] != mask_id).sum())
        if "is missing" in str(e) and given:
            # the likely slip: naming only the open positions of a prompted row
            raise ConfigError(f"{e}; the order lists all {L} positions, the {given} given ones too (they "
                              f"are skipped), e.g. end it with 0-") from None
        raise


def ranks(order_BL: np.ndarray) -> np.ndarray:
    """rank [B, L]: the step at which each position comes in the order [B, L]."""
    return np.argsort(order_BL, axis=1).astype(np.int32)
