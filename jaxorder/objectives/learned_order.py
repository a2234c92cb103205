"""A learned generation order: a joint model of (x, sigma) with a variational posterior over orders.

After LO-ARM (Wang et al. 2025) and variational order inference (Li et al. 2021). The generative
model picks the next position, then its token:

    p(x, sigma) = prod_j pi(sigma_j | x_sigma<j, sigma_<j) * p(x_sigma_j | x_sigma<j; sigma_<=j).

- Token head: exactly ao_ar's causal pass over the permuted window (BOS + tokens in order, current
  positions, target positions sigma_j), `ao_ar.order_token_nll`.
- Order policy pi: a second causal pass over the same permuted inputs WITHOUT target positions, so
  slot j's state depends on x_sigma<j and sigma_<j only (never on sigma_j); its final hidden state
  goes through its own linear head `order_policy` [d_model, max_len] to position logits, masked to
  the positions not yet generated (and < n), log-softmax; under policy_transitions a learned table
  T[sigma_{j-1}, i] (a start row at slot 0) is added to the logits first. Exact: pi(. | slot j) is a
  normalized distribution over the n - j open positions, so sum_sigma prod_j pi = 1, and the token
  head is normalized per slot, so p(x, sigma) sums to 1 over (x, sigma).

Posterior q(sigma | x): Plackett-Luce over positions with scores s_i = g_i + c_i(x) (times a learned
exp(a) under q_learn_scale, so one parameter can sharpen every choice): g [max_len] a learned global
score (`q_global`, initialized by `q_init`: uniform 0, l2r g_i = -scale*i, r2l +scale*i, a named
order g_sigma_r = -scale*r), c a small network that sees the whole window (the choice: a separate
embedding of (token, position) e_i [q_width], a window summary h = mean_i e_i, and c_i = tanh(e_i +
h W) . u with u initialized to 0, so q starts exactly at g; cheap, and the trunk gets no gradient
from q). Sampling is Gumbel-top-n, sigma = argsort(-(s + G)); log q(sigma) = sum_j [s_sigma_j -
logsumexp_{i open} s_i].
Under q_transitions a learned table T[sigma_{j-1}, i] is added to the scores of each choice (sampled
choice by choice; `order_posterior.py`), so q can learn which position follows which.

Training with K = num_samples posterior draws per window, w_k = log p(x, sigma_k) - log q(sigma_k | x):
    ELBO = E_q[w] <= log p(x) = log sum_sigma p(x, sigma).
grad_theta ELBO = E_q[grad_theta log p(x, sigma)] (p's parameters). For q's parameters phi,
grad_phi E_q[log p - log q] = E_q[w grad_phi log q] - E_q[grad_phi log q] = E_q[w grad_phi log q]
(the score has mean zero). With the leave-one-out baseline b_k = mean_{l != k} w_l (independent of
sigma_k, so E[b_k grad log q(sigma_k)] = E[b_k] E[grad log q(sigma_k)] = 0) the surrogate maximized is
    S = mean_k [ log p(x, sigma_k) + stop_grad(w_k - b_k) * log q(sigma_k | x) ],
whose gradient is unbiased for grad ELBO in both theta and phi. The direct gradient of the -log q
term inside w is left out: it has mean zero and only adds variance. K = 1: b = 0. The loss value is
-ELBO per token (the surrogate only shapes the gradient: value = sg(-ELBO) + (-S - sg(-S)), per token).

Yardstick (`nll`, exact=False): the importance-weighted bound -log mean_k exp(w_k) over K_eval =
eval_samples draws (>= -log p(x), tighter in expectation as K grows); `eval_extras` reports the
ELBO -mean_k w_k from the same draws beside it, and order statistics of q: the share of windows whose
mode (PL: argsort(-s); with transitions: the greedy order) is l2r, r2l or other, the mean rank of each
position over the draws, and the share of windows whose mode puts position 5 before position 0.
`order_nll` (`eval --orders`) is the token head's -log p(x | sigma) given the order (ao_ar's),
WITHOUT the policy term log pi(sigma).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxorder import model
from jaxorder.config import Config, ConfigError
from jaxorder.objectives import ao_ar
from jaxorder.objectives import order_posterior as posterior
from jaxorder.objectives.base import OWN_PARAMS, Objective, Option, OrderScoring, register
from jaxorder.objectives.order_posterior import (
    Q_INITS,
    initial_global_scores,
    initial_order,
    open_mask,
    previous_positions,
)

TRAIN_BOUNDS = ("elbo", "iw")
TOKEN_ORDERS = ("draws", "mode")


def own_params(cfg: Config, rng: jax.Array) -> dict:
    """The policy head and q's parameters, boxed with logical axis names (the train state's own subtree)."""
    o, m = cfg.objective, cfg.model
    P, d, w = m.max_len, m.d_model, o.q_width
    k_pol, k_tok, k_pos, k_mix = jax.random.split(rng, 4)
    box = nn.LogicallyPartitioned
    return {
        "order_policy": box(jax.random.normal(k_pol, (d, P)) * d ** -0.5, ("embed", None)),
        "q_global": box(initial_global_scores(o.q_init, o.q_init_scale, P), (None,)),
        "q_token": box(jax.random.normal(k_tok, (m.vocab_size, w)), (None, None)),
        "q_position": box(jax.random.normal(k_pos, (P, w)), (None, None)),
        "q_mix": box(jax.random.normal(k_mix, (w, w)) * w ** -0.5, (None, None)),
        "q_out": box(jnp.zeros((w,)), (None,)),  # c = 0 at init: q starts exactly at g
        # one learned inverse temperature on all scores: q can sharpen (or spread) every choice at once
        **({"q_log_scale": box(jnp.zeros(()), ())} if o.q_learn_scale else {}),
        # q's score per (previous position or start, next position); 0 at init: q starts at g
        **({"q_transition": box(jnp.zeros((P + 1, P)), (None, None))} if o.q_transitions else {}),
        # a score per (previous position or start, next position): lets pi learn a fixed order directly
        **({"policy_transition": box(jnp.zeros((P + 1, P)), (None, None))} if o.policy_transitions else {}),
    }


def q_scores(params, tokens_BL: jnp.ndarray) -> jnp.ndarray:
    """PL scores s [B, n] = g_i + c_i(x), times exp(a) with a learned `q_log_scale` a (q_learn_scale)."""
    own = params[OWN_PARAMS]
    n = tokens_BL.shape[1]
    e_BLw = jnp.take(own["q_token"], tokens_BL, axis=0) + own["q_position"][None, :n]
    h_Bw = e_BLw.mean(axis=1)  # the window summary every position's score sees
    c_BL = jnp.tanh(e_BLw + (h_Bw @ own["q_mix"])[:, None, :]) @ own["q_out"]
    s_BL = own["q_global"][None, :n] + c_BL
    return s_BL * jnp.exp(own["q_log_scale"]) if "q_log_scale" in own else s_BL


def q_table(params) -> jnp.ndarray | None:
    """q's transition table T [max_len + 1, max_len] (q_transitions; times exp(a) under q_learn_scale,
    like the scores), or None."""
    own = params[OWN_PARAMS]
    if "q_transition" not in own:
        return None
    return own["q_transition"] * jnp.exp(own["q_log_scale"]) if "q_log_scale" in own else own["q_transition"]


def q_log_prob(params, tokens_BL: jnp.ndarray, orders_BKL: jnp.ndarray) -> jnp.ndarray:
    """log q(sigma_k | x) [B, K]."""
    return posterior.log_prob(q_scores(params, tokens_BL), orders_BKL, q_table(params))


def q_draws(params, tokens_BL: jnp.ndarray, rng: jax.Array, num: int) -> dict:
    """num draws from q per window: its scores s [B, n] and table (or None), the orders [B, num, n]
    and their log q [B, num]."""
    s_BL, table = q_scores(params, tokens_BL), q_table(params)
    orders_BKL = posterior.sample(s_BL, rng, num, table)
    return dict(s=s_BL, table=table, orders=orders_BKL, lq=posterior.log_prob(s_BL, orders_BKL, table))


def policy_log_probs(hidden_NLd: jnp.ndarray, params, open_NLL: jnp.ndarray,
                     previous_NL: jnp.ndarray) -> jnp.ndarray:
    """log pi(position | slot) [N, n, n]: the policy head on slot hidden states, plus (policy_transitions)
    the learned score of moving from the previous position to each position, masked to open positions."""
    n = open_NLL.shape[-1]
    own = params[OWN_PARAMS]
    logits_NLP = hidden_NLd.astype(jnp.float32) @ own["order_policy"][:, :n]
    if "policy_transition" in own:  # a function of sigma_{j-1} only, so pi stays a policy of sigma_<j
        logits_NLP = logits_NLP + own["policy_transition"][previous_NL][..., :n]
    return jax.nn.log_softmax(jnp.where(open_NLL, logits_NLP, -jnp.inf), axis=-1)


def policy_terms(params, tokens_NL: jnp.ndarray, order_NL: jnp.ndarray, cfg: Config) -> jnp.ndarray:
    """log pi(sigma_j | x_sigma<j, sigma_<j) per slot [N, n]: the causal pass without target positions."""
    inputs_NL, positions_NL, _ = ao_ar.order_inputs(tokens_NL, order_NL, cfg)
    _, hidden_NLd = model.apply_with_hidden(params, cfg.model, inputs_NL, positions_NL, "causal")
    if not cfg.objective.policy_trunk_grad:  # the trunk then learns from the token head alone
        hidden_NLd = jax.lax.stop_gradient(hidden_NLd)
    previous_NL = previous_positions(order_NL, cfg.model.max_len)
    logp_NLL = policy_log_probs(hidden_NLd, params, open_mask(order_NL), previous_NL)
    return jnp.take_along_axis(logp_NLL, order_NL[..., None], axis=2)[..., 0]


def log_joint(params, tokens_BL: jnp.ndarray, orders_BKL: jnp.ndarray,
              cfg: Config) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(log p(x, sigma_k) [B, K], its policy part sum_j log pi [B, K]): one pass per stream over B*K rows."""
    B, K, L = orders_BKL.shape
    tokens_NL, order_NL = jnp.repeat(tokens_BL, K, axis=0), orders_BKL.reshape(B * K, L)  # row b*K + k
    token_N = -ao_ar.order_token_nll(params, tokens_NL, order_NL, cfg).sum(axis=1)
    policy_N = policy_terms(params, tokens_NL, order_NL, cfg).sum(axis=1)
    return (token_N + policy_N).reshape(B, K), policy_N.reshape(B, K)


def weights(params, tokens_BL: jnp.ndarray, rng: jax.Array, num: int, cfg: Config) -> dict:
    """num posterior draws per window and their log weights w = log p(x, sigma) - log q(sigma | x)."""
    q = q_draws(params, tokens_BL, rng, num)
    lp_BK, policy_BK = log_joint(params, tokens_BL, q["orders"], cfg)
    return dict(**q, lp=lp_BK, policy=policy_BK, w=lp_BK - q["lq"])


def iw_nll(w_BK: jnp.ndarray) -> jnp.ndarray:
    """-log mean_k exp(w_k) per window [B]."""
    return jnp.log(w_BK.shape[1]) - jax.nn.logsumexp(w_BK, axis=1)


def loo_baseline(w_BK: jnp.ndarray) -> jnp.ndarray:
    """b_k = mean_{l != k} w_l [B, K] (0 for K = 1); computed from stop-gradiented weights."""
    K = w_BK.shape[1]
    if K == 1:
        return jnp.zeros_like(w_BK)
    return (w_BK.sum(axis=1, keepdims=True) - w_BK) / (K - 1)


def surrogate(lp_BK: jnp.ndarray, lq_BK: jnp.ndarray, beta: jnp.ndarray | float = 1.0) -> jnp.ndarray:
    """S per window [B] (module docstring): its gradient is an unbiased estimate of the gradient of
    E_q[log p - beta log q] (beta = 1: the ELBO; the same score-function argument with w = lp - beta lq)."""
    w_BK = jax.lax.stop_gradient(lp_BK - beta * lq_BK)
    return (lp_BK + (w_BK - loo_baseline(w_BK)) * lq_BK).mean(axis=1)


def iw_surrogate(lp_BK: jnp.ndarray, lq_BK: jnp.ndarray, beta: jnp.ndarray | float = 1.0) -> jnp.ndarray:
    """VIMCO's surrogate per window [B] for the K-sample bound L = log mean_k exp(w_k), w = lp - beta lq
    (beta = 1: the importance-weighted bound): its gradient, sum_k softmax(w)_k grad w_k + sum_k
    (L - L_-k) grad log q(sigma_k), is unbiased for grad E_q[L], where L_-k replaces w_k by the mean of
    the other weights (a function of the other draws only, so a valid baseline for draw k)."""
    w_BK = lp_BK - beta * lq_BK
    w_sg_BK = jax.lax.stop_gradient(w_BK)
    K = w_BK.shape[1]
    bound_B = jax.nn.logsumexp(w_sg_BK, axis=1) - jnp.log(K)
    # [B, k, l]: the weights with w_k replaced by the leave-one-out mean
    is_k_KK = jnp.eye(K, dtype=bool)[None]
    w_minus_BKK = jnp.where(is_k_KK, loo_baseline(w_sg_BK)[:, :, None], w_sg_BK[:, None, :])
    bound_minus_BK = jax.nn.logsumexp(w_minus_BKK, axis=2) - jnp.log(K)
    normalized_BK = jax.nn.softmax(w_sg_BK, axis=1)
    return (normalized_BK * w_BK + (bound_B[:, None] - bound_minus_BK) * lq_BK).sum(axis=1)


def entropy_weight(step: jnp.ndarray | None, cfg: Config) -> jnp.ndarray:
    """beta at `step` (updates done): q_entropy_start for q_entropy_delay steps, then linearly to
    q_entropy_end over q_entropy_steps (0: the rest of the run), then held; 1 without a step (the
    ELBO). beta > 1 rewards q's entropy (exploration of orders); beta < 1 discounts it, so q sharpens
    toward the orders with the highest log p(x, sigma)."""
    o = cfg.objective
    if step is None or o.q_entropy_start == o.q_entropy_end == 1.0:
        return jnp.asarray(1.0, jnp.float32)
    ramp = o.q_entropy_steps or max(cfg.train.steps - o.q_entropy_delay, 1)
    frac = jnp.clip((jnp.asarray(step, jnp.float32) - o.q_entropy_delay) / ramp, 0.0, 1.0)
    return jnp.asarray(o.q_entropy_start + (o.q_entropy_end - o.q_entropy_start) * frac, jnp.float32)


def is_order(orders_BKL: jnp.ndarray, reverse: bool) -> jnp.ndarray:
    """bool [B, K]: the order is l2r (or r2l with reverse)."""
    ident_L = jnp.arange(orders_BKL.shape[-1])
    return (orders_BKL == (ident_L[::-1] if reverse else ident_L)).all(axis=-1)


def loss(params, batch: dict, rng: jax.Array, cfg: Config) -> tuple[jnp.ndarray, dict]:
    tokens_BL = batch["tokens"]
    n = tokens_BL.shape[1]
    beta = entropy_weight(batch.get("step"), cfg)
    sg = jax.lax.stop_gradient
    if "q_log_scale" in params[OWN_PARAMS]:  # learned only while beta < 1: at beta >= 1 it would spread q
        params = gradient_only_where(params, ("q_log_scale",), beta < 1)
    params = freeze_q(params, batch.get("step"), cfg.objective.q_freeze_steps)
    if cfg.objective.token_orders == "mode":
        return mode_loss(params, tokens_BL, rng, beta, cfg)
    d = weights(params, tokens_BL, rng, cfg.objective.num_samples, cfg)
    neg_elbo = sg(-d["w"].mean() / n)
    if cfg.objective.train_bound == "iw":
        neg_s = -iw_surrogate(d["lp"], d["lq"], beta).mean() / n
        reported = sg(iw_nll(d["w"]).mean() / n)
    else:
        neg_s = -surrogate(d["lp"], d["lq"], beta).mean() / n
        reported = neg_elbo
    value = reported + (neg_s - sg(neg_s))  # = the trained bound per token, gradient of -S
    return value, train_metrics(value, reported, d, beta, n)


def freeze_q(params, step, freeze_steps: int):
    """q's parameters with their gradient stopped while step < freeze_steps (q_freeze_steps): the token
    head and policy first learn from q's initial spread, before q's order can lock in on an untrained
    network. No step (evaluation) or freeze_steps 0: unchanged."""
    if step is None or not freeze_steps:
        return params
    return gradient_only_where(params, Q_PARAMS, jnp.asarray(step) >= freeze_steps)


def gradient_only_where(params, names: tuple[str, ...], learns) -> dict:
    """params with the gradient of the own params `names` stopped unless `learns` (a traced bool);
    values unchanged."""
    own = params[OWN_PARAMS]
    return {**params, OWN_PARAMS: {k: jnp.where(learns, v, jax.lax.stop_gradient(v)) if k in names else v
                                   for k, v in own.items()}}


def train_metrics(value, reported, d: dict, beta, n: int) -> dict:
    sg = jax.lax.stop_gradient
    return {"loss": value, "nll_per_token": reported, "elbo": sg(d["w"].mean() / n),
            "iw_bound": sg(iw_nll(d["w"]).mean() / n), "policy_nll_per_token": sg(-d["policy"].mean() / n),
            "q_entropy": sg(posterior.first_choice_entropy(d["s"], d["table"]).mean()),
            "q_entropy_weight": beta,
            "frac_l2r": is_order(d["orders"], False).mean(), "frac_r2l": is_order(d["orders"], True).mean()}


def mode_loss(params, tokens_BL: jnp.ndarray, rng: jax.Array, beta, cfg: Config) -> tuple[jnp.ndarray, dict]:
    """token_orders=mode (hard EM for the token head): the token head learns only q's PL mode
    argsort(-s), one order per window; the policy and q learn from the K draws exactly as in the ELBO
    (the policy fits q's draws, q's weights are the whole w = log p(x, sigma) - beta log q, with the
    draws' token terms gradient-stopped). Exploring orders then costs the token head nothing, and the
    policy term still charges q for any information its order carries about x. Once q is a point mass,
    mode = draws and this is the ELBO's gradient. The reported loss is still -ELBO of the draws."""
    sg = jax.lax.stop_gradient
    B, n = tokens_BL.shape
    K = cfg.objective.num_samples
    q = q_draws(params, tokens_BL, rng, K)
    orders_BKL, lq_BK = q["orders"], q["lq"]
    tokens_NL, order_NL = jnp.repeat(tokens_BL, K, axis=0), orders_BKL.reshape(B * K, n)
    token_BK = -ao_ar.order_token_nll(sg(params), tokens_NL, order_NL, cfg).sum(axis=1).reshape(B, K)
    policy_BK = policy_terms(params, tokens_NL, order_NL, cfg).sum(axis=1).reshape(B, K)
    mode_BL = posterior.mode(q["s"], q["table"])
    token_mode_B = -ao_ar.order_token_nll(params, tokens_BL, mode_BL, cfg).sum(axis=1)
    w_BK = sg(token_BK + policy_BK - beta * lq_BK)
    neg_s = -(token_mode_B + (policy_BK + (w_BK - loo_baseline(w_BK)) * lq_BK).mean(axis=1)).mean() / n
    d = dict(**q, policy=policy_BK, w=sg(token_BK + policy_BK - lq_BK))
    reported = sg(-d["w"].mean() / n)
    value = reported + (neg_s - sg(neg_s))
    return value, train_metrics(value, reported, d, beta, n)


def nll(params, batch: dict, rng: jax.Array, cfg: Config) -> jnp.ndarray:
    """The eval_samples-draw importance-weighted bound per window in nats [B] (E >= -log p(x))."""
    return iw_nll(weights(params, batch["tokens"], rng, cfg.objective.eval_samples, cfg)["w"])


def eval_extras(params, batch: dict, rng: jax.Array, cfg: Config) -> dict[str, jnp.ndarray]:
    """The ELBO of the same draws as `nll` (same rng), its three terms (elbo_nll = token_nll + policy_nll
    - q_entropy_nll exactly: token head, order policy, the Monte Carlo entropy -log q) and q's order
    statistics, per window."""
    d = weights(params, batch["tokens"], rng, cfg.objective.eval_samples, cfg)
    B, K, n = d["orders"].shape
    mode_B1L = posterior.mode(d["s"], d["table"])[:, None, :]
    l2r_B, r2l_B = is_order(mode_B1L, False)[:, 0], is_order(mode_B1L, True)[:, 0]
    rank_BKL = jnp.zeros_like(d["orders"]).at[jnp.arange(B)[:, None, None], jnp.arange(K)[None, :, None],
                                              d["orders"]].set(jnp.arange(n, dtype=jnp.int32))
    token_BK = d["lp"] - d["policy"]  # log p(x | sigma) of the token head alone
    extras = {"elbo_nll": -d["w"].mean(axis=1), "token_nll": -token_BK.mean(axis=1),
              "policy_nll": -d["policy"].mean(axis=1), "q_entropy_nll": -d["lq"].mean(axis=1),
              "mode_l2r": l2r_B.astype(jnp.float32),
              "mode_r2l": r2l_B.astype(jnp.float32), "mode_other": (~l2r_B & ~r2l_B).astype(jnp.float32),
              "mean_rank": rank_BKL.astype(jnp.float32).mean(axis=1)}
    if n > 5:  # the swap05 question: does q's mode generate position 5 before position 0?
        mode_rank_BL = jnp.argsort(mode_B1L[:, 0], axis=1)
        extras["mode_5_before_0"] = (mode_rank_BL[:, 5] < mode_rank_BL[:, 0]).astype(jnp.float32)
    return extras


OPTIONS = (
    Option("num_samples", 4, "learned_order: K posterior orders per window in training"),
    Option("eval_samples", 16, "learned_order: K posterior orders per window of the yardstick"),
    Option("q_init", "uniform", "learned_order: posterior start, uniform | l2r | r2l | perm:INDICES | "
           "perm@FILE (one line; e.g. written by `jaxorder data order`)"),
    Option("q_init_scale", 1.0, "learned_order: l2r/r2l/perm start, the position generated r-th gets "
           "global score -scale * r"),
    Option("train_bound", "elbo", "learned_order: the bound training maximizes, elbo | iw (the K-sample "
           "importance-weighted bound, VIMCO's estimator)"),
    Option("token_orders", "draws", "learned_order: the orders the token head learns from, draws (q's K "
           "draws: the ELBO's gradient) | mode (q's mode only; the policy and q still learn from the draws)"),
    Option("q_learn_scale", False, "learned_order: a learned inverse temperature exp(a) on q's scores "
           "(a starts at 0; it learns only while beta < 1)"),
    Option("q_transitions", False, "learned_order: add to q's scores a learned score per (previous position, "
           "next position), so q can learn which position follows which (sampled choice by choice)"),
    Option("policy_transitions", False, "learned_order: add to the policy's logits a learned score per "
           "(previous position, next position)"),
    Option("policy_trunk_grad", True, "learned_order: the policy's loss trains the shared trunk too "
           "(false: only its own head and transition table)"),
    Option("q_width", 32, "learned_order: width of the posterior's content network"),
    Option("q_entropy_start", 1.0, "learned_order: q's gradient follows E_q[log p - beta log q], beta from "
           "this at step 0 linearly to q_entropy_end"),
    Option("q_entropy_end", 1.0, "learned_order: beta at the end of that schedule "
           "(1: the ELBO; < 1 sharpens q)"),
    Option("q_entropy_delay", 0, "learned_order: steps beta stays at q_entropy_start before it moves"),
    Option("q_entropy_steps", 0, "learned_order: steps of that schedule (0: the rest of the run), then beta "
           "is held"),
    Option("q_lr_scale", 1.0, "learned_order: the posterior's learning rate = optimizer.lr * q_lr_scale"),
    Option("q_freeze_steps", 0, "learned_order: q gets no gradient for this many first steps (it stays at "
           "q_init while the token head and policy learn from its draws)"),
)

# the posterior's own params
Q_PARAMS = ("q_global", "q_token", "q_position", "q_mix", "q_out", "q_log_scale", "q_transition")


def lr_scales(cfg: Config) -> dict[str, float]:
    """q's parameters step at q_lr_scale times the learning rate (Adam ignores a gradient factor), and so
    does the policy's transition table, which has to follow q's order as fast as q moves."""
    return {name: cfg.objective.q_lr_scale for name in (*Q_PARAMS, "policy_transition")}


def validate_config(cfg: Config) -> None:
    o = cfg.objective
    for key in ("num_samples", "eval_samples", "q_width"):
        if getattr(o, key) < 1:
            raise ConfigError(f"objective.{key}={getattr(o, key)} must be >= 1")
    if o.train_bound not in TRAIN_BOUNDS:
        raise ConfigError(f"objective.train_bound={o.train_bound!r} must be one of {', '.join(TRAIN_BOUNDS)}")
    if o.token_orders not in TOKEN_ORDERS:
        raise ConfigError(f"objective.token_orders={o.token_orders!r} must be one of "
                          f"{', '.join(TOKEN_ORDERS)}")
    if o.token_orders == "mode" and o.train_bound != "elbo":
        raise ConfigError("objective.token_orders=mode trains the token head on q's mode; it needs "
                          "objective.train_bound=elbo")
    if o.q_init not in Q_INITS:
        initial_order(o.q_init, cfg.model.max_len)  # a named order: ConfigError if it is no permutation
    if o.q_init_scale < 0:
        raise ConfigError(f"objective.q_init_scale={o.q_init_scale} must be >= 0")
    if o.q_entropy_start < 0 or o.q_entropy_end < 0 or o.q_entropy_steps < 0 or o.q_entropy_delay < 0:
        raise ConfigError(f"objective.q_entropy_start={o.q_entropy_start}, objective.q_entropy_end="
                          f"{o.q_entropy_end}, objective.q_entropy_steps={o.q_entropy_steps} and "
                          f"objective.q_entropy_delay={o.q_entropy_delay} must be >= 0")
    if o.q_freeze_steps < 0:
        raise ConfigError(f"objective.q_freeze_steps={o.q_freeze_steps} must be >= 0 "
                          f"(0: q learns from step 0)")
    if o.q_lr_scale <= 0:
        raise ConfigError(f"objective.q_lr_scale={o.q_lr_scale} must be > 0")


OBJECTIVE = register(Objective(  # ao_ar's token network plus an order policy and a posterior of its own
    name="learned_order", loss=loss, nll=nll, exact=False,
    yardstick="upper bound (K-sample importance-weighted)", sampling="learned_order",
    default_sampler="policy", target_positions=True, query_positions=ao_ar.QUERY_POSITIONS,
    order_scoring=OrderScoring(order_nll=ao_ar.order_nll, mixture_bound=True,
                               order_token_nll=ao_ar.position_token_nll), position_nll=ao_ar.position_nll,
    options=OPTIONS, validate_config=validate_config, analysis_inputs=ao_ar.analysis_inputs,
    own_params=own_params, eval_extras=eval_extras, lr_scales=lr_scales, undecayed=Q_PARAMS,
    log_metrics=("elbo", "iw_bound", "q_entropy", "frac_l2r", "frac_r2l")))
