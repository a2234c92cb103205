"""Counter-based random bits and high-precision Gumbel noise, usable inside Pallas kernels.

Random bits come from Threefry-2x32 (20 rounds, the generator behind ``jax.random``) written
with plain uint32 ``jnp`` ops, keyed by a JAX key and indexed by a counter pair (row, vocab id).
It runs unchanged inside a kernel body (no PRNG state, no noise array in memory) and in the
plain-JAX reference, so both draw bit-identical noise.

Gumbel noise g = -log(-log u) needs u resolved finely near 1 (upper tail: g ~ -log(1 - u)) and
near 0 (lower tail). A float32 uniform built from 24 random bits has u <= 1 - 2^-24, which caps
g at 16.64 (jax.random.gumbel in float32: 15.94); float64 with 53 bits caps it at 36.7.
Construction used here (three 32-bit words per draw):
  - e in (0, 1/2): e = 2^-(z+2) * (1 + (m + 1/2) / 2^23), with m the 23 low bits of word 0 and
    z the number of leading zeros of the 64-bit string (word 1, word 2), i.e. a geometric
    exponent: each binade [2^-(z+2), 2^-(z+1)) gets exactly its probability 2^-(z+1) (z is
    capped at 64, probability 2^-64).
  - a sign bit (bit 23 of word 0) picks u = e or u = 1 - e, so both ends of (0, 1) are resolved.
  - -log u is computed as -log(e) or -log1p(-e) (no cancellation), then g = -log(-log u).
The smallest e is ~2^-66, so the noise reaches ~45.7 (above float64's 36.7) and the lower tail
reaches -log(-log 2^-66) = -3.83 (float64: -3.6). All arithmetic is float32 (TPU has no f64).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_ROT = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotl(x, r):
    return lax.shift_left(x, jnp.uint32(r)) | lax.shift_right_logical(x, jnp.uint32(32 - r))


def threefry2x32(k0, k1, x0, x1):
    """Threefry-2x32 (20 rounds) on uint32 arrays; same output as jax.extend.random.threefry_2x32."""
    k0 = jnp.asarray(k0, jnp.uint32)
    k1 = jnp.asarray(k1, jnp.uint32)
    k2 = k0 ^ k1 ^ _PARITY
    ks = (k0, k1, k2)
    x0 = jnp.asarray(x0, jnp.uint32) + k0
    x1 = jnp.asarray(x1, jnp.uint32) + k1
    for i in range(5):
        for r in _ROT[i % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, r)
            x1 = x0 ^ x1
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    return x0, x1


def _clz32(x):
    """Leading zeros of uint32 (32 for 0) with shifts/compares only (portable to kernels)."""
    n = jnp.zeros(x.shape, jnp.int32)
    for s in (16, 8, 4, 2, 1):
        top = lax.shift_right_logical(x, jnp.uint32(32 - s)) == 0
        n = n + jnp.where(top, s, 0)
        x = jnp.where(top, lax.shift_left(x, jnp.uint32(s)), x)
    return n + jnp.where(x == 0, 1, 0)


def neg_log_uniform(w0, w1, w2):
    """-log(u) for u ~ U(0, 1) built from three uint32 words, float32, both tails resolved."""
    mant = (w0 & jnp.uint32(0x7FFFFF)).astype(jnp.float32)
    sign = (lax.shift_right_logical(w0, jnp.uint32(23)) & jnp.uint32(1)) == 1
    z1 = _clz32(w1)
    z = jnp.where(z1 == 32, 32 + _clz32(w2), z1)  # in [0, 64]
    # 2^-(z+2) built exactly from the float32 exponent field (no pow/exp2 needed)
    scale = lax.bitcast_convert_type(((125 - z) << 23).astype(jnp.int32), jnp.float32)
    e = scale * (1.0 + (mant + 0.5) * np.float32(2.0**-23))  # in (0, 1/2)
    return jnp.where(sign, -jnp.log(e), -jnp.log1p(-e))


def gumbel_from_words(w0, w1, w2):
    """Standard Gumbel noise (float32) from three uint32 words; see the module docstring."""
    return -jnp.log(neg_log_uniform(w0, w1, w2))


def key_words(key) -> jnp.ndarray:
    """uint32[2] key data from a typed key or a raw threefry key."""
    if jnp.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    key = jnp.asarray(key)
    if key.shape != (2,) or key.dtype != jnp.uint32:
        raise ValueError(f"expected a threefry2x32 key (uint32[2]), got {key.dtype}{key.shape}")
    return key


def noise_keys(key) -> jnp.ndarray:
    """uint32[3, 2]: two keys for the Gumbel words and one for the `random` commitment rule."""
    kw = key_words(key)
    return jax.random.key_data(jax.random.split(jax.random.wrap_key_data(kw), 3))


def gumbel_at(keys_32, row, col):
    """Gumbel noise for counters (row, col) (uint32/int32 arrays broadcasting together)."""
    row = jnp.asarray(row).astype(jnp.uint32)
    col = jnp.asarray(col).astype(jnp.uint32)
    a0, a1 = threefry2x32(keys_32[0, 0], keys_32[0, 1], row, col)
    b0, _ = threefry2x32(keys_32[1, 0], keys_32[1, 1], row, col)
    return gumbel_from_words(a0, a1, b0)


def uniform_at(keys_32, row, col):
    """U(0,1) float32 (24-bit) for the `random` commitment rule, counters (row, col)."""
    a0, _ = threefry2x32(keys_32[2, 0], keys_32[2, 1], jnp.asarray(row).astype(jnp.uint32),
                         jnp.asarray(col).astype(jnp.uint32))
    return (lax.shift_right_logical(a0, jnp.uint32(8)).astype(jnp.float32) + 0.5) * np.float32(2.0**-24)


def gumbel_float32_24bit(words0):
    """The naive construction (for comparison in tests): u = k / 2^24 from 24 bits, float32;
    g <= -log(-log(1 - 2^-24)) = 16.636."""
    u = lax.shift_right_logical(words0, jnp.uint32(8)).astype(jnp.float32) * np.float32(2.0**-24)
    u = jnp.maximum(u, np.float32(np.finfo(np.float32).tiny))  # u in [tiny, 1 - 2^-24]
    return -jnp.log(-jnp.log(u))
