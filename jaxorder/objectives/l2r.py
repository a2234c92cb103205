"""Left-to-right autoregression: -sum_i log p(x_i | x_<i), causal mask.

A window x_0..x_{L-1} is scored in full: the input is [BOS, x_0..x_{L-2}] and every x_i is a
target, so l2r, r2l and mdm all score the same L tokens.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder import model
from jaxorder.config import Config
from jaxorder.objectives.base import Objective, register
from jaxorder.objectives.common import positions_like, special_ids, token_nll


def sequence_token_nll(params, tokens_BL: jnp.ndarray, cfg: Config) -> jnp.ndarray:
    """Per-token NLL [B, L] of the chain rule in reading order."""
    bos = special_ids(cfg.model).bos
    inputs_BL = jnp.concatenate([jnp.full_like(tokens_BL[:, :1], bos), tokens_BL[:, :-1]], axis=1)
    logits_BLV = model.apply(params, cfg.model, inputs_BL, positions_like(inputs_BL), "causal")
    return token_nll(logits_BLV, tokens_BL)


def nll(params, batch: dict, rng: jax.Array, cfg: Config) -> jnp.ndarray:
    """Exact per-sequence NLL in nats [B]."""
    del rng
    return sequence_token_nll(params, batch["tokens"], cfg).sum(axis=1)


def loss(params, batch: dict, rng: jax.Array, cfg: Config) -> tuple[jnp.ndarray, dict]:
    del rng
    nll_BL = sequence_token_nll(params, batch["tokens"], cfg)
    value = nll_BL.mean()
    return value, {"loss": value, "nll_per_token": value}


def analysis_inputs(tokens_NL: np.ndarray, cfg: Config, mask_rate: float,
                    seed: int) -> tuple[np.ndarray, str, float]:
    """The training input [BOS, x_0..x_{L-2}] under the causal mask (mask_rate does not apply)."""
    del mask_rate, seed
    bos_N1 = np.full_like(tokens_NL[:, :1], special_ids(cfg.model).bos)
    return np.concatenate([bos_N1, tokens_NL[:, :-1]], axis=1).astype(np.int32), "causal", 0.0


def position_nll(params, tokens_BL: jnp.ndarray, rng: jax.Array, cfg: Config) -> dict[str, jnp.ndarray]:
    """The exact per-position NLL of the reading order [B, L]."""
    del rng
    return {"l2r": sequence_token_nll(params, tokens_BL, cfg)}


OBJECTIVE = register(Objective(
    name="l2r", loss=loss, nll=nll, exact=True, yardstick="exact", sampling="ar", default_sampler="ar",
    judge=True, analysis_inputs=analysis_inputs, token_nll=sequence_token_nll, position_nll=position_nll))
