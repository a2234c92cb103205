"""The MDM identity on a trained model, through the code paths `eval` uses.

The MDM ELBO is the expectation over uniformly random reveal orders of the chain-rule NLL of the
masked conditionals (tests/test_objectives.py proves it by enumeration on n = 3 with random
weights). Here the two *estimators* the study reports are compared on a trained tiny model at
n = 32: `eval --orders random:K` (the objective's `order_scoring.order_nll`) and the yardstick
(the objective's `nll`, t-sampled). Their expectations differ only by the t >= mdm_eps
truncation, which is bounded below and is far under the test's tolerance. A wrong time weight, a
wrong mask rate or a scorer that reveals the wrong position moves one estimator and not the other.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import objectives
from jaxorder.data.pipeline import make_data
from jaxorder.evaluation.runs import load_params

from conftest import TINY, train_on_corpus

WINDOWS, ORDERS, TIME_DRAWS = 16, 64, 256


@pytest.fixture(scope="module")
def trained_mdm(tmp_path_factory, text_corpus):
    run_dir = tmp_path_factory.mktemp("mdm_identity") / "run"
    train_on_corpus(run_dir, (*TINY, "objective.name=mdm"), text_corpus, steps=150)
    cfg, params, _ = load_params(run_dir)
    data = make_data(cfg.data)
    # the identity holds for any window: held-out ones first, then training ones to make up the count
    windows_WL = np.concatenate([data.val_windows, data.train_windows])[:WINDOWS].astype(np.int32)
    return cfg, params, windows_WL


def _per_window_estimates(cfg, params, windows_WL: np.ndarray) -> tuple[np.ndarray, ...]:
    """(mean, standard error) per window of the random-order NLL and of the ELBO, in nats/token."""
    objective = objectives.of(cfg)
    n_windows, length = windows_WL.shape
    order_nll = jax.jit(lambda t, o: objective.order_scoring.order_nll(params, t, o, cfg))
    one_draw = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, mdm_time_samples=1))
    elbo = jax.jit(lambda t, r: objective.nll(params, {"tokens": t}, r, one_draw))
    keys = jax.random.split(jax.random.key(3), n_windows)
    orders_WKL = np.asarray(jax.vmap(
        lambda k: jax.vmap(lambda kk: jax.random.permutation(kk, length))(jax.random.split(k, ORDERS)))(keys))
    nll_WK = np.asarray(order_nll(jnp.asarray(np.repeat(windows_WL, ORDERS, axis=0)),
                                  jnp.asarray(orders_WKL.reshape(-1, length)))).reshape(n_windows, ORDERS)
    # each call draws one t per window; the draws of different calls are independent
    draws_SW = np.stack([np.asarray(elbo(jnp.asarray(windows_WL), jax.random.key(100 + s)))
                         for s in range(TIME_DRAWS)])
    nll_WK, draws_WS = nll_WK / length, draws_SW.T / length
    return (nll_WK.mean(1), nll_WK.std(1, ddof=1) / math.sqrt(ORDERS),
            draws_WS.mean(1), draws_WS.std(1, ddof=1) / math.sqrt(TIME_DRAWS))


# ~15 s on an idle 2-core machine (a 150-step run, then 1024 order scorings and 256 ELBO draws); the
# enumeration tests at n = 3 in tests/test_objectives.py check the same identity exactly
def test_mean_over_random_orders_equals_the_elbo_on_a_trained_model(trained_mdm):
    cfg, params, windows_WL = trained_mdm
    assert len(windows_WL) == WINDOWS
    orders_W, orders_se_W, elbo_W, elbo_se_W = _per_window_estimates(cfg, params, windows_WL)
    diff = float((orders_W - elbo_W).mean())
    se = float(np.sqrt((orders_se_W ** 2 + elbo_se_W ** 2).sum()) / WINDOWS)
    # t >= eps leaves out at most the integral over (0, eps) of (1/t) E[masked NLL sum], which is
    # about eps * (NLL per token with full context) per token; mdm_eps = 1e-3 keeps it under 0.01 * se
    assert cfg.objective.mdm_eps <= 1e-3
    assert abs(diff) < 3 * se, (diff, se, orders_W.mean(), elbo_W.mean())
    # trained: the model is far better than uniform, and single orders really differ from one another
    uniform = math.log(cfg.model.vocab_size)
    assert orders_W.mean() < 0.8 * uniform
    assert orders_se_W.mean() > 1e-3
