"""Operand layouts for XLA:CPU's matmuls."""
from __future__ import annotations

import jax


def keep_layout(x: jax.Array) -> jax.Array:
    """x exactly as computed, on CPU (an optimization barrier); the identity on other backends.

    XLA's algebraic simplifier folds a transpose into the dot that consumes or produces it. For a
    dot whose left operand is then contracted over its leading dimension (x^T y with x stored
    row-major), XLA:CPU's YNNPACK path declines and a slower fallback runs it: measured on the
    2-core CPU at 145 GFLOP/s for the down projection's weight gradient at bench shape a, against
    180-250 for plain dots of those sizes; the batched dk = dS^T q of attention's backward ran there
    at 30 GFLOP/s. Putting the dot's result behind the barrier, before its transpose (the
    backwards of `dense` and `attention_scores`), keeps the transpose a separate small copy and
    the dot plain.
    TPU and GPU compilers choose operand layouts themselves, so elsewhere this returns x untouched."""
    return jax.lax.optimization_barrier(x) if jax.default_backend() == "cpu" else x
