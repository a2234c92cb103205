"""Right-to-left autoregression: L2R on the reversed window (same model, same causal mask).

Every target is scored, ``data.eos`` padding too: generated right to left, the padding comes first
and says where the document ends (l2r's exclusion of it would drop the length from the NLL)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder.config import Config
from jaxorder.objectives import l2r
from jaxorder.objectives.base import Objective, register


def _reversed(batch: dict) -> dict:
    return {**batch, "tokens": jnp.flip(batch["tokens"], axis=1)}


def nll(params, batch: dict, rng: jax.Array, cfg: Config) -> jnp.ndarray:
    del rng
    return l2r.sequence_token_nll(params, _reversed(batch)["tokens"], cfg).sum(axis=1)


def loss(params, batch: dict, rng: jax.Array, cfg: Config) -> tuple[jnp.ndarray, dict]:
    del rng
    value = l2r.sequence_token_nll(params, _reversed(batch)["tokens"], cfg).mean()
    return value, {"loss": value, "nll_per_token": value}


def token_nll(params, tokens_BL: jnp.ndarray, cfg: Config) -> jnp.ndarray:
    """Per-token NLL [B, L] in position order: token i is predicted from the tokens after it."""
    return jnp.flip(l2r.sequence_token_nll(params, jnp.flip(tokens_BL, axis=1), cfg), axis=1)


def analysis_inputs(tokens_NL: np.ndarray, cfg: Config, mask_rate: float,
                    seed: int) -> tuple[np.ndarray, str, float]:
    """l2r's input on the reversed window."""
    return l2r.analysis_inputs(tokens_NL[:, ::-1], cfg, mask_rate, seed)


def position_nll(params, tokens_BL: jnp.ndarray, rng: jax.Array, cfg: Config) -> dict[str, jnp.ndarray]:
    """The exact per-position NLL [B, L] of reading right to left, in (left-to-right) position order."""
    del rng
    return {"r2l": token_nll(params, tokens_BL, cfg)}


OBJECTIVE = register(Objective(
    name="r2l", loss=loss, nll=nll, exact=True, yardstick="exact", sampling="ar", default_sampler="ar",
    reading_order="r2l", analysis_inputs=analysis_inputs, token_nll=token_nll, position_nll=position_nll))
