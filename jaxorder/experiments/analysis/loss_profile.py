"""Where the loss lives: NLL by mask rate (masked families) and by position (every family with curves).

By mask rate (families with `Objective.rate_nll`: mdm, bd3). Each of `draws` passes masks every window
at its own rate t ~ U(0, 1) (bd3: the same t in every block), and the (window, draw) pair falls in bin
floor(t * bins) (t = 1 in the last). Per bin: the pairs, the masked tokens, the NLL per masked token
(sum of masked NLL / masked tokens) and its standard error over the pairs' own means. This is the
unweighted conditional -log p(x_i | x_t): the ELBO weights it by 1/t.

By position (families with `Objective.position_nll`). Each curve is the mean over the windows (and
draws) of the family's per-position NLL: l2r / r2l the exact chain rule of the run's order; mdm, ao_ar
and latent_order the exact chain rule of revealing left to right and right to left; bd3 one draw of
the ELBO per position. A curve sums to the mean sequence NLL (or bound) of its order.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder import objectives
from jaxorder.config import Config


def bin_index(t_N: np.ndarray, bins: int) -> np.ndarray:
    """Bin of each rate in [0, 1]: floor(t * bins), with t = 1 in the last bin."""
    return np.minimum((np.asarray(t_N) * bins).astype(int), bins - 1)


def rate_bins(t_N: np.ndarray, nll_sum_N: np.ndarray, masked_N: np.ndarray, bins: int) -> list[dict]:
    """Per bin: pairs, masked tokens, NLL per masked token and its s.e. over pairs (None if < 2)."""
    idx_N = bin_index(t_N, bins)
    rows = []
    for b in range(bins):
        sel = idx_N == b
        has = sel & (masked_N > 0)
        per_pair = nll_sum_N[has] / masked_N[has]
        tokens = int(masked_N[sel].sum())
        rows.append({"t_lo": b / bins, "t_hi": (b + 1) / bins, "pairs": int(sel.sum()),
                     "masked_tokens": tokens,
                     "nll": float(nll_sum_N[sel].sum() / tokens) if tokens else None,
                     "nll_stderr": float(per_pair.std(ddof=1) / math.sqrt(len(per_pair)))
                     if len(per_pair) > 1 else None})
    return rows


def _batches(windows_WL: np.ndarray, batch: int) -> list[np.ndarray]:
    return [windows_WL[i:i + batch] for i in range(0, len(windows_WL), batch)]


def mask_rate_profile(params, cfg: Config, windows_WL: np.ndarray, draws: int, bins: int, seed: int,
                      batch: int = 64) -> list[dict] | None:
    """`rate_bins` over draws x windows, or None for families without a mask rate."""
    rate_nll = objectives.of(cfg).rate_nll
    if rate_nll is None:
        return None
    fn = jax.jit(lambda t, r, rng: rate_nll(params, t, r, rng, cfg))
    rng = np.random.default_rng(seed)
    ts, sums, counts = [], [], []
    for d in range(draws):
        for i, tokens_BL in enumerate(_batches(windows_WL, batch)):
            t_B = rng.random(len(tokens_BL)).astype(np.float32)
            key = jax.random.key(seed * 7919 + d * 1009 + i)
            nll_BL, masked_BL = fn(jnp.asarray(tokens_BL), jnp.asarray(t_B), key)
            ts.append(t_B)
            sums.append(np.asarray(jnp.where(masked_BL, nll_BL, 0.0).sum(axis=1), np.float64))
            counts.append(np.asarray(masked_BL.sum(axis=1)))
    return rate_bins(np.concatenate(ts), np.concatenate(sums), np.concatenate(counts), bins)


def position_profile(params, cfg: Config, windows_WL: np.ndarray, draws: int, seed: int,
                     batch: int = 64) -> dict[str, dict] | None:
    """{curve: {"mean": [L] nats, "stderr": [L], "sequence_nll": mean row sum}} or None if unsupported."""
    position_nll = objectives.of(cfg).position_nll
    if position_nll is None:
        return None
    fn = jax.jit(lambda t, rng: position_nll(params, t, rng, cfg))
    rows: dict[str, list[np.ndarray]] = {}
    for d in range(draws):
        for i, tokens_BL in enumerate(_batches(windows_WL, batch)):
            key = jax.random.key(seed * 7919 + d * 1009 + i)
            for name, nll_BL in fn(jnp.asarray(tokens_BL), key).items():
                rows.setdefault(name, []).append(np.asarray(nll_BL, np.float64))
    out = {}
    for name, parts in rows.items():
        nll_NL = np.concatenate(parts)
        se = (nll_NL.std(axis=0, ddof=1) / math.sqrt(len(nll_NL)) if len(nll_NL) > 1
              else np.zeros(nll_NL.shape[1]))
        out[name] = {"mean": nll_NL.mean(axis=0).tolist(), "stderr": se.tolist(),
                     "sequence_nll": float(nll_NL.sum(axis=1).mean())}
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_rate(rows: Sequence[dict], path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 3.2), dpi=110)
    mids = [(r["t_lo"] + r["t_hi"]) / 2 for r in rows if r["nll"] is not None]
    ax.errorbar(mids, [r["nll"] for r in rows if r["nll"] is not None],
                yerr=[r["nll_stderr"] or 0.0 for r in rows if r["nll"] is not None], marker="o", capsize=3)
    ax.set_xlabel("mask rate t")
    ax.set_ylabel("NLL per masked token (nats)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_positions(curves: dict[str, dict], path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 3.2), dpi=110)
    for name, c in curves.items():
        mean, se = np.array(c["mean"]), np.array(c["stderr"])
        ax.plot(mean, label=f"{name} (sum {c['sequence_nll']:.1f})", linewidth=1)
        ax.fill_between(np.arange(len(mean)), mean - se, mean + se, alpha=0.2)
    ax.set_xlabel("position")
    ax.set_ylabel("NLL (nats)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
