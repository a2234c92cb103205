"""Gradient signal-to-noise ratio of a run's training loss, overall and by mask rate.

For N batches with flattened parameter gradients g_1..g_N (all parameters, float64),

    mean  g_bar  = (1/N) sum_i g_i
    SNR          = ||g_bar|| / sqrt((1/N) sum_i ||g_i - g_bar||^2)

the norm of the mean over the root-mean-square spread of the per-batch gradients about it (the spread
uses 1/N, not 1/(N-1)). It is ~ sqrt(B) times a per-example SNR; with pure noise (g_bar -> 0 as N grows)
it falls like 1/sqrt(N), so compare values at the same N and batch size only.

"loss": the objective's own training loss (mdm: a fresh t per sequence as in training). Families
with `Objective.rate_nll` (mdm, bd3) also get one value per mask-rate bin, with every sequence of
every batch masked at the bin's centre t: loss = sum of masked NLL / (t * B * L), the ELBO term at
that t (the 1/t weight scales mean and spread alike, so it does not change the SNR).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxorder import objectives
from jaxorder.config import Config


def gradient_snr(grads_NP: np.ndarray) -> dict:
    """SNR of per-batch gradients [N, P] (see the module docstring), with the two norms."""
    g = np.asarray(grads_NP, dtype=np.float64)
    mean_P = g.mean(axis=0)
    spread = math.sqrt(float(((g - mean_P) ** 2).sum(axis=1).mean()))
    signal = float(np.linalg.norm(mean_P))
    return {"snr": signal / spread if spread > 0 else None, "mean_norm": signal, "spread": spread,
            "batches": int(len(g))}


def batch_gradients(loss_fn: Callable, params, batches: Sequence[np.ndarray], seed: int) -> np.ndarray:
    """Flattened gradients [N, P] of loss_fn(params, tokens [B, L], rng) -> scalar, one per batch."""
    grad = jax.jit(lambda p, t, r: ravel_pytree(jax.grad(loss_fn)(p, t, r))[0])
    return np.stack([np.asarray(grad(params, jnp.asarray(b), jax.random.key(seed * 7919 + i)), np.float64)
                     for i, b in enumerate(batches)])


def rate_loss(cfg: Config, t: float) -> Callable:
    """The masked-NLL loss at a fixed mask rate t (ELBO weight 1/t), for families with rate_nll."""
    rate_nll = objectives.of(cfg).rate_nll

    def loss(params, tokens_BL, rng):
        nll_BL, masked_BL = rate_nll(params, tokens_BL, jnp.full((tokens_BL.shape[0],), t), rng, cfg)
        return jnp.where(masked_BL, nll_BL, 0.0).sum() / (t * tokens_BL.size)

    return loss


def snr_at(params, cfg: Config, batches: Sequence[np.ndarray], bins: int, seed: int) -> dict:
    """{"loss": SNR of the training loss, "by_mask_rate": [per-bin SNR at the bin centre] or None}."""
    objective = objectives.of(cfg)
    train_loss = lambda p, t, r: objective.loss(p, {"tokens": t}, r, cfg)[0]  # noqa: E731
    out = {"loss": gradient_snr(batch_gradients(train_loss, params, batches, seed)), "by_mask_rate": None}
    if objective.rate_nll is not None:
        out["by_mask_rate"] = []
        for b in range(bins):
            t = (b + 0.5) / bins
            out["by_mask_rate"].append({"t": t, **gradient_snr(batch_gradients(rate_loss(cfg, t), params,
                                                                               batches, seed))})
    return out


def training_batches(windows_WL: np.ndarray, count: int, batch: int, seed: int) -> list[np.ndarray]:
    """`count` batches of `batch` distinct windows each (a seeded shuffle; windows reused if too few)."""
    order = np.random.default_rng(seed).permutation(len(windows_WL))
    idx = np.resize(order, count * batch)
    return [windows_WL[idx[i * batch:(i + 1) * batch]] for i in range(count)]


def plot_snr(by_step: dict[int, dict], path: Path, title: str) -> None:
    """SNR by mask rate, one line per checkpoint, and the training loss's SNR as dashed levels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=110)
    for i, (step, r) in enumerate(sorted(by_step.items())):
        color = f"C{i}"
        if r["by_mask_rate"]:
            ax.plot([x["t"] for x in r["by_mask_rate"]], [x["snr"] for x in r["by_mask_rate"]], marker="o",
                    color=color, label=f"step {step}, fixed t")
        ax.axhline(r["loss"]["snr"], color=color, linestyle="--", linewidth=1,
                   label=f"step {step}, training loss")
    ax.set_xlabel("mask rate t")
    ax.set_ylabel("||mean g|| / rms spread")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
