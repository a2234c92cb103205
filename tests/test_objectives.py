"""Objectives against hand computations and the any-order identity of docs/design.md,
'Identities the tests check'."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model, objectives
from jaxorder.objectives import l2r, mdm, r2l
from jaxorder.objectives.common import special_ids


def tiny_cfg(vocab_size: int = 260, **over) -> config_lib.Config:
    ov = [f"model.vocab_size={vocab_size}", "model.d_model=16", "model.n_layers=2", "model.n_heads=2",
          "model.max_len=16", "data.seq_len=8"] + [f"{k}={v}" for k, v in over.items()]
    return config_lib.load(None, ov)


def log_softmax_np(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_cfg()
    params = model.init_params(cfg.model, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (3, 8), 0, 256)
    return cfg, params, tokens


def test_l2r_loss_equals_hand_computed_cross_entropy(setup):
    cfg, params, tokens = setup
    bos = special_ids(cfg.model).bos
    inputs = np.concatenate([np.full((3, 1), bos), np.asarray(tokens)[:, :-1]], axis=1)
    logits = model.apply(params, cfg.model, jnp.asarray(inputs), jnp.broadcast_to(jnp.arange(8), (3, 8)),
                         "causal")
    logp = log_softmax_np(logits)
    expected = -np.mean([[logp[b, i, int(tokens[b, i])] for i in range(8)] for b in range(3)])
    value, metrics = l2r.loss(params, {"tokens": tokens}, jax.random.key(0), cfg)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
    nll_B = l2r.nll(params, {"tokens": tokens}, jax.random.key(0), cfg)
    assert objectives.get("l2r").exact
    np.testing.assert_allclose(np.asarray(nll_B).mean() / 8, expected, rtol=1e-5)


def test_l2r_is_causal(setup):
    """Changing a later token does not change the NLL of earlier positions."""
    cfg, params, tokens = setup
    changed = tokens.at[:, 5].set((tokens[:, 5] + 1) % 256)
    a = l2r.sequence_token_nll(params, tokens, cfg)
    b = l2r.sequence_token_nll(params, changed, cfg)
    np.testing.assert_allclose(a[:, :5], b[:, :5], rtol=1e-6)
    assert not np.allclose(a[:, 5:], b[:, 5:])


def test_r2l_equals_l2r_on_reversed_sequence(setup):
    cfg, params, tokens = setup
    rng = jax.random.key(0)
    r2l_loss, _ = r2l.loss(params, {"tokens": tokens}, rng, cfg)
    l2r_loss, _ = l2r.loss(params, {"tokens": tokens[:, ::-1]}, rng, cfg)
    np.testing.assert_allclose(float(r2l_loss), float(l2r_loss), rtol=1e-6)
    assert not np.isclose(float(r2l_loss), float(l2r.loss(params, {"tokens": tokens}, rng, cfg)[0]))
    np.testing.assert_allclose(r2l.nll(params, {"tokens": tokens}, rng, cfg),
                               l2r.nll(params, {"tokens": tokens[:, ::-1]}, rng, cfg), rtol=1e-6)


def test_mdm_never_predicts_mask_and_scores_only_masked_positions(setup):
    cfg, params, tokens = setup
    mask_id = special_ids(cfg.model).mask
    is_masked = jnp.asarray([[True, False] * 4] * 3)
    x_t = jnp.where(is_masked, mask_id, tokens)
    logp = mdm.masked_log_probs(params, x_t, cfg)
    assert np.all(np.isneginf(np.asarray(logp[..., mask_id])))
    np.testing.assert_allclose(np.exp(np.asarray(logp)).sum(-1), 1.0, rtol=1e-5)
    nll = mdm.masked_token_nll(params, tokens, x_t, is_masked, cfg)
    assert np.all(np.asarray(nll)[~np.asarray(is_masked)] == 0)
    assert np.all(np.asarray(nll)[np.asarray(is_masked)] > 0)


def test_antithetic_times_are_stratified():
    t = np.asarray(mdm.sample_times(jax.random.key(3), 8, 1e-3, True))
    u = (t - 1e-3) / (1 - 1e-3)
    np.testing.assert_allclose(np.sort(np.mod(u - u[0], 1.0)), np.arange(8) / 8, atol=1e-5)


# ---------------------------------------------------------------- the any-order identity (n = 3, 4 symbols)

N, SYMBOLS = 3, 4


@pytest.fixture(scope="module")
def enum_setup():
    cfg = tiny_cfg(vocab_size=SYMBOLS + 4, **{"data.seq_len": N, "objective.name": "mdm"})
    params = model.init_params(cfg.model, jax.random.key(7), N)
    x = jnp.asarray([[2, 0, 3]])
    return cfg, params, x


def _masked_nll_sum(params, cfg, x, masked: tuple[int, ...]) -> float:
    is_masked = jnp.asarray([[i in masked for i in range(N)]])
    x_t = jnp.where(is_masked, special_ids(cfg.model).mask, x)
    return float(mdm.masked_token_nll(params, x, x_t, is_masked, cfg).sum())


def _all_orders_nll(params, cfg, x) -> float:
    """Average over all n! reveal orders of the chain-rule NLL built from the masked conditionals."""
    total = 0.0
    mask_id = special_ids(cfg.model).mask
    for order in itertools.permutations(range(N)):
        for j, pos in enumerate(order):
            revealed = set(order[:j])
            x_t = jnp.asarray([[int(x[0, i]) if i in revealed else mask_id for i in range(N)]])
            logp = mdm.masked_log_probs(params, x_t, cfg)
            total -= float(logp[0, pos, int(x[0, pos])])
    return total / math.factorial(N)


def _exact_time_average(params, cfg, x) -> float:
    """E_{t~U(0,1)} E_mask[(1/t) sum_masked -log p] by Gauss-Legendre quadrature (exact: degree n-1)."""
    nodes, weights = np.polynomial.legendre.leggauss(N + 1)
    t_q, w_q = (nodes + 1) / 2, weights / 2
    subsets = [s for k in range(1, N + 1) for s in itertools.combinations(range(N), k)]
    nll = {s: _masked_nll_sum(params, cfg, x, s) for s in subsets}
    total = 0.0
    for t, w in zip(t_q, w_q):
        inner = sum(t ** len(s) * (1 - t) ** (N - len(s)) * nll[s] for s in subsets)
        total += w * inner / t
    return total


def test_mdm_time_average_equals_average_over_all_orders(enum_setup):
    cfg, params, x = enum_setup
    a = _exact_time_average(params, cfg, x)
    b = _all_orders_nll(params, cfg, x)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    # and the orders genuinely differ (the identity is not trivially an average of equal terms)
    per_order_gap = abs(_masked_nll_sum(params, cfg, x, (0, 1, 2)) - b)
    assert per_order_gap > 1e-3


def test_mdm_loss_monte_carlo_matches_exact_time_average(enum_setup):
    """The training loss (t sampling, masking, 1/t weighting) is an unbiased estimate of the identity."""
    cfg, params, x = enum_setup
    cfg = config_lib.from_dict({**config_lib.to_dict(cfg), "objective": {"name": "mdm", "mdm_eps": 1e-5}})
    exact = _exact_time_average(params, cfg, x) / N
    batch = {"tokens": jnp.tile(x, (64, 1))}
    draws = jax.jit(jax.vmap(lambda r: mdm.loss(params, batch, r, cfg)[0]))(
        jax.random.split(jax.random.key(11), 400))
    draws = np.asarray(draws)
    stderr = draws.std(ddof=1) / math.sqrt(len(draws))
    assert abs(draws.mean() - exact) < 4 * stderr, (draws.mean(), exact, stderr)


def test_registry_exposes_the_interface():
    for name in ("l2r", "r2l", "mdm"):
        objective = objectives.get(name)
        assert objective.name == name and callable(objective.loss) and callable(objective.nll)
        assert isinstance(objective.exact, bool)
    with pytest.raises(ValueError, match="unknown objective"):
        objectives.get("nope")


# ---------------------------------------------------------------- fixed-order scoring of an mdm model

def test_fixed_order_chain_rule_over_all_orders_matches_enumeration(enum_setup):
    from jaxorder.objectives.mdm import chain_rule_nll

    cfg, params, x = enum_setup
    orders = jnp.asarray(list(itertools.permutations(range(N))))
    nll = chain_rule_nll(params, jnp.tile(x, (len(orders), 1)), orders, cfg)
    np.testing.assert_allclose(float(nll.mean()), _all_orders_nll(params, cfg, x), rtol=1e-5)
    # l2r order, step by step with the masked conditionals
    mask_id = special_ids(cfg.model).mask
    expected = 0.0
    for j in range(N):
        x_t = jnp.asarray([[int(x[0, i]) if i < j else mask_id for i in range(N)]])
        expected -= float(mdm.masked_log_probs(params, x_t, cfg)[0, j, int(x[0, j])])
    np.testing.assert_allclose(float(nll[0]), expected, rtol=1e-5)


def test_greedy_order_reveals_most_confident_position_first(enum_setup):
    """Greedy's NLL is that of an order whose every step reveals a most-confident masked position.

    From the all-masked start the confidences tie (up to float noise), so any order that is greedy
    within 1e-4 at every step is accepted; later steps are not ties.
    """
    from jaxorder.objectives.mdm import chain_rule_nll

    cfg, params, x = enum_setup
    mask_id = special_ids(cfg.model).mask
    consistent = []
    for order in itertools.permutations(range(N)):
        x_t, nll, ok = np.full((1, N), mask_id), 0.0, True
        for pos in order:
            logp = np.asarray(mdm.masked_log_probs(params, jnp.asarray(x_t), cfg))[0]
            conf = np.where(x_t[0] == mask_id, logp.max(-1), -np.inf)
            ok &= conf[pos] >= conf.max() - 1e-4
            nll -= logp[pos, int(x[0, pos])]
            x_t[0, pos] = int(x[0, pos])
        if ok:
            consistent.append(nll)
    assert 0 < len(consistent) < math.factorial(N)
    greedy = float(chain_rule_nll(params, x, None, cfg)[0])
    assert min(abs(greedy - c) for c in consistent) < 1e-4 * max(1.0, abs(greedy))


def test_parse_orders():
    from jaxorder.config import ConfigError
    from jaxorder.evaluation.fixed_orders import parse_orders

    assert [s.label for s in parse_orders("l2r, r2l,random:8,greedy")] == ["l2r", "r2l", "random:8", "greedy"]
    for bad in ("random", "random:0", "l2r:3", "sideways", ""):
        with pytest.raises(ConfigError):
            parse_orders(bad)


def test_fixed_order_scores_of_an_any_order_model():
    """ao_ar: the l2r order score equals the yardstick; the K-order bound is below the orders' mean."""
    from jaxorder.evaluation.fixed_orders import parse_orders, score_orders
    from jaxorder.evaluation.yardstick import evaluate
    from jaxorder.training.optimizer import make_optimizer
    from jaxorder.training.state import init_state

    cfg = tiny_cfg(**{"objective.name": "ao_ar"})
    params = init_state(cfg, make_optimizer(cfg))["params"]
    batches = [np.asarray(jax.random.randint(jax.random.key(i), (4, 8), 0, 256)) for i in range(2)]
    scores = score_orders(params, cfg, batches, 1.0, parse_orders("l2r,r2l,random:3"))
    yardstick = evaluate(params, cfg, batches, 1.0)
    np.testing.assert_allclose(scores["l2r"]["bpb"], yardstick["bpb"], rtol=1e-5)
    assert yardstick["kind"] == "exact (l2r order)"
    assert scores["logmeanexp:3"]["bpb"] <= scores["random:3"]["bpb"] + 1e-6
    assert abs(scores["r2l"]["bpb"] - scores["l2r"]["bpb"]) > 1e-4
    with pytest.raises(Exception, match="greedy"):
        score_orders(params, cfg, batches, 1.0, parse_orders("greedy"))
