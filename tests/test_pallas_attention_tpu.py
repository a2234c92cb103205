"""TPU (Mosaic) variant of the fused RoPE flash attention, run in TPU interpret mode on CPU
(``pltpu.InterpretParams``: grid order, VMEM scratch, scalar prefetch, dimension semantics),
against the plain-JAX reference. Block sizes obey Mosaic's rules (block_k % 128 == 0 or one kv
block), so the lengths here are a few hundred tokens with B, H small."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_pallas_attention import BF16_TOL, F32_TOL, _compare, _inputs, _value_and_grads

import pallas_kernels as pk
from pallas_kernels import attention as attention_mod
from pallas_kernels import attention_tpu
from pallas_kernels import reference as ref

TPU = dict(variant="tpu")


# mask x block sizes (two choices of block_q and block_k = 128 or one whole kv block);
# per-row permuted position ids throughout; GQA where K < H
_SLOW = pytest.mark.slow
_CASES = [
    pytest.param(pk.causal(), (64, 128), dict(B=2, L=256, H=2, K=1, D=32, segments=True),
                 id="causal-gqa-segments"),
    pytest.param(pk.bidirectional(), (32, 128), dict(B=2, L=256, H=2, K=1, D=32, segments=True),
                 id="bidirectional-gqa-segments-bq32"),
    pytest.param(pk.bd3(32), (64, 128), dict(B=1, L=256, H=4, K=2, D=16), id="bd3-gqa"),
    pytest.param(pk.bd3(16), (128, 128), dict(B=2, L=256, H=2, K=1, D=32, segments=True),
                 id="bd3-segments-bq128"),
    pytest.param(pk.causal(), (64, 128), dict(B=1, L=200, H=2, K=1, D=32), id="causal-L200-padded"),
    pytest.param(pk.bidirectional(), (16, 128), dict(B=1, L=40, S=200, H=2, K=1, D=32),
                 id="bidirectional-L-ne-S"),
    pytest.param(pk.causal(), (8, 64), dict(B=1, L=40, H=2, K=1, D=64), id="causal-one-kv-block-D64"),
    pytest.param(pk.bd3(25), (64, 128), dict(B=1, L=200, H=2, K=1, D=32), id="bd3-L200-padded", marks=_SLOW),
    pytest.param(pk.causal(), (128, 128), dict(B=1, L=256, H=2, K=2, D=128, permute=False),
                 id="causal-mha-D128-unpermuted", marks=_SLOW),
]


@pytest.mark.parametrize("mask,blocks,shape", _CASES)
def test_matches_reference_f32(mask, blocks, shape):
    shape = dict(shape)
    segments = shape.pop("segments", False)
    _compare(mask, block_q=blocks[0], block_k=blocks[1], segments=segments, **shape, **TPU)


def test_bf16_within_documented_tolerance():
    _compare(pk.causal(), block_q=64, block_k=128, dtype=jnp.bfloat16, tol=BF16_TOL,
             B=1, L=256, H=2, K=1, D=32, **TPU)


def test_rows_without_visible_keys_give_zero_and_finite_grads():
    q, k, v, q_pos, k_pos, do, dlse = _inputs(B=2, L=16, S=24, H=2, K=1, permute=False)
    seg = (jnp.zeros((2, 16), jnp.int32).at[:, 8:].set(5), jnp.zeros((2, 24), jnp.int32))
    kw = dict(mask=pk.bidirectional(), segment_ids=seg)
    zero = jnp.zeros_like(dlse)
    o, lse, grads = _value_and_grads(pk.rope_attention, q, k, v, q_pos, k_pos, do, zero,
                                     block_q=8, block_k=24, interpret=True, **kw, **TPU)
    assert np.all(np.asarray(o[:, 8:]) == 0) and np.all(np.isneginf(np.asarray(lse[:, 8:])))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    o2, _, grads2 = _value_and_grads(ref.rope_attention, q, k, v, q_pos, k_pos, do, zero, **kw)
    for g, w in zip((o, *grads), (o2, *grads2)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=F32_TOL, rtol=F32_TOL)


@pytest.mark.parametrize("mask,L,bq,bk", [(pk.causal(), 512, 128, 128), (pk.causal(), 512, 64, 128),
                                          (pk.bd3(16), 512, 64, 128), (pk.bidirectional(), 384, 64, 128)],
                         ids=str)
def test_grid_runs_only_live_steps(mask, L, bq, bk):
    """The kv (q) step extent of the grid is the largest live count, and steps t < count visit
    exactly the live tiles of the dense mask, in order; the rest repeat the last live tile
    (no new DMA; its compute is skipped by pl.when, else the values tests would double count)."""
    kv_idx, kv_cnt, kv_steps, q_idx, q_cnt, q_steps = attention_tpu.step_tables(mask, L, L, bq, bk)
    live = pk.tile_live(mask, L, L, bq, bk)
    nq, nk = live.shape
    assert kv_steps == live.sum(axis=1).max() and q_steps == live.sum(axis=0).max()
    for idx, cnt, steps, table in ((kv_idx, kv_cnt, kv_steps, live), (q_idx, q_cnt, q_steps, live.T)):
        rows = idx.reshape(len(cnt), steps)
        for r, row in enumerate(rows):
            np.testing.assert_array_equal(row[:cnt[r]], np.nonzero(table[r])[0])
            assert np.all(row[cnt[r]:] == row[cnt[r] - 1])
    work = int(kv_cnt.sum())  # steps that compute, out of nq * kv_steps grid steps
    assert work == live.sum() == int(q_cnt.sum())
    if mask.kind == "causal":  # the last q tile sees every k tile: skipped steps compute nothing
        assert kv_steps == nk and work < nq * nk
    if mask.kind == "bd3":  # no q tile sees all k tiles: the forward/dq grid itself is shorter
        assert kv_steps < nk and work < nq * kv_steps


def test_only_live_tiles_compute(monkeypatch):
    """Counts the kernel steps that compute (every computing step scores one (q tile, k tile)
    pair through attention_tpu._scores, counted by a debug callback): forward, dQ and dK/dV each
    compute exactly the live pairs, once per head, although the grid has more steps."""
    mask, L, bq, bk = pk.bd3(64), 512, 128, 128
    pairs = []
    real = attention_tpu._scores

    def counted(cfg, i, j, *args):
        jax.debug.callback(lambda i, j: pairs.append((int(i), int(j))), i, j)
        return real(cfg, i, j, *args)
    monkeypatch.setattr(attention_tpu, "_scores", counted)
    q, k, v, q_pos, k_pos, do, dlse = _inputs(B=1, L=L, H=2, K=1, D=16)
    _value_and_grads(pk.rope_attention, q, k, v, q_pos, k_pos, do, dlse, mask=mask, block_q=bq, block_k=bk,
                     interpret=True, **TPU)
    live = pk.tile_live(mask, L, L, bq, bk)
    want = {(int(i), int(j)) for i, j in zip(*np.nonzero(live))}
    H, kernels = 2, 3  # forward, dQ, dK/dV
    assert set(pairs) == want and len(pairs) == kernels * H * live.sum()
    _, kv_cnt, kv_steps, _, _, _ = attention_tpu.step_tables(mask, L, L, bq, bk)
    assert H * live.sum() < H * len(kv_cnt) * kv_steps  # forward grid steps that skip compute exist


def test_masked_tiles_are_never_loaded():
    """NaN in the values of the bd3 noisy half: clean queries never see noisy keys, so any
    visited noisy tile would poison them (0 * NaN = NaN); their outputs stay finite."""
    q, k, v, q_pos, k_pos, *_ = _inputs(B=1, L=256, H=2, K=1, D=16, permute=False)
    n = 128
    v = v.at[:, :n].set(jnp.nan)
    out = pk.rope_attention(q, k, v, q_pos, k_pos, mask=pk.bd3(32), block_q=64, block_k=128,
                            interpret=True, **TPU)
    assert np.all(np.isfinite(np.asarray(out[:, n:]))) and np.all(np.isnan(np.asarray(out[:, :n])))


def test_padded_head_dim_and_block_rules():
    assert ([attention_tpu.padded_head_dim(D) for D in (16, 32, 64, 128, 192, 256)]
            == [128, 128, 128, 128, 256, 256])
    attention_tpu.check_blocks(256, 256, 8, 128)
    attention_tpu.check_blocks(40, 40, 40, 40)    # one block each way: equal to the full dims
    with pytest.raises(ValueError, match="block_k=64 must be a multiple of 128"):
        attention_tpu.check_blocks(256, 256, 64, 64)
    with pytest.raises(ValueError, match="block_q=12 must be a multiple of 8"):
        attention_tpu.check_blocks(256, 256, 12, 128)
    q, k, v, q_pos, k_pos, *_ = _inputs(B=1, L=256, H=2, K=1)
    with pytest.raises(ValueError, match="multiple of 128"):
        pk.rope_attention(q, k, v, q_pos, k_pos, mask="causal", block_q=64, block_k=64, interpret=True, **TPU)


def test_variant_dispatch(monkeypatch):
    q, k, v, q_pos, k_pos, *_ = _inputs(B=1, L=16, H=2, K=1)
    assert attention_mod.kernel_variant(None, True) == "gpu"        # CPU interpret: Triton-style kernel
    with pytest.raises(ValueError, match="variant must be"):
        pk.rope_attention(q, k, v, q_pos, k_pos, mask="causal", interpret=True, variant="mosaic")
    with pytest.raises(ValueError, match="compiles only on a TPU backend"):
        attention_mod.kernel_variant("tpu", False)
    # interpret=None on CPU stays the plain-JAX reference whatever the variant
    got = pk.rope_attention(q, k, v, q_pos, k_pos, mask="causal", **TPU)
    np.testing.assert_array_equal(got, ref.rope_attention(q, k, v, q_pos, k_pos, mask=pk.causal()))
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert attention_mod.kernel_variant(None, False) == "tpu"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert attention_mod.kernel_variant(None, False) == "gpu"


def _export_for_tpu(monkeypatch, D, dtype, mask, variant):
    """Lowers forward + backward for platform 'tpu' on this CPU host (jax.export): runs the
    Pallas -> Mosaic lowering, including its block-shape rules, with TPU v5p chip info; the
    Mosaic compiler passes inside libtpu are not run."""
    from jax import export
    from jax._src.pallas.mosaic import tpu_info
    from jax.experimental.pallas import tpu as pltpu

    info = pltpu.get_tpu_info_for_chip(pltpu.ChipVersion.TPU_V5P, 1)
    monkeypatch.setattr(tpu_info, "get_tpu_info", lambda *a, **k: info)
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    q = jax.ShapeDtypeStruct((2, 512, 4, D), dtype)
    kv = jax.ShapeDtypeStruct((2, 512, 2, D), dtype)
    ids = jax.ShapeDtypeStruct((2, 512), jnp.int32)

    def loss(q, k, v, ids):
        o, lse = pk.rope_attention(q, k, v, ids, ids, mask=mask, segment_ids=ids, interpret=False,
                                   variant=variant, return_lse=True)
        return o.astype(jnp.float32).sum() + lse.sum()
    exported = export.export(jax.jit(jax.grad(loss, argnums=(0, 1, 2))), platforms=["tpu"])(q, kv, kv, ids)
    return exported.mlir_module()


@pytest.mark.parametrize("D,dtype,mask", [(32, jnp.float32, pk.bd3(16)), (64, jnp.bfloat16, pk.causal()),
                                          (128, jnp.bfloat16, pk.bidirectional())], ids=str)
def test_tpu_variant_lowers_to_mosaic(monkeypatch, D, dtype, mask):
    module = _export_for_tpu(monkeypatch, D, dtype, mask, "tpu")
    assert module.count("tpu_custom_call") == 3  # forward, dQ, dK/dV


def test_triton_style_kernel_does_not_lower_to_mosaic(monkeypatch):
    """Why the TPU variant exists: the [B, L, H, D] blocks with a squeezed head axis break
    Mosaic's (8, 128) block rule."""
    with pytest.raises(ValueError, match="divisible by 8 and 128"):
        _export_for_tpu(monkeypatch, 64, jnp.bfloat16, pk.causal(), "gpu")
