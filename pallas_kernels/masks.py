"""Attention-mask descriptions (hashable, usable as static arguments) and tile tables.

A mask is a small frozen dataclass: ``MaskSpec("causal")``, ``MaskSpec("bidirectional")`` or
``MaskSpec("bd3", block_size=b)`` (constructors ``causal()``, ``bidirectional()``, ``bd3(b)``).
Indices are positions in the sequence *as laid out* (not position ids):
  - causal: key j visible to query i iff j <= i.
  - bidirectional: always.
  - bd3(b): the 2n layout [x_t ; x] of docs/design.md, 'Block diffusion' (requires L == S == 2n,
    n % b == 0 is not required). Noisy half = indices < n, clean half = indices >= n,
    block(i) = (i mod n) // b.
    noisy->noisy iff same block; noisy->clean iff block(key) < block(query);
    clean->clean iff block(key) <= block(query); clean->noisy never.
Segment ids (optional) further restrict attention to equal segment ids; they are data, not part
of the spec, and do not take part in tile skipping (which is structural only).
"""
from __future__ import annotations

import dataclasses

import numpy as np

KINDS = ("causal", "bidirectional", "bd3")


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    kind: str
    block_size: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"mask kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "bd3":
            if self.block_size is None or int(self.block_size) < 1:
                raise ValueError("bd3 mask needs block_size >= 1")
        elif self.block_size is not None:
            raise ValueError(f"{self.kind} mask takes no block_size")

    def check_lengths(self, L: int, S: int) -> None:
        if self.kind == "bd3" and (L != S or L % 2):
            raise ValueError(f"bd3 mask needs the 2n layout: L == S and even, got L={L}, S={S}")


def causal() -> MaskSpec:
    return MaskSpec("causal")


def bidirectional() -> MaskSpec:
    return MaskSpec("bidirectional")


def bd3(block_size: int) -> MaskSpec:
    return MaskSpec("bd3", int(block_size))


def as_mask_spec(mask) -> MaskSpec:
    """Accepts a MaskSpec, 'causal', 'bidirectional', or ('bd3', b)."""
    if isinstance(mask, MaskSpec):
        return mask
    if isinstance(mask, str):
        return MaskSpec(mask)
    if isinstance(mask, tuple) and len(mask) == 2:
        return MaskSpec(mask[0], mask[1])
    raise TypeError(f"cannot interpret {mask!r} as a mask spec")


def structural_mask(spec: MaskSpec, qi, kj, L: int, S: int, xp=np):
    """Boolean mask for query indices qi and key indices kj (broadcasting), real lengths L, S.

    Indices outside [0, L) x [0, S) (padding) are masked. ``xp`` is numpy or jax.numpy, so the
    same code builds dense masks, tile tables, and the in-kernel masks.
    """
    valid = (qi < L) & (kj < S)
    if spec.kind == "bidirectional":
        return valid
    if spec.kind == "causal":
        return valid & (kj <= qi)
    n, b = L // 2, spec.block_size
    q_clean, k_clean = qi >= n, kj >= n
    qb = (qi - xp.where(q_clean, n, 0)) // b
    kb = (kj - xp.where(k_clean, n, 0)) // b
    nn = ~q_clean & ~k_clean & (qb == kb)
    nc = ~q_clean & k_clean & (kb < qb)
    cc = q_clean & k_clean & (kb <= qb)
    return valid & (nn | nc | cc)


def dense_mask(spec: MaskSpec, L: int, S: int) -> np.ndarray:
    """[L, S] numpy boolean mask (structural part only)."""
    spec.check_lengths(L, S)
    return structural_mask(spec, np.arange(L)[:, None], np.arange(S)[None, :], L, S)


def padded_len(n: int, block: int) -> int:
    return -(-n // block) * block


def tile_live(spec: MaskSpec, L: int, S: int, block_q: int, block_k: int) -> np.ndarray:
    """[nq, nk] bool: tile (i, j) has at least one visible (query, key) pair (after padding)."""
    spec.check_lengths(L, S)
    Lp, Sp = padded_len(L, block_q), padded_len(S, block_k)
    nq, nk = Lp // block_q, Sp // block_k
    kj = np.arange(Sp)[None, :]
    live = np.zeros((nq, nk), bool)
    for i in range(nq):  # one q tile at a time: O(block_q * S) memory even at 16k x 16k
        qi = np.arange(i * block_q, (i + 1) * block_q)[:, None]
        live[i] = structural_mask(spec, qi, kj, L, S).reshape(block_q, nk, block_k).any(axis=(0, 2))
    return live


def tile_skip_fraction(mask, L: int, S: int, block_q: int, block_k: int) -> float:
    """Fraction of (q tile, k tile) pairs the kernels skip because the mask excludes them."""
    live = tile_live(as_mask_spec(mask), L, S, block_q, block_k)
    return float(1.0 - live.mean())


def tile_tables(spec: MaskSpec, L: int, S: int, block_q: int, block_k: int):
    """Compacted lists of live tiles (static numpy int32).

    Returns (kv_idx [nq, nk], kv_cnt [nq], q_idx [nk, nq], q_cnt [nk]): for q tile i the live k
    tiles are kv_idx[i, :kv_cnt[i]] in increasing order (the rest repeats the last live index),
    and symmetrically for k tiles.
    """
    live = tile_live(spec, L, S, block_q, block_k)

    def compact(t):
        cnt = t.sum(axis=1).astype(np.int32)
        idx = np.zeros(t.shape, np.int32)
        for r in range(t.shape[0]):
            nz = np.nonzero(t[r])[0]
            if nz.size:
                idx[r, : nz.size] = nz
                idx[r, nz.size:] = nz[-1]
        return idx, cnt

    kv_idx, kv_cnt = compact(live)
    q_idx, q_cnt = compact(live.T)
    return kv_idx, kv_cnt, q_idx, q_cnt
