"""AdamW with warmup + cosine decay, global-norm clipping, no weight decay on norm scales."""
from __future__ import annotations

import jax
import optax

from jaxorder import objectives
from jaxorder.config import Config
from jaxorder.objectives.base import OWN_PARAMS


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    o = cfg.optimizer
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=o.lr, warmup_steps=min(o.warmup_steps, cfg.train.steps - 1),
        decay_steps=cfg.train.steps, end_value=o.lr * o.min_lr_ratio)
    decay_mask = lambda params: jax.tree_util.tree_map_with_path(_is_matrix, params)  # noqa: E731 - no decay on norms
    chain = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
    chain.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask))
    scales = objectives.of(cfg).lr_scales(cfg)
    if any(f != 1.0 for f in scales.values()):
        chain.append(scale_own_params(scales))
    return optax.chain(*chain)


def scale_own_params(scales: dict[str, float]) -> optax.GradientTransformation:
    """Multiply the updates of the named leaves of params[OWN_PARAMS] (and everything under them) by
    their factor: a learning rate of their own, after Adam (which is invariant to a gradient factor)."""
    def factor(path) -> float:
        keys = [getattr(k, "key", None) for k in path]
        return scales.get(keys[1], 1.0) if len(keys) > 1 and keys[0] == OWN_PARAMS else 1.0

    def update(updates, params=None):
        return jax.tree_util.tree_map_with_path(lambda path, u: u * factor(path), updates)
    return optax.stateless(update)


def _is_matrix(path, p) -> bool:
    """Weight matrices (decayed) vs vectors (norm scales); the stacked layer axis of scanned params
    (model.scan_layers, under "layers") does not count."""
    stacked = any(getattr(k, "key", None) == "layers" for k in path)
    return p.ndim - stacked >= 2
