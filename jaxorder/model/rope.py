"""Rotary position embedding (RoPE), half-split convention.

For head dim D, frequencies inv_freq_i = base^(-2i/D), i = 0..D/2-1, and angle = pos * inv_freq_i
(computed in float32). With x = [x1, x2] split in halves along the last axis:
  rope(x) = [x1 * cos - x2 * sin, x2 * cos + x1 * sin].
Positions are explicit arrays (any-order AR permutes tokens; block diffusion repeats 0..n-1) and
lie in [0, max_len) (model.max_len).
"""
from __future__ import annotations

import jax.numpy as jnp


def rope_angles(positions_BL: jnp.ndarray, head_dim: int, base: float,
                max_len: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos and sin of shape [B, L, D/2] (float32); positions outside [0, max_len) give NaN.

    The angles are rows of a [max_len, D/2] table looked up by position (a gather), not computed
    from the positions elementwise. The values are the same float32 numbers either way. The
    lookup is there for XLA:CPU: given cos(positions * inv_freq), it fuses the cos and sin into
    every consumer, so each RoPE fusion of every layer, forward and backward, re-evaluates them
    per head. It does not duplicate a gather, so cos and sin are computed once per step, [B, L, D/2]
    of them (measured: docs/performance.md)."""
    half = head_dim // 2
    inv_freq_F = base ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / head_dim)
    angle_PF = jnp.arange(max_len, dtype=jnp.float32)[:, None] * inv_freq_F
    return (jnp.take(jnp.cos(angle_PF), positions_BL, axis=0),
            jnp.take(jnp.sin(angle_PF), positions_BL, axis=0))


def apply_rope(x_BLHD: jnp.ndarray, positions_BL: jnp.ndarray, base: float, max_len: int) -> jnp.ndarray:
    """Rotates queries or keys [B, L, H, D] by their positions [B, L] in [0, max_len); keeps x's dtype."""
    cos_BLF, sin_BLF = rope_angles(positions_BL, x_BLHD.shape[-1], base, max_len)
    cos_BL1F, sin_BL1F = cos_BLF[:, :, None, :], sin_BLF[:, :, None, :]
    x1, x2 = jnp.split(x_BLHD.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos_BL1F - x2 * sin_BL1F, x2 * cos_BL1F + x1 * sin_BL1F], axis=-1)
    return out.astype(x_BLHD.dtype)
