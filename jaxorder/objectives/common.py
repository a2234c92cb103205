"""Pieces every objective shares: special ids, position ids, per-token NLL from logits."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxorder.config import ModelConfig


class SpecialIds(NamedTuple):
    pad: int
    mask: int
    bos: int
    eos: int


def special_ids(model_cfg: ModelConfig) -> SpecialIds:
    """Convention: the last four ids of the vocabulary are PAD, MASK, BOS, EOS (tokenizers follow it)."""
    v = model_cfg.vocab_size
    return SpecialIds(pad=v - 4, mask=v - 3, bos=v - 2, eos=v - 1)


def positions_like(tokens_BL: jnp.ndarray) -> jnp.ndarray:
    return jnp.broadcast_to(jnp.arange(tokens_BL.shape[1], dtype=jnp.int32), tokens_BL.shape)


def token_nll(logits_BLV: jnp.ndarray, targets_BL: jnp.ndarray) -> jnp.ndarray:
    """-log softmax(logits)[target] per position, float32 [B, L]."""
    logits_BLV = logits_BLV.astype(jnp.float32)
    lse_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
    target_logit_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
    return lse_BL - target_logit_BL
