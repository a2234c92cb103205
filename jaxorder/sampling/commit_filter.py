"""The learned commit filter of masked-diffusion decoding (after Learn2PD and TraceLock): for a
still-masked position of the block being decoded, the probability that the sampler's current
prediction there (the token drawn this step) equals the token the decode ends with.

Features of a position at one step of the uncached mdm loop (`scalar_features`, plus the hidden
state), all computed from that step's single forward pass:

- ``confidence``: p(prediction) at temperature 1; ``margin``: p1 - p2; ``entropy`` (nats) of
  p(. | x_t) (SUBS: MASK has probability 0);
- ``is_end``: 1 when the prediction is EOS or PAD (what the learned sampler's end-of-text stop reads);
- ``filled``: share of the row's generated positions committed so far; ``block_filled``: the same
  within the current block;
- ``progress``: step within the block / the block's step budget;
- ``block_position``: (position - block start) / block length (< 0 or >= 1 outside the block);
- ``hidden``: the model's final hidden state at the position (d_model values, after the final norm).

The filter is an MLP on the standardized features, a linear term plus one hidden ReLU layer of H
units: logit = z w0 + relu(z W1 + b1) w2 + b2 with z = (x - mean) / std (H = 0: logistic regression).

Files (written by `jaxorder train-filter`, ``jaxorder.evaluation.filter_training``): the arrays in
``commit_filter.npz`` (float32: mean, std, w0, w1, b1, w2, b2) and ``commit_filter.yaml`` (format,
feature names, sizes, the npz's file name, the training summary, the traces it was trained on).
`load` reads them with numpy (allow_pickle=False) and yaml.safe_load only: no pickle anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from jaxorder.config import Config, ConfigError
from jaxorder.model import Transformer
from jaxorder.model.transformer import cast_params
from jaxorder.objectives.common import positions_like, special_ids, subs_log_probs
from jaxorder.sampling.mdm_steps import rule_score

SCALAR_FEATURES = ("confidence", "margin", "entropy", "is_end", "filled", "block_filled", "progress",
                   "block_position")
HIDDEN = "hidden"
FEATURES = (*SCALAR_FEATURES, HIDDEN)
FILTER_FILE = "commit_filter.yaml"  # in the run directory, beside it commit_filter.npz
FORMAT = 1
ARRAYS = ("mean", "std", "w0", "w1", "b1", "w2", "b2")
TRAIN_HINT = "run `jaxorder train-filter RUN_DIR TRACES` first (or give --commit-filter PATH)"


@dataclass(frozen=True, eq=False)
class CommitFilter:
    """A loaded filter: the feature names it reads (in FEATURES order), its arrays, its YAML."""

    features: tuple[str, ...]
    arrays: Mapping[str, np.ndarray]
    meta: Mapping[str, Any]

    @property
    def hidden_size(self) -> int:
        """d_model of the run whose hidden states it reads (0 when it reads none)."""
        return int(self.meta.get("hidden_size", 0)) if HIDDEN in self.features else 0


def hidden_and_log_probs(params, x_BL: jnp.ndarray, cfg: Config) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(final hidden states [B, L, d], log p(. | x_t) [B, L, V] with SUBS) from one bidirectional
    pass: the log-probs are computed as objectives.mdm.masked_log_probs computes them."""
    logits_BLV, state = Transformer(cfg.model).apply(
        {"params": cast_params(params, cfg.model)}, x_BL, positions_like(x_BL), "bidirectional",
        capture_intermediates=lambda mdl, method: mdl.name == "final_norm", mutable=["intermediates"])
    hidden_BLd = state["intermediates"]["final_norm"]["__call__"][0].astype(jnp.float32)
    return hidden_BLd, subs_log_probs(logits_BLV, special_ids(cfg.model).mask)


def scalar_features(logp_BLV: jnp.ndarray, tok_BL: jnp.ndarray, masked_BL: jnp.ndarray,
                    generated_BL: jnp.ndarray, in_block_L: jnp.ndarray, step_in_block, block_budget,
                    end_ids: tuple[int, ...]) -> jnp.ndarray:
    """The SCALAR_FEATURES [B, L, S] of every position at one step: ``tok_BL`` the step's predictions,
    ``masked_BL`` the positions still masked before the step's commits, ``generated_BL`` those masked
    at the start, ``in_block_L`` the current block, ``step_in_block`` its 0-based step."""
    B, L = tok_BL.shape
    lp_tok_BL = jnp.take_along_axis(logp_BLV, tok_BL[..., None], axis=-1)[..., 0]
    end_BL = jnp.isin(tok_BL, jnp.asarray(end_ids, tok_BL.dtype))
    in_BL = jnp.broadcast_to(in_block_L[None, :], (B, L))

    def share_filled(region_BL):  # committed share of the generated positions in region_BL, [B, 1]
        total_B = jnp.maximum(jnp.sum(generated_BL & region_BL, axis=1), 1)
        return (1.0 - jnp.sum(masked_BL & region_BL, axis=1) / total_B)[:, None]

    start = jnp.argmax(in_block_L)  # the block is one contiguous run of positions
    length = jnp.maximum(jnp.sum(in_block_L), 1)
    columns = {
        "confidence": jnp.exp(lp_tok_BL),
        "margin": rule_score(logp_BLV, lp_tok_BL, "margin"),
        "entropy": -rule_score(logp_BLV, lp_tok_BL, "entropy"),
        "is_end": end_BL.astype(jnp.float32),
        "filled": share_filled(jnp.ones_like(in_BL)),
        "block_filled": share_filled(in_BL),
        "progress": jnp.asarray(step_in_block, jnp.float32) / jnp.maximum(block_budget, 1),
        "block_position": ((jnp.arange(L) - start) / length)[None, :],
    }
    return jnp.stack([jnp.broadcast_to(jnp.asarray(columns[name], jnp.float32), (B, L))
                      for name in SCALAR_FEATURES], axis=-1)


def feature_matrix(features: tuple[str, ...], scalars_NS: jnp.ndarray, hidden_Nd: jnp.ndarray | None):
    """The filter's input [..., F]: the named scalar columns, then the hidden state if it reads it."""
    idx = [SCALAR_FEATURES.index(name) for name in features if name != HIDDEN]
    parts = [scalars_NS[..., idx]]
    if HIDDEN in features:
        parts.append(hidden_Nd.astype(scalars_NS.dtype))
    return jnp.concatenate(parts, axis=-1)


def feature_width(features: tuple[str, ...], hidden_size: int) -> int:
    return sum(1 for name in features if name != HIDDEN) + (hidden_size if HIDDEN in features else 0)


def filter_logits(arrays: Mapping[str, Any], x_NF: jnp.ndarray) -> jnp.ndarray:
    """The filter's logit [...] of features [..., F] (the module docstring's MLP)."""
    z_NF = (x_NF - arrays["mean"]) / arrays["std"]
    hidden_NH = jax.nn.relu(z_NF @ arrays["w1"] + arrays["b1"])
    return z_NF @ arrays["w0"] + hidden_NH @ arrays["w2"] + arrays["b2"]


def init_arrays(key: jax.Array, width: int, hidden_units: int, mean_F: np.ndarray, std_F: np.ndarray,
                base_rate: float) -> dict[str, jnp.ndarray]:
    """Initial arrays: He-scaled W1, small w2, w0 = 0 and b2 at the logit of the base rate."""
    k1, k2 = jax.random.split(key)
    rate = min(max(base_rate, 1e-4), 1.0 - 1e-4)
    return {"mean": jnp.asarray(mean_F, jnp.float32), "std": jnp.asarray(std_F, jnp.float32),
            "w0": jnp.zeros((width,), jnp.float32),
            "w1": jax.random.normal(k1, (width, hidden_units)) * np.sqrt(2.0 / max(width, 1)),
            "b1": jnp.zeros((hidden_units,), jnp.float32),
            "w2": jax.random.normal(k2, (hidden_units,)) * (0.1 / np.sqrt(max(hidden_units, 1))),
            "b2": jnp.asarray(np.log(rate / (1.0 - rate)), jnp.float32)}


def standardization(x_NF: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [F], std [F]) of the training features; a constant column gets std 1."""
    mean, std = x_NF.mean(axis=0), x_NF.std(axis=0)
    return mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


def save(path: str | Path, arrays: Mapping[str, Any], meta: Mapping[str, Any]) -> Path:
    """Writes PATH (.yaml: meta plus format and the npz's name) and PATH with suffix .npz (arrays)."""
    path = Path(path)
    npz = path.with_suffix(".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(npz, "wb") as f:
        np.savez(f, **{k: np.asarray(arrays[k], np.float32) for k in ARRAYS})
    path.write_text(yaml.safe_dump({"format": FORMAT, "weights": npz.name, **meta}, sort_keys=False))
    return path


def load(path: str | Path) -> CommitFilter:
    """The filter at PATH (its .yaml, or a directory holding commit_filter.yaml); one-line errors."""
    path = Path(path)
    if path.is_dir():
        path = path / FILTER_FILE
    if not path.is_file():
        raise ConfigError(f"no commit filter at {path}; {TRAIN_HINT}")
    try:
        meta = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not a commit filter (YAML error: {str(e).splitlines()[0]})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "weights" not in meta:
        raise ConfigError(f"{path} is not a commit filter of format {FORMAT}; {TRAIN_HINT}")
    features = tuple(meta.get("features") or ())
    unknown = [f for f in features if f not in FEATURES]
    if unknown or not features:
        raise ConfigError(f"{path}: unknown filter features {unknown or '(none)'}; known: "
                          f"{', '.join(FEATURES)}")
    npz = path.parent / str(meta["weights"])
    try:
        with np.load(npz, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k], np.float32) for k in ARRAYS}
    except (OSError, KeyError, ValueError) as e:
        raise ConfigError(f"cannot read the commit filter's weights {npz} ({e}); {TRAIN_HINT}") from e
    filt = CommitFilter(tuple(f for f in FEATURES if f in features), arrays, meta)
    width, units = feature_width(filt.features, filt.hidden_size), int(meta.get("hidden_units", -1))
    shapes = {"mean": (width,), "std": (width,), "w0": (width,), "w1": (width, units), "b1": (units,),
              "w2": (units,), "b2": ()}
    bad = [k for k in ARRAYS if arrays[k].shape != shapes[k]]
    if bad:
        raise ConfigError(f"{npz}: array {bad[0]} has shape {arrays[bad[0]].shape}, the YAML says "
                          f"{shapes[bad[0]]}; re-run `jaxorder train-filter`")
    return filt


def end_ids(cfg: Config) -> tuple[int, int]:
    """The ids the end-of-text stop fills with: EOS and PAD."""
    ids = special_ids(cfg.model)
    return ids.eos, ids.pad
