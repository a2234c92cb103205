"""TPU (Mosaic) variant of the fused RoPE + flash attention kernels.

Same contract and numerics as ``attention.py`` (it is selected through
``pallas_kernels.rope_attention(..., variant="tpu")`` and shares its ``custom_vjp``), but laid
out the way Mosaic wants: K/V are streamed by the grid, never loaded whole.

Layout inside: ``[B, H, L, Dp]`` (transposed outside). The head dim is zero-padded per RoPE half
to ``Dp``, a multiple of 128 lanes (``padded_head_dim``; D = 128 or 256 cost nothing, D = 64 and
32 double / quadruple the MXU contraction). Per-query vectors (positions, segment ids, lse,
delta) are columns ``[.., L, 1]``, key positions a column ``[B, S, 1]`` (they rotate a
``[bk, Dp]`` tile), key segment ids a row ``[B, 1, S]`` (they compare against the columns).

  forward  grid (B, H, L/bq, kv steps), kv axis last and "arbitrary"; m, l, acc and the
           rotated q tile live in VMEM scratch: init at kv step 0, finalize (out, lse) at the
           last step.
  dq       same grid; dq_rot accumulated in scratch, rotated back by R(-theta) at the end.
  dk/dv    grid (B, K, S/bk, G, q steps): the G = H/K query heads of the kv head and their
           live q tiles are the two "arbitrary" axes; dk_rot/dv accumulated in scratch.

Tile skipping as in splash attention: the compacted live-tile tables of
``masks.tile_tables`` are scalar-prefetched into SMEM; the index maps read them (the steps past
a tile's live count repeat its last live tile, so no new block is DMA'd) and
``pl.when(step < count)`` skips their compute. The kv (q) step extent of the grid is the
largest live count, not the number of tiles.

Mosaic block rules (last two block dims divisible by (8, 128) or equal to the array's):
``block_q`` must be a multiple of 8 and ``block_k`` a multiple of 128, unless one block covers
the whole (padded) length; ``check_blocks`` refuses other choices with a ValueError.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.attention_common import (
    Cfg,
    delta_rows,
    dot_nn,
    dot_nt,
    dot_tn,
    inv_freq_both_halves,
    pad_inputs,
    rotate,
)
from pallas_kernels.masks import MaskSpec, padded_len, structural_mask, tile_tables

LANES, SUBLANES = 128, 8


def padded_head_dim(D: int) -> int:
    """Kernel head dim: each RoPE half zero-padded to a multiple of 64, so Dp % 128 == 0."""
    half = D // 2
    return 2 * (-(-half // (LANES // 2)) * (LANES // 2))


def check_blocks(L: int, S: int, block_q: int, block_k: int) -> None:
    """Refuses block sizes Mosaic cannot tile (ValueError with the rule and a fix)."""
    if block_q < padded_len(L, block_q) and block_q % SUBLANES:
        raise ValueError(f"TPU attention: block_q={block_q} must be a multiple of {SUBLANES} "
                         f"(or >= L={L}, one q block)")
    if block_k < padded_len(S, block_k) and block_k % LANES:
        raise ValueError(f"TPU attention: block_k={block_k} must be a multiple of {LANES} "
                         f"(or >= S={S}, one kv block)")


def step_tables(spec: MaskSpec, L: int, S: int, block_q: int, block_k: int):
    """Flattened scalar-prefetch tables and grid extents (static numpy).

    Returns (kv_idx [nq * kv_steps], kv_cnt [nq], kv_steps, q_idx [nk * q_steps], q_cnt [nk],
    q_steps): live k tiles of q tile i are kv_idx[i * kv_steps + t] for t < kv_cnt[i] (later
    entries repeat the last live tile); kv_steps = max live count (>= 1). Same for q tiles.
    """
    kv_idx, kv_cnt, q_idx, q_cnt = tile_tables(spec, L, S, block_q, block_k)
    kv_steps, q_steps = max(1, int(kv_cnt.max())), max(1, int(q_cnt.max()))
    return (np.ascontiguousarray(kv_idx[:, :kv_steps]).reshape(-1), kv_cnt, kv_steps,
            np.ascontiguousarray(q_idx[:, :q_steps]).reshape(-1), q_cnt, q_steps)


# ------------------------------------------------------------------------- tile helpers
def _roll_halves(x_nD):
    """[x1, x2] -> [x2, x1] as a lane rotation (Dp is a multiple of 128)."""
    return pltpu.roll(x_nD, x_nD.shape[-1] // 2, 1)


def _rope(x_nD, pos_n1, invf_1D, inverse=False):
    return rotate(x_nD, pos_n1, invf_1D, inverse=inverse, swap=_roll_halves)


def _scores(cfg: Cfg, i, j, qr_bD, kr_bD, qseg_b1, kseg_1b):
    """Scaled scores [bq, bk] float32 of q tile i against k tile j and their visibility
    (structural mask by layout index, padding, equal segment ids)."""
    bq, bk = cfg.block_q, cfg.block_k
    s = dot_nt(qr_bD, kr_bD) * cfg.scale
    qi = i * bq + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
    kj = j * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
    ok = structural_mask(cfg.spec, qi, kj, cfg.L, cfg.S, xp=jnp) & (qseg_b1 == kseg_1b)
    return s, ok


# ------------------------------------------------------------------------------ forward
def _fwd_kernel(kv_idx_ref, kv_cnt_ref, invf_ref, q_ref, k_ref, v_ref, qpos_ref, kpos_ref, qseg_ref,
                kseg_ref, o_ref, lse_ref, qr_scr, m_scr, l_scr, acc_scr, *, cfg: Cfg, steps: int):
    i, t = pl.program_id(2), pl.program_id(3)
    invf = invf_ref[...]

    @pl.when(t == 0)
    def _init():
        qr_scr[...] = _rope(q_ref[...], qpos_ref[...], invf).astype(qr_scr.dtype)
        m_scr[...] = jnp.full(m_scr.shape, -jnp.inf, jnp.float32)
        l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
        acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

    @pl.when(t < kv_cnt_ref[i])
    def _step():
        kr = _rope(k_ref[...], kpos_ref[...], invf).astype(k_ref.dtype)
        s, ok = _scores(cfg, i, kv_idx_ref[i * steps + t], qr_scr[...], kr, qseg_ref[...], kseg_ref[...])
        s = jnp.where(ok, s, -jnp.inf)
        m_prev = m_scr[...]
        m_new = jnp.maximum(m_prev, jnp.max(s, axis=-1, keepdims=True))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        p = jnp.where(ok, jnp.exp(s - m_safe), 0.0)
        alpha = jnp.exp(m_prev - m_safe)
        l_scr[...] = alpha * l_scr[...] + jnp.sum(p, axis=-1, keepdims=True)
        acc_scr[...] = alpha * acc_scr[...] + dot_nn(p.astype(v_ref.dtype), v_ref[...])
        m_scr[...] = m_new

    @pl.when(t == steps - 1)
    def _finalize():
        row_sum = l_scr[...]
        pos = row_sum > 0
        l_safe = jnp.where(pos, row_sum, 1.0)
        o_ref[...] = (acc_scr[...] / l_safe).astype(o_ref.dtype)
        lse_ref[...] = jnp.where(pos, m_scr[...] + jnp.log(l_safe), -jnp.inf)


def _compiler_params(n_parallel: int, n_arbitrary: int):
    return pltpu.CompilerParams(dimension_semantics=("parallel",) * n_parallel + ("arbitrary",) * n_arbitrary)


def _interpret(cfg: Cfg):
    return pltpu.InterpretParams() if cfg.interpret else False


def _layout(cfg: Cfg, q, k, v, q_pos, k_pos, q_seg, k_seg):
    """Kernel layout: padded lengths, head dim padded per half to Dp, [B, H, L, Dp]; ids as
    columns [B, L, 1] except key segment ids, a row [B, 1, S]."""
    qp, kp, vp, qpos, kpos, qseg, kseg = pad_inputs(cfg, q, k, v, q_pos, k_pos, q_seg, k_seg)
    return (_to_heads(qp), _to_heads(kp), _to_heads(vp), qpos[:, :, None], kpos[:, :, None],
            qseg[:, :, None], kseg[:, None, :])


def _to_heads(x_BLHD):
    """[B, L, H, D] -> [B, H, L, Dp] with each RoPE half zero-padded to Dp / 2."""
    D = x_BLHD.shape[-1]
    pad = padded_head_dim(D) // 2 - D // 2
    if pad:
        x1, x2 = jnp.split(x_BLHD, 2, axis=-1)
        widths = [(0, 0)] * 3 + [(0, pad)]
        x_BLHD = jnp.concatenate([jnp.pad(x1, widths), jnp.pad(x2, widths)], axis=-1)
    return x_BLHD.transpose(0, 2, 1, 3)


def _from_heads(x_BHLD, length: int, D: int):
    """Inverse of ``_to_heads`` (drops padded rows and lanes)."""
    x_BLHD = x_BHLD[:, :, :length].transpose(0, 2, 1, 3)
    half, half_p = D // 2, x_BLHD.shape[-1] // 2
    if half_p == half:
        return x_BLHD
    return jnp.concatenate([x_BLHD[..., :half], x_BLHD[..., half_p:half_p + half]], axis=-1)


def _col(x_BHL, length: int):
    """Per-query statistics [B, H, L] -> kernel columns [B, H, Lp, 1] (zero-padded rows)."""
    return jnp.pad(x_BHL, [(0, 0), (0, 0), (0, length - x_BHL.shape[-1])])[..., None]


def forward(cfg: Cfg, q, k, v, q_pos, k_pos, q_seg, k_seg):
    """out [B, L, H, D] (q's dtype) and lse [B, L, H] float32."""
    B, L, H, D = q.shape
    K = k.shape[2]
    G = H // K
    bq, bk = cfg.block_q, cfg.block_k
    qh, kh, vh, qpos, kpos, qseg, kseg = _layout(cfg, q, k, v, q_pos, k_pos, q_seg, k_seg)
    Lp, Dp = qh.shape[2], qh.shape[3]
    kv_idx, kv_cnt, steps, _, _, _ = step_tables(cfg.spec, cfg.L, cfg.S, bq, bk)
    invf = inv_freq_both_halves(D, cfg.base, Dp // 2)

    def kv_tile(i, t, kv_idx_ref):
        return kv_idx_ref[i * steps + t]

    in_specs = [
        pl.BlockSpec((1, Dp), lambda b, h, i, t, ki, kc: (0, 0)),
        pl.BlockSpec((None, None, bq, Dp), lambda b, h, i, t, ki, kc: (b, h, i, 0)),
        pl.BlockSpec((None, None, bk, Dp), lambda b, h, i, t, ki, kc: (b, h // G, kv_tile(i, t, ki), 0)),
        pl.BlockSpec((None, None, bk, Dp), lambda b, h, i, t, ki, kc: (b, h // G, kv_tile(i, t, ki), 0)),
        pl.BlockSpec((None, bq, 1), lambda b, h, i, t, ki, kc: (b, i, 0)),
        pl.BlockSpec((None, bk, 1), lambda b, h, i, t, ki, kc: (b, kv_tile(i, t, ki), 0)),
        pl.BlockSpec((None, bq, 1), lambda b, h, i, t, ki, kc: (b, i, 0)),
        pl.BlockSpec((None, 1, bk), lambda b, h, i, t, ki, kc: (b, 0, kv_tile(i, t, ki))),
    ]
    out_specs = [pl.BlockSpec((None, None, bq, Dp), lambda b, h, i, t, ki, kc: (b, h, i, 0)),
                 pl.BlockSpec((None, None, bq, 1), lambda b, h, i, t, ki, kc: (b, h, i, 0))]
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2, grid=(B, H, Lp // bq, steps), in_specs=in_specs, out_specs=out_specs,
        scratch_shapes=[pltpu.VMEM((bq, Dp), q.dtype), pltpu.VMEM((bq, 1), jnp.float32),
                        pltpu.VMEM((bq, 1), jnp.float32), pltpu.VMEM((bq, Dp), jnp.float32)])
    o, lse = pl.pallas_call(
        functools.partial(_fwd_kernel, cfg=cfg, steps=steps), grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct((B, H, Lp, Dp), q.dtype),
                   jax.ShapeDtypeStruct((B, H, Lp, 1), jnp.float32)],
        compiler_params=_compiler_params(3, 1), interpret=_interpret(cfg), name="rope_flash_fwd_tpu",
    )(jnp.asarray(kv_idx), jnp.asarray(kv_cnt), invf, qh, kh, vh, qpos, kpos, qseg, kseg)
    return _from_heads(o, L, D), lse[:, :, :L, 0].transpose(0, 2, 1)


# ----------------------------------------------------------------------------- backward
def _dq_kernel(kv_idx_ref, kv_cnt_ref, invf_ref, q_ref, k_ref, v_ref, qpos_ref, kpos_ref, qseg_ref, kseg_ref,
               do_ref, lse_ref, delta_ref, dq_ref, qr_scr, dq_scr, *, cfg: Cfg, steps: int):
    i, t = pl.program_id(2), pl.program_id(3)
    invf = invf_ref[...]

    @pl.when(t == 0)
    def _init():
        qr_scr[...] = _rope(q_ref[...], qpos_ref[...], invf).astype(qr_scr.dtype)
        dq_scr[...] = jnp.zeros(dq_scr.shape, jnp.float32)

    @pl.when(t < kv_cnt_ref[i])
    def _step():
        kr = _rope(k_ref[...], kpos_ref[...], invf).astype(k_ref.dtype)
        s, ok = _scores(cfg, i, kv_idx_ref[i * steps + t], qr_scr[...], kr, qseg_ref[...], kseg_ref[...])
        p = jnp.where(ok, jnp.exp(s - lse_ref[...]), 0.0)
        ds = p * (dot_nt(do_ref[...], v_ref[...]) - delta_ref[...])
        dq_scr[...] += dot_nn(ds.astype(k_ref.dtype), kr)

    @pl.when(t == steps - 1)
    def _finalize():
        dq_ref[...] = _rope(dq_scr[...] * cfg.scale, qpos_ref[...], invf, inverse=True).astype(dq_ref.dtype)


def _dkv_kernel(q_idx_ref, q_cnt_ref, invf_ref, q_ref, k_ref, v_ref, qpos_ref, kpos_ref, qseg_ref, kseg_ref,
                do_ref, lse_ref, delta_ref, dk_ref, dv_ref, kr_scr, dk_scr, dv_scr, *, cfg: Cfg, steps: int):
    j, g, t = pl.program_id(2), pl.program_id(3), pl.program_id(4)
    invf = invf_ref[...]

    @pl.when((g == 0) & (t == 0))
    def _init():
        kr_scr[...] = _rope(k_ref[...], kpos_ref[...], invf).astype(kr_scr.dtype)
        dk_scr[...] = jnp.zeros(dk_scr.shape, jnp.float32)
        dv_scr[...] = jnp.zeros(dv_scr.shape, jnp.float32)

    @pl.when(t < q_cnt_ref[j])
    def _step():
        qr = _rope(q_ref[...], qpos_ref[...], invf).astype(q_ref.dtype)
        s, ok = _scores(cfg, q_idx_ref[j * steps + t], j, qr, kr_scr[...], qseg_ref[...], kseg_ref[...])
        p = jnp.where(ok, jnp.exp(s - lse_ref[...]), 0.0)
        do = do_ref[...]
        dv_scr[...] += dot_tn(p.astype(do.dtype), do)
        ds = p * (dot_nt(do, v_ref[...]) - delta_ref[...])
        dk_scr[...] += dot_tn(ds.astype(q_ref.dtype), qr)

    @pl.when((g == pl.num_programs(3) - 1) & (t == steps - 1))
    def _finalize():
        dk_ref[...] = _rope(dk_scr[...] * cfg.scale, kpos_ref[...], invf, inverse=True).astype(dk_ref.dtype)
        dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)


def backward(cfg: Cfg, q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse, do, dlse):
    """dq, dk, dv given the forward's out [B, L, H, D], lse [B, L, H] and their cotangents."""
    B, L, H, D = q.shape
    S, K = k.shape[1], k.shape[2]
    G = H // K
    bq, bk = cfg.block_q, cfg.block_k
    qh, kh, vh, qpos, kpos, qseg, kseg = _layout(cfg, q, k, v, q_pos, k_pos, q_seg, k_seg)
    Lp, Sp, Dp = qh.shape[2], kh.shape[2], qh.shape[3]
    doh = _to_heads(jnp.pad(do.astype(q.dtype), [(0, 0), (0, Lp - L), (0, 0), (0, 0)]))
    lse_col = _col(lse.transpose(0, 2, 1), Lp)
    delta_col = _col(delta_rows(do, out, dlse).transpose(0, 2, 1), Lp)
    kv_idx, kv_cnt, kv_steps, q_idx, q_cnt, q_steps = step_tables(cfg.spec, cfg.L, cfg.S, bq, bk)
    invf = inv_freq_both_halves(D, cfg.base, Dp // 2)
    invf_spec = pl.BlockSpec((1, Dp), lambda *_: (0, 0))

    # dq: grid (B, H, q tiles, kv steps) like the forward
    def kv_tile(i, t, ki):
        return ki[i * kv_steps + t]

    q_row = pl.BlockSpec((None, None, bq, Dp), lambda b, h, i, t, ki, kc: (b, h, i, 0))
    kv_blk = pl.BlockSpec((None, None, bk, Dp), lambda b, h, i, t, ki, kc: (b, h // G, kv_tile(i, t, ki), 0))
    q_col = pl.BlockSpec((None, bq, 1), lambda b, h, i, t, ki, kc: (b, i, 0))
    q_stat = pl.BlockSpec((None, None, bq, 1), lambda b, h, i, t, ki, kc: (b, h, i, 0))
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg, steps=kv_steps),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(B, H, Lp // bq, kv_steps),
            in_specs=[invf_spec, q_row, kv_blk, kv_blk, q_col,
                      pl.BlockSpec((None, bk, 1), lambda b, h, i, t, ki, kc: (b, kv_tile(i, t, ki), 0)),
                      q_col,
                      pl.BlockSpec((None, 1, bk), lambda b, h, i, t, ki, kc: (b, 0, kv_tile(i, t, ki))),
                      q_row, q_stat, q_stat],
            out_specs=q_row,
            scratch_shapes=[pltpu.VMEM((bq, Dp), q.dtype), pltpu.VMEM((bq, Dp), jnp.float32)]),
        out_shape=jax.ShapeDtypeStruct(qh.shape, q.dtype),
        compiler_params=_compiler_params(3, 1), interpret=_interpret(cfg), name="rope_flash_dq_tpu",
    )(jnp.asarray(kv_idx), jnp.asarray(kv_cnt), invf, qh, kh, vh, qpos, kpos, qseg, kseg, doh, lse_col,
      delta_col)

    # dk/dv: grid (B, K, k tiles, G query heads, q steps)
    def q_tile(j, t, qi):
        return qi[j * q_steps + t]

    head_q = pl.BlockSpec((None, None, bq, Dp),
                          lambda b, h, j, g, t, qi, qc: (b, h * G + g, q_tile(j, t, qi), 0))
    head_stat = pl.BlockSpec((None, None, bq, 1),
                             lambda b, h, j, g, t, qi, qc: (b, h * G + g, q_tile(j, t, qi), 0))
    col_q = pl.BlockSpec((None, bq, 1), lambda b, h, j, g, t, qi, qc: (b, q_tile(j, t, qi), 0))
    kv_own = pl.BlockSpec((None, None, bk, Dp), lambda b, h, j, g, t, qi, qc: (b, h, j, 0))
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, cfg=cfg, steps=q_steps),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(B, K, Sp // bk, G, q_steps),
            in_specs=[pl.BlockSpec((1, Dp), lambda *_: (0, 0)), head_q, kv_own, kv_own, col_q,
                      pl.BlockSpec((None, bk, 1), lambda b, h, j, g, t, qi, qc: (b, j, 0)),
                      col_q,
                      pl.BlockSpec((None, 1, bk), lambda b, h, j, g, t, qi, qc: (b, 0, j)),
                      head_q, head_stat, head_stat],
            out_specs=[kv_own, kv_own],
            scratch_shapes=[pltpu.VMEM((bk, Dp), k.dtype), pltpu.VMEM((bk, Dp), jnp.float32),
                            pltpu.VMEM((bk, Dp), jnp.float32)]),
        out_shape=[jax.ShapeDtypeStruct(kh.shape, k.dtype), jax.ShapeDtypeStruct(vh.shape, v.dtype)],
        compiler_params=_compiler_params(3, 2), interpret=_interpret(cfg), name="rope_flash_dkv_tpu",
    )(jnp.asarray(q_idx), jnp.asarray(q_cnt), invf, qh, kh, vh, qpos, kpos, qseg, kseg, doh, lse_col,
      delta_col)
    return _from_heads(dq, L, D), _from_heads(dk, S, D), _from_heads(dv, S, D)
