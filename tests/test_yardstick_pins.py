"""The yardstick's numbers pinned against hand computations at bytes_per_token != 1.

Every other test feeds about one byte per token, where a wrong bytes-per-token factor in bits/byte
is invisible; and a `random:K` fixed-order score that silently used the l2r order would still pass
any test that only compares orders to each other. Tiny random-init models (vocabulary 260, 8-token
windows, 2 batches of 3 windows) keep every test to a few seconds on CPU.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model, objectives
from jaxorder.evaluation.fixed_orders import OrderSpec, order_matrix, parse_orders, score_orders
from jaxorder.evaluation.yardstick import evaluate
from jaxorder.objectives import ao_ar, mdm
from jaxorder.objectives.common import special_ids

LENGTH, ROWS, BATCHES = 8, 3, 2
EVAL_SEED = 7  # not the default 1234: evaluate must use cfg.eval.seed
ORDER_SEED = 5  # not the default 0: score_orders must use its seed argument
K = 3

# eager op-by-op dispatch is slow on CPU: every model call in this file is jitted
masked_log_probs = jax.jit(mdm.masked_log_probs, static_argnums=(2,))
order_nll = jax.jit(ao_ar.order_nll, static_argnums=(3,))
_init_params = jax.jit(model.init_params, static_argnums=(0, 2, 3))


def tiny_cfg(objective: str) -> config_lib.Config:
    return config_lib.load(None, [
        "model.vocab_size=260", "model.d_model=16", "model.n_layers=2", "model.n_heads=2", "model.max_len=16",
        f"data.seq_len={LENGTH}", f"data.batch_size={ROWS}", f"objective.name={objective}",
        "eval.mdm_time_samples=2", f"eval.seed={EVAL_SEED}"])


def tiny_params(cfg: config_lib.Config):
    """One compiled init for every objective (the model config is shared); drops unused target positions."""
    params = _init_params(cfg.model, jax.random.key(0), LENGTH, True)
    if objectives.of(cfg).target_positions:
        return params
    return {k: v for k, v in params.items() if k != "target_embed"}


def val_batches() -> list[np.ndarray]:
    return [np.asarray(jax.random.randint(jax.random.key(100 + i), (ROWS, LENGTH), 0, 256), np.int32)
            for i in range(BATCHES)]


def bpb_of(nll_N: np.ndarray, bytes_per_token: float) -> tuple[float, float]:
    """(bits/byte, its standard error) of per-window NLLs in nats, computed in float64."""
    per_token_N = np.asarray(nll_N, np.float64) / LENGTH
    to_bpb = 1.0 / (math.log(2.0) * bytes_per_token)
    stderr = per_token_N.std(ddof=1) / math.sqrt(len(per_token_N))
    return per_token_N.mean() * to_bpb, stderr * to_bpb


def hand_chain_rule_nll(params, cfg: config_lib.Config, tokens_RL: np.ndarray,
                        orders_RL: np.ndarray) -> np.ndarray:
    """Per-row NLL [R] of revealing tokens in `orders_RL`, one masked_log_probs call per step."""
    rows_R = np.arange(len(tokens_RL))
    x_t_RL = np.full_like(tokens_RL, special_ids(cfg.model).mask)
    nll_R = np.zeros(len(tokens_RL))
    for j in range(tokens_RL.shape[1]):
        logp_RLV = np.asarray(masked_log_probs(params, jnp.asarray(x_t_RL), cfg), np.float64)
        pos_R = orders_RL[:, j]
        nll_R -= logp_RLV[rows_R, pos_R, tokens_RL[rows_R, pos_R]]
        x_t_RL[rows_R, pos_R] = tokens_RL[rows_R, pos_R]
    return nll_R


@pytest.fixture(scope="module")
def models() -> dict:
    """{objective: (cfg, params)}, built once for the file."""
    out = {}
    for name in ("l2r", "mdm", "ao_ar"):
        cfg = tiny_cfg(name)
        out[name] = (cfg, tiny_params(cfg))
    return out


# ------------------------------------------------------------------------------ evaluate (the yardstick)

@pytest.mark.parametrize("name", ["l2r", "mdm", "ao_ar"])
def test_evaluate_bpb_and_stderr_equal_hand_computation(models, name):
    """bpb = mean(NLL / tokens) / (ln 2 * bytes_per_token), at two bytes_per_token values.

    The NLLs come from the objective's nll with evaluate's rng derivation, fold_in(key(eval.seed), i).
    """
    cfg, params = models[name]
    batches = val_batches()
    nll_fn = jax.jit(lambda p, t, r: objectives.get(name).nll(p, {"tokens": t}, r, cfg))
    key = jax.random.key(cfg.eval.seed)
    nll_N = np.concatenate([np.asarray(nll_fn(params, jnp.asarray(t), jax.random.fold_in(key, i)))
                            for i, t in enumerate(batches)])
    for bytes_per_token in (2.5, 1.7):
        # evaluate's default nll_fn is this same jitted objective.nll: sharing it saves two compiles
        result = evaluate(params, cfg, batches, bytes_per_token, nll_fn=nll_fn)
        bpb, stderr = bpb_of(nll_N, bytes_per_token)
        np.testing.assert_allclose(result["bpb"], bpb, rtol=1e-6)
        np.testing.assert_allclose(result["bpb_stderr"], stderr, rtol=1e-5)
        np.testing.assert_allclose(result["nll_per_token"], nll_N.mean() / LENGTH, rtol=1e-6)
        assert result["windows"] == BATCHES * ROWS and result["tokens"] == BATCHES * ROWS * LENGTH


# ------------------------------------------------------------------------------ fixed-order scoring

@pytest.fixture(scope="module")
def scores(models) -> dict:
    """{objective: score_orders result} for l2r and random:K at 2.5 bytes/token (one call per model)."""
    out = {}
    for name in ("mdm", "ao_ar"):
        cfg, params = models[name]
        out[name] = score_orders(params, cfg, val_batches(), 2.5, parse_orders(f"l2r,random:{K}"), ORDER_SEED)
    return out


def test_score_orders_l2r_of_mdm_model_equals_hand_chain_rule(models, scores):
    cfg, params = models["mdm"]
    l2r_RL = np.tile(np.arange(LENGTH), (ROWS, 1))
    nll_N = np.concatenate([hand_chain_rule_nll(params, cfg, t, l2r_RL) for t in val_batches()])
    bpb, stderr = bpb_of(nll_N, 2.5)
    np.testing.assert_allclose(scores["mdm"]["l2r"]["bpb"], bpb, rtol=1e-5)
    np.testing.assert_allclose(scores["mdm"]["l2r"]["bpb_stderr"], stderr, rtol=1e-4)
    assert scores["mdm"]["l2r"]["windows"] == BATCHES * ROWS


def test_score_orders_l2r_of_ao_ar_model_equals_identity_order_nll(models, scores):
    cfg, params = models["ao_ar"]
    ident_RL = ao_ar.identity_orders(ROWS, LENGTH)
    nll_N = np.concatenate([np.asarray(order_nll(params, jnp.asarray(t), ident_RL, cfg))
                            for t in val_batches()])
    bpb, stderr = bpb_of(nll_N, 2.5)
    np.testing.assert_allclose(scores["ao_ar"]["l2r"]["bpb"], bpb, rtol=1e-6)
    np.testing.assert_allclose(scores["ao_ar"]["l2r"]["bpb_stderr"], stderr, rtol=1e-5)


def random_k_orders(i: int) -> np.ndarray:
    """Batch i's random:K orders [K * B, L], with score_orders' rng derivation fold_in(key(seed), i)."""
    rng = jax.random.fold_in(jax.random.key(ORDER_SEED), i)
    return order_matrix(OrderSpec("random", K), ROWS, LENGTH, rng)


def test_random_order_matrix_gives_each_window_k_distinct_permutations():
    """Row k * B + b is window b's k-th order: a permutation, the K of a window pairwise distinct."""
    for i in range(BATCHES):
        orders = random_k_orders(i)
        assert orders.shape == (K * ROWS, LENGTH)
        for row in orders:
            assert sorted(row.tolist()) == list(range(LENGTH))
        orders_KBL = orders.reshape(K, ROWS, LENGTH)
        for b in range(ROWS):
            assert len({tuple(orders_KBL[k, b]) for k in range(K)}) == K
        assert not (orders == np.arange(LENGTH)).all(axis=1).any()  # no row is the l2r order


def _random_k_hand_nll(params, cfg: config_lib.Config) -> np.ndarray:
    """Per-window mean of the exact NLL over its K random orders [N] (orders drawn as score_orders does)."""
    per_window = []
    for i, tokens_BL in enumerate(val_batches()):
        orders = random_k_orders(i)
        stacked = np.tile(tokens_BL, (K, 1))  # row k * B + b, as the orders
        if cfg.objective.name == "mdm":
            nll_R = hand_chain_rule_nll(params, cfg, stacked, orders)
        else:
            nll_R = np.asarray(order_nll(params, jnp.asarray(stacked), jnp.asarray(orders), cfg), np.float64)
        per_window.append(nll_R.reshape(K, ROWS).mean(axis=0))
    return np.concatenate(per_window)


@pytest.mark.parametrize("name", ["mdm", "ao_ar"])
def test_score_orders_random_k_is_the_mean_over_k_random_orders(models, scores, name):
    """random:K differs from l2r and equals the hand mean over the K drawn orders (2.5 bytes/token)."""
    cfg, params = models[name]
    random_k, l2r = scores[name][f"random:{K}"], scores[name]["l2r"]
    bpb, stderr = bpb_of(_random_k_hand_nll(params, cfg), 2.5)
    assert abs(random_k["bpb"] - l2r["bpb"]) > 1e-3 * l2r["bpb"]
    np.testing.assert_allclose(random_k["bpb"], bpb, rtol=1e-5)
    np.testing.assert_allclose(random_k["bpb_stderr"], stderr, rtol=1e-4)
