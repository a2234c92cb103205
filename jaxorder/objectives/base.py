"""The order-family contract: one `Objective` value per family, registered by the family's own file.

Everything that varies by family lives in its value and is reached through it: nothing outside
`jaxorder.objectives` compares objective names. A new order family is one file that defines its
loss and nll and ends with `register(Objective(...))`, plus its import in `objectives/__init__.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import jax
import numpy as np

from jaxorder.config import Config
from jaxorder.registry import OBJECTIVES

Params = Any
# loss(params, batch, rng, cfg) -> (scalar to minimize, metrics); batch = {"tokens": [B, L] int32}
LossFn = Callable[[Params, dict, jax.Array, Config], tuple[jax.Array, dict]]
# nll(params, batch, rng, cfg) -> per-sequence NLL in nats [B] (exact, or an upper bound: see `exact`)
NllFn = Callable[[Params, dict, jax.Array, Config], jax.Array]
# order_nll(params, tokens [B, L], orders [B, L], cfg) -> exact -log p(x | order) in nats [B]
OrderNllFn = Callable[[Params, jax.Array, jax.Array, Config], jax.Array]
# token_nll(params, tokens [B, L], cfg) -> per-token NLL in nats [B, L], position order, summing to nll
TokenNllFn = Callable[[Params, jax.Array, Config], jax.Array]
# analysis_inputs(tokens [N, L], cfg, mask_rate, seed) -> (model input tokens [N, L'], mask kind, the
# mask rate applied: 0 for families whose input has no MASK tokens[, position ids [N, L'], target
# positions [N, L'] or None]); without the last two, positions are 0..L'-1 and there are no targets
AnalysisInputsFn = Callable[[np.ndarray, Config, float, int], tuple]
# position_nll(params, tokens [B, L], rng, cfg) -> {curve name: NLL in nats [B, L] in position order}: the
# family's per-position loss curves (each row sums to that curve's sequence NLL or one-sample bound)
PositionNllFn = Callable[[Params, jax.Array, jax.Array, Config], dict[str, jax.Array]]
# rate_nll(params, tokens [B, L], t [B], rng, cfg) -> (per-token NLL [B, L], is_masked [B, L] bool): every
# token masked independently with probability t of its row (masked families)
RateNllFn = Callable[[Params, jax.Array, jax.Array, jax.Array, Config], tuple[jax.Array, jax.Array]]
# own_params(cfg, rng) -> the family's own parameters (beside the network's), leaves boxed with logical axis
# names (nn.LogicallyPartitioned); the train state keeps them under params[OWN_PARAMS]
OwnParamsFn = Callable[[Config, jax.Array], Any]
# eval_extras(params, batch, rng, cfg) -> {name: [B] or [B, L]}: per-window numbers the yardstick reports
# beside nll (mean and standard error over windows; a name ending in `_nll` is in nats and also gets
# bits/byte)
EvalExtrasFn = Callable[[Params, dict, jax.Array, Config], dict[str, jax.Array]]
OWN_PARAMS = "objective"  # the key of a family's own parameter subtree; the network ignores it


@dataclass(frozen=True)
class OrderScoring:
    """How a family's trained network is scored exactly under a fixed generation order."""

    order_nll: OrderNllFn
    greedy_nll: Optional[Callable[[Params, jax.Array, Config], jax.Array]] = None  # the model's own order
    mixture_bound: bool = False  # also report -log mean_k p(x | order_k) over random:K orders
    # the terms of order_nll per position [B, L] (position order, summing to order_nll), if available
    order_token_nll: Optional[OrderNllFn] = None


@dataclass(frozen=True)
class Option:
    """A config knob a family declares: `objective.<name>` in YAML and overrides, typed by its default."""

    name: str
    default: bool | int | float | str
    help: str


def _no_checks(cfg: Config) -> None:
    del cfg


def _no_lr_scales(cfg: Config) -> dict[str, float]:
    del cfg
    return {}


def _no_length_head(cfg: Config) -> int:
    del cfg
    return 0


@dataclass(frozen=True)
class Objective:
    """An order family as the rest of jaxorder sees it.

    - `loss`, `nll`: see LossFn / NllFn; `exact` says whether nll is the exact NLL (True) or an
      upper bound on it (False); `yardstick` is how reports label it.
    - `target_positions`: the network takes target positions (any-order models), so the model is
      initialized with the target-position embedding.
    - `query_positions`: what `model.query_positions: auto` means for it: "current" (queries rotated
      by RoPE at the slot's own position) or "target" (at its target position; target_positions only).
    - `length_classes(cfg)`: the width C of the network's length head (insertion models: the count
      of tokens missing in each gap, 0..C-1); 0 (the default) = no length head.
    - `sampling`: the sampler family that can decode its runs (samplers register for a family:
      "ar", "masked", "block", "any_order"); `default_sampler` names the one used when none is given.
    - `reading_order`: "l2r" or "r2l" for causal families (the AR sampler generates in it).
    - `order_scoring`: fixed-order scoring (`jaxorder eval --orders`), None if unsupported.
    - `judge`: its exact nll is the left-to-right likelihood sample quality is judged with.
    - `analysis_inputs`: the network's input for attention analysis, None if unsupported.
    - `token_nll`: for exact families whose nll is a chain rule in reading order (causal), the
      per-token terms of nll [B, L] in position order; None otherwise (`jaxorder score` then has
      no per-token view of the yardstick and no sliding windows with context).
    - `position_nll`: per-position loss curves (`jaxorder analyze loss-profile`), None if unsupported.
    - `rate_nll`: the masked per-token NLL at a given mask rate (loss by mask rate and the gradient
      SNR by mask rate), None for families without a mask rate.
    - `options`: the config knobs it reads (`cfg.objective.<name>`); families may share one
      (mdm and bd3 both read mdm_eps) if they declare it alike.
    - `validate_config`: the family's own config checks (ConfigError with the fix).
    - `log_metrics`: keys of its loss metrics that the train log line shows after the loss (all
      of them reach metrics.jsonl and TensorBoard anyway).
    - `own_params`: the family's own parameters (e.g. an order policy head, a posterior), created
      beside the network's and kept under params[OWN_PARAMS]; None (the default): none.
    - `eval_extras`: per-window numbers the yardstick reports beside `nll` (e.g. a second bound,
      order statistics); None: none.
    - `lr_scales`: {own-param name: factor}: those leaves of params[OWN_PARAMS] step at factor times
      the learning rate (e.g. a posterior that must move faster than the network); {}: none.
    - `undecayed`: names of own params that get no weight decay (e.g. a posterior's parameters:
      decay pulls them toward a uniform distribution with no gradient to oppose it once the
      posterior has collapsed onto one value); (): all matrices are decayed.
    """

    name: str
    loss: LossFn
    nll: NllFn
    exact: bool
    yardstick: str
    sampling: str
    default_sampler: str
    target_positions: bool = False
    query_positions: str = "current"
    reading_order: str = "l2r"
    order_scoring: Optional[OrderScoring] = None
    judge: bool = False
    analysis_inputs: Optional[AnalysisInputsFn] = None
    token_nll: Optional[TokenNllFn] = None
    position_nll: Optional[PositionNllFn] = None
    rate_nll: Optional[RateNllFn] = None
    options: tuple[Option, ...] = ()
    validate_config: Callable[[Config], None] = _no_checks
    length_classes: Callable[[Config], int] = _no_length_head
    log_metrics: tuple[str, ...] = ()
    own_params: Optional[OwnParamsFn] = None
    eval_extras: Optional[EvalExtrasFn] = None
    lr_scales: Callable[[Config], dict[str, float]] = _no_lr_scales
    undecayed: tuple[str, ...] = ()


def register(objective: Objective) -> Objective:
    if objective.query_positions not in ("current", "target") or (
            objective.query_positions == "target" and not objective.target_positions):
        raise ValueError(f"objective '{objective.name}': query_positions must be current, or target with "
                         f"target_positions=True; got {objective.query_positions!r}")
    for option in objective.options:
        for other in OBJECTIVES.values():
            same = [o for o in other.options if o.name == option.name]
            if same and (type(same[0].default), same[0].default) != (type(option.default), option.default):
                raise ValueError(f"objective '{objective.name}' declares option '{option.name}' unlike "
                                 f"'{other.name}' does ({option.default!r} vs {same[0].default!r})")
    return OBJECTIVES.register(objective)


def get(name: str) -> Objective:
    """The registered objective `name` (ConfigError naming the known ones otherwise)."""
    return OBJECTIVES.get(name)


def all_objectives() -> tuple[Objective, ...]:
    return OBJECTIVES.values()


def of(cfg: Config) -> Objective:
    """The objective a config trains."""
    return OBJECTIVES.get(cfg.objective.name)
