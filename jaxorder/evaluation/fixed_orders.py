"""Scoring a model under fixed generation orders (exact chain rule of its conditionals).

For an order sigma, log p_sigma(x) = sum_j log p(x_sigma_j | x_sigma_<j). How a family computes it
is its `Objective.order_scoring` (e.g. mdm: n passes of the masked model; any-order models: one
causal pass over the permuted window). All requested orders of a batch are scored together (the
batch is the orders stacked). `greedy` (where the family has it) lets the model pick the next
position. Families with `mixture_bound` also report, for random:K, the K-order log-mean-exp bound
-log (1/K) sum_k p(x | sigma_k). Explicit orders, `perm:...` and `perm@FILE`, are parsed in
`jaxorder.orders`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder import objectives
from jaxorder import orders as perm_orders
from jaxorder.config import Config, ConfigError
from jaxorder.objectives.latent_order import mixture_nll


@dataclass(frozen=True)
class OrderSpec:
    kind: str  # l2r | r2l | random | greedy | perm
    count: int = 1  # random:K
    perms: tuple[perm_orders.Perm, ...] = ()  # perm: one spec; perm@FILE: the file's lines
    file: str = ""  # perm@FILE

    @property
    def label(self) -> str:
        if self.kind == "perm":
            return perm_orders.FILE_PREFIX + self.file if self.file else self.perms[0].text
        return f"random:{self.count}" if self.kind == "random" else self.kind


def parse_orders(text: str) -> list[OrderSpec]:
    """Parses 'l2r,r2l,random:8,greedy,perm:5,1-4,0,6-,perm@FILE': the digit tokens after `perm:`
    belong to that perm."""
    specs: list[OrderSpec] = []
    for part in perm_orders.split_list(text):
        name, _, arg = part.partition(":")
        if part.startswith(perm_orders.PREFIX):
            specs.append(OrderSpec("perm", perms=(perm_orders.parse(part),)))
        elif part.startswith(perm_orders.FILE_PREFIX):
            path = part[len(perm_orders.FILE_PREFIX):]
            specs.append(OrderSpec("perm", perms=tuple(perm_orders.read_file(path)), file=path))
        elif perm_orders.looks_like_item(part):
            raise ConfigError(f"order '{part}' is a bare index; an explicit order starts with perm:, "
                              f"e.g. perm:1,0,2-")
        elif name in ("l2r", "r2l", "greedy") and not arg:
            specs.append(OrderSpec(name))
        elif name == "random":
            if not arg.isdigit() or int(arg) < 1:
                raise ConfigError(f"order '{part}' needs a count: random:K with K >= 1 (e.g. random:8)")
            specs.append(OrderSpec("random", int(arg)))
        else:
            raise ConfigError(f"unknown order '{part}'; use a comma list of l2r, r2l, random:K, greedy, "
                              f"perm:INDICES, perm@FILE")
    if not specs:
        raise ConfigError("--orders is empty; e.g. --orders l2r,r2l,random:8,greedy")
    return specs


def order_matrix(spec: OrderSpec, batch: int, length: int, rng: jax.Array, first_window: int = 0,
                 windows: int | None = None) -> np.ndarray:
    """Orders [count * batch, length] (position revealed at each step) for a fixed-order spec; a
    perm@FILE with one line per window needs the batch's `first_window` and the total `windows`."""
    if spec.kind == "perm":
        total = windows if windows is not None else first_window + batch
        return perm_orders.window_orders(list(spec.perms), total, length,
                                         spec.label)[first_window:first_window + batch]
    if spec.kind == "l2r":
        return np.tile(np.arange(length), (batch, 1))
    if spec.kind == "r2l":
        return np.tile(np.arange(length)[::-1], (batch, 1))
    if spec.kind == "random":
        keys = jax.random.split(rng, spec.count * batch)
        return np.asarray(jax.vmap(lambda k: jax.random.permutation(k, length))(keys))
    raise ValueError(f"order kind '{spec.kind}' has no fixed matrix")


def scorable(cfg: Config) -> bool:
    """Whether runs of cfg's objective can be scored under fixed orders."""
    return objectives.of(cfg).order_scoring is not None


def supported_specs(cfg: Config, specs: Sequence[OrderSpec]) -> list[OrderSpec]:
    """The specs cfg's objective can score (greedy only where the family defines it)."""
    scoring = require_order_scoring(cfg)
    return [s for s in specs if s.kind != "greedy" or scoring.greedy_nll is not None]


def require_order_scoring(cfg: Config) -> objectives.OrderScoring:
    scoring = objectives.of(cfg).order_scoring
    if scoring is None:
        able = [o.name for o in objectives.all_objectives() if o.order_scoring is not None]
        raise ConfigError(f"fixed-order scoring needs a run of {', '.join(able)}, not '{cfg.objective.name}'")
    return scoring


def score_orders(params, cfg: Config, val_batches: Sequence[np.ndarray], bytes_per_token: float,
                 specs: Sequence[OrderSpec], seed: int = 0) -> dict[str, dict]:
    """Bits/byte of the model under each order spec, over the given validation windows."""
    scoring = require_order_scoring(cfg)
    if scoring.greedy_nll is None and any(s.kind == "greedy" for s in specs):
        raise ConfigError(f"the greedy order is not defined for {cfg.objective.name} runs; "
                          f"drop it from --orders")
    fixed = jax.jit(lambda p, t, o: scoring.order_nll(p, t, o, cfg))
    greedy = jax.jit(lambda p, t: scoring.greedy_nll(p, t, cfg)) if scoring.greedy_nll else None
    to_bpb = 1.0 / (math.log(2.0) * bytes_per_token)
    rng = jax.random.key(seed)
    results = {}

    def summarize(per_window: list[np.ndarray], kind: str) -> dict:
        per_token = np.concatenate(per_window)
        stderr = per_token.std(ddof=1) / math.sqrt(len(per_token)) if len(per_token) > 1 else float("nan")
        return {"bpb": float(per_token.mean() * to_bpb), "bpb_stderr": float(stderr * to_bpb), "kind": kind,
                "windows": int(len(per_token))}

    windows = sum(len(b) for b in val_batches)
    for spec in specs:
        per_window, bound_per_window = [], []
        first = 0
        for i, tokens_BL in enumerate(val_batches):
            batch, length = tokens_BL.shape
            if spec.kind == "greedy":
                per_window.append(np.asarray(greedy(params, jnp.asarray(tokens_BL))) / length)
                continue
            orders = order_matrix(spec, batch, length, jax.random.fold_in(rng, i), first, windows)
            first += batch
            stacked = np.tile(tokens_BL, (len(orders) // batch, 1))  # row k * B + b
            nll_KB = np.asarray(fixed(params, jnp.asarray(stacked), jnp.asarray(orders))).reshape(-1, batch)
            per_window.append(nll_KB.mean(axis=0) / length)  # average over the spec's orders
            if scoring.mixture_bound and spec.kind == "random":
                bound_per_window.append(np.asarray(mixture_nll(-jnp.asarray(nll_KB.T))) / length)
        kind = "exact" if spec.kind != "random" else f"exact, mean of {spec.count} orders"
        results[spec.label] = summarize(per_window, kind)
        if bound_per_window:
            results[f"logmeanexp:{spec.count}"] = summarize(
                bound_per_window, f"bound: -log mean of p(x|order) over {spec.count} random orders")
    return results
