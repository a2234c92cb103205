"""The likelihood yardstick: validation bits per byte of a run's objective nll, exact or an upper bound."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import numpy as np

from jaxorder import objectives
from jaxorder.config import Config
from jaxorder.platform import progress

LN2 = math.log(2.0)


def make_nll_fn(cfg: Config, out_sharding: Any = None) -> Callable[[Any, Any, jax.Array], jax.Array]:
    """Jitted (params, tokens [B, L], rng) -> per-sequence NLL in nats [B] for cfg's objective.

    `out_sharding` (replicated, under a mesh) lets every process read all rows' results.
    """
    objective = objectives.of(cfg)
    return jax.jit(lambda params, tokens_BL, rng: objective.nll(params, {"tokens": tokens_BL}, rng, cfg),
                   out_shardings=out_sharding)


def _pad_rows(tokens_BL: np.ndarray, multiple: int) -> np.ndarray:
    short = -len(tokens_BL) % multiple
    return np.concatenate([tokens_BL, np.repeat(tokens_BL[:1], short, axis=0)]) if short else tokens_BL


def evaluate(params: Any, cfg: Config, val_batches: Sequence[np.ndarray], bytes_per_token: float,
             nll_fn: Callable | None = None, put_batch: Callable | None = None, extras: bool = False) -> dict:
    """Bits/byte over the validation windows with the standard error of the mean over windows.

    `put_batch` places a process's rows on the mesh (see train.Placement); a batch is padded to a
    multiple of the local batch shards and the padding rows are dropped from the statistics.
    `extras`: also the objective's `eval_extras` (if it has any) under result["extras"].
    """
    objective = objectives.of(cfg)
    nll_fn = nll_fn or make_nll_fn(cfg)
    rng = jax.random.key(cfg.eval.seed)
    local_shards = max(1, jax.local_device_count()) if put_batch else 1
    per_seq, extra_values = [], {}
    extras_fn = make_extras_fn(cfg) if extras and objective.eval_extras is not None else None
    for i, tokens_BL in enumerate(progress.track(val_batches, "eval", unit="batch", leave=False)):
        rows = len(tokens_BL)
        padded = _pad_rows(np.asarray(tokens_BL), local_shards)
        placed = put_batch(padded) if put_batch else padded
        nll = np.asarray(nll_fn(params, placed, jax.random.fold_in(rng, i)))
        per_seq.append(nll.reshape(jax.process_count(), -1)[:, :rows].reshape(-1))
        if extras_fn is not None:  # the same rng as nll: the same draws for a stochastic objective
            for name, value in extras_fn(params, placed, jax.random.fold_in(rng, i)).items():
                value = np.asarray(value)
                value = value.reshape(jax.process_count(), -1, *value.shape[1:])[:, :rows]
                extra_values.setdefault(name, []).append(value.reshape(-1, *value.shape[2:]))
    nll_N = np.concatenate(per_seq)
    tokens_per_window = val_batches[0].shape[1]
    per_token_N = nll_N / tokens_per_window
    to_bpb = 1.0 / (LN2 * bytes_per_token)
    stderr = (float(per_token_N.std(ddof=1) / math.sqrt(len(per_token_N))) if len(per_token_N) > 1
              else float("nan"))
    result = {
        "objective": cfg.objective.name,
        "bpb": float(per_token_N.mean() * to_bpb),
        "bpb_stderr": stderr * to_bpb,
        "nll_per_token": float(per_token_N.mean()),
        "kind": objective.yardstick,
        "windows": int(len(per_token_N)),
        "tokens": int(len(per_token_N) * tokens_per_window),
    }
    if extra_values:
        result["extras"] = {name: summarize_extra(name, np.concatenate(v), tokens_per_window, to_bpb)
                            for name, v in extra_values.items()}
    return result


def make_extras_fn(cfg: Config) -> Callable[[Any, Any, jax.Array], dict]:
    """Jitted (params, tokens [B, L], rng) -> the objective's eval_extras."""
    objective = objectives.of(cfg)
    return jax.jit(lambda params, tokens_BL, rng: objective.eval_extras(params, {"tokens": tokens_BL}, rng,
                                                                        cfg))


def summarize_extra(name: str, value_N: np.ndarray, tokens_per_window: int, to_bpb: float) -> dict:
    """Mean and standard error over windows of one eval extra ([N] or [N, L]: per entry); an `_nll`
    (nats per window) also in bits/byte."""
    count = len(value_N)
    stderr = (value_N.std(axis=0, ddof=1) / math.sqrt(count) if count > 1
              else np.full(value_N.shape[1:], np.nan))
    if value_N.ndim > 1:
        return {"mean": value_N.mean(axis=0).tolist(), "stderr": np.asarray(stderr).tolist()}
    out = {"mean": float(value_N.mean()), "stderr": float(stderr)}
    if name.endswith("_nll"):
        out.update(bpb=float(value_N.mean() / tokens_per_window * to_bpb),
                   bpb_stderr=float(stderr / tokens_per_window * to_bpb))
    return out
