"""Scoring a model under fixed generation orders (exact chain rule of its conditionals).

For an order sigma, log p_sigma(x) = sum_j log p(x_sigma_j | x_sigma_<j).
- mdm: each conditional is the bidirectional model with x_sigma_<j revealed and the rest masked,
  so an order takes n forward passes; all requested orders of a batch share each pass (the batch
  is the orders stacked): K orders cost n passes of K x B sequences, not K x n passes. `greedy`
  reveals, at each step, the masked position where the model is most confident (largest
  max-probability): the model's own choice, never the data's.
- ao_ar / latent_order: one causal pass over the permuted sequence gives an order's exact NLL;
  random:K also reports the K-order log-mean-exp bound -log (1/K) sum_k p(x | sigma_k).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder.config import Config, ConfigError
from jaxorder.objectives import ao_ar, latent_order, mdm
from jaxorder.objectives.common import special_ids


@dataclass(frozen=True)
class OrderSpec:
    kind: str  # l2r | r2l | random | greedy
    count: int = 1  # random:K

    @property
    def label(self) -> str:
        return f"random:{self.count}" if self.kind == "random" else self.kind


def parse_orders(text: str) -> list[OrderSpec]:
    """Parses 'l2r,r2l,random:8,greedy'."""
    specs = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, arg = part.partition(":")
        if name in ("l2r", "r2l", "greedy") and not arg:
            specs.append(OrderSpec(name))
        elif name == "random":
            if not arg.isdigit() or int(arg) < 1:
                raise ConfigError(f"order '{part}' needs a count: random:K with K >= 1 (e.g. random:8)")
            specs.append(OrderSpec("random", int(arg)))
        else:
            raise ConfigError(f"unknown order '{part}'; use a comma list of l2r, r2l, random:K, greedy")
    if not specs:
        raise ConfigError("--orders is empty; e.g. --orders l2r,r2l,random:8,greedy")
    return specs


def order_matrix(spec: OrderSpec, batch: int, length: int, rng: jax.Array) -> np.ndarray:
    """Orders [count * batch, length] (position revealed at each step) for a fixed-order spec."""
    if spec.kind == "l2r":
        return np.tile(np.arange(length), (batch, 1))
    if spec.kind == "r2l":
        return np.tile(np.arange(length)[::-1], (batch, 1))
    if spec.kind == "random":
        keys = jax.random.split(rng, spec.count * batch)
        return np.asarray(jax.vmap(lambda k: jax.random.permutation(k, length))(keys))
    raise ValueError(f"order kind '{spec.kind}' has no fixed matrix")


def chain_rule_nll(params, tokens_BL: jnp.ndarray, orders_BL: jnp.ndarray | None, cfg: Config) -> jnp.ndarray:
    """Per-sequence NLL [B] of revealing tokens in `orders_BL` (None = greedy by confidence).

    One forward pass per step; the step's target is the position revealed at that step.
    """
    batch, length = tokens_BL.shape
    mask_id = special_ids(cfg.model).mask
    rows_B = jnp.arange(batch)

    def step(carry, j):
        x_t_BL, nll_B = carry
        logp_BLV = mdm.masked_log_probs(params, x_t_BL, cfg)
        if orders_BL is None:
            confidence_BL = jnp.where(x_t_BL == mask_id, logp_BLV.max(axis=-1), -jnp.inf)
            pos_B = jnp.argmax(confidence_BL, axis=1)
        else:
            pos_B = orders_BL[:, j]
        target_B = tokens_BL[rows_B, pos_B]
        nll_B = nll_B - logp_BLV[rows_B, pos_B, target_B]
        return (x_t_BL.at[rows_B, pos_B].set(target_B), nll_B), None

    init = (jnp.full_like(tokens_BL, mask_id), jnp.zeros((batch,), jnp.float32))
    (_, nll_B), _ = jax.lax.scan(step, init, jnp.arange(length))
    return nll_B


ORDER_SCORED = ("mdm", "ao_ar", "latent_order")


def score_orders(params, cfg: Config, val_batches: Sequence[np.ndarray], bytes_per_token: float,
                 specs: Sequence[OrderSpec], seed: int = 0) -> dict[str, dict]:
    """Bits/byte of the model under each order spec, over the given validation windows."""
    name = cfg.objective.name
    if name not in ORDER_SCORED:
        raise ConfigError(f"fixed-order scoring needs an mdm, ao_ar or latent_order run, not '{name}'")
    any_order = name != "mdm"
    if any_order and any(s.kind == "greedy" for s in specs):
        raise ConfigError("the greedy order is defined for mdm runs (most confident masked position first); "
                          "drop it from --orders for ao_ar/latent_order runs")
    if any_order:
        fixed = jax.jit(lambda p, t, o: ao_ar.order_nll(p, t, o, cfg))
    else:
        fixed = jax.jit(lambda p, t, o: chain_rule_nll(p, t, o, cfg))
    greedy = jax.jit(lambda p, t: chain_rule_nll(p, t, None, cfg))
    to_bpb = 1.0 / (math.log(2.0) * bytes_per_token)
    rng = jax.random.key(seed)
    results = {}

    def summarize(per_window: list[np.ndarray], kind: str) -> dict:
        per_token = np.concatenate(per_window)
        stderr = per_token.std(ddof=1) / math.sqrt(len(per_token)) if len(per_token) > 1 else float("nan")
        return {"bpb": float(per_token.mean() * to_bpb), "bpb_stderr": float(stderr * to_bpb), "kind": kind,
                "windows": int(len(per_token))}

    for spec in specs:
        per_window, bound_per_window = [], []
        for i, tokens_BL in enumerate(val_batches):
            batch, length = tokens_BL.shape
            if spec.kind == "greedy":
                per_window.append(np.asarray(greedy(params, jnp.asarray(tokens_BL))) / length)
                continue
            orders = order_matrix(spec, batch, length, jax.random.fold_in(rng, i))
            stacked = np.tile(tokens_BL, (len(orders) // batch, 1))  # row k * B + b
            nll_KB = np.asarray(fixed(params, jnp.asarray(stacked), jnp.asarray(orders))).reshape(-1, batch)
            per_window.append(nll_KB.mean(axis=0) / length)  # average over the spec's orders
            if any_order and spec.kind == "random":
                bound_per_window.append(np.asarray(latent_order.mixture_nll(-jnp.asarray(nll_KB.T))) / length)
        kind = "exact" if spec.kind != "random" else f"exact, mean of {spec.count} orders"
        results[spec.label] = summarize(per_window, kind)
        if bound_per_window:
            results[f"logmeanexp:{spec.count}"] = summarize(
                bound_per_window, f"bound: -log mean of p(x|order) over {spec.count} random orders")
    return results
