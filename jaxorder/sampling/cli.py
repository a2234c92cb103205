"""Glue of ``jaxorder sample``: load a run, build the inputs, sample, decode."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxorder.config import Config, ConfigError

# Samplers available per objective (the AR / bd3 / any-order samplers come later).
AVAILABLE = {"mdm": ("ancestral", "confidence", "margin", "entropy", "threshold")}


def check_objective(objective: str) -> None:
    if objective not in AVAILABLE:
        raise ConfigError(f"sampling for objective {objective} is not available yet")


def run_tokenizer(cfg: Config) -> Any:
    """The run's tokenizer (the byte tokenizer needs no data; others are rebuilt from the data)."""
    if cfg.data.tokenizer == "byte":
        from jaxorder.data import ByteTokenizer
        return ByteTokenizer()
    from jaxorder.data import make_data
    return make_data(cfg.data).tokenizer


def sample_run(run_dir: str | Path, *, sampler: str, steps: int, num_samples: int = 1, seed: int = 0,
               prompt: str | None = None, template: str | None = None, length: int | None = None,
               temperature: float = 1.0, threshold: float = 0.9, block_length: int = 0,
               noise: str = "high", fused: bool = False) -> dict:
    """Samples ``num_samples`` sequences from a run's newest checkpoint; returns a JSON-able dict."""
    import jax

    from jaxorder import config as config_lib
    from jaxorder.sampling.mdm import SamplerConfig, sample
    from jaxorder.sampling.prompts import build_inputs
    from jaxorder.train import load_params

    run_dir = Path(run_dir)
    if (run_dir / "config.yaml").is_file():  # fail fast, before restoring a checkpoint
        check_objective(config_lib.load(run_dir / "config.yaml").objective.name)
    if num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {num_samples}")
    if sampler not in AVAILABLE["mdm"]:
        raise ConfigError(f"unknown sampler '{sampler}'; for mdm runs use one of {', '.join(AVAILABLE['mdm'])}")
    sc = SamplerConfig(name=sampler, steps=steps, temperature=temperature, threshold=threshold,
                       block_length=block_length, noise=noise, fused=fused)
    sc.validate()
    cfg, params, step = load_params(run_dir)
    check_objective(cfg.objective.name)
    tokenizer = run_tokenizer(cfg)
    row = build_inputs(tokenizer, length, cfg.data.seq_len, cfg.model.max_len, prompt, template)
    tokens_BL = np.tile(row, (num_samples, 1))
    started = time.perf_counter()
    out = jax.device_get(sample(params, cfg, tokens_BL, jax.random.key(seed), sc))
    seconds = time.perf_counter() - started
    generated = int((row == tokenizer.mask_id).sum()) * num_samples
    return {
        "run": run_dir.name, "step": step, "objective": cfg.objective.name, "sampler": sampler,
        "steps": steps, "steps_taken": int(out["steps"]), "forward_passes": int(out["nfe"]),
        "temperature": temperature, "seed": seed, "length": int(len(row)),
        "block_length": block_length, "fused": fused,
        "samples": [{"text": tokenizer.decode(t), "tokens": [int(x) for x in t], "logprob": float(lp)}
                    for t, lp in zip(out["tokens"], out["logprob"])],
        "generated_tokens": generated, "seconds": round(seconds, 3),  # includes compilation
        "complete": bool(np.all(out["complete"])),
    }
