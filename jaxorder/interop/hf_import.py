"""`model.init_from: hf:PATH`: start a run from a local Hugging Face Llama-family checkpoint.

Any objective may start from it (AR-to-diffusion adaptation: an mdm run from an l2r or Llama
model, as DiffuLLaMA and Dream do): the network is the same, only its inputs and mask differ.
PATH is a directory with `config.json` and `model.safetensors` (or the sharded
`model.safetensors.index.json`) whose tensors have Llama's names (`hf_weights`); a tied head
(no `lm_head.weight`) is read from the input embedding. The checkpoint must match the model's
shape; the first tensor that does not is named in a one-line ConfigError. Only the weights are
read (never pickles). Any-order models keep their fresh `target_embed` when the checkpoint has none.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxorder.config import Config, ConfigError
from jaxorder.interop.extras import require
from jaxorder.interop.hf_weights import check_shapes, from_hf_state

PREFIX = "hf:"
PURPOSE = "model.init_from=hf:PATH"


def hf_path(init_from: str) -> Path | None:
    """The checkpoint directory of `model.init_from` ('' = none)."""
    if not init_from:
        return None
    if not init_from.startswith(PREFIX):
        raise ConfigError(f"model.init_from='{init_from}' must be hf:PATH (a local Hugging Face model "
                          f"directory) or empty")
    return Path(init_from[len(PREFIX):]).expanduser()


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / s for s in shards]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    raise ConfigError(f"{PREFIX}{path}: no model.safetensors (or model.safetensors.index.json) there; "
                      f"give a Hugging Face model directory saved with safetensors")


def read_hf_state(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint as float32 numpy (bfloat16 ones through torch, if installed)."""
    safetensors = require("safetensors", "hf", PURPOSE)
    state: dict[str, np.ndarray] = {}
    for file in _weight_files(path):
        try:
            with safetensors.safe_open(str(file), framework="numpy") as f:
                for name in f.keys():
                    state[name] = f.get_tensor(name).astype(np.float32)
        except (TypeError, ValueError):  # numpy has no bfloat16: read the file through torch
            require("torch", "hf", PURPOSE)
            with safetensors.safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    state[name] = f.get_tensor(name).float().numpy()
    if "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]  # tied embeddings
    return state


def check_hf_config(path: Path, cfg: Config) -> None:
    """The architecture facts the tensor shapes do not show: RoPE base, activation, norm eps."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"{PREFIX}{path}: no config.json; give a Hugging Face model directory")
    hf = json.loads(config_path.read_text())
    rope = hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    if float(rope) != float(cfg.model.rope_base):
        raise ConfigError(f"{PREFIX}{path}: RoPE base {rope:g} differs from model.rope_base="
                          f"{cfg.model.rope_base:g}; set model.rope_base={rope:g}")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{PREFIX}{path}: hidden_act '{hf['hidden_act']}' is not silu (SwiGLU); "
                          f"jaxorder models are Llama-family")
    scaling = (hf.get("rope_parameters") or {}).get("rope_type", "default")
    if hf.get("rope_scaling") or scaling != "default":
        raise ConfigError(f"{PREFIX}{path}: RoPE scaling ({hf.get('rope_scaling') or scaling}) is not "
                          f"supported; jaxorder uses plain RoPE")


def init_params_from_hf(init_from: str, cfg: Config, like: Any, target_positions: bool) -> Any:
    """Numpy params shaped like `like` (the fresh init, also the source of a missing target_embed)
    from the checkpoint of `init_from` ('hf:PATH')."""
    path = hf_path(init_from)
    if path is None or not path.is_dir():
        raise ConfigError(f"model.init_from: {path} is not a directory; give hf:PATH of a local Hugging Face "
                          f"model directory")
    check_hf_config(path, cfg)
    state = read_hf_state(path)
    biases = [name for name in state if name.endswith(".bias")]
    if biases:  # e.g. Qwen2's q/k/v biases: dropping them would silently change the model
        raise ConfigError(f"{PREFIX}{path}: tensor {biases[0]} is a bias; jaxorder layers have none "
                          f"(Llama-family checkpoints without biases only)")
    check_shapes(state, cfg.model, target_positions, f"{PREFIX}{path}")
    return from_hf_state(state, cfg.model, like)
