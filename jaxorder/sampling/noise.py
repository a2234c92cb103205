"""Gumbel noise for Gumbel-max sampling, with float64-accurate tails.

Gumbel-max draws argmax_v (logits_v / T + g_v), g = -log(-log u). The tails of g matter: a token
whose scaled logit is D below the best one is chosen only when its noise exceeds the winner's by
D, an event of probability ~exp(-D). A float32 uniform built from 24 random bits has
u <= 1 - 2^-24, so g <= 16.64 (jax.random.gumbel in float32 stops at 15.94): every event beyond
that has probability 0 instead of ~6e-8, which lowers the effective temperature (Zheng et al.
2024; docs/design.md, 'Sampling noise'). float64 (53 bits) reaches 36.7.

``gumbel_noise(key, shape, precision)``:
- ``"high"`` (default): the bit-level construction of ``pallas_kernels.noise`` (three 32-bit
  words per draw, a geometric exponent so every binade of u near 0 and near 1 gets exactly its
  probability, ``-log u`` via ``log``/``log1p`` without cancellation). The arithmetic is float32
  but the tails reach 45.7 (beyond float64's 36.7); no x64 flag is needed, so it runs inside
  jit on every backend. Counters are (row, column) of ``shape`` flattened to
  ``[prod(shape[:-1]), shape[-1]]``; for ``[B, L, V]`` the row is ``b*L + l`` and the column the
  vocabulary id — exactly the noise the fused kernel ``pallas_kernels.mdm_sample_step`` (and
  its reference) draws for the same key, so the plain and fused samplers agree token for token.
- ``"float32"``: the naive construction from the same first word: u = k / 2^24, g capped at
  16.64 (kept for the tail test and for comparison).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from pallas_kernels import noise as _pk_noise

PRECISIONS = ("high", "float32")

# Largest value the naive construction can produce: 24 bits stop at u = 1 - 2^-24 (the tail test
# checks float32 noise never passes it; the high-precision construction reaches about 66 ln 2).
FLOAT32_CAP = -math.log(-math.log1p(-2.0 ** -24))


def _counters(shape: tuple[int, ...]) -> tuple[jnp.ndarray, jnp.ndarray]:
    if not shape:
        shape = (1,)
    cols = shape[-1]
    rows = math.prod(shape[:-1])
    row = jnp.arange(rows, dtype=jnp.uint32).reshape(*shape[:-1], 1)
    col = jnp.arange(cols, dtype=jnp.uint32)
    return row, col


def gumbel_noise(key: jax.Array, shape: tuple[int, ...], precision: str = "high",
                 rows: jnp.ndarray | None = None) -> jnp.ndarray:
    """Standard Gumbel noise [shape] float32 from a threefry key; see the module docstring.

    ``rows`` (shape[:-1], uint32-valued) replaces the row counters: a slice of a larger draw gets
    exactly that draw's values (e.g. rows b*L + l of the positions l of a block)."""
    shape = tuple(int(s) for s in shape)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    keys_32 = _pk_noise.noise_keys(key)
    row, col = _counters(shape)
    if rows is not None:
        row = jnp.asarray(rows).astype(jnp.uint32)[..., None]
    if precision == "high":
        g = _pk_noise.gumbel_at(keys_32, row, col)
    else:
        a0, _ = _pk_noise.threefry2x32(keys_32[0, 0], keys_32[0, 1], row, col)
        g = _pk_noise.gumbel_float32_24bit(a0)
    return jnp.broadcast_to(g, shape if shape else (1,)).reshape(shape)


def first_argmax(x: jnp.ndarray) -> jnp.ndarray:
    """jnp.argmax(x, axis=-1) (the first maximal index) as two plain reductions, max then min index.

    XLA:CPU fuses an expensive elementwise producer (the Gumbel noise) into argmax's variadic
    reduce, which then runs scalar; max and min reductions over the materialized sum vectorize."""
    top = jnp.max(x, axis=-1, keepdims=True)
    index = jnp.arange(x.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(x == top, index, x.shape[-1]), axis=-1).astype(jnp.int32)


def gumbel_tail_probability(x: float) -> float:
    """P(g > x) for a standard Gumbel variable: 1 - exp(-exp(-x))."""
    return -math.expm1(-math.exp(-x))
