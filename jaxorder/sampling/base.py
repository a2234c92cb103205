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
import math
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping

import jax
import numpy as np

from jaxorder import objectives
from jaxorder.config import Config, ConfigError, DataConfig
from jaxorder.registry import SAMPLERS
from jaxorder.sampling.noise import PRECISIONS

APPROX_CACHES = ("none", "prefix", "dual", "free", "chunked")  # jaxorder.sampling.mdm_cached


def option(default: Any, help: str, cli: bool = True, choices: tuple[str, ...] = (),
           metavar: str = "") -> Any:
    """A SamplerOptions field: its default and its command-line help (`jaxorder sample` and `eval
    --generate` get one flag per field from these, jaxorder.sampling.flags); `cli=False` for
    settings only the Python API takes."""
    return dataclasses.field(default=default, metadata={"help": help, "cli": cli, "choices": choices,
                                                             "metavar": metavar})


@dataclass(frozen=True)
class SamplerOptions:
    """Every sampler setting, in one typed object; each sampler reads the subset it declares. A new
    setting is a field here (with its help); its flag and its sweep key follow from the field."""

    steps: int = option(64, "mdm/bd3: denoising steps, i.e. forward passes at most (default 64); ar and "
                            "any-order: unused (one per token)")
    temperature: float = option(1.0, "0 = argmax (default 1)")
    top_k: int = option(0, "ar, any-order: sample among the k most likely tokens (default 0: off)")
    top_p: float = option(1.0, "ar, any-order: nucleus sampling, the smallest set with probability >= p "
                               "(default 1: off)")
    threshold: float = option(0.9, "threshold sampler: commit every masked position with confidence >= C, "
                                   "at least one per step (default 0.9)")
    factor: float = option(1.0, "factor sampler: commit the n most confident positions with "
                                "(n + 1)(1 - p_n) < F, at least one per step (default 1)")
    prophet: float = option(0.0, "masked runs: commit the rest of a block at its argmax once the mean top-2 "
                                 "logit gap of its masked positions exceeds 1.5G, G, 0.5G in the thirds of "
                                 "its steps (default 0: off; Prophet's 7.5/5/2.5 is G=5)")
    approx_cache: str = option("none", "masked runs, APPROXIMATE KV cache: prefix (prompt and finished "
                                       "blocks), dual (also the masked suffix), free (no full refresh: only "
                                       "changed positions are recomputed), chunked (long prompts: prompt "
                                       "chunks cached once, the most relevant ones attended); default none",
                               choices=APPROX_CACHES)
    cache_refresh: int = option(0, "--approx-cache: recompute every key/value each N steps (default 0: once "
                                   "per block)")
    chunk_length: int = option(256, "--approx-cache chunked: prompt tokens per cached chunk (default 256)")
    chunks: int = option(4, "--approx-cache chunked: prompt chunks attended besides the most recent one, "
                            "the most relevant to the block being decoded (default 4)")
    remask: float = option(0.0, "confidence/margin/entropy samplers of mdm runs: after each step return up "
                                "to floor(R k (steps left - 1) / block steps) committed tokens to MASK, the "
                                "lowest-scoring under the current conditionals (ReMDM-style corrector; "
                                "default 0: off; R in [0, 1])")
    remask_candidates: int = option(4, "--remask: committed tokens re-scored per step, exactly (one masked "
                                       "copy each in the step's call; default 4)")
    remask_dropped: bool = option(False, "--remask: return a candidate to MASK only if its current log-prob "
                                         "is below its log-prob when it was committed (its newer context "
                                         "made it less likely); default off: the lowest-scoring ones always")
    candidates: int = option(8, "info-gain sampler: candidate actions drawn and scored by one batched "
                                "look-ahead pass per step (default 8)", metavar="C")
    position_temperature: float = option(0.1, "info-gain sampler: temperature of the Gumbel-top-k draw of "
                                              "each candidate's positions from log confidence (default 0.1)")
    skip_confidence: float = option(0.9, "info-gain sampler: positions whose top-1 probability is >= S are "
                                         "committed without evaluation, up to the step's count (default 0.9; "
                                         "0: off)", metavar="S")
    block_length: int = option(0, "semi-autoregressive blocks of this many positions, left to right "
                                  "(default 0: one block)")
    noise: str = option("high", "Gumbel noise: high (float64-accurate tails, default) or float32 (naive "
                                "24-bit)", choices=PRECISIONS)
    fused: bool = option(False, "masked runs: the commitment step through pallas_kernels.mdm_sample_step "
                                "(CPU: its reference)")
    interpret: bool | None = option(None, "fused path: None = by backend (CPU: reference), True = Pallas "
                                          "interpret", cli=False)
    cache: bool = option(True, "KV cache; False = the uncached reference (recompute every step)", cli=False)
    ignore_eos: bool = option(False, "every sampler: generate the full length, EOS as an ordinary token "
                                     "(default: the text ends at the first generated EOS, the rest is EOS "
                                     "padding, and sampling stops early; jaxorder.sampling.eos)")
    collect_logits: bool = option(False, "ar, any_order: also return the logits that chose each token",
                                  cli=False)
    order: str = option("", "any-order runs, perm and speculative samplers: the generation order, "
                            "random, l2r, r2l, perm:5,1-4,0,6- (all L positions in generation order; a-b "
                            "ranges, a last k- = the rest in reading order) or perm@FILE (one line for "
                            "every row, or one per row); given (prompt) positions are skipped. Default: "
                            "speculative draws a random order, perm needs it", metavar="ORDER")
    draft: str = option("", "speculative sampler (l2r/r2l runs): the draft run directory, a smaller run "
                            "with the same tokenizer and reading order that proposes tokens for the target "
                            "to verify", metavar="RUN_DIR")
    draft_length: int = option(4, "speculative samplers: tokens (l2r/r2l runs) or positions (any-order runs) "
                                  "drafted per round and verified in one call (default 4)", metavar="K")
    # the AR-guided sampler (jaxorder.sampling.guided)
    guide: str = option("", "guided sampler (mdm runs): the guide run directory, an l2r run with the same "
                            "tokenizer that accepts the longest run of proposals it finds likely",
                        metavar="RUN_DIR")
    guide_threshold: float = option(0.1, "guided sampler: accept proposals in reading order from the first "
                                          "open position while the guide's probability of each is >= P, "
                                          "at least one per step (default 0.1)", metavar="P")
    guide_window: int = option(0, "guided sampler: positions the guide scores per step, from the first open "
                                  "one (default 0: to the end of the sequence)", metavar="N")
    guide_fallback: str = option("mdm", "guided sampler: the token committed at the first open position when "
                                        "the guide rejects the proposal there: mdm (that proposal anyway, "
                                        "default), guide (a draw from the guide) or product (a draw from the "
                                        "guide's and the mdm's distributions multiplied), at --temperature",
                                 choices=("mdm", "guide", "product"))
    # the learned sampler (jaxorder.sampling.learned, jaxorder.sampling.commit_filter)
    commit_filter: str = option("", "learned sampler: the commit filter, a commit_filter.yaml or a directory "
                                    "holding one (default: the sampled run's, written by `jaxorder "
                                    "train-filter RUN_DIR TRACES`)", metavar="PATH")
    filter_threshold: float = option(0.9, "learned sampler: commit every masked position whose filter "
                                          "probability is >= P, at least one per step; also the bar of its "
                                          "end-of-text stop (default 0.9)", metavar="P")
    filter_floor: str = option("filter", "learned sampler: the one position committed when the filter "
                                         "accepts none: filter (its highest probability, default) or "
                                         "confidence (the confidence rule's choice, so the filter only adds "
                                         "commits to it)", choices=("filter", "confidence"))
    eos_stop: bool = option(True, "learned sampler: fill a row's masked rest and stop it once the filter "
                                  "says all of it is end of text (default on; --no-eos-stop: off, the "
                                  "ablation)")

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
        if self.cache_refresh < 0:
            raise ConfigError(f"cache_refresh must be >= 0 (0 = once per block), got {self.cache_refresh}")
        if self.chunk_length < 1 or self.chunks < 1:
            raise ConfigError(f"chunk_length and chunks must be >= 1, got {self.chunk_length} and "
                              f"{self.chunks}")
        if not 0.0 <= self.remask <= 1.0:
            raise ConfigError(f"remask must be in [0, 1] (0 = off), got {self.remask}")
        if self.remask_candidates < 1:
            raise ConfigError(f"remask_candidates must be >= 1, got {self.remask_candidates}")
        if self.candidates < 1:
            raise ConfigError(f"candidates must be >= 1, got {self.candidates}")
        if not self.position_temperature > 0 or not math.isfinite(self.position_temperature):
            raise ConfigError(f"position_temperature must be a finite number > 0, got "
                              f"{self.position_temperature}")
        if not 0.0 <= self.skip_confidence <= 1.0:
            raise ConfigError(f"skip_confidence must be in [0, 1] (0 = off), got {self.skip_confidence}")
        if self.block_length < 0:
            raise ConfigError(f"block_length must be >= 0 (0 = no blocks), got {self.block_length}")
        if self.draft_length < 1:
            raise ConfigError(f"draft_length must be >= 1, got {self.draft_length}")
        if not 0.0 <= self.guide_threshold <= 1.0:
            raise ConfigError(f"guide_threshold must be in [0, 1], got {self.guide_threshold}")
        if self.guide_window < 0:
            raise ConfigError(f"guide_window must be >= 0 (0 = to the end), got {self.guide_window}")
        if not 0.0 < self.filter_threshold <= 1.0:
            raise ConfigError(f"filter_threshold must be in (0, 1], got {self.filter_threshold}")
        for f in dataclasses.fields(self):
            choices, value = f.metadata["choices"], getattr(self, f.name)
            if choices and value not in choices:
                raise ConfigError(f"{f.name} must be one of {', '.join(choices)}, got '{value}'")


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
    """`sample` compiled ahead of time for these inputs: returns run() -> dict (benchmarks); the
    compiled executable is `run.compiled` (its HLO: `run.compiled.as_text()`)."""
    fn, args = _prepared(cfg, tokens_BL, sampler, options, companions)
    compiled = fn.lower(params, key, *args).compile()

    def run() -> dict:
        return compiled(params, key, *args)

    run.compiled = compiled
    return run
