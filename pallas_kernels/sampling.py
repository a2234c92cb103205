"""Fused masked-diffusion sampling step: unembedding + Gumbel-max sampling + statistics,
without materializing logits, then commitment of the most confident masked positions.

Kernel: grid (N/bn, V/bv) over (flattened rows, vocabulary tiles), vocabulary last (the
reduction axis, "arbitrary"). Each step computes one [bn, bv] logit tile z = h W in float32 and
folds it into per-row running state kept in the (revisited) output blocks:
  m1, m2   the largest and second-largest logit (duplicates count),
  s, t     sum_v exp(z_v - m1) and sum_v exp(z_v - m1) (z_v - m1)   (rescaled online),
  best     the Gumbel-max score max_v z_v / T + g_v, its index and its logit (T = 0: argmax).
Gumbel noise is generated in-kernel from counters (row, vocab id) (``pallas_kernels.noise``),
so neither logits nor noise ever reach memory. A tiny plain-JAX epilogue turns the state into
  logsumexp = m1 + log s, confidence = exp(z_tok - lse), margin = p1 - p2,
  entropy = log s - t / s
and commits positions by the rule.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import noise as _noise
from pallas_kernels import reference as _ref
from pallas_kernels.attention import use_kernel
from pallas_kernels.masks import padded_len

_BIG = 2**30


def _first_argmax(x, col, mx):
    return jnp.min(jnp.where(x == mx[:, None], col, _BIG), axis=-1)


def _sample_kernel(keys_ref, h_ref, w_ref, m1_ref, m2_ref, s_ref, t_ref, bs_ref, bi_ref, bl_ref, *,
                   V, bn, bv, temperature, forbidden):
    i, j = pl.program_id(0), pl.program_id(1)

    @pl.when(j == 0)
    def _init():
        for r in (m1_ref, m2_ref, bs_ref, bl_ref):
            r[...] = jnp.full((bn,), -jnp.inf, jnp.float32)
        s_ref[...] = jnp.zeros((bn,), jnp.float32)
        t_ref[...] = jnp.zeros((bn,), jnp.float32)
        bi_ref[...] = jnp.zeros((bn,), jnp.int32)

    z = lax.dot_general(h_ref[...], w_ref[...], (((1,), (0,)), ((), ())),
                        preferred_element_type=jnp.float32, precision=lax.Precision.HIGHEST)
    col = j * bv + lax.broadcasted_iota(jnp.int32, (bn, bv), 1)
    valid = col < V
    for f in forbidden:
        valid = valid & (col != f)
    z = jnp.where(valid, z, -jnp.inf)

    # tile statistics
    t1 = jnp.max(z, axis=-1)
    t1i = _first_argmax(z, col, t1)
    t2 = jnp.max(jnp.where(col == t1i[:, None], -jnp.inf, z), axis=-1)
    t1s = jnp.where(t1 == -jnp.inf, 0.0, t1)
    e = jnp.where(valid, jnp.exp(z - t1s[:, None]), 0.0)
    st = jnp.sum(e, axis=-1)
    tt = jnp.sum(jnp.where(valid, e * (z - t1s[:, None]), 0.0), axis=-1)

    # merge into the running state
    m1, s, t = m1_ref[...], s_ref[...], t_ref[...]
    m_new = jnp.maximum(m1, t1)
    ms = jnp.where(m_new == -jnp.inf, 0.0, m_new)
    a, b = jnp.exp(m1 - ms), jnp.exp(t1 - ms)
    t_ref[...] = (a * (t + jnp.where(s > 0, (m1 - ms) * s, 0.0))
                  + b * (tt + jnp.where(st > 0, (t1 - ms) * st, 0.0)))
    s_ref[...] = a * s + b * st
    m2_ref[...] = jnp.maximum(jnp.maximum(m2_ref[...], t2), jnp.minimum(m1, t1))
    m1_ref[...] = m_new

    if temperature == 0:
        ts, tsi, tl = t1, t1i, t1
    else:
        row = (i * bn + lax.broadcasted_iota(jnp.int32, (bn, bv), 0))
        g = _noise.gumbel_at(keys_ref[...], row, col)
        score = jnp.where(valid, z * (1.0 / temperature) + g, -jnp.inf)
        ts = jnp.max(score, axis=-1)
        tsi = _first_argmax(score, col, ts)
        tl = jnp.max(jnp.where(col == tsi[:, None], z, -jnp.inf), axis=-1)
    take = ts > bs_ref[...]
    bs_ref[...] = jnp.where(take, ts, bs_ref[...])
    bi_ref[...] = jnp.where(take, tsi, bi_ref[...])
    bl_ref[...] = jnp.where(take, tl, bl_ref[...])


def position_stats(hidden_BLd, unembed_dV, key, *, temperature, forbidden_ids=(), vocab_tile=512,
                   row_tile=128, interpret=True):
    """Kernel path of ``reference.position_stats``: dict(token, confidence, margin, entropy,
    logprob), each [B, L]; logits are never materialized."""
    B, L, d = hidden_BLd.shape
    V = unembed_dV.shape[1]
    N = B * L
    bn, bv = int(row_tile), int(vocab_tile)
    Np, Vp = padded_len(N, bn), padded_len(V, bv)
    h = hidden_BLd.reshape(N, d)
    h = jnp.pad(h, [(0, Np - N), (0, 0)]) if Np != N else h
    w = jnp.pad(unembed_dV, [(0, 0), (0, Vp - V)]) if Vp != V else unembed_dV
    keys = _noise.noise_keys(key)
    kern = functools.partial(_sample_kernel, V=V, bn=bn, bv=bv, temperature=float(temperature),
                             forbidden=tuple(int(f) for f in forbidden_ids))
    row = pl.BlockSpec((bn,), lambda i, j: (i,))
    f32, i32 = jnp.float32, jnp.int32
    shapes = [jax.ShapeDtypeStruct((Np,), dt) for dt in (f32, f32, f32, f32, f32, i32, f32)]
    m1, m2, s, t, _, tok, zl = pl.pallas_call(
        kern, grid=(Np // bn, Vp // bv),
        in_specs=[pl.BlockSpec((3, 2), lambda i, j: (0, 0)),
                  pl.BlockSpec((bn, d), lambda i, j: (i, 0)),
                  pl.BlockSpec((d, bv), lambda i, j: (0, j))],
        out_specs=[row] * 7, out_shape=shapes, interpret=interpret, name="mdm_sample_step",
    )(keys, h, w)
    lse = m1 + jnp.log(s)
    logprob = zl - lse
    out = dict(token=tok, confidence=jnp.exp(logprob), margin=jnp.exp(m1 - lse) - jnp.exp(m2 - lse),
               entropy=jnp.log(s) - t / s, logprob=logprob)
    return {name: x[:N].reshape(B, L) for name, x in out.items()}


def commit(score_BL, is_masked_BL, *, k=None, threshold=None):
    """Commit mask: per row the k highest-scoring masked positions (ties: lower index first;
    k an int or [B] array), or, with ``threshold``, every masked position scoring >= threshold
    plus the row's best masked position (so each step makes progress)."""
    B, L = score_BL.shape
    s = jnp.where(is_masked_BL, score_BL, -jnp.inf)
    order = jnp.argsort(-s, axis=-1, stable=True)
    rank = jnp.zeros((B, L), jnp.int32).at[jnp.arange(B)[:, None], order].set(jnp.arange(L, dtype=jnp.int32))
    if threshold is not None:
        return is_masked_BL & ((s >= threshold) | (rank == 0))
    k_rows = jnp.broadcast_to(jnp.asarray(k, jnp.int32), (B,))
    return is_masked_BL & (rank < k_rows[:, None])


def mdm_sample_step(hidden_BLd, unembed_dV, tokens_BL, is_masked_BL, key, *, temperature,
                    rule="confidence", k=None, threshold=None, forbidden_ids=(), vocab_tile=512,
                    row_tile=128, interpret=None):
    """One masked-diffusion sampling step, fused (logits never materialized).

    Args:
      hidden_BLd: [B, L, d] final hidden states (after the final norm).
      unembed_dV: [d, V] unembedding matrix (logits = hidden @ unembed).
      tokens_BL: [B, L] current tokens; is_masked_BL: [B, L] bool, True where still masked.
      key: a threefry JAX key (typed or raw uint32[2]).
      temperature: static float; 0 = argmax, else Gumbel-max on logits / temperature.
      rule: 'confidence' (p of the sampled token), 'margin' (p1 - p2), 'entropy' (lowest
        entropy first) or 'random' (uniform scores from ``key``); probabilities are those of
        softmax(logits) at temperature 1 (the model's distribution).
      k: commit the k best masked positions per row (int or [B] int array); or
      threshold: commit every masked position whose score >= threshold, and at least the best.
      forbidden_ids: static tuple of vocabulary ids never sampled and excluded from the
        softmax (e.g. the MASK id: SUBS parameterization).
      vocab_tile, row_tile: kernel tiles; V and B*L need not be multiples (padded + masked).
      interpret: None = by backend (TPU/GPU kernel, CPU plain-JAX reference), True = Pallas
        interpret mode, False = compiled kernel.
    Returns a dict of [B, L] arrays:
      tokens (updated: committed positions take the sampled token), is_masked (updated),
      committed (bool), sampled (int32 sample at every position), confidence, margin,
      entropy (float32, model distribution), score (the rule's score).
    """
    if (k is None) == (threshold is None):
        raise ValueError("give exactly one of k and threshold")
    if rule not in _ref.RULES:
        raise ValueError(f"rule must be one of {_ref.RULES}, got {rule!r}")
    run_kernel, interp = use_kernel(interpret)
    if not run_kernel:
        return _ref.mdm_sample_step(hidden_BLd, unembed_dV, tokens_BL, is_masked_BL, key,
                                    temperature=temperature, rule=rule, k=k, threshold=threshold,
                                    forbidden_ids=forbidden_ids)
    B, L, _ = hidden_BLd.shape
    st = position_stats(hidden_BLd, unembed_dV, key, temperature=temperature,
                        forbidden_ids=forbidden_ids, vocab_tile=vocab_tile, row_tile=row_tile,
                        interpret=interp)
    score = _ref.rule_score(st, rule, key, B, L)
    c = commit(score, is_masked_BL, k=k, threshold=threshold)
    return dict(tokens=jnp.where(c, st["token"], tokens_BL).astype(tokens_BL.dtype),
                is_masked=is_masked_BL & ~c, committed=c, sampled=st["token"],
                confidence=st["confidence"], margin=st["margin"], entropy=st["entropy"], score=score)
