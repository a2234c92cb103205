"""Right-to-left autoregression: L2R on the reversed window (same model, same causal mask)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxorder.config import Config
from jaxorder.objectives import l2r

EXACT = True


def _reversed(batch: dict) -> dict:
    return {**batch, "tokens": jnp.flip(batch["tokens"], axis=1)}


def nll(params, batch: dict, rng: jax.Array, cfg: Config) -> tuple[jnp.ndarray, bool]:
    return l2r.nll(params, _reversed(batch), rng, cfg)


def loss(params, batch: dict, rng: jax.Array, cfg: Config) -> tuple[jnp.ndarray, dict]:
    return l2r.loss(params, _reversed(batch), rng, cfg)
