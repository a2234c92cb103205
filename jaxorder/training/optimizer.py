"""AdamW with warmup + cosine decay, global-norm clipping, no weight decay on norm scales."""
from __future__ import annotations

import jax
import optax

from jaxorder.config import Config


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    o = cfg.optimizer
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=o.lr, warmup_steps=min(o.warmup_steps, cfg.train.steps - 1),
        decay_steps=cfg.train.steps, end_value=o.lr * o.min_lr_ratio)
    decay_mask = lambda params: jax.tree_util.tree_map_with_path(_is_matrix, params)  # noqa: E731 - no decay on norms
    chain = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
    chain.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask))
    return optax.chain(*chain)


def _is_matrix(path, p) -> bool:
    """Weight matrices (decayed) vs vectors (norm scales); the stacked layer axis of scanned params
    (model.scan_layers, under "layers") does not count."""
    stacked = any(getattr(k, "key", None) == "layers" for k in path)
    return p.ndim - stacked >= 2
