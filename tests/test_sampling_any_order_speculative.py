"""Any-subset speculative decoding (jaxorder.sampling.any_order_speculative): exact distribution
(chi-square against the brute-force chain rule), temperature 0 = the `random` sampler's argmax,
nfe / rounds bookkeeping, errors. Tiny randomly initialised ao_ar models."""
from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxorder import cli, model, sampling
from jaxorder import config as config_lib
from jaxorder.objectives import ao_ar
from jaxorder.objectives.common import special_ids
from jaxorder.sampling import SamplerOptions

TINY = ("model.d_model=32", "model.n_layers=2", "model.n_heads=2", "data.seq_len=16")
L = 16
MASK = 257  # vocab 260: PAD 256, MASK 257, BOS 258, EOS 259
# Ragged: 0, 2, 5 and 7 fixed tokens (nothing, a prefix, a longer prefix, an infilling template).
RAGGED = np.full((4, L), MASK, np.int32)
RAGGED[1, :2] = (10, 11)
RAGGED[2, :5] = (1, 2, 3, 4, 5)
RAGGED[3, [0, 1, 2, 6, 7, 8, 15]] = (20, 21, 22, 23, 24, 25, 26)


def _get(out: dict) -> dict:
    return {k: np.asarray(v) for k, v in jax.device_get(out).items()}


def _run(params, cfg, rows, key, sampler="speculative", **options) -> dict:
    """ignore_eos by default: these tests are of the sampler's law, which the EOS padding (a function
    of the draws, tests/test_sampling_eos.py) would change on this tiny vocabulary."""
    opts = SamplerOptions(**{"ignore_eos": True, **options})
    return _get(sampling.sample(params, cfg, rows, key, sampler, opts))


def _init(cfg, seed: int):
    """Parameters of a fresh any-order model (jitted: one compilation instead of op by op)."""
    return jax.jit(lambda key: model.init_params(cfg.model, key, target_positions=True))(jax.random.key(seed))


@pytest.fixture(scope="module", params=["current", "target"])  # model.query_positions
def tiny(request):
    cfg = config_lib.load(None, ("objective.name=ao_ar", f"model.query_positions={request.param}", *TINY))
    return cfg, _init(cfg, 0)


# ----------------------------------------------------------------------------- exactness

# vocab 8: ids 4..7 are PAD, MASK, BOS, EOS; 0..3 and EOS can be generated (5 ids). Rows of
# length 3: all masked (6 orders x 125 sequences), or position 1 fixed (ragged in one call).
MASK_SMALL = 5
SMALL = ("model.vocab_size=8", "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
         "model.max_len=8", "data.seq_len=3")
N_SAMPLES = 24_000


@pytest.fixture(scope="module", params=["current", "target"])  # model.query_positions
def small(request):
    cfg = config_lib.load(None, ("objective.name=ao_ar", f"model.query_positions={request.param}", *SMALL))
    params = _init(cfg, 1)
    params = dict(params, head=params["head"] * 4.0)  # peaked, context-dependent conditionals
    return cfg, params


def _reference_probs(logits_NV: np.ndarray, banned: list[int], temperature: float, top_k: int) -> np.ndarray:
    """The distribution a sampler draws from, in float64: banned ids out, logits / T, top-k."""
    x = logits_NV.astype(np.float64) / temperature
    x[:, banned] = -np.inf
    if top_k:
        kth = np.sort(x, axis=-1)[:, -top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    x = np.exp(x - x.max(-1, keepdims=True))
    return x / x.sum(-1, keepdims=True)


def _brute_force(params, cfg, template: np.ndarray, temperature: float, top_k: int) -> dict:
    """{(order, tokens): probability} of every complete outcome for a template row: a uniform order of
    the masked positions after the fixed ones, then the chain rule of the (filtered) conditionals."""
    ids = special_ids(cfg.model)
    banned = [ids.pad, ids.mask, ids.bos]
    fixed = [int(p) for p in np.flatnonzero(template != MASK_SMALL)]
    free = [int(p) for p in np.flatnonzero(template == MASK_SMALL)]
    vocab = [v for v in range(cfg.model.vocab_size) if v not in banned]
    outcomes = [(tuple(fixed) + perm, fill) for perm in itertools.permutations(free)
                for fill in itertools.product(vocab, repeat=len(free))]
    tokens = np.tile(template, (len(outcomes), 1))
    for n, (_, fill) in enumerate(outcomes):
        tokens[n, free] = fill
    orders = np.array([o for o, _ in outcomes], np.int32)
    score = jax.jit(lambda tokens, orders: ao_ar.order_logits(params, tokens, orders, cfg)[0])
    logits = np.asarray(score(jnp.asarray(tokens), jnp.asarray(orders)))
    prob = np.full(len(outcomes), 1.0 / math.factorial(len(free)))
    for slot in range(len(fixed), template.size):
        p = _reference_probs(logits[:, slot], banned, temperature, top_k)
        prob *= p[np.arange(len(outcomes)), tokens[np.arange(len(outcomes)), orders[:, slot]]]
    return {(o, tuple(tokens[n])): prob[n] for n, (o, _) in enumerate(outcomes)}


def _chi_square_pvalue(samples: list[tuple], expected_prob: dict) -> float:
    """Pearson's test of sampled outcomes against the probabilities (cells expected < 5 pooled)."""
    n = len(samples)
    counts: dict = {}
    for s in samples:
        counts[s] = counts.get(s, 0) + 1
    assert set(counts) <= set(expected_prob), "an outcome of probability 0 was sampled"
    assert abs(sum(expected_prob.values()) - 1) < 1e-6
    big = [k for k, p in expected_prob.items() if n * p >= 5]
    small = [k for k in expected_prob if k not in set(big)]
    obs = [counts.get(k, 0) for k in big] + [sum(counts.get(k, 0) for k in small)]
    exp = [n * expected_prob[k] for k in big] + [n * sum(expected_prob[k] for k in small)]
    if not small:
        obs, exp = obs[:-1], exp[:-1]
    return float(stats.chisquare(obs, exp).pvalue)



@pytest.mark.parametrize("draft_length,temperature,top_k", [(2, 1.0, 0), (3, 0.8, 3)],
                         ids=["K2-T1", "K3-T0.8-top3"])
def test_samples_follow_the_chain_rule_exactly(small, draft_length, temperature, top_k):
    """24k samples of free rows and of rows with a fixed middle token, one call: the frequencies of
    (order, sequence) match the brute-force chain rule of the model's (filtered) conditionals, and
    logprob is the model's chain rule for the returned order.
    K = 2 on 3 positions exercises the residual draw and the bonus token; K = 3 the truncation at
    the row's end and a second accepted draft."""
    cfg, params = small
    assert special_ids(cfg.model).mask == MASK_SMALL
    free, fixed = np.full(3, MASK_SMALL, np.int32), np.array([MASK_SMALL, 2, MASK_SMALL], np.int32)
    n_fixed = N_SAMPLES // 4
    rows = np.concatenate([np.tile(free, (N_SAMPLES - n_fixed, 1)), np.tile(fixed, (n_fixed, 1))])
    out = _run(params, cfg, rows, jax.random.key(11), draft_length=draft_length, temperature=temperature,
               top_k=top_k)
    assert int(out["accepted"].sum()) > 0.1 * N_SAMPLES  # drafts do get accepted (not just resampled)
    outcomes = [(tuple(o), tuple(t)) for o, t in zip(out["order"].tolist(), out["tokens"].tolist())]
    for template, got in ((free, outcomes[:N_SAMPLES - n_fixed]), (fixed, outcomes[N_SAMPLES - n_fixed:])):
        expected = _brute_force(params, cfg, template, temperature, top_k)
        assert _chi_square_pvalue(got, expected) > 1e-3
    # logprob: the chain rule of the returned order over the generated slots (temperature 1, unfiltered)
    some = np.r_[0:32, N_SAMPLES - 32:N_SAMPLES]
    nll = np.asarray(jax.jit(ao_ar.order_token_nll, static_argnums=3)(
        params, jnp.asarray(out["tokens"][some]), jnp.asarray(out["order"][some]), cfg))
    generated = np.arange(3)[None, :] >= (rows[some] != MASK_SMALL).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out["logprob"][some], -(nll * generated).sum(axis=1), atol=1e-4)


# ----------------------------------------------------------------------------- temperature 0, bookkeeping

def test_temperature_zero_is_the_random_orders_argmax(tiny):
    """Token for token the `random` sampler at temperature 0 (same key: same orders), ragged rows;
    nfe / rounds / accepted add up per row, and never more than one call per generated token."""
    cfg, params = tiny
    key = jax.random.key(3)
    ref = _run(params, cfg, RAGGED, key, "random", temperature=0.0)
    out = _run(params, cfg, RAGGED, key, temperature=0.0, draft_length=3)
    assert np.array_equal(out["order"], ref["order"]) and np.array_equal(out["tokens"], ref["tokens"])
    np.testing.assert_allclose(out["logprob"], ref["logprob"], atol=1e-4)
    n_fixed = (RAGGED != MASK).sum(axis=1)
    generated = L - n_fixed
    redrawn = generated - out["rounds"] - out["accepted"]  # the residual / bonus token of a round
    assert (redrawn >= 0).all() and (redrawn <= out["rounds"]).all()
    assert int(out["steps"]) == out["rounds"].max()
    assert (out["row_nfe"] <= generated + (n_fixed > 0)).all()
    assert out["rounds"].max() + 1 <= int(out["nfe"]) <= 2 * out["rounds"].max() + 1  # + the prefill


def _all_accepted_counts(generated: int, k: int) -> tuple[int, int, int]:
    """(rounds, accepted drafts, calls) of one row when every draft is accepted."""
    rounds = accepted = calls = 0
    while generated:
        n = min(k + 1, generated)
        rounds, accepted, calls = rounds + 1, accepted + min(k, n) - 1, calls + 1 + (generated >= 2)
        generated -= n
    return rounds, accepted, calls


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_bookkeeping_when_every_draft_is_accepted(tiny, temperature):
    """A zero output head makes every conditional uniform: p = q, so every draft is accepted (at
    temperature 1, u < p/q = 1; at 0, both argmaxes are the first id) and the counts are known."""
    cfg, params = tiny
    flat = dict(params, head=jnp.zeros_like(params["head"]))
    k = 4
    out = _run(flat, cfg, RAGGED, jax.random.key(5), draft_length=k, temperature=temperature)
    n_fixed = (RAGGED != MASK).sum(axis=1)
    expect = np.array([_all_accepted_counts(int(g), k) for g in L - n_fixed])
    assert np.array_equal(out["rounds"], expect[:, 0]) and np.array_equal(out["accepted"], expect[:, 1])
    assert np.array_equal(out["row_nfe"], expect[:, 2] + (n_fixed > 0))
    assert int(out["steps"]) == expect[:, 0].max() and int(out["nfe"]) == 1 + expect[:, 2].max()
    np.testing.assert_allclose(out["logprob"], -(L - n_fixed) * np.log(cfg.model.vocab_size), rtol=1e-5)
    fixed = RAGGED != MASK
    assert np.array_equal(out["tokens"][fixed], RAGGED[fixed])
    assert not np.isin(out["tokens"], [256, 257, 258]).any()


def test_nothing_masked_makes_no_call(tiny):
    cfg, params = tiny
    full = np.where(RAGGED == MASK, 7, RAGGED)
    out = _run(params, cfg, full, jax.random.key(0), draft_length=2)
    assert np.array_equal(out["tokens"], full) and int(out["nfe"]) == 0 and int(out["steps"]) == 0


# ----------------------------------------------------------------------------- errors and the CLI flag

def test_clear_errors_and_the_cli_flag(tiny):
    cfg, params = tiny
    with pytest.raises(config_lib.ConfigError, match="^draft_length must be >= 1, got 0$"):
        _run(params, cfg, RAGGED, jax.random.key(0), draft_length=0)
    with pytest.raises(config_lib.ConfigError, match="the random sampler does not take 'draft_length'"):
        _run(params, cfg, RAGGED, jax.random.key(0), "random", draft_length=2)
    with pytest.raises(config_lib.ConfigError, match="the speculative sampler does not take 'cache'"):
        _run(params, cfg, RAGGED, jax.random.key(0), cache=False)
    args = cli.build_parser().parse_args(["sample", "RUN", "--sampler", "speculative", "--draft-length", "8"])
    assert cli.given_options(args) == {"draft_length": 8}
    assert sampling.make_options(sampling.resolve(cfg, "speculative"), {"draft_length": 8}).draft_length == 8
