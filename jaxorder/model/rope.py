"""Rotary position embedding (RoPE), half-split convention.

For head dim D, frequencies inv_freq_i = base^(-2i/D), i = 0..D/2-1, and angle = pos * inv_freq_i
(computed in float32). With x = [x1, x2] split in halves along the last axis:
  rope(x) = [x1 * cos - x2 * sin, x2 * cos + x1 * sin].
Positions are explicit arrays (any-order AR permutes tokens; block diffusion repeats 0..n-1) and
lie in [0, max_len) (model.max_len).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


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


def long_range_decay(base: float, head_dim: int, context: int, chunk: int = 1 << 16) -> float:
    """min over m in [0, context) of B_m = sum_{i < D/2} cos(m * base^(-2i/D)) (float64).

    B_m is the long-term-decay measure of Men et al. 2024, "Base of RoPE Bounds Context Length"
    (arXiv:2405.14591): the expected q.k advantage of a key similar to the query over a random one at
    relative distance m, up to a positive factor. Their criterion for a usable context is B_m >= 0
    for every distance in it."""
    theta_F = float(base) ** (-np.arange(head_dim // 2, dtype=np.float64) * 2.0 / head_dim)
    lowest = np.inf
    for start in range(0, context, chunk):  # chunks keep memory at chunk x D/2 for long contexts
        m_M = np.arange(start, min(start + chunk, context), dtype=np.float64)
        lowest = min(lowest, float(np.cos(m_M[:, None] * theta_F[None, :]).sum(axis=1).min()))
    return lowest


def rope_base_lower_bound(head_dim: int, context: int, rel_tol: float = 1e-7,
                          search: tuple[float, float] = (1.0, 1e15)) -> float:
    """The smallest RoPE base (to `rel_tol`) at which B_m >= 0 for all m < `context` (long_range_decay).

    B_m(base) need not be monotone in the base, so a log-spaced scan of `search` first finds the
    largest scanned base where the criterion fails; bisection on log(base) then runs between it and
    the next scanned base, where it holds. Returns search[0] if it holds there already; ValueError if
    it fails at search[1]."""
    lo, hi = search
    if long_range_decay(lo, head_dim, context) >= 0:
        return lo
    if long_range_decay(hi, head_dim, context) < 0:
        raise ValueError(f"no RoPE base up to {hi:g} keeps B_m >= 0 for context {context} and head dim "
                         f"{head_dim}")
    grid = np.geomspace(lo, hi, 241)  # 16 points per decade
    holds = np.array([long_range_decay(b, head_dim, context) >= 0 for b in grid])
    k = int(np.flatnonzero(~holds).max())  # the criterion holds from grid[k + 1] on (grid[-1] == hi holds)
    log_lo, log_hi = np.log(grid[k]), np.log(grid[k + 1])
    while log_hi - log_lo > rel_tol:
        mid = 0.5 * (log_lo + log_hi)
        if long_range_decay(float(np.exp(mid)), head_dim, context) >= 0:
            log_hi = mid
        else:
            log_lo = mid
    return float(np.exp(log_hi))
