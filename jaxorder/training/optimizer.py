"""AdamW with warmup + cosine decay, global-norm clipping, no weight decay on norm scales (nor on the
own params an objective declares undecayed)."""
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
    undecayed = objectives.of(cfg).undecayed
    decay_mask = lambda params: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda path, p: _is_matrix(path, p) and _own_param_name(path) not in undecayed, params)
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
        return scales.get(_own_param_name(path), 1.0)

    def update(updates, params=None):
        return jax.tree_util.tree_map_with_path(lambda path, u: u * factor(path), updates)
    return optax.stateless(update)


def _own_param_name(path) -> str | None:
    """The name of the own param (params[OWN_PARAMS][name]) a leaf belongs to; None for the network's."""
    keys = [getattr(k, "key", None) for k in path]
    return keys[1] if len(keys) > 1 and keys[0] == OWN_PARAMS else None


def _is_matrix(path, p) -> bool:
    """Weight matrices (decayed) vs vectors (norm scales); the stacked layer axis of scanned params
    (model.scan_layers, under "layers") does not count."""
    stacked = any(getattr(k, "key", None) == "layers" for k in path)
    return p.ndim - stacked >= 2
