"""Every sampler setting in one typed object (`SamplerOptions`), with its command-line help and its
checks; each sampler declares the subset it reads (jaxorder.sampling.base)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from jaxorder.config import ConfigError
from jaxorder.sampling.noise import PRECISIONS

APPROX_CACHES = ("none", "prefix", "dual", "free", "chunked")  # jaxorder.sampling.mdm_cached
COMMIT_COSTS = ("entropy", "surprisal")  # jaxorder.sampling.info_gain


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
    remask_resample: bool = option(False, "--remask: rewrite a chosen token at once by a fresh draw from its "
                                          "leave-one-out conditional (a Gibbs step) instead of returning it "
                                          "to MASK for a later step; default off")
    candidates: int = option(8, "info-gain sampler: candidate actions drawn and scored by one batched "
                                "look-ahead pass per step (default 8)", metavar="C")
    position_temperature: float = option(0.1, "info-gain sampler: temperature of the Gumbel-top-k draw of "
                                              "each candidate's positions from log confidence (default 0.1)")
    commit_cost: str = option("entropy", "info-gain sampler: the immediate term of a candidate's cost: "
                                         "entropy (summed entropy of the positions it commits, the "
                                         "paper's) or surprisal (summed -log p of the tokens it commits, "
                                         "so an unlikely draw costs more); default entropy",
                              choices=COMMIT_COSTS)
    skip_confidence: float = option(0.9, "info-gain sampler: positions whose top-1 probability is >= S are "
                                         "committed without evaluation, up to the step's count (default 0.9; "
                                         "0: off)", metavar="S")
    block_length: int = option(0, "semi-autoregressive blocks of this many positions, left to right "
                                  "(default 0: one block)")
    noise: str = option("high", "Gumbel noise: high (float64-accurate tails, default) or float32 (naive "
                                "24-bit)", choices=PRECISIONS)
    fixed_noise: bool = option(False, "mdm rules (not ancestral) and learned: draw each position's Gumbel "
                                      "noise once per decode instead of once per step, so a position's draw "
                                      "moves only when its conditional does (default off: fresh noise each "
                                      "step)")
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
OPTION_TYPES = {f.name: f.type for f in dataclasses.fields(SamplerOptions)}
