"""The model's CPU rewrites (`jaxorder.model.cpu_rewrites`: `dense`, `swiglu`, `attention_scores`) against
autodiff of the plain formulas, the operand layouts they are there for (XLA:CPU HLO of the gradient), and
the model under `model.backward_rewrites` cpu and none."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model
from jaxorder.model.attention import attention_mask, xla_attention
from jaxorder.model.cpu_rewrites import PLAIN, REWRITTEN, attention_scores, dense, swiglu


def _rand(shape, i, dtype=jnp.float32):
    return jax.random.normal(jax.random.fold_in(jax.random.key(0), i), shape).astype(dtype)


def _assert_close_at_scale(got, want, tol: float) -> None:
    """Elementwise within tol, relative and as a fraction of want's largest magnitude (in float32)."""
    want = np.asarray(want, np.float32)
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=tol,
                               atol=tol * float(np.max(np.abs(want))))


@pytest.mark.parametrize("i, o", [(16, 48), (48, 16), (32, 32)])
def test_dense_gradients_equal_autodiff(i, o):
    x, w, dy = _rand((3, 5, i), 0), _rand((i, o), 1), _rand((3, 5, o), 2)
    y, vjp = jax.vjp(dense, x, w)
    y_ref, vjp_ref = jax.vjp(lambda x, w: jnp.einsum("bli,io->blo", x, w), x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    for got, want in zip(vjp(dy), vjp_ref(dy)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-6), (jnp.bfloat16, 2e-2)])
def test_swiglu_gradients_equal_autodiff(dtype, tol):
    """In bfloat16 against the float32 formula on the same inputs (rounding differs per element)."""
    g, u, dh = (_rand((2, 7, 24), k, dtype) * 3 for k in range(3))
    h, vjp = jax.vjp(swiglu, g, u)
    f32 = [x.astype(jnp.float32) for x in (g, u, dh)]
    h_ref, vjp_ref = jax.vjp(lambda g, u: jax.nn.silu(g) * u, *f32[:2])
    assert h.dtype == dtype
    for got, want in zip((h, *vjp(dh)), (h_ref, *vjp_ref(f32[2]))):
        assert got.dtype == dtype
        _assert_close_at_scale(got, want, tol)


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_attention_scores_gradients_equal_autodiff(dtype, tol):
    q, k, ds = _rand((2, 9, 3, 8), 0, dtype), _rand((2, 7, 3, 8), 1, dtype), _rand((2, 3, 9, 7), 2, dtype)
    s, vjp = jax.vjp(attention_scores, q, k)
    s_ref, vjp_ref = jax.vjp(lambda q, k: jnp.einsum("blhd,bshd->bhls", q, k), q, k)
    for got, want in zip((s, *vjp(ds)), (s_ref, *vjp_ref(ds))):
        assert got.shape == want.shape and got.dtype == want.dtype
        _assert_close_at_scale(got, want, tol)


def _transposed_lhs_dots(hlo: str) -> list[str]:
    """Plain (batch-free) dots whose left operand is contracted over its leading dimension."""
    return [line.strip() for line in hlo.splitlines()
            if " dot(" in line and "lhs_batch_dims" not in line
            and re.search(r"lhs_contracting_dims=\{0\}", line)]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU layouts")
@pytest.mark.parametrize("i, o", [(256, 64), (64, 256)])
def test_weight_gradient_dot_has_a_row_major_lhs(i, o):
    """dW = x^T dy: on CPU the compiled gradient must not contain a dot with a transposed-lhs
    operand (XLA:CPU runs those on a slow fallback instead of YNNPACK; see cpu_rewrites.keep_layout)."""
    x, w = _rand((4, 96, i), 0), _rand((i, o), 1)
    grad = jax.jit(jax.grad(lambda w: jnp.sum(jnp.sin(dense(x, w))))).lower(w).compile()
    assert _transposed_lhs_dots(grad.as_text()) == []


def _transposed_lhs_batched_dots(hlo: str) -> list[str]:
    """Dots over batch dims {0,1} whose rank-4 left operand is contracted over dim 2, not its minor dim."""
    return [line.strip() for line in hlo.splitlines()
            if " dot(" in line and "lhs_batch_dims={0,1}," in line and "lhs_contracting_dims={2}" in line]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU layouts")
@pytest.mark.parametrize("kind", ["causal", "bidirectional"])
def test_attention_backward_has_no_transposed_lhs_batched_dot(kind):
    """At bench shape a's attention (B=12, L=64, 4 heads of 32), autodiff of the score einsum gave
    dk = dS^T q with dS contracted over its query axis, which XLA:CPU runs on its slow fallback."""
    q, k, v, do = (_rand((12, 64, 4, 32), i) for i in range(4))
    mask = attention_mask(kind, 64)

    def backward(q, k, v, do):
        return jax.vjp(lambda q, k, v: xla_attention(q, k, v, mask, REWRITTEN), q, k, v)[1](do)

    assert _transposed_lhs_batched_dots(jax.jit(backward).lower(q, k, v, do).compile().as_text()) == []


# shapes of each op's operands and output cotangent: dense (o > i and o < i), swiglu, attention scores
OP_SHAPES = {"dense": [((2, 5, 16), (16, 24), (2, 5, 24)), ((2, 5, 24), (24, 8), (2, 5, 8))],
             "swiglu": [((2, 5, 24), (2, 5, 24), (2, 5, 24))],
             "attention_scores": [((2, 9, 3, 8), (2, 7, 3, 8), (2, 3, 9, 7))]}


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize("name, shapes", [(n, s) for n, cases in OP_SHAPES.items() for s in cases])
def test_each_rewrite_equals_the_plain_math(name, shapes, dtype, tol):
    """Forward and both gradients of REWRITTEN.<op> (backward_rewrites=cpu) against PLAIN.<op> (=none)
    under autodiff, on the same inputs in the same dtype."""
    a, b, dy = (_rand(shape, i, dtype) for i, shape in enumerate(shapes))
    y, vjp = jax.vjp(getattr(REWRITTEN, name), a, b)
    y_ref, vjp_ref = jax.vjp(getattr(PLAIN, name), a, b)
    for got, want in zip((y, *vjp(dy)), (y_ref, *vjp_ref(dy))):
        assert got.shape == want.shape and got.dtype == want.dtype == dtype
        _assert_close_at_scale(got, want, tol)


def _model_cfg(rewrites: str):
    tiny = ["model.d_model=32", "model.n_heads=2", "model.n_layers=2", "model.max_len=16", "data.seq_len=16"]
    return config_lib.load(None, [*tiny, f"model.backward_rewrites={rewrites}"]).model


@pytest.fixture(scope="module")
def tiny_params():
    return jax.jit(lambda: model.init_params(_model_cfg("none"), jax.random.key(0)))()


def _loss_and_grads(cfg):
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 256)
    positions = jnp.broadcast_to(jnp.arange(16), (2, 16))

    def loss(p):
        return jnp.mean(jax.nn.log_softmax(model.apply(p, cfg, tokens, positions, "causal"))[..., 0])
    return jax.jit(jax.value_and_grad(loss))


def test_rewrites_none_gives_a_gradient_without_optimization_barriers(tiny_params):
    """keep_layout's barriers come only with the rewrites; `none` leaves the whole backward to XLA.
    (The program handed to the compiler: XLA removes the barriers late in compilation.)"""
    for rewrites, barriers in (("cpu", True), ("none", False)):
        lowered = _loss_and_grads(_model_cfg(rewrites)).lower(tiny_params)
        assert ("optimization_barrier" in lowered.as_text()) == barriers, rewrites


def test_rewrites_none_and_cpu_give_the_same_loss_and_gradients(tiny_params):
    loss_cpu, grads_cpu = _loss_and_grads(_model_cfg("cpu"))(tiny_params)
    loss_none, grads_none = _loss_and_grads(_model_cfg("none"))(tiny_params)
    np.testing.assert_allclose(loss_none, loss_cpu, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(grads_none), jax.tree.leaves(grads_cpu)):
        _assert_close_at_scale(got, want, 1e-5)
