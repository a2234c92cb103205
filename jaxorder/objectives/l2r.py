"""Left-to-right autoregression: -sum_i log p(x_i | x_<i), causal mask.

A window x_0..x_{L-1} is scored in full: the input is [BOS, x_0..x_{L-2}] and every x_i is a
target, so l2r, r2l and mdm all score the same L tokens.

``data.eos`` windows (a document, EOS, then EOS padding): the positions after the first EOS are left
out of the loss and of ``nll``. In reading order they are determined (the sampler stops at the first
EOS and fills the rest), so ``nll`` is the exact -log p(document, EOS) of the model whose tail is
EOS with probability 1. Every other family scores the padding: in its orders a padding EOS can come
before the first one and then carries the document's length (r2l generates it first).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder import model
from jaxorder.config import Config
from jaxorder.objectives.base import Objective, register
from jaxorder.objectives.common import after_first_eos, positions_like, special_ids, token_nll


def sequence_token_nll(params, tokens_BL: jnp.ndarray, cfg: Config) -> jnp.ndarray:
    """Per-token NLL [B, L] of the chain rule in reading order."""
    bos = special_ids(cfg.model).bos
    inputs_BL = jnp.concatenate([jnp.full_like(tokens_BL[:, :1], bos), tokens_BL[:, :-1]], axis=1)
    logits_BLV = model.apply(params, cfg.model, inputs_BL, positions_like(inputs_BL), "causal")
    return token_nll(logits_BLV, tokens_BL)


def scored(tokens_BL: jnp.ndarray, cfg: Config) -> jnp.ndarray:
    """bool [B, L]: the targets l2r scores, all of them, or with ``data.eos`` those up to the first EOS."""
    if not cfg.data.eos:
        return jnp.ones(tokens_BL.shape, bool)
    return ~after_first_eos(tokens_BL, special_ids(cfg.model).eos)


def nll(params, batch: dict, rng: jax.Array, cfg: Config) -> jnp.ndarray:
    """Exact per-sequence NLL in nats [B] (``data.eos``: of the document and its EOS)."""
    del rng
    tokens_BL = batch["tokens"]
    return jnp.where(scored(tokens_BL, cfg), sequence_token_nll(params, tokens_BL, cfg), 0.0).sum(axis=1)


def loss(params, batch: dict, rng: jax.Array, cfg: Config) -> tuple[jnp.ndarray, dict]:
    """Mean NLL per scored target (all of them unless ``data.eos``)."""
    del rng
    keep_BL = scored(batch["tokens"], cfg)
    nll_BL = sequence_token_nll(params, batch["tokens"], cfg)
    value = jnp.sum(jnp.where(keep_BL, nll_BL, 0.0)) / jnp.maximum(keep_BL.sum(), 1)
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
