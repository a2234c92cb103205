"""Any-order AR sampling (jaxorder.sampling.any_order): cached = uncached, chain rule, greedy rule,
fixed tokens, seeds, latent_order runs, errors. A tiny randomly initialised ao_ar model."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model, sampling
from jaxorder.objectives import ao_ar
from jaxorder.objectives.common import special_ids
from jaxorder.sampling import SamplerOptions
from jaxorder.sampling.any_order import ORDERS

from conftest import spec, with_options


def sample(params, cfg, tokens_BL, key, oc: tuple = ("l2r", SamplerOptions()), collect_logits: bool = False):
    return sampling.sample(params, cfg, tokens_BL, key, oc[0],
                           dataclasses.replace(oc[1], collect_logits=collect_logits))

TINY = ("model.d_model=32", "model.n_layers=2", "model.n_heads=2", "data.seq_len=16")
L = 16
MASK = 257  # vocab 260: PAD 256, MASK 257, BOS 258, EOS 259
BANNED = [256, 257, 258]


def _rows(fixed: list[dict[int, int]]) -> np.ndarray:
    rows = np.full((len(fixed), L), MASK, np.int32)
    for r, f in enumerate(fixed):
        rows[r, list(f)] = list(f.values())
    return rows


# Ragged: 2, 5 and 7 fixed tokens (a prefix, a longer prefix, an infilling template); prefill 2.
RAGGED = _rows([{0: 10, 1: 11}, dict(zip(range(5), (1, 2, 3, 4, 5))),
                {0: 20, 1: 21, 2: 22, 6: 23, 7: 24, 8: 25, 15: 26}])
# Nothing fixed in row 0, a prefix in row 1; no prefill.
FREE = _rows([{}, dict(zip(range(5), (1, 2, 3, 4, 5)))])


@pytest.fixture(scope="module", params=["current", "target"])  # model.query_positions
def tiny(request):
    cfg = config_lib.load(None, ("objective.name=ao_ar", f"model.query_positions={request.param}", *TINY))
    assert special_ids(cfg.model).mask == MASK
    return cfg, model.init_params(cfg.model, jax.random.key(0), target_positions=True)


def _get(out: dict) -> dict:
    return {k: np.asarray(v) for k, v in jax.device_get(out).items()}


def _check_filled(inputs: np.ndarray, out: dict) -> None:
    """Fixed tokens kept, every MASK filled, nothing banned generated, fixed positions first in the order."""
    fixed = inputs != MASK
    assert np.array_equal(out["tokens"][fixed], inputs[fixed])
    assert not np.isin(out["tokens"], BANNED).any()
    for r in range(len(inputs)):
        assert sorted(out["order"][r]) == list(range(L))
        n = int(fixed[r].sum())
        assert list(out["order"][r, :n]) == list(np.flatnonzero(fixed[r]))


def _generated_slots(inputs: np.ndarray) -> np.ndarray:
    """[B, L] bool: slot c of row b generates (c >= the row's number of fixed tokens)."""
    return np.arange(L)[None, :] >= (inputs != MASK).sum(axis=1, keepdims=True)


@pytest.mark.parametrize("order", ORDERS)
def test_cached_equals_uncached_at_temperature_zero(tiny, order):
    """Same orders and tokens exactly, per-step logits within 1e-5, both = order_logits over the result."""
    cfg, params = tiny
    key = jax.random.key(3)
    # ignore_eos: the padding after an EOS would replace tokens the later steps were conditioned on
    a = _get(sample(params, cfg, RAGGED, key, spec(order, temperature=0.0, ignore_eos=True),
                    collect_logits=True))
    b = _get(sample(params, cfg, RAGGED, key, spec(order, temperature=0.0, cache=False, ignore_eos=True),
                    collect_logits=True))
    assert np.array_equal(a["tokens"], b["tokens"]) and np.array_equal(a["order"], b["order"])
    gen = _generated_slots(RAGGED)
    np.testing.assert_allclose(a["logits"][gen], b["logits"][gen], atol=1e-5)
    np.testing.assert_allclose(a["logprob"], b["logprob"], atol=1e-4)
    full = np.asarray(ao_ar.order_logits(params, jnp.asarray(a["tokens"]), jnp.asarray(a["order"]), cfg)[0])
    np.testing.assert_allclose(a["logits"][gen], full[gen], atol=1e-5)
    _check_filled(RAGGED, a)
    steps = L - 2  # prefill = 2 (the fewest fixed tokens of a row)
    per_step = 2 if order == "greedy" else 1
    assert int(a["steps"]) == int(b["steps"]) == steps
    assert int(a["nfe"]) == 1 + per_step * steps and int(b["nfe"]) == per_step * steps
    # temperature 0 = argmax of the logits that chose each generated slot, PAD/MASK/BOS excluded
    lg = a["logits"].copy()
    lg[..., BANNED] = -np.inf
    slot_tokens = np.take_along_axis(a["tokens"], a["order"], axis=1)
    assert np.array_equal(slot_tokens[gen], lg.argmax(-1)[gen])
    masked_in_order = [[int(p) for p in row if RAGGED[r, p] == MASK] for r, row in enumerate(a["order"])]
    if order == "l2r":
        assert all(m == sorted(m) for m in masked_in_order)
    if order == "r2l":
        assert all(m == sorted(m, reverse=True) for m in masked_in_order)


def _confidence_by_hand(score, tokens: np.ndarray, prefix: list[int]) -> np.ndarray:
    """max_v p(v) (PAD/MASK/BOS excluded) at slot len(prefix) with each position as its target [L]
    (the prefix's positions get -inf): `score` = order_logits of the row under L orders, one pass."""
    c = len(prefix)
    orders = np.array([list(prefix) + [t] + [p for p in range(L) if p not in set(prefix) | {t}][:L - c - 1]
                       for t in range(L)], np.int32)
    logits = np.asarray(score(jnp.asarray(tokens), jnp.asarray(orders)))[:, c].astype(np.float64)
    logits[:, BANNED] = -np.inf
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    conf = logp.max(-1)
    conf[list(prefix)] = -np.inf
    return conf


def test_greedy_takes_the_most_confident_position(tiny):
    """The first generated slots of a greedy run, re-scored by hand: every remaining masked position
    as the next target (one order_logits pass each), the chosen one has the largest max-probability."""
    cfg, params = tiny
    out = _get(sample(params, cfg, RAGGED, jax.random.key(3),
                      spec("greedy", temperature=0.0, ignore_eos=True), collect_logits=True))
    score = jax.jit(lambda tokens_L, orders_KL: ao_ar.order_logits(
        params, jnp.tile(tokens_L, (orders_KL.shape[0], 1)), orders_KL, cfg)[0])
    for r in range(len(RAGGED)):
        n_fixed = int((RAGGED[r] != MASK).sum())
        for c in range(n_fixed, n_fixed + 3):
            conf = _confidence_by_hand(score, out["tokens"][r], [int(p) for p in out["order"][r, :c]])
            assert out["order"][r, c] == int(np.argmax(conf))
            assert np.sort(conf)[-1] - np.sort(conf)[-2] > 1e-6  # not decided by a float-rounding tie


@pytest.mark.parametrize("order", ["random", "greedy"])
def test_logprob_is_the_order_chain_rule(tiny, order):
    """At temperature 1 the sampler's logprob = -ao_ar's order NLL of the sample in the returned
    order over the generated slots (the whole order_nll for the row with nothing fixed)."""
    cfg, params = tiny
    # ignore_eos: logprob is of the drawn tokens, and EOS padding may replace drawn tokens (sampling.eos)
    out = _get(sample(params, cfg, FREE, jax.random.key(7), spec(order, ignore_eos=True)))
    _check_filled(FREE, out)
    tokens, orders = jnp.asarray(out["tokens"]), jnp.asarray(out["order"])
    nll = np.asarray(ao_ar.order_token_nll(params, tokens, orders, cfg))
    np.testing.assert_allclose(out["logprob"], -(nll * _generated_slots(FREE)).sum(axis=1), atol=1e-4)
    np.testing.assert_allclose(out["logprob"][0],
                               -np.asarray(ao_ar.order_nll(params, tokens, orders, cfg))[0], atol=1e-4)
    assert int(out["steps"]) == L and int(out["nfe"]) == L * (2 if order == "greedy" else 1)


def test_seeds_and_filters(tiny):
    cfg, params = tiny
    oc = spec("random")
    a, b, c = (_get(sample(params, cfg, FREE, jax.random.key(s), oc)) for s in (1, 1, 2))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["tokens"], c["tokens"]) and not np.array_equal(a["order"][0], c["order"][0])
    # top-k = 1 (with temperature and top-p) picks what temperature 0 picks
    top1 = _get(sample(params, cfg, RAGGED, jax.random.key(5), spec("r2l", temperature=0.8,
                                                                              top_k=1, top_p=0.9)))
    greedy = _get(sample(params, cfg, RAGGED, jax.random.key(3), spec("r2l", temperature=0.0),
                         collect_logits=True))
    assert np.array_equal(top1["tokens"], greedy["tokens"])
    _check_filled(RAGGED, top1)


def test_latent_order_run_and_greedy_at_max_len():
    """A latent_order run samples with the same network; greedy's candidate slots may pass max_len
    (here L = max_len = 16, a 31-slot cache): cached = uncached still."""
    cfg = config_lib.load(None, ("objective.name=latent_order", "model.max_len=16", *TINY))
    params = model.init_params(cfg.model, jax.random.key(1), target_positions=True)
    oc = spec("greedy", temperature=0.0)
    a = _get(sample(params, cfg, RAGGED, jax.random.key(3), oc))
    b = _get(sample(params, cfg, RAGGED, jax.random.key(3), with_options(oc, cache=False)))
    assert np.array_equal(a["tokens"], b["tokens"]) and np.array_equal(a["order"], b["order"])
    np.testing.assert_allclose(a["logprob"], b["logprob"], atol=1e-4)
    _check_filled(RAGGED, a)


def test_clear_errors(tiny):
    cfg, params = tiny
    l2r = config_lib.load(None, ("objective.name=l2r", *TINY))
    with pytest.raises(config_lib.ConfigError, match="unknown sampler 'l2r'; for l2r runs use one of ar"):
        sample(params, l2r, FREE, jax.random.key(0))
    with pytest.raises(config_lib.ConfigError, match="unknown sampler 'diagonal'; for ao_ar runs"):
        sample(params, cfg, FREE, jax.random.key(0), spec("diagonal"))
    with pytest.raises(config_lib.ConfigError, match="top_p"):
        sample(params, cfg, FREE, jax.random.key(0), spec("l2r", top_p=0.0))
    with pytest.raises(config_lib.ConfigError, match="max_len"):
        sample(params, cfg, np.full((1, cfg.model.max_len + 1), MASK), jax.random.key(0))


def test_nothing_masked_is_returned_unchanged(tiny):
    cfg, params = tiny
    full = np.where(RAGGED == MASK, 7, RAGGED)
    out = _get(sample(params, cfg, full, jax.random.key(0), spec("greedy")))
    assert np.array_equal(out["tokens"], full) and np.array_equal(out["order"], np.tile(np.arange(L), (3, 1)))
    assert int(out["steps"]) == 0 and int(out["nfe"]) == 0 and not out["logprob"].any()
