"""Fused RoPE + flash attention in Pallas (forward and backward under ``jax.custom_vjp``).

Kernel structure (Triton-style, also runs in interpret mode on CPU):
  forward   grid (B, H, L/bq): rotate the q tile in-kernel, loop over the *live* k tiles of
            this q tile (static compacted tile table), rotate each k tile on load, online
            softmax; write out and log-sum-exp.
  backward  recompute (no attention matrix is stored):
            dq kernel  grid (B, H, L/bq): loop over live k tiles, dq_rot += scale * dS K_rot,
                       then un-rotate (chain rule through RoPE: R(-theta)).
            dkv kernel grid (B, K, S/bk): loop over the G = H/K query heads sharing this kv
                       head and the live q tiles, dv += P^T dO, dk_rot += scale * dS^T Q_rot,
                       then un-rotate.
Tiles that the structural mask excludes are never visited (see ``tile_skip_fraction``).
Lengths that are not multiples of the block sizes are padded internally; padded keys and
queries are masked, and the outputs are sliced back.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import attention_tpu
from pallas_kernels import reference as _ref
from pallas_kernels.attention_common import (
    VARIANTS,
    Cfg,
    dot_nn,
    dot_nt,
    dot_tn,
    inv_freq_both_halves,
    pad_inputs,
    rotate,
    tables,
)
from pallas_kernels.masks import as_mask_spec, structural_mask


def _iota(n):
    return lax.broadcasted_iota(jnp.int32, (n,), 0)


# ----------------------------------------------------------------------------- forward
def _kv_tile_scores(cfg, tile, bk, qr, qi, qseg, k_ref, kp_ref, ks_ref, invf):
    """One key tile against the query block (forward and dq kernels): rotate the keys, scaled
    scores [bq, bk] float32 and the visibility mask (structure and segments).
    Returns (slice, rotated keys, s, ok)."""
    start = pl.multiple_of(tile * bk, bk)
    sl = pl.ds(start, bk)
    kr = rotate(k_ref[sl, :], kp_ref[sl][:, None], invf).astype(k_ref.dtype)
    s = dot_nt(qr, kr) * cfg.scale
    kj = start + _iota(bk)[None, :]
    ok = structural_mask(cfg.spec, qi, kj, cfg.L, cfg.S, xp=jnp) & (qseg == ks_ref[sl][None, :])
    return sl, kr, s, ok


def _fwd_kernel(kv_idx_ref, kv_cnt_ref, invf_ref, q_ref, k_ref, v_ref, qp_ref, kp_ref, qs_ref,
                ks_ref, o_ref, lse_ref, *, cfg: Cfg):
    bq, bk = cfg.block_q, cfg.block_k
    i = pl.program_id(2)
    invf = invf_ref[...]
    qr = rotate(q_ref[...], qp_ref[...][:, None], invf).astype(q_ref.dtype)
    qi = i * bq + _iota(bq)[:, None]
    qseg = qs_ref[...][:, None]
    D = qr.shape[-1]

    def body(t, carry):
        acc, m, row_sum = carry
        sl, kr, s, ok = _kv_tile_scores(cfg, kv_idx_ref[i, t], bk, qr, qi, qseg, k_ref, kp_ref, ks_ref, invf)
        s = jnp.where(ok, s, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        p = jnp.where(ok, jnp.exp(s - m_safe[:, None]), 0.0)
        alpha = jnp.exp(m - m_safe)
        row_sum = alpha * row_sum + jnp.sum(p, axis=-1)
        acc = alpha[:, None] * acc + dot_nn(p.astype(v_ref.dtype), v_ref[sl, :])
        return acc, m_new, row_sum

    init = (jnp.zeros((bq, D), jnp.float32), jnp.full((bq,), -jnp.inf, jnp.float32),
            jnp.zeros((bq,), jnp.float32))
    acc, m, row_sum = lax.fori_loop(0, kv_cnt_ref[i], body, init)
    pos = row_sum > 0
    o_ref[...] = (acc / jnp.where(pos, row_sum, 1.0)[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(pos, m + jnp.log(jnp.where(pos, row_sum, 1.0)), -jnp.inf)


def _full(shape):
    return pl.BlockSpec(shape, lambda *_: (0,) * len(shape))


def _forward(cfg: Cfg, q, k, v, q_pos, k_pos, q_seg, k_seg):
    """Returns padded out [B, Lp, H, D] and lse [B, H, Lp] (float32)."""
    qp, kp, vp, qpp, kpp, qsp, ksp = pad_inputs(cfg, q, k, v, q_pos, k_pos, q_seg, k_seg)
    B, Lp, H, D = qp.shape
    Sp, K = kp.shape[1], kp.shape[2]
    G = H // K
    bq = cfg.block_q
    kv_idx, kv_cnt, _, _ = tables(cfg)
    invf = inv_freq_both_halves(D, cfg.base)
    grid = (B, H, Lp // bq)
    in_specs = [
        _full(kv_idx.shape), _full(kv_cnt.shape), _full(invf.shape),
        pl.BlockSpec((None, bq, None, D), lambda b, h, i: (b, i, h, 0)),
        pl.BlockSpec((None, Sp, None, D), lambda b, h, i: (b, 0, h // G, 0)),
        pl.BlockSpec((None, Sp, None, D), lambda b, h, i: (b, 0, h // G, 0)),
        pl.BlockSpec((None, bq), lambda b, h, i: (b, i)),
        pl.BlockSpec((None, Sp), lambda b, h, i: (b, 0)),
        pl.BlockSpec((None, bq), lambda b, h, i: (b, i)),
        pl.BlockSpec((None, Sp), lambda b, h, i: (b, 0)),
    ]
    out_specs = [pl.BlockSpec((None, bq, None, D), lambda b, h, i: (b, i, h, 0)),
                 pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i))]
    out_shape = [jax.ShapeDtypeStruct((B, Lp, H, D), q.dtype),
                 jax.ShapeDtypeStruct((B, H, Lp), jnp.float32)]
    o, lse = pl.pallas_call(functools.partial(_fwd_kernel, cfg=cfg), grid=grid, in_specs=in_specs,
                            out_specs=out_specs, out_shape=out_shape, interpret=cfg.interpret,
                            name="rope_flash_fwd")(kv_idx, kv_cnt, invf, qp, kp, vp, qpp, kpp, qsp, ksp)
    return o, lse


# ---------------------------------------------------------------------------- backward
def _dq_kernel(kv_idx_ref, kv_cnt_ref, invf_ref, q_ref, k_ref, v_ref, qp_ref, kp_ref, qs_ref,
               ks_ref, do_ref, lse_ref, delta_ref, dq_ref, *, cfg: Cfg):
    bq, bk = cfg.block_q, cfg.block_k
    i = pl.program_id(2)
    invf = invf_ref[...]
    qpos = qp_ref[...][:, None]
    qr = rotate(q_ref[...], qpos, invf).astype(q_ref.dtype)
    do = do_ref[...]
    lse = lse_ref[...][:, None]
    delta = delta_ref[...][:, None]
    qi = i * bq + _iota(bq)[:, None]
    qseg = qs_ref[...][:, None]

    def body(t, dq):
        sl, kr, s, ok = _kv_tile_scores(cfg, kv_idx_ref[i, t], bk, qr, qi, qseg, k_ref, kp_ref, ks_ref, invf)
        p = jnp.where(ok, jnp.exp(s - lse), 0.0)
        dp = dot_nt(do, v_ref[sl, :])
        ds = p * (dp - delta)
        return dq + dot_nn(ds.astype(k_ref.dtype), kr)

    dq = lax.fori_loop(0, kv_cnt_ref[i], body, jnp.zeros(qr.shape, jnp.float32))
    dq_ref[...] = rotate(dq * cfg.scale, qpos, invf, inverse=True).astype(dq_ref.dtype)


def _dkv_kernel(q_idx_ref, q_cnt_ref, invf_ref, q_ref, k_ref, v_ref, qp_ref, kp_ref, qs_ref,
                ks_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, cfg: Cfg, G: int):
    bq, bk = cfg.block_q, cfg.block_k
    j = pl.program_id(2)
    invf = invf_ref[...]
    kpos = kp_ref[...][:, None]
    kr = rotate(k_ref[...], kpos, invf).astype(k_ref.dtype)
    vt = v_ref[...]
    kj = j * bk + _iota(bk)[None, :]
    kseg = ks_ref[...][None, :]
    dk = jnp.zeros(kr.shape, jnp.float32)
    dv = jnp.zeros(vt.shape, jnp.float32)
    for g in range(G):
        def body(t, carry, g=g):
            dk, dv = carry
            start = pl.multiple_of(q_idx_ref[j, t] * bq, bq)
            sl = pl.ds(start, bq)
            qr = rotate(q_ref[sl, g, :], qp_ref[sl][:, None], invf).astype(q_ref.dtype)
            do = do_ref[sl, g, :]
            s = dot_nt(qr, kr) * cfg.scale  # [bq, bk]
            qi = start + _iota(bq)[:, None]
            ok = structural_mask(cfg.spec, qi, kj, cfg.L, cfg.S, xp=jnp) & (qs_ref[sl][:, None] == kseg)
            p = jnp.where(ok, jnp.exp(s - lse_ref[g, sl][:, None]), 0.0)
            dv = dv + dot_tn(p.astype(do.dtype), do)
            dp = dot_nt(do, vt)
            ds = p * (dp - delta_ref[g, sl][:, None])
            dk = dk + dot_tn(ds.astype(q_ref.dtype), qr)
            return dk, dv

        dk, dv = lax.fori_loop(0, q_cnt_ref[j], body, (dk, dv))
    dk_ref[...] = rotate(dk * cfg.scale, kpos, invf, inverse=True).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _backward(cfg: Cfg, q, k, v, q_pos, k_pos, q_seg, k_seg, o_p, lse_p, do, dlse):
    """Gradients dq, dk, dv given the padded forward outputs and the cotangents."""
    qp, kp, vp, qpp, kpp, qsp, ksp = pad_inputs(cfg, q, k, v, q_pos, k_pos, q_seg, k_seg)
    B, Lp, H, D = qp.shape
    Sp, K = kp.shape[1], kp.shape[2]
    G = H // K
    bq, bk = cfg.block_q, cfg.block_k
    L = q.shape[1]
    do_p = jnp.pad(do, [(0, 0), (0, Lp - L), (0, 0), (0, 0)]).astype(q.dtype)
    # delta_i = sum_d dO_id O_id - dlse_i  (the lse cotangent enters dS as + P * dlse)
    delta = jnp.sum(do_p.astype(jnp.float32) * o_p.astype(jnp.float32), axis=-1).transpose(0, 2, 1)
    delta = delta - jnp.pad(dlse.astype(jnp.float32).transpose(0, 2, 1), [(0, 0), (0, 0), (0, Lp - L)])
    kv_idx, kv_cnt, q_idx, q_cnt = tables(cfg)
    invf = inv_freq_both_halves(D, cfg.base)

    row_q = pl.BlockSpec((None, bq, None, D), lambda b, h, i: (b, i, h, 0))
    full_kv = pl.BlockSpec((None, Sp, None, D), lambda b, h, i: (b, 0, h // G, 0))
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg), grid=(B, H, Lp // bq),
        in_specs=[_full(kv_idx.shape), _full(kv_cnt.shape), _full(invf.shape), row_q, full_kv, full_kv,
                  pl.BlockSpec((None, bq), lambda b, h, i: (b, i)),
                  pl.BlockSpec((None, Sp), lambda b, h, i: (b, 0)),
                  pl.BlockSpec((None, bq), lambda b, h, i: (b, i)),
                  pl.BlockSpec((None, Sp), lambda b, h, i: (b, 0)),
                  row_q,
                  pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i)),
                  pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i))],
        out_specs=row_q, out_shape=jax.ShapeDtypeStruct(qp.shape, q.dtype),
        interpret=cfg.interpret, name="rope_flash_dq",
    )(kv_idx, kv_cnt, invf, qp, kp, vp, qpp, kpp, qsp, ksp, do_p, lse_p, delta)

    grp_q = pl.BlockSpec((None, Lp, G, D), lambda b, h, j: (b, 0, h, 0))
    tile_kv = pl.BlockSpec((None, bk, None, D), lambda b, h, j: (b, j, h, 0))
    grp_row = pl.BlockSpec((None, G, Lp), lambda b, h, j: (b, h, 0))
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, cfg=cfg, G=G), grid=(B, K, Sp // bk),
        in_specs=[_full(q_idx.shape), _full(q_cnt.shape), _full(invf.shape), grp_q, tile_kv, tile_kv,
                  pl.BlockSpec((None, Lp), lambda b, h, j: (b, 0)),
                  pl.BlockSpec((None, bk), lambda b, h, j: (b, j)),
                  pl.BlockSpec((None, Lp), lambda b, h, j: (b, 0)),
                  pl.BlockSpec((None, bk), lambda b, h, j: (b, j)),
                  grp_q, grp_row, grp_row],
        out_specs=[tile_kv, tile_kv],
        out_shape=[jax.ShapeDtypeStruct(kp.shape, k.dtype), jax.ShapeDtypeStruct(vp.shape, v.dtype)],
        interpret=cfg.interpret, name="rope_flash_dkv",
    )(q_idx, q_cnt, invf, qp, kp, vp, qpp, kpp, qsp, ksp, do_p, lse_p, delta)
    S = k.shape[1]
    return dq[:, :L], dk[:, :S], dv[:, :S]


# ---------------------------------------------------------------------- custom_vjp glue
def _attn_fwd(cfg, q, k, v, q_pos, k_pos, q_seg, k_seg):
    if cfg.variant == "tpu":
        out, lse = attention_tpu.forward(cfg, q, k, v, q_pos, k_pos, q_seg, k_seg)
        return (out, lse), (q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse)
    o, lse = _forward(cfg, q, k, v, q_pos, k_pos, q_seg, k_seg)  # padded: the backward reuses them
    L = q.shape[1]
    return (o[:, :L], lse[:, :, :L].transpose(0, 2, 1)), (q, k, v, q_pos, k_pos, q_seg, k_seg, o, lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attn(cfg, q, k, v, q_pos, k_pos, q_seg, k_seg):
    return _attn_fwd(cfg, q, k, v, q_pos, k_pos, q_seg, k_seg)[0]


def _attn_bwd(cfg, res, cts):
    backward = attention_tpu.backward if cfg.variant == "tpu" else _backward
    dq, dk, dv = backward(cfg, *res, *cts)
    return dq, dk, dv, None, None, None, None


_attn.defvjp(_attn_fwd, _attn_bwd)


def use_kernel(interpret) -> tuple[bool, bool]:
    """(run the Pallas kernel?, in interpret mode?) for the interpret argument."""
    if interpret is None:
        backend = jax.default_backend()
        return (backend in ("tpu", "gpu", "cuda", "rocm")), False
    if not interpret and jax.default_backend() == "cpu":
        raise ValueError("interpret=False needs a TPU or GPU backend; use interpret=True on CPU")
    return True, bool(interpret)


def kernel_variant(variant: str | None, interpret: bool) -> str:
    """Kernel structure to run: None = by backend ('tpu' on TPU, else the Triton-style 'gpu')."""
    backend = jax.default_backend()
    if variant is None:
        return "tpu" if backend == "tpu" else "gpu"
    if variant not in VARIANTS:
        raise ValueError(f"variant must be None or one of {VARIANTS}, got {variant!r}")
    if variant == "tpu" and not interpret and backend != "tpu":
        raise ValueError(f"variant='tpu' compiles only on a TPU backend (this is {backend}); "
                         "use interpret=True to run it in TPU interpret mode")
    return variant


def rope_attention(q, k, v, q_pos, k_pos, *, mask, rope_base=10000.0, scale=None, segment_ids=None,
                   block_q=128, block_k=128, interpret=None, return_lse=False, variant=None):
    """Fused RoPE + flash attention.

    Args:
      q: [B, L, H, D] queries (not yet rotated); k, v: [B, S, K, D] with H % K == 0 (GQA).
      q_pos: [B, L] int position ids of the queries; k_pos: [B, S] of the keys (any values:
        permuted orders, repeated positions in the bd3 2n layout, ...).
      mask: MaskSpec (``causal()``, ``bidirectional()``, ``bd3(b)``) or 'causal'/'bidirectional'
        or ('bd3', b); indices are as laid out (see ``pallas_kernels.masks``).
      rope_base: rotary base; scale: softmax scale (default D**-0.5).
      segment_ids: None, [B, L] (needs L == S) or ([B, L], [B, S]); attend only within equal ids.
      block_q, block_k: tile sizes; L and S need not be multiples (padded and masked internally).
      interpret: None = by backend (TPU/GPU kernel; CPU plain-JAX reference), True = Pallas
        interpret mode (CPU tests), False = compiled kernel (TPU/GPU only).
      return_lse: also return the log-sum-exp [B, L, H] float32 (-inf for rows with no key).
      variant: kernel structure when a kernel runs: None = by backend ('tpu' on TPU, the
        Triton-style 'gpu' kernel elsewhere), 'tpu' = the Mosaic-style kernel of
        ``attention_tpu`` (with interpret=True: TPU interpret mode on CPU; needs block_q % 8 == 0
        and block_k % 128 == 0 unless one block covers the length), 'gpu' = the Triton-style one.
    Returns out [B, L, H, D] in q's dtype (rows with no visible key are 0), and lse if asked.
    Differentiable in q, k, v (and through lse) via custom_vjp with Pallas backward kernels.
    """
    spec = as_mask_spec(mask)
    B, L, H, D = q.shape
    S, K = k.shape[1], k.shape[2]
    if H % K or D % 2:
        raise ValueError(f"need H % K == 0 and even D, got H={H}, K={K}, D={D}")
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"k/v shapes {k.shape}, {v.shape} do not match q {q.shape}")
    spec.check_lengths(L, S)
    run_kernel, interp = use_kernel(interpret)
    if not run_kernel:
        return _ref.rope_attention(q, k, v, q_pos, k_pos, mask=spec, rope_base=rope_base,
                                   scale=scale, segment_ids=segment_ids, return_lse=return_lse)
    kind = kernel_variant(variant, interp)
    if kind == "tpu":
        attention_tpu.check_blocks(L, S, int(block_q), int(block_k))
    q_seg, k_seg = _ref.split_segments(segment_ids, L, S)
    cfg = Cfg(spec=spec, L=L, S=S, scale=float(D**-0.5 if scale is None else scale), base=float(rope_base),
              block_q=int(block_q), block_k=int(block_k), interpret=interp, variant=kind)
    out, lse = _attn(cfg, q, k, v, q_pos, k_pos, q_seg, k_seg)
    return (out, lse) if return_lse else out
