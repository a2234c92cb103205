"""The sampler contract: named `Sampler` values, one options object (``SamplerOptions``, defined in
``jaxorder.sampling.options``), one build/compile/sample lifecycle.

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
(their params go into `args`, their config into `static`). A sampler that reads a file of the
sampled run (the learned sampler's commit filter) names it in `run_files` as (option field, file
name): an empty option means that file in the run directory, filled in by the caller that knows the
directory (evaluation.runs, `run_file_options`), and prepare reads the file from the path;

and ends with `register(Sampler(...))`. `sample` and `compile_sample` below are the only places
that compile: one jit per (sampler, cfg, static), cached. Every sampler returns at least
``tokens`` [B, L] int32 (reading order, no MASK left; EOS after the first generated EOS unless
``ignore_eos``, ``jaxorder.sampling.eos``),
``logprob`` [B] (log p of the generated tokens under the model at temperature 1), ``nfe`` (network
calls) and ``steps``; samplers that choose an order (masked, block, any-order) also return
``committed_at`` [B, L] int32, the step (any-order: the index in the generation order) at which
each position was committed, -1 for fixed tokens; masked and block samplers also return
``uncertainty`` [B], the summed entropy (nats, temperature 1) of each committed position's
distribution at the step that committed it.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping

import jax
import numpy as np

from jaxorder import objectives
from jaxorder.config import Config, ConfigError, DataConfig
from jaxorder.registry import SAMPLERS
from jaxorder.sampling.options import OPTION_NAMES, OPTION_TYPES, SamplerOptions


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


def tokenizer_of(data: DataConfig) -> tuple:
    """What determines a run's tokenizer: the byte tokenizer is fixed; BPE is learned from the data."""
    if data.tokenizer == "byte":
        return ("byte",)
    return (data.tokenizer, data.bpe_vocab_size, data.source, data.path, data.seed, data.val_fraction)


def check_companion(cfg: Config, companion: Companion | None, length: int, *, role: str, sampler: str,
                    order: str, why: str, hint: str, target: str) -> None:
    """One-line ConfigErrors for a missing or incompatible AR companion run (the guide of `guided`, the
    draft of `speculative`): it must read in `order` and share the sampled run's vocab_size and
    tokenizer, and its model.max_len must fit `length`. `role` is the option (--guide, --draft), `why`
    says why the order, `hint` describes a fitting run, `target` names the sampled run in messages."""
    if companion is None:
        raise ConfigError(f"the {sampler} sampler needs a {role} run: give --{role} RUN_DIR ({hint})")
    ccfg, name = companion.cfg, companion.name or f"the {role} run"
    objective = objectives.of(ccfg)
    if objective.sampling != "ar" or objective.reading_order != order:
        raise ConfigError(f"{role} {name} is a {ccfg.objective.name} run; the {role} must be an {order} run "
                          f"({why})")
    if ccfg.model.vocab_size != cfg.model.vocab_size:
        vocab = cfg.model.vocab_size
        raise ConfigError(f"{role} {name} has vocab_size {ccfg.model.vocab_size}, {target} {vocab}; train "
                          f"the {role} with model.vocab_size={vocab}")
    if tokenizer_of(ccfg.data) != tokenizer_of(cfg.data):
        raise ConfigError(f"{role} {name} has another tokenizer than {target}; train the {role} on the "
                          f"data.tokenizer and data of {target}")
    if length > ccfg.model.max_len:
        raise ConfigError(f"length {length} exceeds the {role}'s model.max_len={ccfg.model.max_len}; use a "
                          f"shorter --length or a {role} trained with a longer max_len")


@dataclass(frozen=True)
class Sampler:
    name: str
    family: str  # the Objective.sampling value of the runs it decodes
    options: tuple[str, ...]  # the SamplerOptions fields it reads
    prepare: Callable[[Config, np.ndarray, SamplerOptions], Prepared]
    build: Callable[[Config, Hashable], Callable[..., dict]]
    description: str = ""
    companions: tuple[str, ...] = ()  # option fields naming run directories the caller loads (Companion)
    # (option field, file name): a file option whose empty value means that file in the sampled run's
    # directory; the caller that knows the directory fills it in (run_file_options)
    run_files: tuple[tuple[str, str], ...] = ()

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
    if {name for name, _ in sampler.run_files} - set(sampler.options):
        raise ValueError(f"sampler '{sampler.name}': run_files must name options it reads")
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


def run_file_options(sampler: Sampler, options: SamplerOptions, run_dir: str) -> SamplerOptions:
    """`options` with each of the sampler's empty `run_files` options set to its file in `run_dir`."""
    given = {name: f"{run_dir}/{file}" for name, file in sampler.run_files if not getattr(options, name)}
    return dataclasses.replace(options, **given) if given else options


def _coerce(name: str, value: Any) -> Any:
    typ = OPTION_TYPES[name]
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
    """`sample` compiled ahead of time for these inputs: returns run() -> dict (benchmarks); the
    compiled executable is `run.compiled` (its HLO: `run.compiled.as_text()`)."""
    fn, args = _prepared(cfg, tokens_BL, sampler, options, companions)
    compiled = fn.lower(params, key, *args).compile()

    def run() -> dict:
        return compiled(params, key, *args)

    run.compiled = compiled
    return run
