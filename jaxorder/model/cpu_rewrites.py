"""Every rewrite of the model made for XLA:CPU, beside the plain math it rewrites (`model.backward_rewrites`).

The model calls three operations through an `Ops` bundle: a projection (`dense`), the SwiGLU
gate (`swiglu`) and the attention scores (`attention_scores`). `ops(cfg)` gives either the plain
formulas, differentiated by JAX's autodiff (`none`, the default off CPU), or their rewrites (`cpu`,
the default on CPU). A rewrite computes the same math; it only changes the backward pass XLA:CPU
is handed: the operand order and layout of dots and what is kept from the forward pass. The
measurements behind them are in docs/performance.md, "Model-level CPU rewrites".
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

if TYPE_CHECKING:
    from jaxorder.config import ModelConfig

DENSE_NAME = "dense"  # checkpoint name of every rewritten projection output (see `save_named_dots`)


# ----------------------------------------------------------------------------- the plain math

def plain_dense(x_BLi: jnp.ndarray, w_io: jnp.ndarray) -> jnp.ndarray:
    """x [B, L, i] @ w [i, o] -> [B, L, o]."""
    return jnp.einsum("bli,io->blo", x_BLi, w_io)


def plain_swiglu(gate_BLF: jnp.ndarray, up_BLF: jnp.ndarray) -> jnp.ndarray:
    """silu(gate) * up."""
    return jax.nn.silu(gate_BLF) * up_BLF


def plain_attention_scores(q_BLHD: jnp.ndarray, k_BLHD: jnp.ndarray) -> jnp.ndarray:
    """Unscaled q . k per head, [B, H, L, S]."""
    return jnp.einsum("blhd,bshd->bhls", q_BLHD, k_BLHD)


# ----------------------------------------------------------------------------- the rewrites

def keep_layout(x: jax.Array) -> jax.Array:
    """x exactly as computed: an optimization barrier, so a dot's result keeps the layout it is computed in.

    XLA's algebraic simplifier folds a transpose into the dot that consumes or produces it. For a
    dot whose left operand is then contracted over its leading dimension (x^T y with x stored
    row-major), XLA:CPU's YNNPACK path declines and a slower fallback runs it. Putting the dot's
    result behind the barrier, before its transpose (the backwards of `dense` and
    `attention_scores`), keeps the transpose a separate small copy and the dot plain. TPU and GPU
    compilers choose operand layouts themselves: there the rewrites, and with them the barrier, are
    off by default."""
    return jax.lax.optimization_barrier(x)


def dense(x_BLi: jnp.ndarray, w_io: jnp.ndarray) -> jnp.ndarray:
    """`plain_dense` with an ordered weight-gradient dot (`_dense_dot`), output named DENSE_NAME.

    The dot sits inside a custom_vjp, where jax.checkpoint's dots_* policies cannot see it; the
    name makes the projection outputs saveable under those policies (`save_named_dots`)."""
    return checkpoint_name(_dense_dot(x_BLi, w_io), DENSE_NAME)


@jax.custom_vjp
def _dense_dot(x_BLi: jnp.ndarray, w_io: jnp.ndarray) -> jnp.ndarray:
    """x [B, L, i] @ w [i, o] -> [B, L, o]; an einsum whose backward orders the weight gradient.

    Same math as the plain einsum. Its only purpose is the operand order of the weight-gradient
    dot: JAX's transpose rule emits dot(dy, x) followed by a transpose, and XLA:CPU then copies
    the larger activation (dy [B*L, o] when o > i) into a transposed buffer for the GEMM. Here the
    smaller activation comes first, so the transposed copy is of [B*L, min(i, o)]. When o < i the
    dot is dy^T x behind `keep_layout`, so its transpose is not folded back into it."""
    return jnp.einsum("bli,io->blo", x_BLi, w_io)


def _dense_fwd(x_BLi: jnp.ndarray, w_io: jnp.ndarray):
    return _dense_dot(x_BLi, w_io), (x_BLi, w_io)


def _dense_bwd(res, dy_BLo: jnp.ndarray):
    x_BLi, w_io = res
    dx_BLi = jnp.einsum("blo,io->bli", dy_BLo, w_io)
    if x_BLi.shape[-1] <= dy_BLo.shape[-1]:
        dw_io = jnp.einsum("bli,blo->io", x_BLi, dy_BLo)
    else:
        dw_io = keep_layout(jnp.einsum("blo,bli->oi", dy_BLo, x_BLi)).T  # the dot stays plain (keep_layout)
    return dx_BLi, dw_io.astype(w_io.dtype)


_dense_dot.defvjp(_dense_fwd, _dense_bwd)


@jax.custom_vjp
def swiglu(gate_BLF: jnp.ndarray, up_BLF: jnp.ndarray) -> jnp.ndarray:
    """`plain_swiglu` (silu(gate) * up), with a backward pass that keeps only gate and up.

    Autodiff of nn.silu(gate) * up saves sigmoid(gate) and silu(gate) as well, each a separate
    elementwise pass over [B, L, F] in the forward pass. Here the backward asks for the sigmoid
    again; in the compiled CPU step XLA shares that one sigmoid pass between the forward and the
    backward fusions, and silu(gate) is never stored. Same math; float rounding may differ in the
    last bit."""
    return gate_BLF * jax.nn.sigmoid(gate_BLF) * up_BLF


def _swiglu_fwd(gate_BLF: jnp.ndarray, up_BLF: jnp.ndarray):
    return swiglu(gate_BLF, up_BLF), (gate_BLF, up_BLF)


def _swiglu_bwd(res, dh_BLF: jnp.ndarray):
    gate_BLF, up_BLF = res
    sig_BLF = jax.nn.sigmoid(gate_BLF)
    d_gate_BLF = dh_BLF * up_BLF * sig_BLF * (1 + gate_BLF * (1 - sig_BLF))
    return d_gate_BLF, dh_BLF * gate_BLF * sig_BLF


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


@jax.custom_vjp
def attention_scores(q_BLHD: jnp.ndarray, k_BLHD: jnp.ndarray) -> jnp.ndarray:
    """`plain_attention_scores` (q . k per head, [B, H, L, S]) whose backward computes dk transposed.

    Autodiff's dk = dS^T q contracts dS over its leading query axis, a batched dot XLA:CPU runs on
    a slow fallback instead of YNNPACK. Here dk^T = q^T dS is computed behind `keep_layout` and
    then transposed, so the dot stays one YNNPACK runs."""
    return jnp.einsum("blhd,bshd->bhls", q_BLHD, k_BLHD)


def _attention_scores_fwd(q_BLHD: jnp.ndarray, k_BLHD: jnp.ndarray):
    return attention_scores(q_BLHD, k_BLHD), (q_BLHD, k_BLHD)


def _attention_scores_bwd(residuals, ds_BHLS: jnp.ndarray):
    q_BLHD, k_BLHD = residuals
    dq_BLHD = jnp.einsum("bhls,bshd->blhd", ds_BHLS, k_BLHD)
    dk_BHDS = keep_layout(jnp.einsum("blhd,bhls->bhds", q_BLHD, ds_BHLS))
    return dq_BLHD, dk_BHDS.transpose(0, 3, 1, 2)


attention_scores.defvjp(_attention_scores_fwd, _attention_scores_bwd)


def save_named_dots(policy: Callable) -> Callable:
    """A remat policy that saves what `policy` saves and the rewritten projections' outputs.

    The rewritten `dense` hides its dot inside a custom_vjp, so dots_* policies alone would
    recompute every projection; its DENSE_NAME checkpoint name keeps them saveable. Plain
    projections carry no name and are seen by the dots_* policies as dots."""
    return jax.checkpoint_policies.save_from_both_policies(
        policy, jax.checkpoint_policies.save_only_these_names(DENSE_NAME))


# ----------------------------------------------------------------------------- the choice

class Ops(NamedTuple):
    """The operations the model computes through `ops(cfg)`."""
    dense: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
    swiglu: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
    attention_scores: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


PLAIN = Ops(dense=plain_dense, swiglu=plain_swiglu, attention_scores=plain_attention_scores)
REWRITTEN = Ops(dense=dense, swiglu=swiglu, attention_scores=attention_scores)


def resolve(choice: str, backend: str | None = None) -> str:
    """`model.backward_rewrites` to use: 'auto' is 'cpu' on the CPU backend and 'none' elsewhere
    (`backend` defaults to jax.default_backend()); 'cpu' and 'none' are returned as given."""
    if choice != "auto":
        return choice
    return "cpu" if (backend or jax.default_backend()) == "cpu" else "none"


def ops(cfg: ModelConfig) -> Ops:
    """The rewrites if `cfg.backward_rewrites` is 'cpu', the plain math if 'none' ('auto': resolved
    by backend, for a config no run start settled)."""
    return REWRITTEN if resolve(cfg.backward_rewrites) == "cpu" else PLAIN
