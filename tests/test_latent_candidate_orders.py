"""latent_order's named fixed candidates (`objective.candidate_orders`): the loss is over exactly the
named orders (against a float64 reference built by hand), configs without the option keep their
candidates bit for bit, one posterior-weight metric per named candidate, one-line ConfigErrors."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model
from jaxorder.config import ConfigError
from jaxorder.objectives import ao_ar, latent_order

N = 8
TINY = ("objective.name=latent_order", "model.d_model=16", "model.n_layers=1", "model.n_heads=2",
        f"data.seq_len={N}", f"model.max_len={N}")
# written out by hand, independent of the spec parser: perm:3,1,0,2- and perm:7-4,0-3
NAMED = "perm:3,1,0,2-,perm:7-4,0-3"
NAMED_ORDERS = np.array([[3, 1, 0, 2, 4, 5, 6, 7], [7, 6, 5, 4, 0, 1, 2, 3]])


def _cfg(*overrides: str) -> config_lib.Config:
    return config_lib.load(None, (*TINY, *overrides))


@pytest.fixture(scope="module")
def setup():
    cfg = _cfg()
    params = model.init_params(cfg.model, jax.random.key(0), target_positions=True)
    tokens = jax.random.randint(jax.random.key(1), (3, N), 0, 256)
    return params, tokens


def _reference(params, tokens, orders_KN: np.ndarray, cfg) -> tuple[np.ndarray, np.ndarray]:
    """(-log mean_k p(x | sigma_k) [B], posterior weights [B, K]) in float64 from one order at a time."""
    l_BK = np.stack([-np.asarray(ao_ar.order_nll(params, tokens, np.tile(o, (tokens.shape[0], 1)), cfg),
                                 np.float64) for o in orders_KN], axis=1)
    top = l_BK.max(axis=1, keepdims=True)
    bound = -(top[:, 0] + np.log(np.exp(l_BK - top).mean(axis=1)))
    w = np.exp(l_BK - top) / np.exp(l_BK - top).sum(axis=1, keepdims=True)
    return bound, w


def test_loss_and_nll_are_over_exactly_the_named_orders(setup):
    """K = 2 named candidates, no l2r/r2l, no random ones: loss, nll and the two weights equal the
    reference over the hand-written orders (a wrong order, a dropped or a random candidate would not)."""
    params, tokens = setup
    cfg = _cfg(f"objective.candidate_orders={NAMED}", "objective.include_fixed_orders=false",
               "objective.num_orders=2")
    want_B, w_BK = _reference(params, tokens, NAMED_ORDERS, cfg)
    value, m = latent_order.loss(params, {"tokens": tokens}, jax.random.key(5), cfg)
    np.testing.assert_allclose(float(value), want_B.mean() / N, rtol=1e-5)
    nll_B = latent_order.nll(params, {"tokens": tokens}, jax.random.key(6), cfg)
    np.testing.assert_allclose(np.asarray(nll_B), want_B, rtol=1e-5)
    assert set(k for k in m if k.startswith("w_")) == {"w_perm_3_1_0_2-", "w_perm_7-4_0-3"}
    np.testing.assert_allclose(float(m["w_perm_3_1_0_2-"]), w_BK[:, 0].mean(), rtol=1e-4)
    np.testing.assert_allclose(float(m["w_perm_7-4_0-3"]), w_BK[:, 1].mean(), rtol=1e-4)


def test_named_candidates_follow_l2r_r2l_and_precede_the_random_ones(setup):
    """include_fixed_orders keeps its meaning: [l2r, r2l, named..., random...]; the weights of every
    kind sum to 1 (w_random is the mean over the random candidates)."""
    params, tokens = setup
    cfg = _cfg("objective.candidate_orders=perm:3,1,0,2-", "objective.num_orders=5")
    o = np.asarray(latent_order.candidate_orders(jax.random.key(0), 3, N, 5, True, "perm:3,1,0,2-"))
    assert o.shape == (3, 5, N)
    head = np.stack([np.arange(N), np.arange(N)[::-1], NAMED_ORDERS[0]])
    np.testing.assert_array_equal(o[:, :3], np.broadcast_to(head, (3, 3, N)))
    assert np.all(np.sort(o[:, 3:], axis=2) == np.arange(N)) and not np.array_equal(o[:, 3], o[:, 4])
    _, m = latent_order.loss(params, {"tokens": tokens}, jax.random.key(1), cfg)
    total = float(m["w_l2r"] + m["w_r2l"] + m["w_perm_3_1_0_2-"] + 2 * m["w_random"])
    np.testing.assert_allclose(total, 1.0, rtol=1e-5)


def test_without_named_candidates_the_draw_is_unchanged():
    """The old construction (l2r, r2l, then random_orders of the same key), bit for bit: existing configs
    and their seeds keep their candidates."""
    key = jax.random.key(3)
    for fixed in (True, False):
        o = np.asarray(latent_order.candidate_orders(key, 4, N, 5, fixed))
        num_random = 3 if fixed else 5
        random = np.asarray(ao_ar.random_orders(key, 4 * num_random, N)).reshape(4, num_random, N)
        head = [np.arange(N), np.arange(N)[::-1]] if fixed else []
        want = np.concatenate([np.broadcast_to(np.asarray(head, np.int32).reshape(-1, N), (4, len(head), N)),
                               random], axis=1)
        np.testing.assert_array_equal(o, want)


def test_a_yaml_list_is_the_comma_list(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("objective: {name: latent_order, num_orders: 4,\n"
                    "            candidate_orders: [l2r, 'perm:3,1,0,2-']}\n"
                    f"data: {{seq_len: {N}}}\nmodel: {{max_len: {N}}}\n")
    cfg = config_lib.load(str(path), ("objective.include_fixed_orders=false",))
    assert cfg.objective.candidate_orders == "l2r,perm:3,1,0,2-"


@pytest.mark.parametrize("overrides, message", [
    (("objective.candidate_orders=perm:0,0,1-",), "index 0 appears twice"),
    (("objective.candidate_orders=perm:0-6",), "index 7 is missing for a window of 8 tokens"),
    (("objective.candidate_orders=perm:0-9",), "index 8 is out of range for a window of 8 tokens"),
    (("objective.candidate_orders=perm:1,0x,2-",), "bad token '0x'"),
    (("objective.candidate_orders=zigzag",), "unknown order 'zigzag'"),
    (("objective.candidate_orders=perm@orders.txt",), "not a perm@FILE"),
    (("objective.candidate_orders=perm:0-",), "'perm:0-' is the same order as 'l2r' (include_fixed_orders"),
    (("objective.candidate_orders=perm:3,1,0,2-,perm:3,1,0,2,4-7",), "the same order as 'perm:3,1,0,2-'"),
    (("objective.candidate_orders=perm:3,1,0,2-", "objective.num_orders=2"),
     "num_orders=2 is less than the 3 fixed candidates (l2r, r2l, perm:3,1,0,2-)"),
    (("objective.candidate_orders=perm:0-7", "objective.include_fixed_orders=false", "data.seq_len=6"),
     "index 6 is out of range for a window of 6 tokens"),  # written for the model's 8, the windows are 6
])
def test_bad_candidate_lists_are_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError) as e:
        _cfg(*overrides)
    assert message in str(e.value) and "\n" not in str(e.value)
