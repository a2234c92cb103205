"""Pieces shared by the two fused RoPE flash-attention kernels (``attention.py``, Triton-style,
and ``attention_tpu.py``, Mosaic-style): the static kernel configuration, in-kernel tile math
(RoPE of a loaded tile, float32 dots), input padding and the tile tables."""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp
from jax import lax

from pallas_kernels import reference as _ref
from pallas_kernels.masks import MaskSpec, padded_len, tile_tables

VARIANTS = ("gpu", "tpu")  # kernel structures: Triton-style loop over k tiles | Mosaic-style kv grid axis


@dataclasses.dataclass(frozen=True)
class Cfg:
    """Static configuration of one attention call (hashable: a custom_vjp nondiff argument)."""
    spec: MaskSpec
    L: int
    S: int
    scale: float
    base: float
    block_q: int
    block_k: int
    interpret: bool
    variant: str = "gpu"


def swap_halves(x_nD: jnp.ndarray) -> jnp.ndarray:
    """[x1, x2] -> [x2, x1] along the last axis by slicing (the TPU kernel uses a lane roll)."""
    half = x_nD.shape[-1] // 2
    return jnp.concatenate([x_nD[:, half:], x_nD[:, :half]], axis=-1)


def rotate(x_nD, pos_n1, invf_1D, inverse: bool = False,
           swap: Callable[[jnp.ndarray], jnp.ndarray] = swap_halves) -> jnp.ndarray:
    """Half-split RoPE of a [n, D] tile at positions [n, 1] (float32 math and result).

    ``invf_1D`` is the inverse-frequency vector repeated for both halves, [1, D]. Computes
    x * cos + swap(x) * (-sin | +sin), which is bit-for-bit [x1 c - x2 s, x2 c + x1 s];
    ``inverse`` rotates by -theta (the chain rule through RoPE).
    """
    ang = pos_n1.astype(jnp.float32) * invf_1D
    c, s = jnp.cos(ang), jnp.sin(ang)
    first = lax.broadcasted_iota(jnp.int32, x_nD.shape, 1) < x_nD.shape[-1] // 2
    s = jnp.where(first != inverse, -s, s)
    xf = x_nD.astype(jnp.float32)
    return xf * c + swap(xf) * s


def inv_freq_both_halves(head_dim: int, base: float, padded_half: int | None = None) -> jnp.ndarray:
    """[1, 2 * half] inverse frequencies for ``rotate``; halves zero-padded to ``padded_half``
    (zero frequency: padded lanes, which hold zeros, stay zero)."""
    invf = _ref.inv_freq(head_dim, base)
    half = head_dim // 2
    padded_half = half if padded_half is None else padded_half
    invf = jnp.pad(invf, (0, padded_half - half))
    return jnp.concatenate([invf, invf])[None, :]


def dot_nt(a, b):  # a [m, d] . b [n, d]^T -> [m, n] float32
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32,
                           precision=lax.Precision.HIGHEST)


def dot_nn(a, b):  # [m, k] . [k, n]
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32,
                           precision=lax.Precision.HIGHEST)


def dot_tn(a, b):  # a [k, m]^T . b [k, n] -> [m, n]
    return lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32,
                           precision=lax.Precision.HIGHEST)


def pad_inputs(cfg: Cfg, q, k, v, q_pos, k_pos, q_seg, k_seg):
    """Pads the length axis (1) of every input to a block multiple; int32 ids, zero segments
    when none are given. Padded keys/queries are masked by index (see masks.structural_mask)."""
    Lp, Sp = padded_len(cfg.L, cfg.block_q), padded_len(cfg.S, cfg.block_k)

    def pad(x, n):
        return x if x.shape[1] == n else jnp.pad(x, [(0, 0), (0, n - x.shape[1])] + [(0, 0)] * (x.ndim - 2))

    if q_seg is None:
        q_seg = jnp.zeros(q_pos.shape, jnp.int32)
        k_seg = jnp.zeros(k_pos.shape, jnp.int32)
    return (pad(q, Lp), pad(k, Sp), pad(v, Sp), pad(q_pos.astype(jnp.int32), Lp),
            pad(k_pos.astype(jnp.int32), Sp), pad(q_seg.astype(jnp.int32), Lp),
            pad(k_seg.astype(jnp.int32), Sp))


def tables(cfg: Cfg):
    """(kv_idx [nq, nk], kv_cnt [nq], q_idx [nk, nq], q_cnt [nk]) as device int32 arrays."""
    kv_idx, kv_cnt, q_idx, q_cnt = tile_tables(cfg.spec, cfg.L, cfg.S, cfg.block_q, cfg.block_k)
    return jnp.asarray(kv_idx), jnp.asarray(kv_cnt), jnp.asarray(q_idx), jnp.asarray(q_cnt)


def delta_rows(do_BLHD, out_BLHD, dlse_BLH) -> jnp.ndarray:
    """delta = rowsum(dO * O) - dlse, [B, L, H] float32 (the lse cotangent enters dS as + P dlse)."""
    return (jnp.sum(do_BLHD.astype(jnp.float32) * out_BLHD.astype(jnp.float32), axis=-1)
            - dlse_BLH.astype(jnp.float32))


