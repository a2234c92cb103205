"""Plain-JAX reference paths for every kernel (used as the CPU default and as test oracles).

Nothing here imports from ``jaxorder``; the RoPE below is the same half-split convention and
float32 arithmetic as ``jaxorder.model.rope.apply_rope`` (a test checks they agree bit-for-bit).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import noise as _noise
from pallas_kernels.masks import as_mask_spec, structural_mask

RULES = ("confidence", "margin", "entropy", "random")


# ----------------------------------------------------------------------------------- RoPE
def inv_freq(head_dim: int, base: float) -> jnp.ndarray:
    half = head_dim // 2
    return base ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / head_dim)


def rope(x_BLHD: jnp.ndarray, positions_BL: jnp.ndarray, base: float) -> jnp.ndarray:
    """Half-split RoPE in float32 (angles pos * base^(-2i/D)); returns x's dtype."""
    angle = positions_BL.astype(jnp.float32)[..., None] * inv_freq(x_BLHD.shape[-1], base)
    cos, sin = jnp.cos(angle)[:, :, None, :], jnp.sin(angle)[:, :, None, :]
    x1, x2 = jnp.split(x_BLHD.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BLHD.dtype)


# ------------------------------------------------------------------------------ attention
def split_segments(segment_ids, L: int, S: int):
    """segment_ids: None, one [B, L] array (needs L == S), or a pair ([B, L], [B, S])."""
    if segment_ids is None:
        return None, None
    if isinstance(segment_ids, (tuple, list)):
        return segment_ids[0], segment_ids[1]
    if L != S:
        raise ValueError("a single segment_ids array needs L == S; pass (q_segments, k_segments)")
    return segment_ids, segment_ids


def attention_mask(mask, B: int, L: int, S: int, segment_ids=None) -> jnp.ndarray:
    """[B, L, S] boolean mask: structural mask and equal segment ids."""
    spec = as_mask_spec(mask)
    spec.check_lengths(L, S)
    m = jnp.asarray(structural_mask(spec, np.arange(L)[:, None], np.arange(S)[None, :], L, S))
    m = jnp.broadcast_to(m, (B, L, S))
    qs, ks = split_segments(segment_ids, L, S)
    if qs is not None:
        m = m & (qs[:, :, None] == ks[:, None, :])
    return m


def rope_attention(q, k, v, q_pos, k_pos, *, mask, rope_base=10000.0, scale=None,
                   segment_ids=None, return_lse=False, **unused_kernel_options):
    """Reference: rotate q and k with RoPE, then masked softmax attention (float32 math).

    q [B, L, H, D], k/v [B, S, K, D] (H % K == 0), q_pos [B, L], k_pos [B, S].
    Returns out [B, L, H, D] in q's dtype (and lse [B, L, H] float32 if return_lse).
    Rows with no visible key give out = 0 and lse = -inf. Differentiable with jax autodiff.
    """
    B, L, H, D = q.shape
    S, K = k.shape[1], k.shape[2]
    if H % K:
        raise ValueError(f"H={H} must be a multiple of K={K}")
    scale = D**-0.5 if scale is None else scale
    qr = rope(q, q_pos, rope_base).astype(jnp.float32)
    kr = rope(k, k_pos, rope_base).astype(jnp.float32)
    vf = v.astype(jnp.float32)
    G = H // K
    qr = qr.reshape(B, L, K, G, D)
    s = jnp.einsum("blkgd,bskd->bkgls", qr, kr, precision="highest") * scale
    m = attention_mask(mask, B, L, S, segment_ids)[:, None, None]
    s_m = jnp.where(m, s, -1e30)
    mx = jax.lax.stop_gradient(jnp.max(s_m, axis=-1, keepdims=True))
    p = jnp.where(m, jnp.exp(s_m - mx), 0.0)
    row_sum = jnp.sum(p, axis=-1, keepdims=True)
    o = jnp.einsum("bkgls,bskd->blkgd", p / jnp.where(row_sum > 0, row_sum, 1.0), vf, precision="highest")
    out = o.reshape(B, L, H, D).astype(q.dtype)
    if not return_lse:
        return out
    lse = jnp.where(row_sum[..., 0] > 0,
                    jnp.log(jnp.where(row_sum[..., 0] > 0, row_sum[..., 0], 1.0)) + mx[..., 0], -jnp.inf)
    return out, lse.reshape(B, H, L).transpose(0, 2, 1)


# ------------------------------------------------------------------------- sampling step
def _as_k_rows(k, B):
    return jnp.broadcast_to(jnp.asarray(k, jnp.int32), (B,))


def commit_reference(score_BL, is_masked_BL, *, k=None, threshold=None):
    """Which masked positions to commit: the k best scores per row (ties: lower index first),
    or every masked position with score >= threshold plus the row's best masked position.
    Straightforward O(L^2) ranking, independent of the kernel path's implementation."""
    B, L = score_BL.shape
    s = jnp.where(is_masked_BL, score_BL, -jnp.inf)
    idx = jnp.arange(L)
    better = (s[:, None, :] > s[:, :, None]) | ((s[:, None, :] == s[:, :, None])
                                                & (idx[None, None, :] < idx[None, :, None]))
    rank = jnp.sum(better & is_masked_BL[:, None, :], axis=-1)  # among masked positions
    if threshold is not None:
        return is_masked_BL & ((s >= threshold) | (rank == 0))
    return is_masked_BL & (rank < _as_k_rows(k, B)[:, None])


def position_stats(hidden_BLd, unembed_dV, key, *, temperature, forbidden_ids=(), float64=True):
    """Materializes the logits (float64 if x64 is enabled and float64=True) and returns
    dict(token, confidence, margin, entropy, logprob), each [B, L].

    The sample is argmax(logits / T + g) with the kernel's Gumbel noise g (same bits, same
    construction, evaluated in float64); T = 0 is argmax(logits). confidence = p(token),
    margin = p1 - p2, entropy = -sum p log p, all under softmax(logits) (temperature 1).
    """
    B, L, _ = hidden_BLd.shape
    V = unembed_dV.shape[1]
    ft = (jnp.float64 if (float64 and jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float64)
          else jnp.float32)
    z = jnp.einsum("bld,dv->blv", hidden_BLd.astype(ft), unembed_dV.astype(ft), precision="highest")
    forb = np.zeros(V, bool)
    forb[list(forbidden_ids)] = True
    z = jnp.where(jnp.asarray(forb), -jnp.inf, z)
    if temperature == 0:
        tok = jnp.argmax(z, axis=-1)
    else:
        keys = _noise.noise_keys(key)
        row = jnp.arange(B * L, dtype=jnp.uint32).reshape(B, L, 1)
        col = jnp.arange(V, dtype=jnp.uint32)
        a0, a1 = _noise.threefry2x32(keys[0, 0], keys[0, 1], row, col)
        b0, _ = _noise.threefry2x32(keys[1, 0], keys[1, 1], row, col)
        g = _gumbel_words_hi(a0, a1, b0, ft)
        tok = jnp.argmax(jnp.where(jnp.asarray(forb), -jnp.inf, z / temperature + g), axis=-1)
    lse = jax.nn.logsumexp(z, axis=-1)
    logp = z - lse[..., None]
    p = jnp.exp(logp)
    top2 = jax.lax.top_k(z, 2)[0]
    ent = -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)
    lp_tok = jnp.take_along_axis(logp, tok[..., None], axis=-1)[..., 0]
    return dict(token=tok.astype(jnp.int32), confidence=jnp.exp(lp_tok),
                margin=jnp.exp(top2[..., 0] - lse) - jnp.exp(top2[..., 1] - lse),
                entropy=ent, logprob=lp_tok)


def _gumbel_words_hi(w0, w1, w2, ft):
    """Same construction as noise.gumbel_from_words, evaluated in dtype ft (float64 here)."""
    mant = (w0 & jnp.uint32(0x7FFFFF)).astype(ft)
    sign = ((w0 >> 23) & 1) == 1
    z1 = _noise._clz32(w1)
    z = jnp.where(z1 == 32, 32 + _noise._clz32(w2), z1)
    e = jnp.exp2(-(z + 2).astype(ft)) * (1.0 + (mant + 0.5) * 2.0**-23)
    return -jnp.log(jnp.where(sign, -jnp.log(e), -jnp.log1p(-e)))


def rule_score(stats, rule, key, B, L):
    if rule == "confidence":
        return stats["confidence"]
    if rule == "margin":
        return stats["margin"]
    if rule == "entropy":
        return -stats["entropy"]
    if rule == "random":
        keys = _noise.noise_keys(key)
        row = jnp.arange(B * L, dtype=jnp.uint32).reshape(B, L)
        return _noise.uniform_at(keys, row, jnp.uint32(0xFFFFFFFF))
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


def mdm_sample_step(hidden_BLd, unembed_dV, tokens_BL, is_masked_BL, key, *, temperature,
                    rule="confidence", k=None, threshold=None, forbidden_ids=(), float64=True,
                    **unused_kernel_options):
    """Reference masked-diffusion sampling step (materializes logits, float64 when x64 is on).

    Same contract and return value as ``pallas_kernels.mdm_sample_step``.
    """
    B, L, _ = hidden_BLd.shape
    if (k is None) == (threshold is None):
        raise ValueError("give exactly one of k and threshold")
    st = position_stats(hidden_BLd, unembed_dV, key, temperature=temperature,
                        forbidden_ids=forbidden_ids, float64=float64)
    score = rule_score(st, rule, key, B, L)
    commit = commit_reference(score, is_masked_BL, k=k, threshold=threshold)
    new_tokens = jnp.where(commit, st["token"], tokens_BL).astype(tokens_BL.dtype)
    return dict(tokens=new_tokens, is_masked=is_masked_BL & ~commit, committed=commit,
                sampled=st["token"], confidence=st["confidence"], margin=st["margin"],
                entropy=st["entropy"], score=score)
