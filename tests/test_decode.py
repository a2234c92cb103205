"""KV-cache decoding beyond the causal model: block (bd3), candidate ("self") and any-order slots.

Each cached computation is compared with the full forward pass it stands for.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model
from jaxorder.model import decode
from jaxorder.model.attention import decode_mask
from jaxorder.objectives import ao_ar, bd3

TINY = ("model.d_model=32", "model.n_layers=2", "model.n_heads=2", "data.seq_len=16")


@pytest.fixture(scope="module")
def tiny():
    cfg = config_lib.load(None, ("objective.name=bd3", "objective.block_size=4", *TINY))
    return cfg, model.init_params(cfg.model, jax.random.key(0))


def test_decode_masks():
    got = np.asarray(decode_mask("causal", 6, 2, 3))
    assert got.tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]]
    got = np.asarray(decode_mask("bidirectional", 6, 2, 3))
    assert got.tolist() == [[1, 1, 1, 1, 1, 0]] * 3
    got = np.asarray(decode_mask("self", 6, 2, 3))
    assert got.tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 0, 0], [1, 1, 0, 0, 1, 0]]
    with pytest.raises(ValueError, match="unknown decode mask"):
        decode_mask("bd3:4", 6, 2, 3)


def test_block_decoding_equals_bd3_noisy_half(tiny):
    """Clean blocks written block by block ("bidirectional"), then a noisy block over the cache,
    give the noisy-half logits of the training pass over [x_t ; x] with mask bd3:4."""
    cfg, params = tiny
    b, n = 4, 16
    clean = jax.random.randint(jax.random.key(1), (2, n), 0, 250)
    noisy = jnp.where(jax.random.bernoulli(jax.random.key(2), 0.5, (2, n)), 257, clean)
    want = np.asarray(bd3.noisy_logits(params, noisy, clean, cfg, b))
    pos = jnp.broadcast_to(jnp.arange(n), (2, n))
    cache = decode.init_cache(cfg.model, 2, n)
    for k in range(n // b):
        s = slice(k * b, (k + 1) * b)
        got, _ = decode.decode_step(params, cfg.model, cache, noisy[:, s], pos[:, s], "bidirectional")
        np.testing.assert_allclose(np.asarray(got), want[:, s], atol=1e-5)
        _, cache = decode.decode_step(params, cfg.model, cache, clean[:, s], pos[:, s], "bidirectional")


def test_self_mask_scores_candidates_independently(tiny):
    """L candidates of one next slot in one call == L separate one-slot calls."""
    cfg, params = tiny
    toks = jax.random.randint(jax.random.key(3), (2, 6), 0, 250)
    pos = jnp.broadcast_to(jnp.arange(6), (2, 6))
    _, cache = decode.decode_step(params, cfg.model, decode.init_cache(cfg.model, 2, 12), toks, pos)
    cand = jax.random.randint(jax.random.key(4), (2, 5), 0, 250)
    cand_pos = jnp.broadcast_to(jnp.arange(6, 11), (2, 5))
    got, _ = decode.decode_step(params, cfg.model, cache, cand, cand_pos, "self")
    for i in range(5):
        one, _ = decode.decode_step(params, cfg.model, cache, cand[:, i:i + 1], cand_pos[:, i:i + 1])
        np.testing.assert_allclose(np.asarray(got[:, i]), np.asarray(one[:, 0]), atol=1e-5)


def test_any_order_decoding_equals_order_logits():
    """Slot by slot with target positions over a permuted prefix == ao_ar's one-pass order logits."""
    cfg = config_lib.load(None, ("objective.name=ao_ar", *TINY))
    params = model.init_params(cfg.model, jax.random.key(0), target_positions=True)
    n = 10
    toks = jax.random.randint(jax.random.key(5), (2, n), 0, 250)
    order = jnp.stack([jax.random.permutation(jax.random.key(6), n), jnp.arange(n)[::-1]]).astype(jnp.int32)
    want = np.asarray(ao_ar.order_logits(params, toks, order, cfg)[0])
    permuted = jnp.take_along_axis(toks, order, axis=1)
    inputs = jnp.concatenate([jnp.full((2, 1), 258), permuted[:, :-1]], axis=1)
    positions = jnp.concatenate([jnp.zeros((2, 1), jnp.int32), order[:, :-1]], axis=1)
    cache = decode.init_cache(cfg.model, 2, n)
    got, cache = decode.decode_step(params, cfg.model, cache, inputs[:, :3], positions[:, :3],
                                    target_positions_BL=order[:, :3])
    steps = [got]
    for j in range(3, n):
        got, cache = decode.decode_step(params, cfg.model, cache, inputs[:, j:j + 1], positions[:, j:j + 1],
                                        target_positions_BL=order[:, j:j + 1])
        steps.append(got)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(steps, axis=1)), want, atol=1e-5)
    with pytest.raises(ValueError, match="target positions"):
        decode.decode_step(model.init_params(cfg.model, jax.random.key(0)), cfg.model, cache, inputs[:, :1],
                           positions[:, :1], target_positions_BL=order[:, :1])


def test_decode_params_split_the_mlp_weight_and_decode_the_same(tiny):
    """The decode layout (gate/up split, layers unrolled) is idempotent and decodes exactly as the
    training layout, for unrolled and scan_layers parameters; the full pass reads it too."""
    cfg, params = tiny
    prepared = decode.decode_params(params, cfg.model)
    mlp = prepared["layer_0"]["mlp"]
    assert set(mlp) == {"gate", "up", "down"}
    gate_up = np.asarray(params["layer_0"]["mlp"]["gate_up"])
    np.testing.assert_array_equal(np.asarray(mlp["up"]), gate_up[:, 1])
    assert jax.tree.structure(decode.decode_params(prepared, cfg.model)) == jax.tree.structure(prepared)
    scanned = {k: v for k, v in params.items() if not k.startswith("layer_")}
    scanned["layers"] = jax.tree.map(lambda *x: jnp.stack(x), params["layer_0"], params["layer_1"])
    toks = jax.random.randint(jax.random.key(7), (2, 6), 0, 250)
    pos = jnp.broadcast_to(jnp.arange(6), (2, 6))
    want, _ = decode.decode_step(params, cfg.model, decode.init_cache(cfg.model, 2, 6), toks, pos)
    for p in (prepared, decode.decode_params(scanned, cfg.model)):
        got, _ = decode.decode_step(p, cfg.model, decode.init_cache(cfg.model, 2, 6), toks, pos)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    full = model.apply(params, cfg.model, toks, pos, "causal")
    np.testing.assert_array_equal(np.asarray(model.apply(prepared, cfg.model, toks, pos, "causal")),
                                  np.asarray(full))
