"""Decoding traces of the masked-diffusion samplers, the training data of the commit filter
(`jaxorder sample --record-traces PATH`; in Python `sample_and_record` or `record` on a finished
decode).

A trace has one row per (sample, step, position) for every position still masked in the block
being decoded at that step: the sample's index, the step, the step within the block, the
position, the step's prediction there (the token the sampler drew), the token the decode ended
with (``final``), ``label`` = prediction == final, the SCALAR_FEATURES of
``jaxorder.sampling.commit_filter`` [N, S] and the model's final hidden state [N, d].

Recorded by replaying the finished decode: the state before step j is the sample's tokens where
``committed_at`` < j (and the fixed tokens), MASK elsewhere; the block decoded at step j is the
lowest one with a masked position in any row (the loop leaves a block only once every row has
filled it), and the step within the block counts from the first step spent on it. Each replayed
step is one pass (``commit_filter.hidden_and_log_probs``) whose prediction is drawn with that step's
key exactly as the sampler drew it. The sampler's loop is not touched, so recording cannot change
the samples; it costs one more pass per step. Refused where the state is not a function of
``committed_at`` (``--remask``) or the sampler's passes were approximate (``--approx-cache``).

File: one .npz (numpy, no pickle) with the columns above and ``header``, a JSON string (format,
sampler and its settings, length, samples, rows, label rate, feature names, hidden size, and what
the caller adds: run, step, seed).
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from jaxorder.config import Config, ConfigError
from jaxorder.objectives.common import special_ids
from jaxorder.sampling.base import Sampler, SamplerOptions, resolve, sample
from jaxorder.sampling.commit_filter import SCALAR_FEATURES, end_ids, hidden_and_log_probs, scalar_features
from jaxorder.sampling.mdm_steps import block_schedule, draw, step_key

TRACE_FORMAT = 1
COLUMNS = ("sample", "step", "step_in_block", "position", "prediction", "final", "label", "scalars", "hidden")


def check_recordable(sampler: Sampler, options: SamplerOptions) -> None:
    """One-line errors for decodes whose traces cannot be replayed."""
    if sampler.family != "masked":
        raise ConfigError(f"--record-traces replays masked-diffusion (mdm) decodes; the {sampler.name} "
                          f"sampler decodes {sampler.family} runs")
    if options.approx_cache != "none" or options.remask > 0:
        what = "--approx-cache" if options.approx_cache != "none" else "--remask"
        raise ConfigError(f"--record-traces replays the decode with full passes from its commit order; "
                          f"drop {what}")


@functools.lru_cache(maxsize=8)
def _step_fn(cfg: Config, draw_options: SamplerOptions):
    """jit(params, x, masked, generated, in_block, step in block, budget, step key) -> (prediction,
    scalar features, hidden) of one replayed step."""
    ends = end_ids(cfg)

    def step(params, x_BL, masked_BL, generated_BL, in_block_L, j, budget, step_key):
        hidden_BLd, logp_BLV = hidden_and_log_probs(params, x_BL, cfg)
        tok_BL = draw(logp_BLV, step_key, draw_options)
        return tok_BL, scalar_features(logp_BLV, tok_BL, masked_BL, generated_BL, in_block_L, j, budget,
                                       ends), hidden_BLd

    return jax.jit(step)


def record(params, cfg: Config, tokens_BL, out: Mapping[str, Any], key: jax.Array,
           options: SamplerOptions) -> dict[str, np.ndarray]:
    """The trace columns of a finished decode ``out`` of the rows ``tokens_BL`` with ``key`` (see the
    module docstring)."""
    tokens = np.asarray(tokens_BL, np.int32)
    final, at = np.asarray(out["tokens"]), np.asarray(out["committed_at"])
    if not np.all(np.asarray(out["complete"])):
        raise ConfigError("the decode left masks; traces need complete rows")
    B, L = tokens.shape
    mask_id = special_ids(cfg.model).mask
    generated = tokens == mask_id
    start = int(np.argmax(generated.any(axis=0))) if generated.any() else 0
    block_np, budget_np = block_schedule(L, options.steps, options.block_length, start)
    step_fn = _step_fn(cfg, SamplerOptions(temperature=options.temperature, noise=options.noise))
    parts: dict[str, list] = {name: [] for name in COLUMNS}
    block, first = -1, 0
    for j in range(int(out["steps"])):
        masked = generated & (at >= j)
        if not masked.any():
            break
        b = int(np.broadcast_to(block_np, masked.shape)[masked].min())
        block, first = (b, j) if b != block else (block, first)
        in_block = block_np == b
        x = np.where(masked, mask_id, final).astype(np.int32)
        tok, scalars, hidden = jax.device_get(step_fn(params, x, masked, generated, in_block, j - first,
                                                      int(budget_np[b]), step_key(key, j, options)))
        rows, cols = np.nonzero(masked & in_block[None, :])
        for name, values in (("sample", rows), ("step", np.full(len(rows), j)),
                             ("step_in_block", np.full(len(rows), j - first)), ("position", cols),
                             ("prediction", tok[rows, cols]), ("final", final[rows, cols]),
                             ("scalars", scalars[rows, cols]), ("hidden", hidden[rows, cols])):
            parts[name].append(values)
    parts["label"] = [p == f for p, f in zip(parts["prediction"], parts["final"])]
    d = cfg.model.d_model
    empty = {"scalars": (0, len(SCALAR_FEATURES)), "hidden": (0, d)}
    dtypes = {"scalars": np.float32, "hidden": np.float32, "label": bool}
    return {name: (np.concatenate(parts[name]) if parts[name] else np.zeros(empty.get(name, (0,))))
            .astype(dtypes.get(name, np.int32)) for name in COLUMNS}


def sample_and_record(params, cfg: Config, tokens_BL, key: jax.Array, sampler: str | Sampler | None = None,
                      options: SamplerOptions = SamplerOptions()) -> tuple[dict, dict[str, np.ndarray]]:
    """(the sampler's output, its trace): `sampling.sample` and then `record`."""
    chosen = sampler if isinstance(sampler, Sampler) else resolve(cfg, sampler)
    check_recordable(chosen, options)
    out = jax.device_get(sample(params, cfg, tokens_BL, key, chosen, options))
    return out, record(params, cfg, tokens_BL, out, key, options)


def trace_header(traces: Mapping[str, np.ndarray], cfg: Config, sampler: str, options: SamplerOptions,
                 length: int, samples: int, **extra: Any) -> dict:
    """The header of a trace file: what was decoded, with which settings (the main ones and every
    one set away from its default), and its size."""
    labels = traces["label"]
    settings = {k: getattr(options, k) for k in ("steps", "temperature", "block_length", "noise")}
    settings.update({f.name: getattr(options, f.name) for f in dataclasses.fields(options)
                     if getattr(options, f.name) != f.default})
    return {"format": TRACE_FORMAT, "sampler": sampler, "options": settings,
            "length": int(length), "samples": int(samples), "rows": int(len(labels)),
            "label_rate": float(labels.mean()) if len(labels) else 0.0,
            "scalar_features": list(SCALAR_FEATURES), "hidden_size": int(cfg.model.d_model), **extra}


def save(path: str | Path, traces: Mapping[str, np.ndarray], header: Mapping[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object: np.savez would append .npz to another suffix
        np.savez(f, header=np.asarray(json.dumps(dict(header))), **{k: traces[k] for k in COLUMNS})
    return path


def load(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """(columns, header) of a trace file; one-line errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no trace file at {path}; record one with `jaxorder sample RUN_DIR "
                          f"--record-traces {path}`")
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            traces = {k: np.asarray(data[k]) for k in COLUMNS}
    except (OSError, KeyError, ValueError) as e:
        raise ConfigError(f"{path} is not a trace file of `jaxorder sample --record-traces` ({e})") from e
    if header.get("format") != TRACE_FORMAT or header.get("scalar_features") != list(SCALAR_FEATURES):
        raise ConfigError(f"{path}: trace format {header.get('format')} with features "
                          f"{header.get('scalar_features')}; this version reads format {TRACE_FORMAT} with "
                          f"{list(SCALAR_FEATURES)}: record the traces again")
    return traces, header
