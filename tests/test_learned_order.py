"""learned_order (objectives/learned_order.py, sampling/learned_order.py) against brute force.

Vocabulary: 2 symbols + PAD, MASK, BOS, EOS; windows of n = 3 or 4 tokens; random (untrained)
parameters with a non-trivial posterior (q's content head and global scores drawn at random), so
every conditional, policy step and posterior probability is a non-trivial function of its inputs.
"""
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxorder import config as config_lib
from jaxorder import model
from jaxorder.objectives import OWN_PARAMS, ao_ar
from jaxorder.objectives import learned_order as lo
from jaxorder.objectives import order_posterior as posterior

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
    if "q_transition" in own:  # objective.q_transitions: q's table, also far from its zero init
        own["q_transition"] = 1.2 * jax.random.normal(jax.random.key(seed + 98), own["q_transition"].shape)
    return {**params, OWN_PARAMS: own}


def perms(n: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(n))), np.int32)


log_joint = jax.jit(lo.log_joint, static_argnums=(3,))
policy_terms = jax.jit(lo.policy_terms, static_argnums=(3,))
q_scores = jax.jit(lo.q_scores)
q_log_prob = jax.jit(lo.q_log_prob)
pl_log_prob = jax.jit(posterior.log_prob)


def exact_terms(params, x_BL: np.ndarray, cfg) -> tuple[np.ndarray, np.ndarray]:
    """(log p(x, sigma) [B, n!], log q(sigma | x) [B, n!]) over every permutation, float64."""
    P = perms(x_BL.shape[1])
    orders_BKL = jnp.broadcast_to(jnp.asarray(P), (len(x_BL), *P.shape))
    lp_BK = np.asarray(log_joint(params, jnp.asarray(x_BL), orders_BKL, cfg)[0], np.float64)
    lq_BK = np.asarray(q_log_prob(params, jnp.asarray(x_BL), orders_BKL), np.float64)
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
    samples = np.asarray(posterior.sample(s_13, jax.random.key(3), draws))[0]
    P3 = perms(3)
    index = {tuple(p): i for i, p in enumerate(P3)}
    counts = np.bincount([index[tuple(s)] for s in samples], minlength=len(P3))
    expected = draws * np.exp(np.asarray(pl_log_prob(s_13, jnp.asarray(P3)[None]), np.float64)[0])
    assert stats.chisquare(counts, expected * counts.sum() / expected.sum()).pvalue > 1e-3


def test_transition_posterior_sums_to_one_samples_itself_and_its_greedy_mode():
    """q with a transition table (q_transitions): the choice-by-choice distribution sums to 1 over all
    24 orders; 30000 draws match it (chi-square); the greedy mode is the step-by-step argmax of
    s_i + T[previous, i] (numpy reference); a zero table is Plackett-Luce exactly. Catches a table
    read at the wrong row (the start row, or sigma_j instead of sigma_{j-1}), a normalizer over the
    wrong open set, and a sampler whose draws do not follow log_prob."""
    rng = np.random.default_rng(4)
    s_BL = jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)
    table = jnp.asarray(rng.normal(size=(9, 8)) * 1.5, jnp.float32)  # max_len 8: rows 0-7 and the start, 8
    P = perms(4)
    P_BKL = jnp.broadcast_to(jnp.asarray(P), (2, *P.shape))
    lq = np.asarray(pl_log_prob(s_BL, P_BKL, table), np.float64)
    np.testing.assert_allclose(np.exp(lq).sum(1), 1.0, atol=1e-5)
    s_np, t_np = np.asarray(s_BL, np.float64), np.asarray(table, np.float64)
    for b in range(2):  # log q of every order by the definition, choice by choice
        for k in (0, 7, 23):
            prev, total, left = 8, 0.0, list(range(4))
            for pos in P[k]:
                logits = s_np[b, left] + t_np[prev, left]
                total += s_np[b, pos] + t_np[prev, pos] - np.log(np.exp(logits).sum())
                left.remove(pos)
                prev = pos
            np.testing.assert_allclose(lq[b, k], total, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(pl_log_prob(s_BL, P_BKL, jnp.zeros_like(table))),
                               np.asarray(pl_log_prob(s_BL, P_BKL)), rtol=1e-5, atol=1e-5)
    draws = 30000
    samples = np.asarray(posterior.sample(s_BL[:1], jax.random.key(5), draws, table))[0]
    index = {tuple(p): i for i, p in enumerate(P)}
    counts = np.bincount([index[tuple(o)] for o in samples], minlength=len(P))
    expected = draws * np.exp(lq[0])
    assert stats.chisquare(counts, expected * counts.sum() / expected.sum()).pvalue > 1e-3
    greedy, prev, left = [], 8, list(range(4))
    for _ in range(4):
        pick = left[int(np.argmax(s_np[0, left] + t_np[prev, left]))]
        greedy.append(pick)
        left.remove(pick)
        prev = pick
    assert np.asarray(posterior.mode(s_BL, table))[0].tolist() == greedy
    assert np.asarray(posterior.mode(s_BL)).tolist() == np.argsort(-s_np, axis=1).tolist()


def test_q_transitions_start_at_zero_and_follow_the_learned_scale():
    """objective.q_transitions adds q_transition [max_len + 1, max_len], zero at init (q starts at its
    global scores), scaled by exp(a) with q_learn_scale; q_freeze_steps and q_lr_scale cover it."""
    cfg = tiny_cfg(5, **{"objective.q_transitions": True, "objective.q_learn_scale": True})
    own = nn.meta.unbox(lo.own_params(cfg, jax.random.key(0)))
    assert own["q_transition"].shape == (9, 8) and not np.any(np.asarray(own["q_transition"]))
    assert "q_transition" in lo.Q_PARAMS and "q_transition" in lo.lr_scales(cfg)
    params = random_params(cfg, seed=1)
    params[OWN_PARAMS]["q_log_scale"] = jnp.asarray(0.3)
    np.testing.assert_allclose(np.asarray(lo.q_table(params)),
                               np.exp(0.3) * np.asarray(params[OWN_PARAMS]["q_transition"]), rtol=1e-6)
    assert lo.q_table(random_params(tiny_cfg(5), seed=1)) is None


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

@pytest.mark.parametrize("bound, beta_start, learn_scale, q_transitions", [
    ("elbo", 1.0, False, False), ("elbo", 2.5, False, False), ("iw", 0.6, True, False),
    ("elbo", 0.7, True, True)])
def test_score_function_surrogate_is_unbiased_for_the_exact_elbo_gradient(bound, beta_start, learn_scale,
                                                                          q_transitions):
    """Mean over 16000 draws of the loss gradient (K = 4, leave-one-out baseline) against jax.grad of
    the exact ELBO enumerated over the 6 orders, per coordinate (|z| < 6) and by projection on the
    exact gradient (separately for p's and q's parameters: within 4 s.e. of 1). Catches a wrong sign of
    the score-function term, a baseline that includes w_k itself (q's gradient scaled by (K-1)/K), a
    missing stop-gradient on the weights, and a p gradient taken through the wrong terms. With
    q_entropy_start=2.5 at step 0 the target is E_q[log p - 2.5 log q] (catches beta left out of the
    weights, or applied to log p). The third trains the K = 3 importance-weighted bound (train_bound=iw,
    VIMCO) at beta = 0.6 with q's inverse temperature learned (q_learn_scale): the target is
    E[log mean_k exp(lp_k - 0.6 lq_k)] enumerated over all 6^3 triples of orders (catches normalized
    weights left out of the direct term, or a baseline L_-k that still contains w_k). The fourth has q's
    transition table (q_transitions, drawn choice by choice): its gradient is unbiased too."""
    n = 3
    K = 3 if bound == "iw" else 4
    cfg = tiny_cfg(n, **{"objective.num_samples": K, "objective.q_entropy_start": beta_start,
                         "objective.q_learn_scale": learn_scale, "objective.train_bound": bound,
                         "objective.q_transitions": q_transitions})
    params = random_params(cfg, seed=3)
    x = jnp.asarray([[0, 1, 5]], jnp.int32)
    P = jnp.asarray(perms(n))[None]

    triples_TK = np.array(list(itertools.product(range(6), repeat=K))) if bound == "iw" else None

    def neg_elbo_per_token(p):
        lp_BK, _ = lo.log_joint(p, x, P, cfg)
        lq_BK = lo.q_log_prob(p, x, P)
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
    float32_P = 1e-5 * np.abs(exact_P).max()  # the exact gradient's own rounding (a coordinate near 0)
    z_P = np.abs(mean_P - exact_P)[live] / (se_P[live] + float32_P)
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
        lq_K = lo.q_log_prob(p, x, P)[0]
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
