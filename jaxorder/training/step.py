"""The pure train step (loss, gradients, optional accumulation, optimizer update) and its jit."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxorder import objectives
from jaxorder.config import Config
from jaxorder.training.state import Placement


def compile_train_step(cfg: Config, optimizer: optax.GradientTransformation, placement: Placement):
    """The jitted step with explicit in/out shardings and the state donated."""
    return jax.jit(make_train_step(cfg, optimizer), in_shardings=(placement.state, placement.batch),
                   out_shardings=(placement.state, placement.replicated), donate_argnums=(0,))


def make_train_step(cfg: Config, optimizer: optax.GradientTransformation):
    """Pure (state, tokens [B, L]) -> (state, metrics); the step's rng is derived from the step.

    The loss gets batch = {"tokens": [B, L], "step": int32 scalar (updates done before this one)};
    only objectives with a schedule read the step (latent_order's posterior temperature).

    Dtypes. The state stores float32 parameters ("master weights") and float32 optimizer state
    whatever model.param_dtype is; the optimizer updates the float32 copy. The forward pass
    (model.apply) casts the parameters to model.param_dtype, and each matmul casts its weight and
    activations to model.dtype (the compute dtype); RMSNorm statistics, softmax and the logits /
    loss are float32. Gradients flow back through the casts, so they reach the optimizer as float32.

    Gradient accumulation (train.grad_accum_steps = k > 1). The global batch [B, L] is split into
    k micro-batches [B/k, L] (micro-batch i = rows i, i+k, i+2k, ..., so each device keeps its own
    rows when B is sharded), the gradients are computed one micro-batch at a time under
    jax.lax.scan and averaged, as are the metrics; then one optimizer update. Micro-batch i draws
    its randomness from fold_in(step rng, i). For losses that are a mean over equally many tokens
    per row (l2r, r2l) the result equals the one-batch step up to float rounding; for objectives
    that draw per-row randomness from the rng (mdm's antithetic noise levels, ao_ar/latent_order
    orders, bd3) the draws differ from the one-batch step (same distribution, different samples).
    """
    objective = objectives.of(cfg)
    base_rng = jax.random.key(cfg.train.seed + 1)
    k = cfg.train.grad_accum_steps

    def grads_of(params, tokens_BL, rng, step):
        # The batch carries the step (a traced int32 scalar) for losses with a schedule (latent_order's
        # beta); the others read only "tokens".
        batch = {"tokens": tokens_BL, "step": step}
        grad_fn = jax.value_and_grad(lambda p: objective.loss(p, batch, rng, cfg), has_aux=True)
        (_, metrics), grads = grad_fn(params)
        return grads, metrics

    def accumulated(params, tokens_BL, rng, step):
        B, L = tokens_BL.shape
        micro_kBL = tokens_BL.reshape(B // k, k, L).swapaxes(0, 1)

        def body(acc, xs):
            i, micro_BL = xs
            grads, metrics = grads_of(params, micro_BL, jax.random.fold_in(rng, i), step)
            return jax.tree.map(jnp.add, acc, (grads, metrics)), None

        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                             jax.eval_shape(grads_of, params, micro_kBL[0], rng, step))
        total, _ = jax.lax.scan(body, zeros, (jnp.arange(k), micro_kBL))
        return jax.tree.map(lambda x: x / k, total)

    def step_fn(state: dict, tokens_BL: jnp.ndarray) -> tuple[dict, dict]:
        rng = jax.random.fold_in(base_rng, state["step"])
        if k == 1:
            grads, metrics = grads_of(state["params"], tokens_BL, rng, state["step"])
        else:
            grads, metrics = accumulated(state["params"], tokens_BL, rng, state["step"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        grad_norm = optax.tree.norm(grads)
        params, opt_state, finite = keep_if_finite(metrics["loss"], grad_norm, (params, opt_state),
                                                   (state["params"], state["opt_state"]))
        metrics = {**metrics, "grad_norm": grad_norm, "finite": finite}
        # The step counter advances either way: the data iterator has moved on, and the next step's
        # rng must differ from the skipped one's.
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    return step_fn


def keep_if_finite(loss: jnp.ndarray, grad_norm: jnp.ndarray, updated: Any, previous: Any) -> tuple:
    """(*chosen, finite): `updated` if the loss and the global gradient norm are finite, else `previous`.

    One non-finite gradient entry makes the global norm non-finite, so two scalar checks cover the
    whole gradient; the select is elementwise, so a skipped step costs no host round trip."""
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    chosen = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, previous)
    return (*chosen, finite)
