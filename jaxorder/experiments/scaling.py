"""Compute scaling: power-law fits L(C) = a C^-alpha + L_inf per objective, the compute multiplier
between two fitted curves, and the compute-optimal plan of a scaling sweep.

C is the training compute in FLOPs: `platform.flops.flops_per_token` (6 N + attention, N = the
matmul parameters) times the tokens seen. It is the same count for every objective, so bd3's
2n-slot pass (about twice the work per token) is not charged to it.
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import jax
import numpy as np

from jaxorder import config as config_lib
from jaxorder import model, objectives
from jaxorder.config import ConfigError
from jaxorder.platform import flops
from jaxorder.training.optimizer import make_optimizer
from jaxorder.training.state import init_state
from jaxorder.training.step import make_train_step


def power_law(C: np.ndarray, a: float, alpha: float, L_inf: float) -> np.ndarray:
    return a * np.asarray(C, np.float64) ** (-alpha) + L_inf


def fit_power_law(C: Sequence[float], L: Sequence[float],
                  sigma: Sequence[float] | None = None) -> tuple[float, float, float]:
    """Least-squares (a, alpha, L_inf) of L = a C^-alpha + L_inf, weighted by `sigma` (standard errors).

    C is rescaled by its geometric mean C0 first, so the fitted amplitude A = a C0^-alpha is of the
    order of the losses whatever the units of C; the start comes from a straight-line fit of
    log(L - L_inf) on log C for the L_inf on a grid below min(L) with the smallest residual."""
    import warnings

    from scipy.optimize import OptimizeWarning, curve_fit

    C_N, L_N = np.asarray(C, np.float64), np.asarray(L, np.float64)
    if len(C_N) < 3 or len(C_N) != len(L_N) or np.any(C_N <= 0):
        raise ConfigError(f"a power-law fit needs >= 3 points with compute > 0, got {len(C_N)}")
    C0 = math.exp(np.log(C_N).mean())
    x_N = np.log(C_N / C0)
    best = None
    for floor in min(L_N) * np.linspace(0.0, 0.99, 34):
        slope, intercept = np.polyfit(x_N, np.log(L_N - floor), 1)
        residual = np.sum((np.exp(intercept + slope * x_N) + floor - L_N) ** 2)
        if best is None or residual < best[0]:
            best = (residual, math.exp(intercept), max(-slope, 1e-3), floor)
    _, A0, alpha0, floor0 = best

    def model_fn(x, A, alpha, L_inf):
        return A * np.exp(-alpha * x) + L_inf

    with warnings.catch_warnings():  # 3 points fit 3 parameters exactly: no covariance, and none is used
        warnings.simplefilter("ignore", OptimizeWarning)
        (A, alpha, L_inf), _ = curve_fit(model_fn, x_N, L_N, p0=(A0, min(alpha0, 4.9), floor0),
                                         sigma=None if sigma is None else np.asarray(sigma, np.float64),
                                         bounds=([0.0, 0.0, 0.0], [np.inf, 5.0, float(min(L_N))]),
                                         maxfev=20000)
    return float(A * C0 ** alpha), float(alpha), float(L_inf)


def compute_at(fit: tuple[float, float, float], loss: float) -> float:
    """The compute C at which the fitted curve reaches `loss` (inf when loss <= L_inf)."""
    a, alpha, L_inf = fit
    if loss <= L_inf or alpha <= 0:
        return math.inf
    return (a / (loss - L_inf)) ** (1.0 / alpha)


def compute_multiplier(reference: tuple[float, float, float], other: tuple[float, float, float],
                       loss: float) -> float:
    """C_other(loss) / C_reference(loss): how much more compute `other` needs to reach `loss`."""
    return compute_at(other, loss) / compute_at(reference, loss)


def multiplier_interval(reference: dict, other: dict, draws: int = 200, seed: int = 0,
                        quantiles: tuple[float, float] = (0.16, 0.84)) -> tuple[float, float]:
    """A parametric-bootstrap interval of the compute multiplier of `other` against `reference`.

    Each series is a dict with "C", "L" and "stderr" lists (figures.scaling_fits). Every draw
    resamples each point as L + stderr * N(0, 1), refits both curves and takes the multiplier at the
    refitted reference's loss at its largest C (the target of figures.multipliers); the result is
    the (16 %, 84 %) quantiles of the draws, about +- 1 s.e. for a normal spread (inf included)."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        fits = [fit_power_law(s["C"], np.asarray(s["L"]) + np.asarray(s["stderr"]) * rng.standard_normal(
            len(s["L"])), s["stderr"]) for s in (reference, other)]
        target = float(power_law(reference["C"][-1], *fits[0]))
        values.append(compute_multiplier(fits[0], fits[1], target))
    low, high = np.quantile(np.asarray(values), quantiles)
    return float(low), float(high)


def model_size(cfg: config_lib.Config) -> tuple[int, int]:
    """(all parameters, matmul parameters) of cfg's model, from shapes only (nothing is allocated)."""
    shapes = jax.eval_shape(lambda: model.init_params(cfg.model, jax.random.key(0), cfg.data.seq_len,
                                                      objectives.of(cfg).target_positions))
    return sum(int(x.size) for x in jax.tree.leaves(shapes)), flops.matmul_params(shapes)


def training_flops(cfg: config_lib.Config, tokens: int) -> float:
    """Training compute C in FLOPs of `tokens` tokens of cfg's model (see the module docstring)."""
    return flops.flops_per_token(cfg.model, cfg.data.seq_len, model_size(cfg)[1]) * tokens


def compute_optimal_steps(cfg: config_lib.Config, tokens_per_param: float) -> int:
    """Steps that feed `tokens_per_param` tokens per matmul parameter (Chinchilla-style: ~20)."""
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    return max(1, math.ceil(tokens_per_param * model_size(cfg)[1] / tokens_per_step))


def measure_step_seconds(cfg: config_lib.Config, steps: int = 3) -> float:
    """Wall seconds of one train step of cfg on this machine (after compiling; random tokens)."""
    optimizer = make_optimizer(cfg)
    step = jax.jit(make_train_step(cfg, optimizer), donate_argnums=(0,))
    state = init_state(cfg, optimizer)
    tokens_BL = jax.random.randint(jax.random.key(0), (cfg.data.batch_size, cfg.data.seq_len), 0,
                                   min(cfg.model.vocab_size, 256))
    state, metrics = step(state, tokens_BL)
    jax.block_until_ready(metrics)
    started = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, tokens_BL)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - started) / steps
