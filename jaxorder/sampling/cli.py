"""Glue of ``jaxorder sample``: load a run, build the inputs, sample, decode."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxorder.config import Config, ConfigError

# Samplers available per objective; the first is the default. Any-order runs name the generation order.
DIFFUSION_SAMPLERS = ("confidence", "ancestral", "margin", "entropy", "threshold")
ORDER_SAMPLERS = ("l2r", "r2l", "random", "greedy")
AVAILABLE = {"mdm": DIFFUSION_SAMPLERS, "bd3": DIFFUSION_SAMPLERS, "l2r": ("ar",), "r2l": ("ar",),
             "ao_ar": ORDER_SAMPLERS, "latent_order": ORDER_SAMPLERS}
AR_OBJECTIVES = ("l2r", "r2l")
ANY_ORDER_OBJECTIVES = ("ao_ar", "latent_order")


def check_objective(objective: str) -> None:
    if objective not in AVAILABLE:
        raise ConfigError(f"no sampler for objective '{objective}'; runs of {', '.join(AVAILABLE)} can be sampled")


def resolve_sampler(objective: str, sampler: str | None) -> str:
    """The sampler name for a run of `objective` (None: its default)."""
    check_objective(objective)
    if sampler is None:
        return AVAILABLE[objective][0]
    if sampler not in AVAILABLE[objective]:
        raise ConfigError(f"unknown sampler '{sampler}'; for {objective} runs use one of "
                          f"{', '.join(AVAILABLE[objective])}")
    return sampler


def run_tokenizer(cfg: Config) -> Any:
    """The run's tokenizer (the byte tokenizer needs no data; others are rebuilt from the data)."""
    if cfg.data.tokenizer == "byte":
        from jaxorder.data import ByteTokenizer
        return ByteTokenizer()
    from jaxorder.data import make_data
    return make_data(cfg.data).tokenizer


def sample_run(run_dir: str | Path, *, sampler: str | None = None, steps: int = 64, num_samples: int = 1,
               seed: int = 0, prompt: str | None = None, template: str | None = None, length: int | None = None,
               temperature: float = 1.0, threshold: float = 0.9, block_length: int = 0,
               noise: str = "high", fused: bool = False, top_k: int = 0, top_p: float = 1.0,
               stop_at_eos: bool = True, warmup: bool = False) -> dict:
    """Samples ``num_samples`` sequences from a run's newest checkpoint; returns a JSON-able dict.

    `sampler` None = the objective's default (mdm/bd3: confidence; l2r/r2l: ar; ao_ar/latent_order:
    l2r, the generation order). AR runs use temperature/top_k/top_p/stop_at_eos/noise and generate
    up to `length` tokens incl. the prompt (r2l: the prompt is the end of the text); any-order runs
    use temperature/top_k/top_p/noise and fill a prompt's rest or a template's masks in the order
    named by the sampler; mdm and bd3 runs use the rest (bd3: no block_length, no fused). ``seconds`` includes
    compilation unless `warmup`: then the sampler runs once untimed first (same inputs, so the
    same samples) and ``seconds`` is the steady-state time."""
    from jaxorder import config as config_lib
    from jaxorder.evaluation.runs import load_params

    run_dir = Path(run_dir)
    if (run_dir / "config.yaml").is_file():  # fail fast, before restoring a checkpoint
        resolve_sampler(config_lib.load(run_dir / "config.yaml").objective.name, sampler)
    if num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {num_samples}")
    cfg, params, step = load_params(run_dir)
    sampler = resolve_sampler(cfg.objective.name, sampler)
    if cfg.objective.name in AR_OBJECTIVES:
        return _sample_ar(run_dir, cfg, params, step, num_samples=num_samples, seed=seed, prompt=prompt,
                          template=template, length=length, temperature=temperature, top_k=top_k, top_p=top_p,
                          stop_at_eos=stop_at_eos, noise=noise, warmup=warmup)
    if cfg.objective.name in ANY_ORDER_OBJECTIVES:
        return _sample_any_order(run_dir, cfg, params, step, order=sampler, num_samples=num_samples, seed=seed,
                                 prompt=prompt, template=template, length=length, temperature=temperature,
                                 top_k=top_k, top_p=top_p, noise=noise, warmup=warmup)
    return _sample_mdm(run_dir, cfg, params, step, sampler=sampler, steps=steps, num_samples=num_samples, seed=seed,
                       prompt=prompt, template=template, length=length, temperature=temperature,
                       threshold=threshold, block_length=block_length, noise=noise, fused=fused, warmup=warmup)


def _timed(run, warmup: bool) -> tuple[Any, float]:
    """(run(), seconds); with `warmup` a first untimed call compiles (run must return host values)."""
    if warmup:
        run()
    started = time.perf_counter()
    out = run()
    return out, time.perf_counter() - started


def _sample_ar(run_dir: Path, cfg: Config, params, step: int, *, num_samples: int, seed: int, prompt: str | None,
               template: str | None, length: int | None, temperature: float, top_k: int, top_p: float,
               stop_at_eos: bool, noise: str, warmup: bool) -> dict:
    import jax

    from jaxorder.sampling.ar import ARConfig, generate

    direction = cfg.objective.name
    if template is not None:
        raise ConfigError(f"--template (infilling) needs an mdm, bd3, ao_ar or latent_order run; {direction} runs "
                          f"take --prompt "
                          f"({'a suffix: generation runs right to left' if direction == 'r2l' else 'a prefix'})")
    ac = ARConfig(temperature=temperature, top_k=top_k, top_p=top_p, stop_at_eos=stop_at_eos, noise=noise)
    ac.validate()
    length = cfg.data.seq_len if length is None else length
    if length > cfg.model.max_len:
        raise ConfigError(f"--length {length} is more than the model's max_len={cfg.model.max_len}")
    tokenizer = run_tokenizer(cfg)
    ids = np.asarray(tokenizer.encode(prompt), np.int32) if prompt else np.zeros(0, np.int32)
    if len(ids) >= length:
        raise ConfigError(f"the prompt is {len(ids)} tokens, leaving nothing to generate in --length {length}; "
                          f"use a longer --length")
    out, seconds = _timed(lambda: generate(params, cfg, [ids] * num_samples, length - len(ids),
                                           jax.random.key(seed), ac, direction), warmup)
    return {
        "run": run_dir.name, "step": step, "objective": direction, "sampler": "ar",
        "steps": length - len(ids), "steps_taken": out["steps"], "forward_passes": out["nfe"],
        "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed, "length": length,
        "samples": [{"text": tokenizer.decode(t), "tokens": [int(x) for x in t], "logprob": float(lp),
                     "stopped_at_eos": bool(e)}
                    for t, lp, e in zip(out["tokens"], out["logprob"], out["eos"])],
        "generated_tokens": int(out["generated"].sum()), "seconds": round(seconds, 3),
        "seconds_include_compilation": not warmup, "complete": True,
    }


def _sample_any_order(run_dir: Path, cfg: Config, params, step: int, *, order: str, num_samples: int, seed: int,
                      prompt: str | None, template: str | None, length: int | None, temperature: float, top_k: int,
                      top_p: float, noise: str, warmup: bool) -> dict:
    import jax

    from jaxorder.sampling.any_order import AnyOrderConfig, sample
    from jaxorder.sampling.prompts import build_inputs

    oc = AnyOrderConfig(order=order, temperature=temperature, top_k=top_k, top_p=top_p, noise=noise)
    oc.validate()
    tokenizer = run_tokenizer(cfg)
    row = build_inputs(tokenizer, length, cfg.data.seq_len, cfg.model.max_len, prompt, template)
    tokens_BL = np.tile(row, (num_samples, 1))
    out, seconds = _timed(lambda: jax.device_get(sample(params, cfg, tokens_BL, jax.random.key(seed), oc)), warmup)
    return {
        "run": run_dir.name, "step": step, "objective": cfg.objective.name, "sampler": order,
        "steps": int(out["steps"]), "steps_taken": int(out["steps"]), "forward_passes": int(out["nfe"]),
        "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed, "length": int(len(row)),
        "samples": [{"text": tokenizer.decode(t), "tokens": [int(x) for x in t], "logprob": float(lp),
                     "order": [int(x) for x in o]}
                    for t, lp, o in zip(out["tokens"], out["logprob"], out["order"])],
        "generated_tokens": int((row == tokenizer.mask_id).sum()) * num_samples, "seconds": round(seconds, 3),
        "seconds_include_compilation": not warmup, "complete": True,
    }


def _sample_mdm(run_dir: Path, cfg: Config, params, step: int, *, sampler: str, steps: int, num_samples: int,
                seed: int, prompt: str | None, template: str | None, length: int | None, temperature: float,
                threshold: float, block_length: int, noise: str, fused: bool, warmup: bool) -> dict:
    import jax

    from jaxorder.sampling import bd3, mdm
    from jaxorder.sampling.prompts import build_inputs

    sample = bd3.sample if cfg.objective.name == "bd3" else mdm.sample
    sc = mdm.SamplerConfig(name=sampler, steps=steps, temperature=temperature, threshold=threshold,
                       block_length=block_length, noise=noise, fused=fused)
    sc.validate()
    tokenizer = run_tokenizer(cfg)
    row = build_inputs(tokenizer, length, cfg.data.seq_len, cfg.model.max_len, prompt, template)
    tokens_BL = np.tile(row, (num_samples, 1))
    out, seconds = _timed(lambda: jax.device_get(sample(params, cfg, tokens_BL, jax.random.key(seed), sc)), warmup)
    generated = int((row == tokenizer.mask_id).sum()) * num_samples
    return {
        "run": run_dir.name, "step": step, "objective": cfg.objective.name, "sampler": sampler,
        "steps": steps, "steps_taken": int(out["steps"]), "forward_passes": int(out["nfe"]),
        "temperature": temperature, "seed": seed, "length": int(len(row)),
        "block_length": block_length, "fused": fused,
        "samples": [{"text": tokenizer.decode(t), "tokens": [int(x) for x in t], "logprob": float(lp)}
                    for t, lp in zip(out["tokens"], out["logprob"])],
        "generated_tokens": generated, "seconds": round(seconds, 3),
        "seconds_include_compilation": not warmup, "complete": bool(np.all(out["complete"])),
    }
