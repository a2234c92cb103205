"""Model: shapes, RoPE, masks, logical axes."""
import chex
import jax
import jax.numpy as jnp
import numpy as np

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
    chex.assert_trees_all_equal_structs(jax.tree.map(lambda x: 0, params),
                                        jax.tree.map(lambda x: 0, axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)))
    assert tuple(axes["embed"]) == ("vocab", "embed")
    assert tuple(axes["layer_0"]["mlp"]["down"]) == ("mlp", "embed")


def test_rope_matches_complex_rotation_and_is_relative():
    x = jax.random.normal(jax.random.key(0), (1, 5, 2, 8))
    pos = jnp.asarray([[0, 3, 1, 7, 2]])
    out = np.asarray(apply_rope(x, pos, 10000.0))
    xc = np.asarray(x[..., :4]) + 1j * np.asarray(x[..., 4:])
    freq = 10000.0 ** (-np.arange(4) * 2 / 8)
    rot = xc * np.exp(1j * np.asarray(pos)[..., None, None] * freq)
    np.testing.assert_allclose(out, np.concatenate([rot.real, rot.imag], -1), atol=1e-5)
    q, k = jax.random.normal(jax.random.key(1), (2, 1, 1, 1, 8))
    dots = [float(jnp.sum(apply_rope(q, jnp.asarray([[p + 5]]), 1e4) * apply_rope(k, jnp.asarray([[p]]), 1e4)))
            for p in (0, 11)]
    np.testing.assert_allclose(dots[0], dots[1], rtol=1e-4)


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
