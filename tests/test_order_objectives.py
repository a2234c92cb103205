"""Order objectives (ao_ar, latent_order; bd3 in test_bd3.py) against brute-force enumeration on a tiny
vocabulary.

Vocabulary: 4 symbols + PAD, MASK, BOS, EOS; windows of n = 3 or 4 tokens; random (untrained)
parameters, so every conditional is a non-trivial function of its inputs.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model, objectives
from jaxorder.objectives import ao_ar, latent_order
from jaxorder.objectives.common import special_ids
from jaxorder.training.optimizer import make_optimizer
from jaxorder.training.state import init_state
from jaxorder.training.step import make_train_step

SYMBOLS = 4
VOCAB = SYMBOLS + 4


def tiny_cfg(n: int = 4, **over) -> config_lib.Config:
    ov = ([f"model.vocab_size={VOCAB}", "model.d_model=16", "model.n_layers=2", "model.n_heads=2",
           "model.max_len=16", f"data.seq_len={n}", "data.batch_size=8"]
          + [f"{k}={v}" for k, v in over.items()])
    return config_lib.load(None, ov)


# eager op-by-op dispatch is slow on CPU: every model call in this file is jitted
apply = jax.jit(model.apply, static_argnums=(1, 4))
_init_params = jax.jit(model.init_params, static_argnums=(0, 2, 3))


def init_params(model_cfg, rng, target_positions: bool):
    """One compiled init for the whole file (initializing is the slowest compile here)."""
    params = _init_params(model_cfg, rng, 4, True)
    return params if target_positions else {k: v for k, v in params.items() if k != "target_embed"}
order_nll = jax.jit(ao_ar.order_nll, static_argnums=(3,))
orders_nll = jax.jit(latent_order.orders_nll, static_argnums=(3,))


def log_softmax_np(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def subs_log_softmax_np(logits, mask_id):
    x = np.array(logits, np.float64)
    x[..., mask_id] = -np.inf
    return log_softmax_np(x)


# ----------------------------------------------------------------------------------------- ao_ar

@pytest.fixture(scope="module")
def ao_setup():
    n = 4
    cfg = tiny_cfg(n, **{"objective.name": "ao_ar"})
    params = init_params(cfg.model, jax.random.key(5), True)
    x = jnp.asarray([[2, 0, 3, 3], [1, 1, 0, 2]], jnp.int32)
    return cfg, params, x


def _brute_force_order_nll(params, cfg, x, orders) -> np.ndarray:
    """[B, O]: for each sequence and order, n separate causal passes; pass j sees only
    [BOS, x_s0..x_s(j-1)] at positions [0, s0..s(j-1)] with targets [s0..sj] and predicts x_sj
    from its last slot (no permuted full sequence is ever built)."""
    B, n = x.shape
    bos = special_ids(cfg.model).bos
    orders = np.asarray(orders)
    out = np.zeros((B, len(orders)))
    xs = np.repeat(np.asarray(x), len(orders), axis=0)  # row b*O + o
    os_ = np.tile(orders, (B, 1))
    for j in range(n):
        prefix = np.take_along_axis(xs, os_[:, :j], axis=1)
        inp = np.concatenate([np.full((len(xs), 1), bos), prefix], axis=1)
        pos = np.concatenate([np.zeros((len(xs), 1), int), os_[:, :j]], axis=1)
        logits = apply(params, cfg.model, jnp.asarray(inp), jnp.asarray(pos), "causal",
                       jnp.asarray(os_[:, :j + 1]))
        logp = log_softmax_np(logits[:, -1])
        target = xs[np.arange(len(xs)), os_[:, j]]
        out -= logp[np.arange(len(xs)), target].reshape(B, len(orders))
    return out


def test_ao_ar_one_pass_nll_equals_brute_force_chain_rule(ao_setup):
    """For all 4! orders of two sequences, the one-pass order NLL equals the chain rule built from
    n separate prefix passes (1e-5): the permuted causal pass leaks no target token."""
    cfg, params, x = ao_setup
    orders = np.array(list(itertools.permutations(range(x.shape[1]))))
    brute = _brute_force_order_nll(params, cfg, x, orders)
    one_pass = np.stack([np.asarray(order_nll(params, jnp.tile(x[b:b + 1], (len(orders), 1)),
                                              jnp.asarray(orders), cfg))
                         for b in range(x.shape[0])])
    np.testing.assert_allclose(one_pass, brute, rtol=1e-5)
    assert brute.std(axis=1).min() > 1e-3  # orders genuinely differ
    nll_B = jax.jit(ao_ar.nll, static_argnums=(3,))(params, {"tokens": x}, jax.random.key(0), cfg)
    assert objectives.get("ao_ar").exact
    np.testing.assert_allclose(np.asarray(nll_B), brute[:, 0], rtol=1e-5)  # identity = orders[0]


def test_ao_ar_needs_and_uses_the_target_position(ao_setup):
    cfg, params, x = ao_setup
    pos = jnp.broadcast_to(jnp.arange(4), x.shape)
    a = apply(params, cfg.model, x, pos, "causal", pos)
    b = apply(params, cfg.model, x, pos, "causal", pos.at[:, 2].set(3))
    np.testing.assert_allclose(np.asarray(a[:, :2]), np.asarray(b[:, :2]), atol=1e-6)
    assert not np.allclose(np.asarray(a[:, 2]), np.asarray(b[:, 2]), atol=1e-4)
    plain = init_params(cfg.model, jax.random.key(5), False)
    assert "target_embed" in params and "target_embed" not in plain
    with pytest.raises(ValueError, match="target positions"):
        model.apply(plain, cfg.model, x, pos, "causal", pos)


def test_ao_ar_order_distribution():
    n, B = 6, 4000
    ident = np.arange(n)
    o = np.asarray(ao_ar.sample_orders(jax.random.key(0), B, n, 1.0, 0.0))
    assert np.all(o == ident)
    o = np.asarray(ao_ar.sample_orders(jax.random.key(0), B, n, 0.0, 1.0))
    assert np.all(o == ident[::-1])
    o = np.asarray(ao_ar.sample_orders(jax.random.key(0), B, n, 0.3, 0.2))
    assert np.all(np.sort(o, axis=1) == ident)  # permutations
    is_l2r, is_r2l = np.all(o == ident, 1).mean(), np.all(o == ident[::-1], 1).mean()
    # uniform permutations add 1/720 to each; 4 sigma of a binomial with B = 4000 is ~0.03
    assert abs(is_l2r - 0.3) < 0.03 and abs(is_r2l - 0.2) < 0.03
    first = o[np.any(o != ident, 1) & np.any(o != ident[::-1], 1), 0]
    np.testing.assert_allclose(np.bincount(first, minlength=n) / len(first), 1 / n, atol=0.03)


# ---------------------------------------------------------------------------------- latent_order

@pytest.fixture(scope="module")
def latent_setup():
    """n = 3, all 3! = 6 orders, their exact per-order log-likelihoods l_BK [B, 6] (one-pass, float64)."""
    n = 3
    cfg = tiny_cfg(n, **{"objective.name": "latent_order", "objective.num_orders": 6})
    params = init_params(cfg.model, jax.random.key(9), True)
    x = jnp.asarray([[2, 0, 3], [1, 1, 0], [3, 2, 2]], jnp.int32)
    orders = np.array(list(itertools.permutations(range(n))))
    l_BK = -_brute_force_order_nll(params, cfg, x, orders)
    return cfg, params, x, orders, l_BK


def _lme(a, axis=-1):
    m = a.max(axis, keepdims=True)
    return (m + np.log(np.exp(a - m).mean(axis, keepdims=True))).squeeze(axis)


def test_latent_order_bound_over_all_orders_is_log_mean_exp(latent_setup):
    """K = n! covering all orders: the objective's bound equals -log (1/n!) sum_sigma p(x | sigma),
    i.e. the exact NLL of the uniform order mixture, and is <= the sum-of-logs average (strictly
    here, since the orders disagree)."""
    cfg, params, x, orders, l_BK = latent_setup
    orders_BKL = jnp.tile(jnp.asarray(orders)[None], (x.shape[0], 1, 1))
    bound, l_obj = orders_nll(params, x, orders_BKL, cfg)
    np.testing.assert_allclose(np.asarray(l_obj), l_BK, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(bound), -_lme(l_BK), rtol=1e-5)
    avg_nll = -l_BK.mean(axis=1)
    assert np.all(np.asarray(bound) < avg_nll - 1e-4)


def test_latent_order_bound_tightens_weakly_with_k(latent_setup):
    """For every K, the exact expectation over all K-subsets (without replacement) of the n! orders
    of the objective's bound, each subset scored by one call with explicit orders. Nested-subset
    Jensen argument: E_K <= E_{K-1}. E_1 is the sum-of-logs average, E_{n!} the log-mean-exp over
    all orders; every single subset's bound is <= its own sum-of-logs average."""
    cfg, params, x, orders, l_BK = latent_setup
    n_orders = len(orders)
    expected = []
    for k in range(1, n_orders + 1):
        subsets = np.array(list(itertools.combinations(range(n_orders), k)))  # [S, k]
        S = len(subsets)
        tokens = jnp.repeat(x, S, axis=0)  # row b*S + s
        orders_BKL = jnp.asarray(np.tile(orders[subsets], (x.shape[0], 1, 1)))
        bound, _ = orders_nll(params, tokens, orders_BKL, cfg)
        bound = np.asarray(bound).reshape(x.shape[0], S)
        avg = -l_BK[:, subsets].mean(axis=2)  # [B, S]
        assert np.all(bound <= avg + 1e-5)
        expected.append(bound.mean(axis=1))
    expected = np.array(expected)  # [K, B]
    assert np.all(np.diff(expected, axis=0) <= 1e-5), expected
    assert np.all(expected[0] - expected[-1] > 1e-3)
    np.testing.assert_allclose(expected[0], -l_BK.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(expected[-1], -_lme(l_BK), rtol=1e-5)


def test_latent_order_candidates_and_posterior_weights(latent_setup):
    cfg, params, x, orders, l_BK = latent_setup
    o = np.asarray(latent_order.candidate_orders(jax.random.key(0), 5, 7, 4, True))
    assert o.shape == (5, 4, 7)
    assert np.all(o[:, 0] == np.arange(7)) and np.all(o[:, 1] == np.arange(7)[::-1])
    assert np.all(np.sort(o, axis=2) == np.arange(7))
    assert latent_order.candidate_orders(jax.random.key(0), 5, 7, 3, False).shape == (5, 3, 7)
    cfg4 = config_lib.from_dict({**config_lib.to_dict(cfg),
                                 "objective": {"name": "latent_order", "num_orders": 4}})
    value, m = jax.jit(latent_order.loss, static_argnums=(3,))(params, {"tokens": x}, jax.random.key(1), cfg4)
    np.testing.assert_allclose(float(m["w_l2r"] + m["w_r2l"] + 2 * m["w_random"]), 1.0, rtol=1e-5)
    assert float(value) <= float(m["nll_per_token_avg_order"]) + 1e-6
    # the l2r/r2l weights are the posterior of candidates 0/1, computed from exact order likelihoods
    l_fixed = np.stack([l_BK[:, 0], l_BK[:, -1]], 1)  # orders[0] = identity, orders[-1] = reversal
    assert np.all(np.isfinite(l_fixed))
    nll_B = jax.jit(lambda p, t, r: latent_order.nll(p, {"tokens": t}, r, cfg4))(params, x, jax.random.key(2))
    assert not objectives.get("latent_order").exact and nll_B.shape == (3,)


# ------------------------------------------------------------------------------ every objective

NEW_OBJECTIVES = ["bd3", "ao_ar", "latent_order", "ilm", "learned_order"]


@pytest.mark.parametrize("name", NEW_OBJECTIVES)
def test_registry_interface_and_training(name):
    """objectives.get works; train.init_state builds the right model (target-position table only for
    ao_ar / latent_order); nll has the interface; a few jitted train steps on a fixed, learnable
    batch give a finite loss that falls by > 30%."""
    module = objectives.get(name)
    assert callable(module.loss) and callable(module.nll) and isinstance(module.exact, bool)
    cfg = tiny_cfg(8, **{"objective.name": name, "optimizer.lr": 1e-2, "optimizer.warmup_steps": 0,
                         "train.steps": 25})
    optimizer = make_optimizer(cfg)
    state = init_state(cfg, optimizer)
    assert ("target_embed" in state["params"]) == module.target_positions
    tokens = jnp.tile(jnp.arange(8, dtype=jnp.int32) % SYMBOLS, (8, 1))  # a fixed, learnable batch
    nll_fn = jax.jit(lambda p, t, r: module.nll(p, {"tokens": t}, r, cfg))
    nll_B = np.asarray(nll_fn(state["params"], tokens, jax.random.key(1)))
    assert nll_B.shape == (8,) and np.all(np.isfinite(nll_B))
    step = jax.jit(make_train_step(cfg, optimizer))
    losses = []
    for _ in range(25):
        state, metrics = step(state, tokens)
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
