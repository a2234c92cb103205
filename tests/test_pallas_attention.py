"""Fused RoPE flash attention (Pallas, interpret mode on CPU) against the plain-JAX reference."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from pallas_kernels import reference as ref

F32_TOL = 2e-5          # forward and all gradients, float32
BF16_TOL = 2e-2         # atol = rtol for bfloat16 inputs vs the reference on the same inputs


def _inputs(B=2, L=32, S=None, H=4, K=2, D=16, seed=0, dtype=jnp.float32, permute=True):
    S = L if S is None else S
    ks = jax.random.split(jax.random.key(seed), 6)
    q = jax.random.normal(ks[0], (B, L, H, D), dtype)
    k = jax.random.normal(ks[1], (B, S, K, D), dtype)
    v = jax.random.normal(ks[2], (B, S, K, D), dtype)
    if permute:  # any-order AR style: a different random permutation per row
        q_pos = jax.vmap(lambda kk: jax.random.permutation(kk, L))(jax.random.split(ks[3], B))
    else:
        q_pos = jnp.broadcast_to(jnp.arange(L), (B, L))
    k_pos = q_pos if S == L else jnp.broadcast_to(jnp.arange(S), (B, S))
    do = jax.random.normal(ks[4], (B, L, H, D), dtype)
    dlse = jax.random.normal(ks[5], (B, L, H), jnp.float32)
    return q, k, v, q_pos.astype(jnp.int32), k_pos.astype(jnp.int32), do, dlse


def _value_and_grads(fn, q, k, v, q_pos, k_pos, do, dlse, **kw):
    """out, lse and (dq, dk, dv) for the cotangents (do, dlse), in one jitted call."""
    @jax.jit
    def run(q, k, v, do, dlse):
        (o, lse), vjp = jax.vjp(lambda q, k, v: fn(q, k, v, q_pos, k_pos, return_lse=True, **kw), q, k, v)
        return o, lse, vjp((do, dlse))
    o, lse, grads = run(q, k, v, do, dlse)
    return o, lse, grads


def _compare(mask, *, block_q, block_k, segments=False, dtype=jnp.float32, tol=F32_TOL, variant=None,
             **shape):
    q, k, v, q_pos, k_pos, do, dlse = _inputs(dtype=dtype, **shape)
    B, L = q.shape[0], q.shape[1]
    kw = dict(mask=mask, rope_base=10000.0)
    if segments:
        # packed rows: segment boundaries at random-ish places (contiguous runs)
        seg = (jnp.arange(L)[None, :] >= jnp.array([[L // 3], [L // 2]])[:B]).astype(jnp.int32)
        seg = seg + (jnp.arange(L)[None, :] >= (3 * L) // 4)
        kw["segment_ids"] = seg
    got = _value_and_grads(pk.rope_attention, q, k, v, q_pos, k_pos, do, dlse,
                           block_q=block_q, block_k=block_k, interpret=True, variant=variant, **kw)
    want = _value_and_grads(ref.rope_attention, q, k, v, q_pos, k_pos, do, dlse, **kw)
    names = ["out", "lse", "dq", "dk", "dv"]
    for name, g, w in zip(names, [got[0], got[1], *got[2]], [want[0], want[1], *want[2]]):
        chex.assert_shape(g, w.shape)
        assert g.dtype == w.dtype, name
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                                   atol=tol, rtol=tol, err_msg=name)


# each mask kind x two block-size choices (the second with packed segment ids);
# GQA (H=4, K=2) and per-row permuted position ids throughout
_CASES = [(m, (8, 8), False) for m in (pk.causal(), pk.bidirectional(), pk.bd3(4))] + \
         [(m, (16, 8), True) for m in (pk.causal(), pk.bidirectional(), pk.bd3(4), pk.bd3(8))]


@pytest.mark.parametrize("mask,blocks,segments", _CASES, ids=str)
def test_matches_reference_f32(mask, blocks, segments):
    _compare(mask, block_q=blocks[0], block_k=blocks[1], segments=segments)


def test_mha_and_mqa_and_unpermuted():
    _compare(pk.causal(), block_q=8, block_k=16, H=2, K=2, permute=False, D=8)
    _compare(pk.bd3(2), block_q=16, block_k=8, H=4, K=1, D=32)


def test_lengths_not_multiple_of_blocks_are_padded():
    _compare(pk.causal(), block_q=16, block_k=16, L=36)            # 36 = 2*16 + 4
    _compare(pk.bd3(3), block_q=16, block_k=8, L=30)               # n = 15, b = 3
    _compare(pk.bidirectional(), block_q=8, block_k=16, L=20, S=44, segments=False)  # L != S


def test_bf16_within_documented_tolerance():
    _compare(pk.causal(), block_q=8, block_k=16, dtype=jnp.bfloat16, tol=BF16_TOL)


def test_rows_without_visible_keys_give_zero_and_finite_grads():
    q, k, v, q_pos, k_pos, do, dlse = _inputs(L=16, S=24, permute=False)
    seg = (jnp.zeros((2, 16), jnp.int32).at[:, 8:].set(5), jnp.zeros((2, 24), jnp.int32))
    kw = dict(mask=pk.bidirectional(), segment_ids=seg)
    o, lse, grads = _value_and_grads(pk.rope_attention, q, k, v, q_pos, k_pos, do,
                                     jnp.zeros_like(dlse), block_q=8, block_k=8, interpret=True, **kw)
    assert np.all(np.asarray(o[:, 8:]) == 0) and np.all(np.isneginf(np.asarray(lse[:, 8:])))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    o2, _, grads2 = _value_and_grads(ref.rope_attention, q, k, v, q_pos, k_pos, do, jnp.zeros_like(dlse),
                                     **kw)
    chex.assert_trees_all_close((o, grads), (o2, grads2), atol=F32_TOL, rtol=F32_TOL)


def test_reference_rope_is_the_models_rope():
    rope_mod = pytest.importorskip("jaxorder.model.rope")
    q, k, *_ = _inputs(L=24, D=32)
    pos = jax.random.randint(jax.random.key(3), (2, 24), 0, 5000)
    for base in (10000.0, 500000.0):
        for x in (q, k, q.astype(jnp.bfloat16)):
            np.testing.assert_array_equal(np.asarray(ref.rope(x, pos, base), np.float32),
                                          np.asarray(rope_mod.apply_rope(x, pos, base, 5000), np.float32))


def test_reference_equals_naive_softmax_attention():
    q, k, v, q_pos, k_pos, *_ = _inputs(L=24, H=4, K=2)
    for mask in (pk.causal(), pk.bd3(4), pk.bidirectional()):
        qr = jnp.repeat(ref.rope(k, k_pos, 1e4), 2, axis=2)
        s = jnp.einsum("blhd,bshd->bhls", ref.rope(q, q_pos, 1e4), qr) / 4.0
        s = jnp.where(jnp.asarray(pk.dense_mask(mask, 24, 24)), s, -jnp.inf)
        want = jnp.einsum("bhls,bshd->blhd", jax.nn.softmax(s, axis=-1), jnp.repeat(v, 2, axis=2))
        got = ref.rope_attention(q, k, v, q_pos, k_pos, mask=mask)
        chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)


def _bd3_by_rule(n, b):
    m = np.zeros((2 * n, 2 * n), bool)
    for i in range(2 * n):
        for j in range(2 * n):
            qn, kn = i < n, j < n
            bi, bj = (i % n) // b, (j % n) // b
            if qn and kn:
                m[i, j] = bi == bj
            elif qn and not kn:
                m[i, j] = bj < bi
            elif not qn and not kn:
                m[i, j] = bj <= bi
    return m


@pytest.mark.parametrize("n,b", [(6, 2), (8, 1), (8, 8), (10, 3)])
def test_bd3_dense_mask_follows_design(n, b):
    np.testing.assert_array_equal(pk.dense_mask(pk.bd3(b), 2 * n, 2 * n), _bd3_by_rule(n, b))
    if b == 1:  # clean half is plain causal
        np.testing.assert_array_equal(pk.dense_mask(pk.bd3(1), 2 * n, 2 * n)[n:, n:],
                                      np.tril(np.ones((n, n), bool)))


@pytest.mark.parametrize("mask,L,S,bq,bk", [
    (pk.causal(), 64, 64, 16, 16), (pk.causal(), 64, 64, 8, 16), (pk.causal(), 36, 36, 16, 16),
    (pk.bidirectional(), 40, 24, 16, 8), (pk.bd3(4), 64, 64, 8, 8), (pk.bd3(8), 64, 64, 16, 16),
    (pk.bd3(3), 30, 30, 8, 16)], ids=str)
def test_tile_skip_fraction_counts_dense_mask(mask, L, S, bq, bk):
    dense = pk.dense_mask(mask, L, S)
    nq, nk = -(-L // bq), -(-S // bk)
    dead = sum(not dense[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk].any()
               for i in range(nq) for j in range(nk))
    assert pk.tile_skip_fraction(mask, L, S, bq, bk) == pytest.approx(dead / (nq * nk))
    if mask == pk.causal() and (L, bq, bk) == (64, 16, 16):
        assert pk.tile_skip_fraction(mask, L, S, bq, bk) == pytest.approx(6 / 16)


def test_dispatch_and_errors():
    q, k, v, q_pos, k_pos, *_ = _inputs(L=16)
    # interpret=None on CPU: the plain-JAX reference (exactly)
    got = pk.rope_attention(q, k, v, q_pos, k_pos, mask="causal")
    np.testing.assert_array_equal(got, ref.rope_attention(q, k, v, q_pos, k_pos, mask=pk.causal()))
    with pytest.raises(ValueError, match="interpret=False"):
        pk.rope_attention(q, k, v, q_pos, k_pos, mask="causal", interpret=False)
    with pytest.raises(ValueError, match="bd3"):
        pk.rope_attention(q[:, :15], k[:, :15], v[:, :15], q_pos[:, :15], k_pos[:, :15], mask=("bd3", 4))
    with pytest.raises(ValueError, match="H % K"):
        pk.rope_attention(q[:, :, :3], k, v, q_pos, k_pos, mask="causal", interpret=True)
    assert hash(pk.bd3(4)) == hash(pk.MaskSpec("bd3", 4))


def test_masked_tiles_are_not_visited():
    """NaN values in v poison every tile that is visited (0 * NaN = NaN even where masked), so
    finite outputs prove the skipped tiles are never loaded: in the bd3 layout the clean half
    never looks at the noisy half (clean->noisy never)."""
    q, k, v, q_pos, k_pos, *_ = _inputs(L=32, permute=False)
    n = 16
    v = v.at[:, :n].set(jnp.nan)
    out = pk.rope_attention(q, k, v, q_pos, k_pos, mask=pk.bd3(4), block_q=8, block_k=8, interpret=True)
    assert np.all(np.isfinite(np.asarray(out[:, n:]))) and np.all(np.isnan(np.asarray(out[:, :n])))
    assert pk.tile_skip_fraction(pk.bd3(4), 32, 32, 8, 8) == 0.5  # 8 of 16 tiles live
