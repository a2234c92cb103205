"""Attention masks the model knows (it knows mask kinds, never orders) and the XLA attention path."""
from __future__ import annotations

import jax
import jax.numpy as jnp

MASK_KINDS = ("causal", "bidirectional")


def attention_mask(kind: str, length: int) -> jnp.ndarray:
    """Boolean [L, L] mask, True where query i may attend to key j."""
    if kind == "causal":
        return jnp.tril(jnp.ones((length, length), dtype=bool))
    if kind == "bidirectional":
        return jnp.ones((length, length), dtype=bool)
    raise ValueError(f"unknown attention mask kind '{kind}'; known: {', '.join(MASK_KINDS)}")


def xla_attention(q_BLHD: jnp.ndarray, k_BLHD: jnp.ndarray, v_BLHD: jnp.ndarray,
                  mask_LL: jnp.ndarray) -> jnp.ndarray:
    """Softmax attention with scale 1/sqrt(D); softmax in float32."""
    scale = q_BLHD.shape[-1] ** -0.5
    logits_BHLL = jnp.einsum("blhd,bshd->bhls", q_BLHD, k_BLHD).astype(jnp.float32) * scale
    logits_BHLL = jnp.where(mask_LL, logits_BHLL, jnp.finfo(jnp.float32).min)
    probs_BHLL = jax.nn.softmax(logits_BHLL, axis=-1).astype(v_BLHD.dtype)
    return jnp.einsum("bhls,bshd->blhd", probs_BHLL, v_BLHD)
