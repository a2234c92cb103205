"""learned_order (objectives/learned_order.py, sampling/learned_order.py) against brute force.

Vocabulary: 2 symbols + PAD, MASK, BOS, EOS; windows of n = 3 or 4 tokens; random (untrained)
parameters with a non-trivial posterior (q's content head and global scores drawn at random), so
every conditional, policy step and posterior probability is a non-trivial function of its inputs.
"""
import itertools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxorder import config as config_lib
from jaxorder import model, sampling
from jaxorder.config import ConfigError
from jaxorder.objectives import OWN_PARAMS, ao_ar
from jaxorder.objectives import learned_order as lo
from jaxorder.sampling.ar import banned_tokens

from conftest import TINY, cli_in_process, train_on_corpus

VOCAB = 6  # 0, 1 + PAD 2, MASK 3, BOS 4, EOS 5
EOS, MASK = 5, 3


def tiny_cfg(n: int, **over) -> config_lib.Config:
    ov = [f"model.vocab_size={VOCAB}", "model.d_model=16", "model.n_layers=1", "model.n_heads=2",
          "model.max_len=8", f"data.seq_len={n}", "data.batch_size=8", "objective.name=learned_order"]
    return config_lib.load(None, ov + [f"{k}={v}" for k, v in over.items()])


def random_params(cfg, seed: int = 0) -> dict:
    """Network + own params, with q's content head and global scores random (not at their init)."""
    k_net, k_own, k_out, k_g = jax.random.split(jax.random.key(seed), 4)
    params = model.init_params(cfg.model, k_net, 4, target_positions=True)
    own = nn.meta.unbox(lo.own_params(cfg, k_own))
    own["q_out"] = 0.15 * jax.random.normal(k_out, own["q_out"].shape)  # scores of order 1
    own["q_global"] = 0.7 * jax.random.normal(k_g, own["q_global"].shape)
    if "q_log_scale" in own:  # objective.q_learn_scale: a temperature other than 1
        own["q_log_scale"] = jnp.asarray(0.4)
    if "policy_transition" in own:  # objective.policy_transitions: a table far from its zero init
        shape = own["policy_transition"].shape
        own["policy_transition"] = 1.5 * jax.random.normal(jax.random.key(seed + 99), shape)
    return {**params, OWN_PARAMS: own}


def perms(n: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(n))), np.int32)


log_joint = jax.jit(lo.log_joint, static_argnums=(3,))
policy_terms = jax.jit(lo.policy_terms, static_argnums=(3,))
q_scores = jax.jit(lo.q_scores)
pl_log_prob = jax.jit(lo.pl_log_prob)


def exact_terms(params, x_BL: np.ndarray, cfg) -> tuple[np.ndarray, np.ndarray]:
    """(log p(x, sigma) [B, n!], log q(sigma | x) [B, n!]) over every permutation, float64."""
    P = perms(x_BL.shape[1])
    orders_BKL = jnp.broadcast_to(jnp.asarray(P), (len(x_BL), *P.shape))
    lp_BK = np.asarray(log_joint(params, jnp.asarray(x_BL), orders_BKL, cfg)[0], np.float64)
    lq_BK = np.asarray(pl_log_prob(q_scores(params, jnp.asarray(x_BL)), orders_BKL), np.float64)
    return lp_BK, lq_BK


def logsumexp(a, axis=-1):
    m = np.max(a, axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


# ------------------------------------------------------------------------------- the model p(x, sigma)

@pytest.mark.parametrize("transitions", [False, True])
def test_policy_is_a_distribution_over_orders_and_the_joint_over_everything(transitions):
    """Catches a policy that sees sigma_j, an open-position mask that lets it pick a generated
    position (or one >= n), and a token head that is not ao_ar's normalized pass; with
    policy_transitions, a table indexed by the position being chosen instead of the previous one."""
    cfg4 = tiny_cfg(4, **{"objective.policy_transitions": transitions})
    params = random_params(cfg4)
    xs = np.random.default_rng(0).integers(0, VOCAB, (5, 4)).astype(np.int32)
    P = perms(4)
    tokens_NL = jnp.asarray(np.repeat(xs, len(P), axis=0))
    terms_N = np.asarray(policy_terms(params, tokens_NL, jnp.asarray(np.tile(P, (5, 1))), cfg4), np.float64)
    np.testing.assert_allclose(np.exp(terms_N.sum(1)).reshape(5, -1).sum(1), 1.0, atol=1e-5)
    cfg3 = tiny_cfg(3, **{"objective.policy_transitions": transitions})
    all_x = np.array(list(itertools.product(range(VOCAB), repeat=3)), np.int32)  # 216 windows
    lp_BK, _ = exact_terms(params, all_x, cfg3)
    assert abs(logsumexp(lp_BK.reshape(-1))) < 1e-4
    # the policy depends on the window's tokens (not a constant order distribution)
    assert np.abs(terms_N.reshape(5, len(P), 4)[0] - terms_N.reshape(5, len(P), 4)[1])[:, 1:].max() > 1e-3


@pytest.mark.parametrize("trunk_grad", [True, False])
def test_policy_trunk_grad_decides_whether_the_policy_trains_the_trunk(trunk_grad):
    """policy_trunk_grad=false: the policy's log-probabilities give the shared trunk no gradient (its own
    head and table still learn); true: they do. Catches the option ignored, or the stop put on the head."""
    cfg = tiny_cfg(4, **{"objective.policy_trunk_grad": trunk_grad, "objective.policy_transitions": True})
    params = random_params(cfg, seed=6)
    x = jnp.asarray([[0, 1, 2, 3], [3, 3, 1, 0]], jnp.int32)
    orders = jnp.asarray([[2, 0, 3, 1], [1, 3, 0, 2]], jnp.int32)
    grads = jax.grad(lambda p: lo.policy_terms(p, x, orders, cfg).sum())(params)
    trunk = [np.abs(np.asarray(leaf)).max() for k, sub in grads.items() if k != OWN_PARAMS
             for leaf in jax.tree.leaves(sub)]
    assert (max(trunk) > 1e-6) == trunk_grad
    for name in ("order_policy", "policy_transition"):
        assert np.abs(np.asarray(grads[OWN_PARAMS][name])).max() > 1e-6


# ------------------------------------------------------------------------------- the posterior q

def test_plackett_luce_sums_to_one_and_gumbel_top_n_samples_it():
    """Catches a wrong PL normalizer (a forward instead of a reverse cumulative logsumexp) and a
    Gumbel-top-n sampler that draws from another distribution (e.g. argsort(s + G) ascending)."""
    s_BL = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)) * 1.5, jnp.float32)
    P = perms(4)
    lq = np.asarray(pl_log_prob(s_BL, jnp.broadcast_to(jnp.asarray(P), (3, *P.shape))), np.float64)
    np.testing.assert_allclose(np.exp(lq).sum(1), 1.0, atol=1e-5)
    s_13 = jnp.asarray([[0.8, -0.5, 0.2]], jnp.float32)
    draws = 30000
    samples = np.asarray(lo.pl_sample(s_13, jax.random.key(3), draws))[0]
    P3 = perms(3)
    index = {tuple(p): i for i, p in enumerate(P3)}
    counts = np.bincount([index[tuple(s)] for s in samples], minlength=len(P3))
    expected = draws * np.exp(np.asarray(pl_log_prob(s_13, jnp.asarray(P3)[None]), np.float64)[0])
    assert stats.chisquare(counts, expected * counts.sum() / expected.sum()).pvalue > 1e-3


def test_q_init_starts_at_the_asked_order():
    """Catches swapped l2r/r2l signs of the global score initialization."""
    x = jnp.zeros((1, 6), jnp.int32)
    for q_init, want in (("l2r", np.arange(6)), ("r2l", np.arange(6)[::-1])):
        cfg = tiny_cfg(6, **{"objective.q_init": q_init, "objective.q_init_scale": 2.0})
        params = {**model.init_params(cfg.model, jax.random.key(0), 4, True),
                  OWN_PARAMS: nn.meta.unbox(lo.own_params(cfg, jax.random.key(1)))}
        np.testing.assert_array_equal(np.argsort(-np.asarray(lo.q_scores(params, x))[0]), want)
    cfg = tiny_cfg(6)
    params = {OWN_PARAMS: nn.meta.unbox(lo.own_params(cfg, jax.random.key(1)))}
    np.testing.assert_allclose(np.asarray(lo.q_scores(params, x)), 0.0)  # uniform: every order 1/n!


def test_learned_scale_multiplies_every_score_and_starts_at_one():
    """objective.q_learn_scale adds one scalar a (init 0, so q starts unchanged) and s = exp(a) * (g + c).
    Catches a scale that is added instead of multiplied, applied to g only, or started away from 1."""
    x = jnp.asarray([[0, 1, 2, 3, 1]], jnp.int32)
    plain = random_params(tiny_cfg(5), seed=2)
    cfg = tiny_cfg(5, **{"objective.q_learn_scale": True})
    scaled = {**plain, OWN_PARAMS: {**plain[OWN_PARAMS], "q_log_scale": jnp.asarray(0.0)}}
    s_plain = np.asarray(lo.q_scores(plain, x))
    np.testing.assert_allclose(np.asarray(lo.q_scores(scaled, x)), s_plain, rtol=1e-6)
    assert float(nn.meta.unbox(lo.own_params(cfg, jax.random.key(0)))["q_log_scale"]) == 0.0
    scaled[OWN_PARAMS]["q_log_scale"] = jnp.asarray(0.7)
    np.testing.assert_allclose(np.asarray(lo.q_scores(scaled, x)), np.exp(0.7) * s_plain, rtol=1e-5)
    # the scale learns only while beta < 1 (here: beta = 0.5 from step 101 on)
    cfg = tiny_cfg(5, **{"objective.q_learn_scale": True, "objective.q_entropy_end": 0.5,
                         "objective.q_entropy_delay": 100, "objective.q_entropy_steps": 1})
    params = random_params(cfg, seed=2)
    grad = jax.jit(jax.grad(lambda p, st: lo.loss(p, {"tokens": x, "step": st}, jax.random.key(0), cfg)[0]))
    assert float(grad(params, 50)[OWN_PARAMS]["q_log_scale"]) == 0.0
    assert abs(float(grad(params, 200)[OWN_PARAMS]["q_log_scale"])) > 1e-6


# ------------------------------------------------------------------------------- bounds

def test_log_px_above_iw_bounds_above_elbo_and_the_yardstick_estimates_them():
    """Exact expectations by enumeration: log p(x) >= E[IW_K] non-decreasing in K, E[IW_1] = ELBO.
    Catches an IW bound that is not a log-mean-exp (e.g. log-sum-exp, off by log K) and an nll /
    eval_extras that do not estimate them (checked against the exact values within 4 s.e.)."""
    cfg = tiny_cfg(3, **{"objective.eval_samples": 3})
    params = random_params(cfg, seed=2)
    x_BL = np.array([[0, 1, 1], [1, 0, 5]], np.int32)
    lp, lq = exact_terms(params, x_BL, cfg)
    w, q = lp - lq, np.exp(lq)
    log_px, elbo = logsumexp(lp), (q * w).sum(1)
    iw = []
    for K in (1, 2, 3):
        idx = np.array(list(itertools.product(range(6), repeat=K)))
        prob = q[:, idx].prod(-1)
        iw.append((prob * (logsumexp(w[:, idx]) - np.log(K))).sum(1))
    np.testing.assert_allclose(iw[0], elbo, rtol=1e-6, atol=1e-6)
    assert np.all(log_px > iw[2] + 1e-6) and np.all(iw[2] > iw[1] + 1e-6) and np.all(iw[1] > iw[0] + 1e-6)
    reps = 4000
    tokens = jnp.asarray(np.repeat(x_BL, reps, axis=0))
    key = jax.random.key(5)
    nll = np.asarray(jax.jit(lambda p, t, r: lo.nll(p, {"tokens": t}, r, cfg))(params, tokens, key))
    extras = jax.jit(lambda p, t, r: lo.eval_extras(p, {"tokens": t}, r, cfg))(params, tokens, key)
    for est, exact in ((nll, -iw[2]), (np.asarray(extras["elbo_nll"]), -elbo)):
        est = est.reshape(2, reps)
        se = est.std(1) / np.sqrt(reps)
        assert np.all(np.abs(est.mean(1) - exact) < 4 * se + 1e-4), (est.mean(1), exact, se)
    assert np.asarray(extras["mean_rank"]).shape == (2 * reps, 3)
    # the ELBO's three terms: exact identity per window, and each estimates its enumerated expectation
    # (catches a policy part counted in the token term, or the entropy with the wrong sign)
    names = ("elbo_nll", "token_nll", "policy_nll", "q_entropy_nll")
    terms = {k: np.asarray(extras[k], np.float64) for k in names}
    np.testing.assert_allclose(terms["token_nll"] + terms["policy_nll"] - terms["q_entropy_nll"],
                               terms["elbo_nll"], rtol=1e-5, atol=1e-4)
    orders = jnp.broadcast_to(jnp.asarray(perms(3)), (2, 6, 3))
    pol = np.asarray(log_joint(params, jnp.asarray(x_BL), orders, cfg)[1], np.float64)
    for name, exact in (("token_nll", -(q * (lp - pol)).sum(1)), ("policy_nll", -(q * pol).sum(1)),
                        ("q_entropy_nll", -(q * lq).sum(1))):
        est = terms[name].reshape(2, reps)
        se = est.std(1) / np.sqrt(reps)
        assert np.all(np.abs(est.mean(1) - exact) < 4 * se + 1e-4), (name, est.mean(1), exact, se)


# ------------------------------------------------------------------------------- the gradient estimator

@pytest.mark.parametrize("bound, beta_start, learn_scale", [("elbo", 1.0, False), ("elbo", 2.5, False),
                                                          ("iw", 0.6, True)])
def test_score_function_surrogate_is_unbiased_for_the_exact_elbo_gradient(bound, beta_start, learn_scale):
    """Mean over 16000 draws of the loss gradient (K = 4, leave-one-out baseline) against jax.grad of
    the exact ELBO enumerated over the 6 orders, per coordinate (|z| < 6) and by projection on the
    exact gradient (separately for p's and q's parameters: within 4 s.e. of 1). Catches a wrong sign of
    the score-function term, a baseline that includes w_k itself (q's gradient scaled by (K-1)/K), a
    missing stop-gradient on the weights, and a p gradient taken through the wrong terms. With
    q_entropy_start=2.5 at step 0 the target is E_q[log p - 2.5 log q] (catches beta left out of the
    weights, or applied to log p). The third trains the K = 3 importance-weighted bound (train_bound=iw,
    VIMCO) at beta = 0.6 with q's inverse temperature learned (q_learn_scale): the target is
    E[log mean_k exp(lp_k - 0.6 lq_k)] enumerated over all 6^3 triples of orders (catches normalized
    weights left out of the direct term, or a baseline L_-k that still contains w_k)."""
    n = 3
    K = 3 if bound == "iw" else 4
    cfg = tiny_cfg(n, **{"objective.num_samples": K, "objective.q_entropy_start": beta_start,
                         "objective.q_learn_scale": learn_scale, "objective.train_bound": bound})
    params = random_params(cfg, seed=3)
    x = jnp.asarray([[0, 1, 5]], jnp.int32)
    P = jnp.asarray(perms(n))[None]

    triples_TK = np.array(list(itertools.product(range(6), repeat=K))) if bound == "iw" else None

    def neg_elbo_per_token(p):
        lp_BK, _ = lo.log_joint(p, x, P, cfg)
        lq_BK = lo.pl_log_prob(lo.q_scores(p, x), P)
        w_K = (lp_BK - beta_start * lq_BK)[0]
        if bound == "elbo":
            return -(jnp.exp(lq_BK[0]) * w_K).sum() / n
        prob_T = jnp.exp(lq_BK[0][triples_TK].sum(axis=1))
        bound_T = jax.nn.logsumexp(w_K[triples_TK], axis=1) - jnp.log(K)
        return -(prob_T * bound_T).sum() / n

    exact = jax.jit(jax.grad(neg_elbo_per_token))(params)
    grad_loss = jax.jit(jax.grad(lambda p, t, r: lo.loss(p, {"tokens": t, "step": 0}, r, cfg)[0]))
    rows, chunks = (1200 if bound == "iw" else 400), 40  # VIMCO's q gradient is the noisier one
    tokens = jnp.tile(x, (rows, 1))
    draws = [grad_loss(params, tokens, jax.random.key(100 + c)) for c in range(chunks)]
    flat = lambda g: np.concatenate([np.ravel(v) for v in jax.tree.leaves(g)])  # noqa: E731
    own = {k for k in params[OWN_PARAMS] if k.startswith("q_")}
    is_q = flat(jax.tree_util.tree_map_with_path(
        lambda path, v: np.full(v.shape, any(getattr(k, "key", None) in own for k in path)), exact))
    est_CP, exact_P = np.stack([flat(g) for g in draws]).astype(np.float64), flat(exact).astype(np.float64)
    mean_P, se_P = est_CP.mean(0), est_CP.std(0, ddof=1) / np.sqrt(chunks)
    live = (se_P > 0) | (exact_P != 0)
    z_P = np.abs(mean_P - exact_P)[live] / (se_P[live] + 1e-9)
    assert z_P.max() < 6, z_P.max()
    for part in (is_q, ~is_q):
        e = exact_P * part
        ratio_C = est_CP @ e / (e @ e)
        se = ratio_C.std(ddof=1) / np.sqrt(chunks)
        assert abs(ratio_C.mean() - 1) < 4 * se and se < 0.05, (ratio_C.mean(), se)


def test_mode_training_fits_the_token_head_to_q_mode_and_the_rest_to_the_elbo():
    """token_orders=mode (policy_trunk_grad=false, so the trunk learns from the token head alone): the
    trunk's gradient is exactly that of -log p(x | q's mode) per token, whatever the draws (two keys);
    the gradient of the policy's and q's parameters, averaged over 16000 draws (K = 4), matches jax.grad
    of the exact -(E_q[sg(log p(x | sigma)) + log pi(sigma)] - 1.5 E_q[log q]) / n enumerated over the 6
    orders (|z| < 6 per coordinate, projection within 4 s.e. of 1). Catches the draws training the
    token head, the policy left out of q's weights or not trained on the draws, beta dropped, and a
    mode taken as argsort(s) (the least likely order)."""
    n, beta = 3, 1.5
    cfg = tiny_cfg(n, **{"objective.num_samples": 4, "objective.q_entropy_start": beta,
                         "objective.policy_transitions": True, "objective.token_orders": "mode",
                         "objective.policy_trunk_grad": False})
    params = random_params(cfg, seed=3)
    own_params = params[OWN_PARAMS]  # a policy that differs across orders by ~20 nats, so q's weights feel it
    params = {**params, OWN_PARAMS: {**own_params, "policy_transition": 6 * own_params["policy_transition"]}}
    x = jnp.asarray([[0, 1, 5]], jnp.int32)
    P = jnp.asarray(perms(n))[None]
    mode_1L = jnp.argsort(-q_scores(params, x), axis=1).astype(jnp.int32)
    assert mode_1L.tolist() != [[0, 1, 2]]  # a non-trivial mode, so the test sees which order is learned
    grad_loss = jax.jit(jax.grad(lambda p, t, r: lo.loss(p, {"tokens": t, "step": 0}, r, cfg)[0]))
    mode_grad = jax.grad(lambda p: ao_ar.order_token_nll(p, x, mode_1L, cfg).sum() / n)(params)
    own = lambda path: getattr(path[0], "key", None) == OWN_PARAMS  # noqa: E731
    for key in (1, 2):
        g = grad_loss(params, x, jax.random.key(key))
        for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(g), jax.tree.leaves(mode_grad)):
            if not own(path):
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=str(path))

    def exact_objective(p):
        lp_BK, policy_BK = lo.log_joint(p, x, P, cfg)
        token_K = jax.lax.stop_gradient(lp_BK - policy_BK)[0]
        lq_K = lo.pl_log_prob(lo.q_scores(p, x), P)[0]
        return -(jnp.exp(lq_K) * (token_K + policy_BK[0] - beta * lq_K)).sum() / n

    flat_own = lambda g: np.concatenate([np.ravel(v) for path, v in jax.tree_util.tree_leaves_with_path(g)  # noqa: E731
                                         if own(path)]).astype(np.float64)
    exact_P = flat_own(jax.grad(exact_objective)(params))
    tokens, chunks = jnp.tile(x, (400, 1)), 40
    est_CP = np.stack([flat_own(grad_loss(params, tokens, jax.random.key(100 + c))) for c in range(chunks)])
    mean_P, se_P = est_CP.mean(0), est_CP.std(0, ddof=1) / np.sqrt(chunks)
    live = (se_P > 0) | (exact_P != 0)
    assert (np.abs(mean_P - exact_P)[live] / (se_P[live] + 1e-9)).max() < 6
    ratio_C = est_CP @ exact_P / (exact_P @ exact_P)
    se = ratio_C.std(ddof=1) / np.sqrt(chunks)
    assert abs(ratio_C.mean() - 1) < 4 * se and se < 0.05, (ratio_C.mean(), se)


def test_loss_value_is_minus_elbo_per_token_and_metrics():
    """Catches a loss value that reports the surrogate instead of -ELBO, and order-fraction metrics
    that are not fractions of the drawn orders."""
    cfg = tiny_cfg(4, **{"objective.num_samples": 3, "objective.q_init": "l2r",
                         "objective.q_init_scale": 50.0})
    params = {**model.init_params(cfg.model, jax.random.key(0), 4, True),
              OWN_PARAMS: nn.meta.unbox(lo.own_params(cfg, jax.random.key(1)))}
    x = jnp.asarray([[0, 1, 1, 0], [1, 1, 0, 0]], jnp.int32)
    value, m = jax.jit(lambda p, t, r: lo.loss(p, {"tokens": t}, r, cfg))(params, x, jax.random.key(2))
    # q is (numerically) the point mass on l2r: w = log p(x, l2r), ELBO = IW bound
    lp_B1, _ = log_joint(params, x, jnp.asarray(perms(4)[:1])[None].repeat(2, 0), cfg)
    np.testing.assert_allclose(float(value), -float(np.mean(lp_B1)) / 4, rtol=1e-5)
    np.testing.assert_allclose(float(m["iw_bound"]), float(value), rtol=1e-5)
    assert float(m["frac_l2r"]) == 1.0 and float(m["frac_r2l"]) == 0.0 and float(m["q_entropy"]) < 1e-3


# ------------------------------------------------------------------------------- sampling

def sample(params, cfg, tokens_BL, key, **options):
    sampler = sampling.resolve(cfg, options.pop("sampler", None))
    out = sampling.sample(params, cfg, tokens_BL, key, sampler, sampling.make_options(sampler, options))
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("transitions", [False, True])
def test_policy_sampler_draws_the_joint_exactly(transitions):
    """Chi-square of (sigma, x) frequencies against p(x, sigma) (the token head restricted to the
    tokens samplers may generate, as every sampler does) at temperature 1, n = 3. Catches a policy
    that samples a generated position again, at another temperature, from the wrong stream (with
    target positions), or a token drawn for another slot; and logprob + order_logprob = log p(x, sigma).
    With policy_transitions: a sampler that reads the table at another row than training does."""
    n = 3
    cfg = tiny_cfg(n, **{"objective.policy_transitions": transitions})
    params = random_params(cfg, seed=4)
    draws = 24000
    out = sample(params, cfg, np.full((draws, n), MASK, np.int32), jax.random.key(7), ignore_eos=True)
    symbols = (0, 1, EOS)  # what may be generated
    assert set(np.unique(out["tokens"])) <= set(symbols)
    all_x = np.array(list(itertools.product(symbols, repeat=n)), np.int32)
    P = perms(n)
    x_N = np.repeat(all_x, len(P), axis=0)
    o_N = np.tile(P, (len(all_x), 1))
    pol = np.asarray(policy_terms(params, jnp.asarray(x_N), jnp.asarray(o_N), cfg), np.float64).sum(1)
    logits, targets = ao_ar.order_logits(params, jnp.asarray(x_N), jnp.asarray(o_N), cfg)
    logp = jax.nn.log_softmax(jnp.where(banned_tokens(cfg.model), -jnp.inf, logits), axis=-1)
    tok = np.asarray(jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0], np.float64).sum(1)
    expected = np.exp(pol + tok)
    np.testing.assert_allclose(expected.sum(), 1.0, atol=1e-5)
    cell = {(tuple(x), tuple(o)): i for i, (x, o) in enumerate(zip(x_N, o_N))}
    counts = np.bincount([cell[(tuple(x), tuple(o))] for x, o in zip(out["tokens"], out["order"])],
                         minlength=len(expected))
    assert stats.chisquare(counts, expected / expected.sum() * draws).pvalue > 1e-3
    lp, _ = log_joint(params, jnp.asarray(out["tokens"][:64]), jnp.asarray(out["order"][:64])[:, None], cfg)
    np.testing.assert_allclose(out["logprob"][:64] + out["order_logprob"][:64], np.asarray(lp)[:, 0],
                               atol=1e-4)


def test_cached_sampler_equals_the_uncached_reference():
    """Same key, with and without KV caches: same orders and tokens, token for token, on ragged
    prompts/templates (one row with nothing fixed; prefill 0) and on rows that all fix a token
    (prefill 1). Catches a cache written with the wrong target (policy stream with targets), a
    slot/position mix-up in either stream, and a policy that may choose a fixed position."""
    n = 4
    cfg = tiny_cfg(n, **{"objective.policy_transitions": True})
    params = random_params(cfg, seed=5)
    ragged = np.full((6, n), MASK, np.int32)
    ragged[1, 2] = 1
    ragged[2, [0, 3]] = [0, 1]
    ragged[3:, 1] = 0
    for tokens, options in ((ragged, {"temperature": 0.7, "top_k": 2}), (ragged[1:], {})):
        cached = sample(params, cfg, tokens, jax.random.key(11), cache=True, **options)
        plain = sample(params, cfg, tokens, jax.random.key(11), cache=False, **options)
        np.testing.assert_array_equal(cached["order"], plain["order"])
        np.testing.assert_array_equal(cached["tokens"], plain["tokens"])
        np.testing.assert_allclose(cached["logprob"], plain["logprob"], atol=1e-4)
        fixed = tokens != MASK
        np.testing.assert_array_equal(cached["tokens"][fixed], tokens[fixed])
        for row, order in zip(fixed, cached["order"]):  # fixed positions first, in position order
            np.testing.assert_array_equal(order[:row.sum()], np.flatnonzero(row))
            assert sorted(order) == list(range(n))


# ------------------------------------------------------------------------------- config and CLI

def test_entropy_weight_schedule_runs_from_start_to_end_then_holds():
    """beta(step) goes linearly from q_entropy_start to q_entropy_end over q_entropy_steps (0: train.steps)
    and is held after; no step (evaluation) is always the ELBO's beta = 1. Catches an end value ignored
    (the old fixed end 1), a schedule that keeps moving past its steps, and beta < 1 leaking into eval."""
    cfg = tiny_cfg(4, **{"objective.q_entropy_start": 1.0, "objective.q_entropy_end": 0.2,
                         "objective.q_entropy_steps": 100, "train.steps": 400})
    got = [float(lo.entropy_weight(jnp.asarray(s), cfg)) for s in (0, 50, 100, 300)]
    np.testing.assert_allclose(got, [1.0, 0.6, 0.2, 0.2], rtol=1e-6)
    assert float(lo.entropy_weight(None, cfg)) == 1.0
    whole_run = tiny_cfg(4, **{"objective.q_entropy_start": 2.0, "train.steps": 400})
    np.testing.assert_allclose([float(lo.entropy_weight(jnp.asarray(s), whole_run)) for s in (0, 200, 400)],
                               [2.0, 1.5, 1.0], rtol=1e-6)
    delayed = tiny_cfg(4, **{"objective.q_entropy_end": 0.0, "objective.q_entropy_delay": 300,
                             "train.steps": 400})
    np.testing.assert_allclose([float(lo.entropy_weight(jnp.asarray(s), delayed))
                                for s in (0, 300, 350, 400)], [1.0, 1.0, 0.5, 0.0], rtol=1e-6)


@pytest.mark.parametrize("over, message", [
    ({"objective.num_samples": 0}, "num_samples=0 must be >= 1"),
    ({"objective.eval_samples": 0}, "eval_samples=0 must be >= 1"),
    ({"objective.q_init": "random"}, "q_init='random' must be one of uniform, l2r, r2l"),
    ({"objective.q_lr_scale": 0}, "q_lr_scale=0.0 must be > 0"),
    ({"objective.q_entropy_start": -1}, "q_entropy_start=-1.0, objective.q_entropy_end=1.0, "
                                        "objective.q_entropy_steps=0 and objective.q_entropy_delay=0"),
    ({"objective.q_entropy_delay": -3}, "q_entropy_delay=-3 must be >= 0"),
    ({"objective.q_freeze_steps": -1}, "q_freeze_steps=-1 must be >= 0"),
    ({"objective.q_entropy_end": -0.5}, "q_entropy_end=-0.5, "),
    ({"objective.token_orders": "best"}, "token_orders='best' must be one of draws, mode"),
    ({"objective.token_orders": "mode", "objective.train_bound": "iw"},
     "token_orders=mode .* needs objective.train_bound=elbo"),
])
def test_bad_options_are_one_line_config_errors(over, message):
    with pytest.raises(ConfigError, match=message) as info:
        tiny_cfg(4, **over)
    assert "\n" not in str(info.value)


def test_q_lr_scale_scales_only_the_posteriors_updates():
    """One AdamW step with q_lr_scale=7 moves q's leaves exactly 7x as far as with 1, and the network
    and the order policy head exactly as far. Catches the factor applied as a gradient factor (Adam
    cancels it), to the wrong subtree (the policy head, the network) or not at all."""
    from jaxorder.training.optimizer import make_optimizer
    params = random_params(tiny_cfg(4))
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3) + 0.1 * p, params)
    steps = {}
    for scale in (1.0, 7.0):
        opt = make_optimizer(tiny_cfg(4, **{"objective.q_lr_scale": scale, "optimizer.warmup_steps": 0,
                                            "optimizer.grad_clip": 0}))
        steps[scale], _ = opt.update(grads, opt.init(params), params)
    for path, u1 in jax.tree_util.tree_flatten_with_path(steps[1.0])[0]:
        u7 = dict(jax.tree_util.tree_flatten_with_path(steps[7.0])[0])[path]
        keys = [k.key for k in path]
        factor = 7.0 if keys[0] == OWN_PARAMS and keys[1] in lo.Q_PARAMS else 1.0
        assert np.abs(np.asarray(u1)).max() > 0, keys
        np.testing.assert_allclose(np.asarray(u7), factor * np.asarray(u1), rtol=1e-6, err_msg=str(keys))
    assert set(lo.Q_PARAMS) - {"q_log_scale"} < set(params[OWN_PARAMS]) and "order_policy" not in lo.Q_PARAMS


@pytest.mark.parametrize("token_orders", ["draws", "mode"])
def test_q_freeze_steps_stops_only_the_posteriors_gradient_until_the_step(token_orders):
    """Before step q_freeze_steps every leaf of q has a zero gradient and the network and the policy a
    nonzero one; from that step on q's gradient is back, equal to the unfrozen one, as is the loss value
    at every step. Catches a freeze that also stops the policy or the network, one that never ends (or
    ends a step late), and one that changes the loss."""
    over = {"objective.num_samples": 3, "objective.q_learn_scale": True, "objective.policy_transitions": True,
            "objective.q_entropy_end": 0.5, "objective.token_orders": token_orders}
    free, frozen = tiny_cfg(4, **over), tiny_cfg(4, **over, **{"objective.q_freeze_steps": 5})
    params = random_params(free)
    x = jnp.asarray([[0, 1, 1, 0], [1, 1, 0, 0]], jnp.int32)

    def grads(cfg, step):
        fn = jax.jit(jax.value_and_grad(lambda p: lo.loss(p, {"tokens": x, "step": jnp.asarray(step)},
                                                          jax.random.key(3), cfg)[0]))
        return fn(params)

    for step in (0, 4, 5, 9):
        (v_free, g_free), (v_frozen, g_frozen) = grads(free, step), grads(frozen, step)
        np.testing.assert_allclose(float(v_frozen), float(v_free), rtol=1e-6)
        for path, leaf in jax.tree_util.tree_flatten_with_path(g_frozen)[0]:
            keys = [k.key for k in path]
            want = dict(jax.tree_util.tree_flatten_with_path(g_free)[0])[path]
            in_q = keys[0] == OWN_PARAMS and keys[1] in lo.Q_PARAMS
            if in_q and step < 5:
                assert not np.any(np.asarray(leaf)), (step, keys)
            else:
                np.testing.assert_allclose(np.asarray(leaf), np.asarray(want), rtol=1e-5, atol=1e-7,
                                           err_msg=f"{step} {keys}")
        q_norm = sum(float(jnp.abs(g_free[OWN_PARAMS][k]).sum()) for k in lo.Q_PARAMS)
        assert q_norm > 0 and float(jnp.abs(g_frozen[OWN_PARAMS]["policy_transition"]).sum()) > 0


def test_target_embed_std_zero_starts_without_target_information():
    """model.target_embed_std=0: the target embedding starts at zero, so an untrained any-order network's
    logits do not depend on the targets (with model.query_positions=current); at the default 1 they do.
    Catches the option not reaching the initializer."""
    x = jnp.asarray([[0, 1, 1, 0]], jnp.int32)
    pos, t1, t2 = (jnp.asarray([[0, 0, 1, 2]]), jnp.asarray([[0, 1, 2, 3]]), jnp.asarray([[3, 2, 1, 0]]))
    diffs = {}
    for std in (0.0, 1.0):
        cfg = tiny_cfg(4, **{"model.target_embed_std": std, "model.query_positions": "current"})
        params = model.init_params(cfg.model, jax.random.key(0), 4, target_positions=True)
        out = [model.apply(params, cfg.model, x, pos, "causal", target_positions_BL=t) for t in (t1, t2)]
        diffs[std] = float(jnp.abs(out[0] - out[1]).max())
    assert diffs[0.0] == 0.0 and diffs[1.0] > 1e-3, diffs
    with pytest.raises(ConfigError, match="model.target_embed_std=-1.0 must be >= 0"):
        tiny_cfg(4, **{"model.target_embed_std": -1})


@pytest.mark.slow
def test_eval_orders_and_extras_on_a_tiny_trained_run(tmp_path, text_corpus):
    """`eval --orders perm:1,0,2-,l2r,r2l` and the yardstick's extras (the ELBO beside the IW bound,
    q's order statistics) on a 3-step learned_order run; the policy sampler decodes it."""
    run = tmp_path / "run"
    train_on_corpus(run, (*TINY, "objective.name=learned_order", "objective.eval_samples=4"), text_corpus)
    code, out, err = cli_in_process(["eval", run, "--orders", "perm:1,0,2-,l2r,r2l", "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert set(result["orders"]) >= {"perm:1,0,2-", "l2r", "r2l"}
    assert all(np.isfinite(result["orders"][k]["bpb"]) for k in ("perm:1,0,2-", "l2r", "r2l"))
    ex = result["extras"]
    assert ex["elbo_nll"]["bpb"] >= result["bpb"] - 1e-6  # the ELBO is the looser bound (same draws)
    assert abs(ex["mode_l2r"]["mean"] + ex["mode_r2l"]["mean"] + ex["mode_other"]["mean"] - 1) < 1e-6
    assert len(ex["mean_rank"]["mean"]) == 32 and abs(np.mean(ex["mean_rank"]["mean"]) - 15.5) < 1e-4
    assert 0 <= ex["mode_5_before_0"]["mean"] <= 1
    code, out, err = cli_in_process(["eval", run])
    assert code == 0 and "elbo_nll:" in out and "mode_l2r:" in out, (out, err)


@pytest.mark.slow
def test_sharded_training_equals_one_device(tmp_path):
    """10 train steps on meshes 2x2x2 and 1x2x4 (8 forced host devices, a subprocess) equal one
    device within 1e-5: the own parameter subtree and the posterior draws shard like the network."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "losses.json"
    script = Path(__file__).parent / "scripts" / "mesh_equivalence.py"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.run([sys.executable, str(script), str(out), "learned_order:2x2x2,1x2x4"], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = json.loads(out.read_text())["learned_order"]
    for mesh in ("2x2x2", "1x2x4"):
        np.testing.assert_allclose(losses[mesh], losses["single"], atol=1e-5, rtol=0)
