"""Masked diffusion (MDLM): log-linear schedule, SUBS parameterization, antithetic time sampling.

Each token is masked independently with probability t, t ~ U(eps, 1); the loss is
  E_t[(1/t) * sum_{masked i} -log p(x_i | x_t)] / n,
which equals the average over uniformly random reveal orders of the any-order chain-rule NLL and
upper-bounds -log p(x) / n. SUBS: the MASK logit is -inf and unmasked positions carry over
(zero loss), so only masked positions are scored.

Fixed orders: for an order sigma, log p_sigma(x) = sum_j log p(x_sigma_j | x_sigma_<j), each
conditional the bidirectional model with x_sigma_<j revealed and the rest masked (`chain_rule_nll`,
n forward passes; every order of a batch shares each pass). `greedy` reveals, at each step, the
masked position where the model is most confident (largest max-probability): the model's own
choice, never the data's.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder import model
from jaxorder.config import Config
from jaxorder.objectives.base import Objective, OrderScoring, register
from jaxorder.objectives.common import (
    DIFFUSION_TIME_OPTIONS,
    check_diffusion_time,
    positions_like,
    special_ids,
    subs_log_probs,
)


def sample_times(rng: jax.Array, batch_size: int, eps: float, antithetic: bool) -> jnp.ndarray:
    """t [B] in [eps, 1); antithetic = stratified: one uniform shifted by b/B across the batch."""
    if antithetic:
        u_B = jnp.mod(jax.random.uniform(rng, ()) + jnp.arange(batch_size) / batch_size, 1.0)
    else:
        u_B = jax.random.uniform(rng, (batch_size,))
    return eps + (1.0 - eps) * u_B


def corrupt(tokens_BL: jnp.ndarray, t_B: jnp.ndarray, rng: jax.Array,
            mask_id: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Masks each token with probability t: returns (x_t [B, L], is_masked [B, L] bool)."""
    is_masked_BL = jax.random.uniform(rng, tokens_BL.shape) < t_B[:, None]
    return jnp.where(is_masked_BL, mask_id, tokens_BL), is_masked_BL


def masked_log_probs(params, x_t_BL: jnp.ndarray, cfg: Config) -> jnp.ndarray:
    """log p(. | x_t) [B, L, V] with the SUBS mask logit set to -inf (bidirectional attention)."""
    logits_BLV = model.apply(params, cfg.model, x_t_BL, positions_like(x_t_BL), "bidirectional")
    return subs_log_probs(logits_BLV, special_ids(cfg.model).mask)


def masked_token_nll(params, tokens_BL: jnp.ndarray, x_t_BL: jnp.ndarray, is_masked_BL: jnp.ndarray,
                     cfg: Config) -> jnp.ndarray:
    """-log p(x_i | x_t) at masked positions, 0 elsewhere (SUBS carry-over) [B, L]."""
    logp_BLV = masked_log_probs(params, x_t_BL, cfg)
    nll_BL = -jnp.take_along_axis(logp_BLV, tokens_BL[..., None], axis=-1)[..., 0]
    return jnp.where(is_masked_BL, nll_BL, 0.0)


def weighted_nll(params, tokens_BL: jnp.ndarray, rng: jax.Array,
                 cfg: Config) -> tuple[jnp.ndarray, jnp.ndarray]:
    """One-sample ELBO per sequence in nats [B] (= (1/t) * masked NLL sum) and the times t [B]."""
    t_rng, m_rng = jax.random.split(rng)
    o = cfg.objective
    t_B = sample_times(t_rng, tokens_BL.shape[0], o.mdm_eps, o.antithetic)
    x_t_BL, is_masked_BL = corrupt(tokens_BL, t_B, m_rng, special_ids(cfg.model).mask)
    nll_BL = masked_token_nll(params, tokens_BL, x_t_BL, is_masked_BL, cfg)
    return nll_BL.sum(axis=1) / t_B, t_B


def nll(params, batch: dict, rng: jax.Array, cfg: Config) -> jnp.ndarray:
    """ELBO per sequence in nats [B], averaged over cfg.eval.mdm_time_samples draws of t."""
    rngs = jax.random.split(rng, cfg.eval.mdm_time_samples)
    elbo_SB = jax.lax.map(lambda r: weighted_nll(params, batch["tokens"], r, cfg)[0], rngs)
    return elbo_SB.mean(axis=0)


def loss(params, batch: dict, rng: jax.Array, cfg: Config) -> tuple[jnp.ndarray, dict]:
    tokens_BL = batch["tokens"]
    elbo_B, t_B = weighted_nll(params, tokens_BL, rng, cfg)
    value = elbo_B.mean() / tokens_BL.shape[1]
    return value, {"loss": value, "nll_per_token": value, "mask_rate": t_B.mean()}


def chain_rule_nll(params, tokens_BL: jnp.ndarray, orders_BL: jnp.ndarray | None, cfg: Config) -> jnp.ndarray:
    """Per-sequence NLL [B] of revealing tokens in `orders_BL` (position revealed at each step;
    None = greedy by confidence)."""
    return chain_rule_token_nll(params, tokens_BL, orders_BL, cfg).sum(axis=1)


def chain_rule_token_nll(params, tokens_BL: jnp.ndarray, orders_BL: jnp.ndarray | None,
                         cfg: Config) -> jnp.ndarray:
    """The chain rule's terms per position [B, L]: entry i is -log p(x_i | tokens revealed before i).
    One forward pass per step; the step's target is the position revealed at that step."""
    batch, length = tokens_BL.shape
    mask_id = special_ids(cfg.model).mask
    rows_B = jnp.arange(batch)

    def step(carry, j):
        x_t_BL, nll_BL = carry
        logp_BLV = masked_log_probs(params, x_t_BL, cfg)
        if orders_BL is None:
            confidence_BL = jnp.where(x_t_BL == mask_id, logp_BLV.max(axis=-1), -jnp.inf)
            pos_B = jnp.argmax(confidence_BL, axis=1)
        else:
            pos_B = orders_BL[:, j]
        target_B = tokens_BL[rows_B, pos_B]
        nll_BL = nll_BL.at[rows_B, pos_B].set(-logp_BLV[rows_B, pos_B, target_B])
        return (x_t_BL.at[rows_B, pos_B].set(target_B), nll_BL), None

    init = (jnp.full_like(tokens_BL, mask_id), jnp.zeros(tokens_BL.shape, jnp.float32))
    (_, nll_BL), _ = jax.lax.scan(step, init, jnp.arange(length))
    return nll_BL


def position_nll(params, tokens_BL: jnp.ndarray, rng: jax.Array, cfg: Config) -> dict[str, jnp.ndarray]:
    """The exact chain-rule NLL per position [B, L] of revealing left to right and right to left."""
    del rng
    l2r_BL = jnp.broadcast_to(jnp.arange(tokens_BL.shape[1]), tokens_BL.shape)
    return {"l2r": chain_rule_token_nll(params, tokens_BL, l2r_BL, cfg),
            "r2l": chain_rule_token_nll(params, tokens_BL, l2r_BL[:, ::-1], cfg)}


def rate_nll(params, tokens_BL: jnp.ndarray, t_B: jnp.ndarray, rng: jax.Array,
             cfg: Config) -> tuple[jnp.ndarray, jnp.ndarray]:
    """-log p(x_i | x_t) [B, L] (0 where unmasked) and is_masked [B, L] at mask rate t_B."""
    x_t_BL, is_masked_BL = corrupt(tokens_BL, t_B, rng, special_ids(cfg.model).mask)
    return masked_token_nll(params, tokens_BL, x_t_BL, is_masked_BL, cfg), is_masked_BL


def analysis_inputs(tokens_NL: np.ndarray, cfg: Config, mask_rate: float,
                    seed: int) -> tuple[np.ndarray, str, float]:
    """The window with each token replaced by MASK with probability `mask_rate` (0 = clean)."""
    rng = np.random.default_rng(seed)
    masked_NL = np.where(rng.random(tokens_NL.shape) < mask_rate, special_ids(cfg.model).mask, tokens_NL)
    return masked_NL.astype(np.int32), "bidirectional", mask_rate


OBJECTIVE = register(Objective(
    name="mdm", loss=loss, nll=nll, exact=False, yardstick="upper bound (ELBO)", sampling="masked",
    default_sampler="confidence",
    order_scoring=OrderScoring(
        order_nll=chain_rule_nll, order_token_nll=chain_rule_token_nll,
        greedy_nll=lambda params, tokens_BL, cfg: chain_rule_nll(params, tokens_BL, None, cfg),
        mixture_bound=True),  # the uniform mixture over orders is a proper model, as for ao_ar
    analysis_inputs=analysis_inputs, position_nll=position_nll, rate_nll=rate_nll,
    options=DIFFUSION_TIME_OPTIONS, validate_config=check_diffusion_time))
