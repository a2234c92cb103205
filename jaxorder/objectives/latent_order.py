"""The generation order as a latent variable: a log-sum over orders instead of a sum of logs.

Shares the any-order network of ao_ar (same model inputs, same one-pass exact order NLL). For
each sequence take K = cfg.objective.num_orders candidate orders sigma_1..sigma_K: first the F
fixed candidates, l2r and r2l with include_fixed_orders, then those named by candidate_orders (a
comma list of l2r, r2l and perm:INDICES specs, ``jaxorder.orders``), and K - F iid uniform
random permutations; compute l_k = log p(x | sigma_k) in one batched pass over B*K sequences,
and minimize

    L_K(x) = -log (1/K) sum_k exp(l_k)          (reported per token: / n, batch mean).

Its gradient is sum_k softmax_k(l_k) * grad(-l_k): orders are weighted by their posterior
weight, so the model can concentrate on orders that explain x well, instead of being pushed to
fit every order equally (the sum-of-logs -1/K sum_k l_k that masked diffusion effectively
optimizes, which is >= L_K by Jensen). The metrics `w_l2r`, `w_r2l`, `w_<name>` (one per fixed
candidate, named by its spec: `w_perm_3_1_0_2-` for perm:3,1,0,2-) and `w_random` are the average
posterior weight softmax_k(l_k) of one candidate of each kind (w_random averaged over the random
candidates, so all are comparable: all equal 1/K when the model is indifferent).

What `nll` (the yardstick) bounds. Let q be the distribution of one candidate drawn as above
(q = 1/K on each fixed candidate, (K-F)/K uniform) and
p_mix(x) = E_{sigma~q} p(x | sigma), a mixture of normalized distributions, hence a proper
model of x. Because E[(1/K) sum_k p(x | sigma_k)] = p_mix(x) (the fixed candidates contribute
exactly their share), Jensen gives E[L_K(x)] >= -log p_mix(x): `nll` is a stochastic upper bound
(IWAE-style; not unbiased for any single draw) on the NLL of the order-mixture model, which
tightens in expectation as K grows for iid random candidates and equals -log p_mix(x) in the
limit. Orders are drawn from the eval rng with the training K (not exact). Note that p_mix
depends on K when fixed orders are included (their mixture weight is 1/K each).

Collapse controls. The posterior weighting is rich-get-richer: an order that explains x a little
better gets more gradient and explains it better still, until one order takes all the weight
(docs/study.md). Two optional controls, off by default (beta = 1, bonus 0: the loss above, bit for
bit):
- a posterior temperature beta: minimize L_beta(x) = -(1/beta) log (1/K) sum_k exp(beta l_k),
  whose gradient weights order k by softmax_k(beta l_k). L_0 = -(1/K) sum_k l_k (the mean of
  logs, every order pushed equally, as masked diffusion does), L_1 = L_K; L_beta is non-increasing
  in beta (a power mean of the p(x | sigma_k)). beta follows `beta_schedule`: `constant`, or
  `linear` from `beta_start` to `beta` over `beta_warmup_steps` steps (0: all of train.steps),
  read from the step the train step puts in the batch (no step: the final beta).
- an entropy bonus: add -lambda H(w) (per sequence, batch mean) with w = softmax_k(l_k) the
  candidate posterior at beta = 1. Its gradient flows through w into every l_k (with w
  stop-gradiented the term would be a constant): it raises the likelihood of orders weighted below
  exp(-H) and lowers that of orders above, so it can also spread the weight by making the winning
  order worse; its effect on the bound is measured by `nll`, which stays the K-order bound at
  beta = 1 whatever the controls.
Metrics: `beta` (this step's), `eff_orders` = exp(H(w)) averaged over the batch's windows (1: one
order takes all the weight, K: all equal), `order_entropy` = H(w), and the weights above.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder import orders
from jaxorder.config import Config, ConfigError
from jaxorder.objectives import ao_ar
from jaxorder.objectives.base import Objective, Option, OrderScoring, register

WHERE = "objective.candidate_orders"


def fixed_names(include_fixed_orders: bool, named: str) -> list[str]:
    """The fixed candidates' specs in candidate order: l2r, r2l (include_fixed_orders), then `named`."""
    return [*(orders.NAMED if include_fixed_orders else ()), *orders.split_list(named)]


def fixed_orders(names: list[str], n: int) -> np.ndarray:
    """The fixed candidates [F, n] of a window of n tokens (one-line ConfigError for a bad spec)."""
    rows = [orders.named_or_perm(name, n, WHERE) for name in names]
    return np.stack(rows).astype(np.int32) if rows else np.zeros((0, n), np.int32)


def weight_metric(name: str) -> str:
    """The posterior-weight metric of a fixed candidate: w_l2r, w_perm_3_1_0_2- (a TensorBoard-safe tag)."""
    return "w_" + re.sub(r"[^-\w.]", "_", name)


def candidate_orders(rng: jax.Array, batch_size: int, n: int, num_orders: int,
                     include_fixed_orders: bool, named: str = "") -> jnp.ndarray:
    """Orders [B, K, n]: the fixed candidates (l2r, r2l with include_fixed_orders, then the specs of
    `named`), then K - F random ones."""
    fixed_Fn = jnp.asarray(fixed_orders(fixed_names(include_fixed_orders, named), n))
    num_random = num_orders - fixed_Fn.shape[0]
    random_BKn = ao_ar.random_orders(rng, batch_size * num_random, n).reshape(batch_size, num_random, n)
    fixed_BFn = jnp.broadcast_to(fixed_Fn, (batch_size, *fixed_Fn.shape))
    return jnp.concatenate([fixed_BFn, random_BKn.astype(fixed_BFn.dtype)], axis=1)


def order_log_likelihoods(params, tokens_BL: jnp.ndarray, orders_BKL: jnp.ndarray,
                          cfg: Config) -> jnp.ndarray:
    """l_k = log p(x | sigma_k) [B, K], one pass over B*K permuted sequences."""
    B, K, L = orders_BKL.shape
    tokens_NL = jnp.repeat(tokens_BL, K, axis=0)  # row b*K + k
    return -ao_ar.order_nll(params, tokens_NL, orders_BKL.reshape(B * K, L), cfg).reshape(B, K)


def mixture_nll(l_BK: jnp.ndarray) -> jnp.ndarray:
    """-log (1/K) sum_k exp(l_k) per sequence [B]."""
    return jnp.log(l_BK.shape[1]) - jax.nn.logsumexp(l_BK, axis=1)


def orders_nll(params, tokens_BL: jnp.ndarray, orders_BKL: jnp.ndarray,
               cfg: Config) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(K-order bound -log mean_k p(x | sigma_k) [B], l [B, K]) for explicit orders [B, K, n]."""
    l_BK = order_log_likelihoods(params, tokens_BL, orders_BKL, cfg)
    return mixture_nll(l_BK), l_BK


def _sampled(params, tokens_BL: jnp.ndarray, rng: jax.Array, cfg: Config) -> tuple[jnp.ndarray, jnp.ndarray]:
    o = cfg.objective
    orders_BKL = candidate_orders(rng, *tokens_BL.shape, o.num_orders, o.include_fixed_orders,
                                  o.candidate_orders)
    return orders_nll(params, tokens_BL, orders_BKL, cfg)


def nll(params, batch: dict, rng: jax.Array, cfg: Config) -> jnp.ndarray:
    """K-order log-mean-exp bound per sequence in nats [B] (upper bound in expectation, see above)."""
    return _sampled(params, batch["tokens"], rng, cfg)[0]


def tempered_nll(l_BK: jnp.ndarray, beta: jnp.ndarray) -> jnp.ndarray:
    """-(1/beta) log (1/K) sum_k exp(beta l_k) per sequence [B]; beta = 0 gives -(1/K) sum_k l_k.

    Computed as -m - (1/beta) log(1 + mean_k expm1(y_k - max y)) - max y / beta with the centred
    y_k = beta (l_k - m), m = mean_k l_k: the log-mean-exp of small y cancels to ~beta^2, which
    logsumexp - log K would lose to float32 rounding divided by a small beta."""
    m_B = l_BK.mean(axis=1)
    positive = beta > 0
    safe_beta = jnp.where(positive, beta, 1.0)  # no 0/0 in the unused branch (NaN gradients otherwise)
    y_BK = safe_beta * (l_BK - m_B[:, None])
    top_B = y_BK.max(axis=1)
    lme_B = top_B + jnp.log1p(jnp.expm1(y_BK - top_B[:, None]).mean(axis=1))
    return jnp.where(positive, -m_B - lme_B / safe_beta, -m_B)


def scheduled_beta(step: jnp.ndarray | None, cfg: Config) -> jnp.ndarray:
    """The posterior temperature at `step` (the number of updates done; None: the final beta)."""
    o = cfg.objective
    if o.beta_schedule == "constant" or step is None:
        return jnp.asarray(o.beta, jnp.float32)
    warmup = o.beta_warmup_steps or cfg.train.steps
    frac = jnp.minimum(jnp.asarray(step, jnp.float32) / warmup, 1.0)
    return jnp.asarray(o.beta_start + (o.beta - o.beta_start) * frac, jnp.float32)


def order_entropy(l_BK: jnp.ndarray) -> jnp.ndarray:
    """H(w) in nats [B] of the candidate posterior w = softmax_k(l_k)."""
    logw_BK = jax.nn.log_softmax(l_BK, axis=1)
    return -(jnp.exp(logw_BK) * logw_BK).sum(axis=1)


def loss(params, batch: dict, rng: jax.Array, cfg: Config) -> tuple[jnp.ndarray, dict]:
    o = cfg.objective
    tokens_BL = batch["tokens"]
    n = tokens_BL.shape[1]
    bound_B, l_BK = _sampled(params, tokens_BL, rng, cfg)
    bound = bound_B.mean() / n
    beta = scheduled_beta(batch.get("step"), cfg)
    untempered = o.beta_schedule == "constant" and o.beta == 1.0  # today's loss, bit for bit
    value = bound if untempered else tempered_nll(l_BK, beta).mean() / n
    entropy_B = order_entropy(l_BK)
    if o.order_entropy_bonus:
        value = value - o.order_entropy_bonus * entropy_B.mean()
    entropy_B = jax.lax.stop_gradient(entropy_B)
    w_BK = jax.lax.stop_gradient(jax.nn.softmax(l_BK, axis=1))
    metrics = {"loss": value, "nll_per_token": jax.lax.stop_gradient(bound),
               "nll_per_token_avg_order": jax.lax.stop_gradient(-l_BK.mean() / n), "beta": beta,
               "order_entropy": entropy_B.mean(), "eff_orders": jnp.exp(entropy_B).mean()}
    names = fixed_names(o.include_fixed_orders, o.candidate_orders)
    for k, name in enumerate(names):
        metrics[weight_metric(name)] = w_BK[:, k].mean()
    if l_BK.shape[1] > len(names):
        metrics["w_random"] = w_BK[:, len(names):].mean()
    return value, metrics


OPTIONS = (
    Option("num_orders", 4, "K candidate orders per sequence"),
    Option("include_fixed_orders", True, "l2r and r2l are always among the K candidates (the first two)"),
    Option("candidate_orders", "", "more fixed candidates after those: a comma list of l2r, r2l, "
                                   "perm:INDICES (e.g. 'perm:3,1,0,2-,perm:0-3,7-4'); the rest are random"),
    Option("beta", 1.0, "posterior temperature (the final one with a schedule): 0 mean of logs, 1 log-sum"),
    Option("beta_schedule", "constant", "constant | linear (beta_start -> beta over beta_warmup_steps)"),
    Option("beta_start", 0.0, "linear schedule: beta at step 0"),
    Option("beta_warmup_steps", 0, "linear schedule: steps to reach beta (0: train.steps)"),
    Option("order_entropy_bonus", 0.0, "lambda: adds -lambda * H(candidate posterior) to the loss"),
)


def validate_config(cfg: Config) -> None:
    o = cfg.objective
    if o.num_orders < 1 or (o.include_fixed_orders and o.num_orders < 2):
        raise ConfigError(f"objective.num_orders={o.num_orders} must be >= 1 (>= 2 with "
                          f"include_fixed_orders)")
    names = fixed_names(o.include_fixed_orders, o.candidate_orders)
    if any(name.startswith(orders.FILE_PREFIX) for name in names):
        raise ConfigError(f"{WHERE} takes l2r, r2l and perm:INDICES specs, not a perm@FILE; write the orders "
                          f"in the config")
    fixed_Fn = fixed_orders(names, cfg.data.seq_len)
    for k in range(len(names)):
        same = [names[j] for j in range(k) if np.array_equal(fixed_Fn[j], fixed_Fn[k])]
        if same:
            by = " (include_fixed_orders has l2r and r2l)" if o.include_fixed_orders else ""
            raise ConfigError(f"{WHERE}: '{names[k]}' is the same order as '{same[0]}'{by}; name each "
                              f"candidate once")
    if o.num_orders < len(names):
        raise ConfigError(f"objective.num_orders={o.num_orders} is less than the {len(names)} fixed "
                          f"candidates ({', '.join(names)}); raise num_orders or name fewer")
    if o.beta_schedule not in ("constant", "linear"):
        raise ConfigError(f"objective.beta_schedule={o.beta_schedule!r} must be constant or linear")
    for key in ("beta", "beta_start", "order_entropy_bonus", "beta_warmup_steps"):
        if getattr(o, key) < 0:  # NaN and inf are refused by the config loader already
            raise ConfigError(f"objective.{key}={getattr(o, key)} must be >= 0")


OBJECTIVE = register(Objective(  # same network and inputs as ao_ar: a (stochastic, IWAE-style) bound
    name="latent_order", loss=loss, nll=nll, exact=False, yardstick="upper bound (K-order log-mean-exp)",
    sampling="any_order", default_sampler="l2r", target_positions=True, query_positions=ao_ar.QUERY_POSITIONS,
    order_scoring=OrderScoring(order_nll=ao_ar.order_nll, mixture_bound=True,
                               order_token_nll=ao_ar.position_token_nll), position_nll=ao_ar.position_nll,
    options=OPTIONS, validate_config=validate_config, analysis_inputs=ao_ar.analysis_inputs,
    log_metrics=("beta", "eff_orders", "w_l2r", "w_r2l")))
