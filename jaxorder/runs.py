"""Finished run directories: the newest checkpoint's config and params, and their evaluation
(`jaxorder eval`, sweeps, sampling and analysis read runs through here)."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from etils import epath
import jax

from jaxorder import config as config_lib
from jaxorder.checkpoint import Checkpointer, require_checkpoint
from jaxorder.config import Config, ConfigError
from jaxorder.data import make_data
from jaxorder.evaluate import evaluate
from jaxorder.model.attention import settle_model_config
from jaxorder.train import make_optimizer, make_placement


def load_params(run_dir: str | os.PathLike) -> tuple[Config, Any, int]:
    """Config, params and step of a run's newest readable checkpoint (for eval and analysis)."""
    run_dir = epath.Path(run_dir)
    ckpt_dir = require_checkpoint(run_dir)
    cfg = config_lib.load_saved(run_dir / "config.yaml")
    cfg = dataclasses.replace(cfg, model=settle_model_config(cfg.model))
    optimizer = make_optimizer(cfg)
    try:
        placement = make_placement(cfg, optimizer)
    except ConfigError:  # trained on another mesh: evaluate data-parallel on the devices here
        cfg = dataclasses.replace(cfg, mesh=config_lib.MeshConfig(rules=cfg.mesh.rules))
        placement = make_placement(cfg, optimizer)
    ckpt = Checkpointer(ckpt_dir, cfg.train.max_to_keep, async_save=False)
    try:
        restored = ckpt.restore_latest(placement.abstract_state(cfg, optimizer))
    finally:
        ckpt.close()
    if restored is None:
        raise ConfigError(f"no readable checkpoint in {ckpt_dir}; re-train with `jaxorder train`")
    step, state = restored
    return cfg, state["params"], step


def eval_run(run_dir: str | os.PathLike, orders: str | None = None, max_windows: int | None = None) -> dict:
    """Evaluates a run directory's newest checkpoint on the validation windows.

    `orders` (e.g. 'l2r,r2l,random:8,greedy') adds exact fixed-order scores of an mdm, ao_ar or
    latent_order model under result["orders"]; `max_windows` limits the windows used for them.
    """
    from jaxorder.fixed_orders import parse_orders, score_orders

    specs = parse_orders(orders) if orders else []
    cfg, params, step = load_params(run_dir)
    data = make_data(cfg.data, jax.process_index(), jax.process_count())
    val_batches = data.val_batches(cfg.eval.batches)
    result = evaluate(params, cfg, val_batches, data.val_bytes_per_token)
    result.update({"run": epath.Path(run_dir).name, "step": step})
    if specs:
        if max_windows:
            val_batches = _first_windows(val_batches, max_windows)
        result["orders"] = score_orders(params, cfg, val_batches, data.val_bytes_per_token, specs, cfg.eval.seed)
        same = evaluate(params, cfg, val_batches, data.val_bytes_per_token)  # the yardstick on the same windows
        result["orders"]["yardstick"] = {k: same[k] for k in ("bpb", "bpb_stderr", "kind", "windows")}
    return result


def _first_windows(batches: list, count: int) -> list:
    out, left = [], count
    for b in batches:
        if left <= 0:
            break
        out.append(b[:left])
        left -= len(out[-1])
    return out
