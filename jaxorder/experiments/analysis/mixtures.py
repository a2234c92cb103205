"""Mixtures of orders: the K-order bound, the order posterior and how close the best order is to l2r.

For a window x of n tokens and M iid uniformly random orders sigma_1..sigma_M, l_m = log p(x | sigma_m)
(the family's exact fixed-order score, `OrderScoring.order_nll`). For each K dividing M the window's
M/K disjoint groups of K orders each give one draw of the K-order bound

    B_K(x) = -log (1/K) sum_{k in group} exp(l_k)          (log-mean-exp; reported per token, / n)

and B_K is their mean. E[B_K(x)] >= -log p_mix(x), p_mix = the uniform mixture over all orders (Jensen),
and E[B_K] is non-increasing in K (Burda et al. 2016, the IWAE bound): averaging K iid terms is the mean
of averages over K-subsets of 2K terms, so log of it is >= the mean of their logs. B_1 is the mean
single-order NLL. Per window the mean over windows and its standard error are reported for each K;
the curve is not monotone per window, only in expectation.

Over all M orders of a window, the order posterior w_m = softmax(l)_m gives the effective number of
orders exp(H(w)) (1 when one order explains x, M when all are equally good) and the best order
argmax_m l_m, whose Kendall tau to reading order (+1 = l2r, -1 = r2l, ~0 for a random order) says
whether the model's best of M orders is close to an AR order.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder.config import Config, ConfigError
from jaxorder.evaluation.fixed_orders import OrderSpec, order_matrix, require_order_scoring


def parse_ks(text: str) -> list[int]:
    """'1,4,16,64' -> [1, 4, 16, 64] (each >= 1, every K divides the largest)."""
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        ks = []
    if not ks or ks[0] < 1 or any(ks[-1] % k for k in ks):
        raise ConfigError(f"--ks '{text}' must be a comma list of counts >= 1 that divide the largest, "
                          f"e.g. --ks 1,4,16,64")
    return ks


def mixture_bounds(l_WM: np.ndarray, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """Per-window K-order bound [W] in nats for each K: the mean over M/K disjoint groups of K orders."""
    l_WM = np.asarray(l_WM, dtype=np.float64)
    W, M = l_WM.shape
    out = {}
    for k in ks:
        groups_WGK = l_WM[:, : (M // k) * k].reshape(W, M // k, k)
        lme_WG = np.logaddexp.reduce(groups_WGK, axis=2) - math.log(k)
        out[k] = -lme_WG.mean(axis=1)
    return out


def effective_orders(l_WM: np.ndarray) -> np.ndarray:
    """exp(H(w)) [W] of the posterior w = softmax(l) over each window's orders."""
    l_WM = np.asarray(l_WM, dtype=np.float64)
    logw_WM = l_WM - np.logaddexp.reduce(l_WM, axis=1, keepdims=True)
    return np.exp(-(np.exp(logw_WM) * logw_WM).sum(axis=1))


def kendall_tau(order_L: np.ndarray) -> float:
    """Kendall tau between reveal step and position: +1 for l2r (0, 1, ..), -1 for r2l."""
    o = np.asarray(order_L)
    n = len(o)
    signs = np.sign(o[None, :] - o[:, None])[np.triu_indices(n, 1)]  # pairs of steps j < k
    return float(signs.sum() / (n * (n - 1) / 2))


def order_log_likelihoods(params, cfg: Config, windows_WL: np.ndarray, count: int, rng: jax.Array,
                          rows_per_call: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(l [W, M] = log p(x_w | sigma_wm), orders [W, M, L]) for M = count iid random orders per window."""
    scoring = require_order_scoring(cfg)
    W, L = windows_WL.shape
    orders_NL = order_matrix(OrderSpec("random", count), W, L, rng)  # row w * M + m
    tokens_NL = np.repeat(windows_WL, count, axis=0)
    score = jax.jit(lambda t, o: scoring.order_nll(params, t, o, cfg))
    nll_N = np.concatenate([np.asarray(score(jnp.asarray(tokens_NL[i:i + rows_per_call]),
                                             jnp.asarray(orders_NL[i:i + rows_per_call])))
                            for i in range(0, len(tokens_NL), rows_per_call)])
    return -nll_N.reshape(W, count), orders_NL.reshape(W, count, L)


def mixture_table(l_WM: np.ndarray, orders_WML: np.ndarray, ks: Sequence[int]) -> dict:
    """JSON-able: per K the bound (nats/token, mean ± s.e. over windows) and, over all M orders, the
    effective number of orders and the best order's Kendall tau per window."""
    W, M, L = orders_WML.shape
    bounds = mixture_bounds(l_WM, ks)
    eff_W = effective_orders(l_WM)
    best_W = np.argmax(l_WM, axis=1)
    tau_W = np.array([kendall_tau(orders_WML[w, best_W[w]]) for w in range(W)])

    def mean_se(x: np.ndarray) -> dict:
        return {"mean": float(x.mean()), "stderr": float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1
                else None}

    return {"windows": W, "orders": M, "length": L,
            "bound_nats_per_token": {str(k): mean_se(bounds[k] / L) for k in ks},
            "effective_orders": {**mean_se(eff_W), "per_window": eff_W.tolist()},
            "best_order_kendall_tau": {**mean_se(tau_W), "per_window": tau_W.tolist()}}


def plot_mixtures(table: dict, path: Path, title: str) -> None:
    """Left: bound vs K with ± s.e.; right: histogram of exp(H) over windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [int(k) for k in table["bound_nats_per_token"]]
    rows = [table["bound_nats_per_token"][str(k)] for k in ks]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.0, 3.2), dpi=110)
    a.errorbar(ks, [r["mean"] for r in rows], yerr=[r["stderr"] or 0.0 for r in rows], marker="o", capsize=3)
    a.set_xscale("log", base=2)
    a.set_xlabel("K orders")
    a.set_ylabel("-log mean_k p(x|σ_k) / n  (nats/token)")
    a.grid(alpha=0.3)
    b.hist(table["effective_orders"]["per_window"], bins=20)
    b.set_xlabel(f"effective number of orders exp(H) of {table['orders']}")
    b.set_ylabel("windows")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
