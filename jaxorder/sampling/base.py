"""The sampler contract: named `Sampler` values, one options object, one build/compile/sample lifecycle.

A sampler decodes runs of one sampling family (an objective's `Objective.sampling`: "ar",
"masked", "block", "any_order"). Input: tokens [B, L] with MASK at the positions to generate;
every other token is fixed. A sampler file defines

- `prepare(cfg, tokens_BL, options) -> Prepared`: checks the inputs and options against the run
  (one-line ConfigErrors) and splits them into `static` (what the compiled loop is specialized on,
  hashable) and `args` (traced arrays);
- `build(cfg, static) -> run(params, key, *args) -> dict`: the loop, a pure function for jax.jit;

A sampler that reads a second run (the draft of speculative decoding) names the option fields that
hold its run directory in `companions`; loading runs is above this layer (evaluation.runs loads
them with load_params and passes them to `sample(..., companions={field: Companion})`), and such a
sampler's prepare takes them as a fourth argument: `prepare(cfg, tokens_BL, options, companions)`
(their params go into `args`, their config into `static`);

and ends with `register(Sampler(...))`. `sample` and `compile_sample` below are the only places
that compile: one jit per (sampler, cfg, static), cached. Every sampler returns at least
``tokens`` [B, L] int32 (reading order, no MASK left; PAD where an AR row stopped at EOS),
``logprob`` [B] (log p of the generated tokens under the model at temperature 1), ``nfe`` (network
calls) and ``steps``; samplers that choose an order (masked, block, any-order) also return
``committed_at`` [B, L] int32, the step (any-order: the index in the generation order) at which
each position was committed, -1 for fixed tokens.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping

import jax
import numpy as np

from jaxorder import objectives
from jaxorder.config import Config, ConfigError
from jaxorder.registry import SAMPLERS
from jaxorder.sampling.noise import PRECISIONS

APPROX_CACHES = ("none", "prefix", "dual", "free", "chunked")  # jaxorder.sampling.mdm_cached


@dataclass(frozen=True)
class SamplerOptions:
    """Every sampler setting, in one typed object; each sampler reads the subset it declares."""

    steps: int = 64  # denoising steps over the sequence, i.e. forward passes at most (masked, block)
    temperature: float = 1.0  # 0 = argmax
    top_k: int = 0  # keep the k most likely tokens (0 = off)
    top_p: float = 1.0  # nucleus: the smallest set with probability >= p (1 = off)
    threshold: float = 0.9  # threshold rule: commit every masked position with confidence >= this
    factor: float = 1.0  # factor rule: commit the n most confident with (n + 1)(1 - p_n) < factor
    prophet: float = 0.0  # masked: early-commit logit gap (x1.5, x1, x0.5 by thirds of a block; 0: off)
    approx_cache: str = "none"  # masked: approximate KV cache: none | prefix | dual | free | chunked
    cache_refresh: int = 0  # approx_cache: recompute every key/value each this many steps (0 = per block)
    chunk_length: int = 256  # approx_cache chunked: prompt tokens per cached chunk
    chunks: int = 4  # approx_cache chunked: chunks attended besides the most recent one (top-K by relevance)
    block_length: int = 0  # masked runs: semi-autoregressive blocks of this many positions (0 = one block)
    noise: str = "high"  # Gumbel noise: high (float64-accurate tails) | float32 (naive 24-bit)
    fused: bool = False  # masked runs: the commitment step through pallas_kernels.mdm_sample_step
    interpret: bool | None = None  # fused path: None = by backend (CPU: reference), True = Pallas interpret
    cache: bool = True  # KV cache; False = the uncached reference (recompute every step)
    stop_at_eos: bool = True  # ar: a row stops at EOS
    collect_logits: bool = False  # ar, any_order: also return the logits that chose each token
    draft: str = ""  # ar speculative: the draft run's directory (a smaller l2r/r2l run, same tokenizer)
    draft_length: int = 4  # speculative samplers: tokens (ar) / positions (any-order) drafted per round

    def validate(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if not self.temperature >= 0 or not math.isfinite(self.temperature):
            raise ConfigError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold must be in (0, 1], got {self.threshold}")
        if not self.factor > 0 or not math.isfinite(self.factor):
            raise ConfigError(f"factor must be a finite number > 0, got {self.factor}")
        if not self.prophet >= 0:
            raise ConfigError(f"prophet must be >= 0 (0: off, inf: never commits early), got {self.prophet}")
        if self.approx_cache not in APPROX_CACHES:
            raise ConfigError(f"approx_cache must be one of {', '.join(APPROX_CACHES)}, got "
                              f"'{self.approx_cache}'")
        if self.cache_refresh < 0:
            raise ConfigError(f"cache_refresh must be >= 0 (0 = once per block), got {self.cache_refresh}")
        if self.chunk_length < 1 or self.chunks < 1:
            raise ConfigError(f"chunk_length and chunks must be >= 1, got {self.chunk_length} and "
                              f"{self.chunks}")
        if self.block_length < 0:
            raise ConfigError(f"block_length must be >= 0 (0 = no blocks), got {self.block_length}")
        if self.draft_length < 1:
            raise ConfigError(f"draft_length must be >= 1, got {self.draft_length}")
        if self.noise not in PRECISIONS:
            raise ConfigError(f"noise must be one of {', '.join(PRECISIONS)}, got '{self.noise}'")


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(SamplerOptions))
_OPTION_TYPES = {f.name: f.type for f in dataclasses.fields(SamplerOptions)}


@dataclass(frozen=True)
class Prepared:
    static: Hashable  # what the compiled loop is specialized on (part of the compile-cache key)
    args: tuple  # traced inputs after (params, key)


@dataclass(frozen=True, eq=False)
class Companion:
    """A second run a sampler reads (e.g. the draft of speculative decoding), loaded by the caller."""

    cfg: Config
    params: Any
    name: str = ""  # the run directory's name, for messages


@dataclass(frozen=True)
class Sampler:
    name: str
    family: str  # the Objective.sampling value of the runs it decodes
    options: tuple[str, ...]  # the SamplerOptions fields it reads
    prepare: Callable[[Config, np.ndarray, SamplerOptions], Prepared]
    build: Callable[[Config, Hashable], Callable[..., dict]]
    description: str = ""
    companions: tuple[str, ...] = ()  # option fields naming run directories the caller loads (Companion)

    @property
    def key(self) -> str:
        """Registry key: names are unique within a family (mdm and bd3 runs both have 'confidence')."""
        return f"{self.family}:{self.name}"


def sampler_names() -> tuple[str, ...]:
    """Every registered sampler name (a name may serve several families)."""
    return tuple(dict.fromkeys(s.name for s in SAMPLERS.values()))


def register(sampler: Sampler) -> Sampler:
    unknown = set(sampler.options) - set(OPTION_NAMES)
    if set(sampler.companions) - set(sampler.options):
        raise ValueError(f"sampler '{sampler.name}': companions must be options it reads")
    if unknown:
        raise ValueError(f"sampler '{sampler.name}' declares unknown options {sorted(unknown)}")
    return SAMPLERS.register(sampler)


def all_samplers() -> tuple[Sampler, ...]:
    return SAMPLERS.values()


def for_config(cfg: Config) -> tuple[Sampler, ...]:
    """The samplers that decode runs of cfg's objective, its default first."""
    objective = objectives.of(cfg)
    found = [s for s in SAMPLERS.values() if s.family == objective.sampling]
    return tuple(sorted(found, key=lambda s: s.name != objective.default_sampler))


def resolve(cfg: Config, name: str | None) -> Sampler:
    """The sampler `name` for runs of cfg's objective (None: its default); one-line errors."""
    available = for_config(cfg)
    if not available:
        raise ConfigError(f"no sampler decodes {cfg.objective.name} runs")
    if name is None:
        return available[0]
    for sampler in available:
        if sampler.name == name:
            return sampler
    raise ConfigError(f"unknown sampler '{name}'; for {cfg.objective.name} runs use one of "
                      f"{', '.join(s.name for s in available)}")


def _coerce(name: str, value: Any) -> Any:
    typ = _OPTION_TYPES[name]
    if typ == "bool" and isinstance(value, bool):
        return value
    if typ == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if typ == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typ == "str" and isinstance(value, str):
        return value
    if typ == "bool | None" and (value is None or isinstance(value, bool)):
        return value
    raise ConfigError(f"sampler option {name} must be {typ}, got {value!r}")


def _refuse_unread(sampler: Sampler, names: list[str]) -> None:
    """One-line error for options `sampler` does not read (names: those set by the caller)."""
    unread = [k for k in names if k not in sampler.options]
    if unread:
        raise ConfigError(f"the {sampler.name} sampler does not take '{unread[0]}'; it takes: "
                          f"{', '.join(sampler.options) or 'no options'}")


def make_options(sampler: Sampler, given: Mapping[str, Any]) -> SamplerOptions:
    """SamplerOptions from explicitly given settings: unknown or inapplicable names are errors."""
    unknown = [k for k in given if k not in OPTION_NAMES]
    if unknown:
        raise ConfigError(f"unknown sampler option '{unknown[0]}'; options are: {', '.join(OPTION_NAMES)}")
    _refuse_unread(sampler, list(given))
    options = SamplerOptions(**{k: _coerce(k, v) for k, v in given.items()})
    options.validate()
    return options


@functools.lru_cache(maxsize=64)
def _jitted(sampler: Sampler, cfg: Config, static: Hashable):
    return jax.jit(sampler.build(cfg, static))


def _prepared(cfg: Config, tokens_BL, sampler: str | Sampler | None, options: SamplerOptions,
              companions: Mapping[str, Companion] | None = None):
    if not isinstance(sampler, Sampler):
        sampler = resolve(cfg, sampler)
    elif sampler.family != objectives.of(cfg).sampling:
        raise ConfigError(f"the {sampler.name} sampler decodes {sampler.family} runs, not "
                          f"{cfg.objective.name}")
    options.validate()
    default = SamplerOptions()
    _refuse_unread(sampler, [k for k in OPTION_NAMES if getattr(options, k) != getattr(default, k)])
    tokens = np.asarray(tokens_BL, dtype=np.int32)
    if tokens.ndim != 2 or tokens.shape[1] < 1:
        raise ConfigError(f"tokens must be [batch, length >= 1], got shape {tokens.shape}")
    if tokens.shape[1] > cfg.model.max_len:
        raise ConfigError(f"length {tokens.shape[1]} exceeds model.max_len={cfg.model.max_len}")
    if sampler.companions:
        prepared = sampler.prepare(cfg, tokens, options, dict(companions or {}))
    else:
        prepared = sampler.prepare(cfg, tokens, options)
    return _jitted(sampler, cfg, prepared.static), prepared.args


def sample(params, cfg: Config, tokens_BL, key: jax.Array, sampler: str | Sampler | None = None,
           options: SamplerOptions = SamplerOptions(),
           companions: Mapping[str, Companion] | None = None) -> dict:
    """Fills every MASK of tokens_BL [B, L] with the named sampler (None: the objective's default);
    `companions`: the loaded runs of the sampler's companion options (e.g. {"draft": Companion})."""
    fn, args = _prepared(cfg, tokens_BL, sampler, options, companions)
    return fn(params, key, *args)


def compile_sample(params, cfg: Config, tokens_BL, key: jax.Array, sampler: str | Sampler | None = None,
                   options: SamplerOptions = SamplerOptions(),
                   companions: Mapping[str, Companion] | None = None) -> Callable[[], dict]:
    """`sample` compiled ahead of time for these inputs: returns run() -> dict (benchmarks)."""
    fn, args = _prepared(cfg, tokens_BL, sampler, options, companions)
    compiled = fn.lower(params, key, *args).compile()
    return lambda: compiled(params, key, *args)
