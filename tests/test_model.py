"""Model: shapes, RoPE, masks, logical axes."""
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model
from jaxorder.model.rope import apply_rope


def cfg(**over):
    ov = ["model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.max_len=32", "data.seq_len=16"]
    return config_lib.load(None, ov + [f"model.{k}={v}" for k, v in over.items()]).model


def test_shapes_dtypes_and_logical_axes():
    c = cfg()
    params = model.init_params(c, jax.random.key(0))
    tokens = jnp.zeros((2, 16), jnp.int32)
    logits = model.apply(params, c, tokens, jnp.broadcast_to(jnp.arange(16), (2, 16)), "causal")
    chex.assert_shape(logits, (2, 16, c.vocab_size))
    assert logits.dtype == jnp.float32
    axes = model.logical_axes(c)
    chex.assert_trees_all_equal_structs(
        jax.tree.map(lambda x: 0, params),
        jax.tree.map(lambda x: 0, axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)))
    assert tuple(axes["embed"]) == ("vocab", "embed")
    assert tuple(axes["layer_0"]["mlp"]["down"]) == ("mlp", "embed")


def test_rope_matches_complex_rotation_and_is_relative():
    x = jax.random.normal(jax.random.key(0), (1, 5, 2, 8))
    pos = jnp.asarray([[0, 3, 1, 7, 2]])
    out = np.asarray(apply_rope(x, pos, 10000.0, 8))
    xc = np.asarray(x[..., :4]) + 1j * np.asarray(x[..., 4:])
    freq = 10000.0 ** (-np.arange(4) * 2 / 8)
    rot = xc * np.exp(1j * np.asarray(pos)[..., None, None] * freq)
    np.testing.assert_allclose(out, np.concatenate([rot.real, rot.imag], -1), atol=1e-5)
    q, k = jax.random.normal(jax.random.key(1), (2, 1, 1, 1, 8))
    dots = [float(jnp.sum(apply_rope(q, jnp.asarray([[p + 5]]), 1e4, 32)
                          * apply_rope(k, jnp.asarray([[p]]), 1e4, 32)))
            for p in (0, 11)]
    np.testing.assert_allclose(dots[0], dots[1], rtol=1e-4)


def test_rope_positions_outside_the_table_give_nan():
    x = jnp.ones((1, 3, 1, 4))
    out = np.asarray(apply_rope(x, jnp.asarray([[0, 7, 8]]), 1e4, 8))
    assert np.isfinite(out[0, :2]).all() and np.isnan(out[0, 2]).all()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="counts XLA:CPU fusions")
def test_compiled_cpu_gradient_evaluates_rope_cos_in_one_fusion():
    """The position table keeps XLA:CPU from re-evaluating cos/sin inside every RoPE fusion (rope_angles)."""
    c = cfg()
    params = model.init_params(c, jax.random.key(0))
    tokens = jnp.zeros((2, 16), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(16), (2, 16))

    def loss(p):
        return jnp.sum(model.apply(p, c, tokens, positions, "causal"))

    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    bodies = re.findall(r"^(%\S+) .*?\{\n(.*?)\n\}", hlo, re.MULTILINE | re.DOTALL)
    with_cos = [name for name, body in bodies if re.search(r"= f32\[[^]]*\]\{?[^ ]* cosine\(", body)]
    assert len(with_cos) == 1, with_cos  # the lookup; without the table: one per RoPE fusion (8 here)


def test_causal_vs_bidirectional_masks():
    c = cfg()
    params = model.init_params(c, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (1, 8), 0, 256)
    changed = tokens.at[0, 6].set((tokens[0, 6] + 1) % 256)
    pos = jnp.arange(8)[None]
    for kind, prefix_same in (("causal", True), ("bidirectional", False)):
        a = model.apply(params, c, tokens, pos, kind)
        b = model.apply(params, c, changed, pos, kind)
        assert np.allclose(a[0, :6], b[0, :6], atol=1e-6) == prefix_same


def test_bfloat16_compute_is_close_to_float32():
    c32, c16 = cfg(), cfg(dtype="bfloat16")
    params = model.init_params(c32, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 256)
    pos = jnp.broadcast_to(jnp.arange(16), (2, 16))
    a = jax.nn.log_softmax(model.apply(params, c32, tokens, pos, "causal"))
    b = jax.nn.log_softmax(model.apply(params, c16, tokens, pos, "causal"))
    assert float(jnp.max(jnp.abs(a - b))) < 0.1


def test_apply_refuses_positions_outside_the_rope_table():
    cfg = config_lib.load(None, ("model.d_model=32", "model.n_layers=1", "model.n_heads=2",
                                 "model.max_len=16", "data.seq_len=16")).model
    params = model.init_params(cfg, jax.random.key(0))
    tokens = jnp.zeros((1, 4), jnp.int32)
    assert np.all(np.isfinite(model.apply(params, cfg, tokens, jnp.array([[12, 13, 14, 15]]), "causal")))
    with pytest.raises(ValueError, match=r"positions 14\.\.17 are outside \[0, model.max_len=16\)"):
        model.apply(params, cfg, tokens, jnp.array([[14, 15, 16, 17]]), "causal")
    jitted = jax.jit(lambda p: model.apply(params, cfg, tokens, p, "causal"))  # traced: not checked here
    assert np.isnan(np.asarray(jitted(jnp.array([[14, 15, 16, 17]])))).any()
