"""Pieces every objective shares: special ids, position ids, per-token NLL from logits."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxorder.config import Config, ConfigError, ModelConfig
from jaxorder.objectives.base import Option


class SpecialIds(NamedTuple):
    pad: int
    mask: int
    bos: int
    eos: int


def special_ids(model_cfg: ModelConfig) -> SpecialIds:
    """Convention: the last four ids of the vocabulary are PAD, MASK, BOS, EOS (tokenizers follow it)."""
    v = model_cfg.vocab_size
    return SpecialIds(pad=v - 4, mask=v - 3, bos=v - 2, eos=v - 1)


def after_first_eos(tokens_BL: jnp.ndarray, eos: int) -> jnp.ndarray:
    """bool [B, L]: the positions strictly after a row's first EOS (``data.eos`` padding; samplers
    fill them with EOS, the l2r loss leaves them out)."""
    is_eos_BL = tokens_BL == eos
    return (jnp.cumsum(is_eos_BL, axis=1) - is_eos_BL) > 0


def positions_like(tokens_BL: jnp.ndarray) -> jnp.ndarray:
    return jnp.broadcast_to(jnp.arange(tokens_BL.shape[1], dtype=jnp.int32), tokens_BL.shape)


def token_nll(logits_BLV: jnp.ndarray, targets_BL: jnp.ndarray) -> jnp.ndarray:
    """-log softmax(logits)[target] per position, float32 [B, L]."""
    logits_BLV = logits_BLV.astype(jnp.float32)
    lse_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
    target_logit_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
    return lse_BL - target_logit_BL


# The diffusion time options mdm and bd3 both read.
DIFFUSION_TIME_OPTIONS = (
    Option("mdm_eps", 1e-3, "smallest diffusion time: t ~ U(eps, 1)"),
    Option("antithetic", True, "stratify the diffusion times across the batch"),
)


def check_diffusion_time(cfg: Config) -> None:
    if not 0 < cfg.objective.mdm_eps < 1:
        raise ConfigError(f"objective.mdm_eps must be in (0, 1), got {cfg.objective.mdm_eps}")


def subs_log_probs(logits_BLV: jnp.ndarray, mask_id: int) -> jnp.ndarray:
    """log-softmax [B, L, V] with the MASK logit at -inf (SUBS: MASK is never predicted)."""
    return jax.nn.log_softmax(logits_BLV.at[..., mask_id].set(-jnp.inf), axis=-1)
