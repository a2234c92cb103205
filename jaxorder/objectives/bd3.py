"""Block diffusion (BD3-LM, Arriola et al. 2025): autoregression over blocks, MDLM inside a block.

With block size b (cfg.objective.block_size, dividing n), the window x = (x_0..x_{n-1}) is split
into n/b blocks. Each block k of each sequence gets its own noise level t_k; its tokens are masked
independently with probability t_k, giving x_t. One vectorized pass over [x_t ; x] (length 2n,
positions 0..n-1 in both halves) with the four-part mask 'bd3:<b>' of docs/design.md, 'Block
diffusion' (noisy->noisy same block, noisy->clean strictly earlier blocks, clean->clean
block-causal, clean->noisy never) gives, in the noisy half,
p(x_i | x_t[block(i)], x[blocks < block(i)]).
Only the noisy half's logits are scored (SUBS: MASK logit -inf, unmasked tokens carry over with
zero loss). Per sequence,

    ELBO(x) = sum_k (1/t_k) * sum_{masked i in block k} -log p(x_i | ...)  >=  -log p(x),

because -log p(x) = sum_k -log p(x_block_k | x_<block_k) and each term is bounded by its own
MDLM ELBO (log-linear schedule). The training loss is ELBO / n, averaged over the batch, with
t_k ~ U[noise_min, noise_max] (BD3-LM's clipped schedule, variance reduction), clipped below at
cfg.objective.mdm_eps, and stratified across the batch per block when cfg.objective.antithetic.
The clipped-schedule loss is a training signal only: `nll` (the yardstick) uses the full
schedule t ~ U(mdm_eps, 1) and averages cfg.eval.mdm_time_samples draws, so it is an upper bound
on the NLL, comparable to the mdm ELBO.

Limits: b = 1 makes every block one token, whose conditional sees exactly the clean x_<i (and
the MASK at its own position), so E_mask[ELBO] = sum_i -log p(x_i | x_<i): the exact chain rule
of the network's AR conditionals, for any t. It is l2r's loss with another input layout (a MASK
slot at position i instead of x_{i-1}'s slot), so the two cannot share trained weights; given the
same conditionals they compute the same loss (tests/test_order_objectives.py checks this with a
network that sees only the prefix each layout shows it). b = n makes the noisy half attend only to itself,
so its logits are those of the bidirectional model on x_t and the ELBO is the mdm ELBO.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder import model
from jaxorder.config import Config, ConfigError
from jaxorder.objectives.base import Objective, Option, register
from jaxorder.objectives.common import (
    DIFFUSION_TIME_OPTIONS,
    check_diffusion_time,
    positions_like,
    special_ids,
    subs_log_probs,
)


def mask_kind(block_size: int) -> str:
    return f"bd3:{int(block_size)}"


def block_times(rng: jax.Array, batch_size: int, num_blocks: int, lo: float, hi: float, eps: float,
                antithetic: bool) -> jnp.ndarray:
    """t [B, K] ~ U[lo, hi] per block and sequence, clipped to >= eps; antithetic = stratified across
    the batch (per block, one uniform shifted by b/B)."""
    if antithetic:
        u0_K = jax.random.uniform(rng, (num_blocks,))
        u_BK = jnp.mod(u0_K[None, :] + (jnp.arange(batch_size) / batch_size)[:, None], 1.0)
    else:
        u_BK = jax.random.uniform(rng, (batch_size, num_blocks))
    return jnp.maximum(lo + (hi - lo) * u_BK, eps)


def corrupt(tokens_BL: jnp.ndarray, t_BK: jnp.ndarray, rng: jax.Array, mask_id: int,
            block_size: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Masks each token with its block's probability: (x_t [B, L], is_masked [B, L] bool)."""
    t_BL = jnp.repeat(t_BK, block_size, axis=1)
    is_masked_BL = jax.random.uniform(rng, tokens_BL.shape) < t_BL
    return jnp.where(is_masked_BL, mask_id, tokens_BL), is_masked_BL


def noisy_logits(params, x_t_BL: jnp.ndarray, tokens_BL: jnp.ndarray, cfg: Config,
                 block_size: int) -> jnp.ndarray:
    """Raw logits [B, n, V] of the noisy half of the 2n pass over [x_t ; x]."""
    n = tokens_BL.shape[1]
    inputs_B2L = jnp.concatenate([x_t_BL, tokens_BL], axis=1)
    pos_BL = positions_like(tokens_BL)
    positions_B2L = jnp.concatenate([pos_BL, pos_BL], axis=1)
    logits_B2LV = model.apply(params, cfg.model, inputs_B2L, positions_B2L, mask_kind(block_size))
    return logits_B2LV[:, :n]


def noisy_log_probs(params, x_t_BL: jnp.ndarray, tokens_BL: jnp.ndarray, cfg: Config,
                    block_size: int) -> jnp.ndarray:
    """log p(. | x_t in the block, clean earlier blocks) [B, n, V], SUBS: MASK logit -inf."""
    logits_BLV = noisy_logits(params, x_t_BL, tokens_BL, cfg, block_size)
    return subs_log_probs(logits_BLV, special_ids(cfg.model).mask)


def masked_token_nll(params, tokens_BL: jnp.ndarray, x_t_BL: jnp.ndarray, is_masked_BL: jnp.ndarray,
                     cfg: Config, block_size: int) -> jnp.ndarray:
    """-log p(x_i | ...) at masked positions, 0 elsewhere (SUBS carry-over) [B, n]."""
    logp_BLV = noisy_log_probs(params, x_t_BL, tokens_BL, cfg, block_size)
    nll_BL = -jnp.take_along_axis(logp_BLV, tokens_BL[..., None], axis=-1)[..., 0]
    return jnp.where(is_masked_BL, nll_BL, 0.0)


def elbo_from(params, tokens_BL: jnp.ndarray, x_t_BL: jnp.ndarray, is_masked_BL: jnp.ndarray,
              t_BK: jnp.ndarray, cfg: Config, block_size: int) -> jnp.ndarray:
    """sum_k (1/t_k) sum_{masked i in block k} -log p(x_i | ...) per sequence [B], for a given
    corruption (x_t, mask) and block times t [B, n/b]."""
    nll_BL = masked_token_nll(params, tokens_BL, x_t_BL, is_masked_BL, cfg, block_size)
    return (nll_BL / jnp.repeat(t_BK, block_size, axis=1)).sum(axis=1)


def weighted_nll(params, tokens_BL: jnp.ndarray, rng: jax.Array, cfg: Config, lo: float, hi: float,
                 block_size: int | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """One-sample ELBO per sequence in nats [B] with t ~ U[lo, hi] per block, and the times [B, K]."""
    o = cfg.objective
    b = o.block_size if block_size is None else block_size
    B, n = tokens_BL.shape
    if n % b:
        raise ValueError(f"bd3 block size {b} must divide the window length {n}")
    t_rng, m_rng = jax.random.split(rng)
    t_BK = block_times(t_rng, B, n // b, lo, hi, o.mdm_eps, o.antithetic)
    x_t_BL, is_masked_BL = corrupt(tokens_BL, t_BK, m_rng, special_ids(cfg.model).mask, b)
    return elbo_from(params, tokens_BL, x_t_BL, is_masked_BL, t_BK, cfg, b), t_BK


def nll(params, batch: dict, rng: jax.Array, cfg: Config) -> jnp.ndarray:
    """ELBO per sequence in nats [B] under the full schedule t ~ U(mdm_eps, 1), averaged over
    cfg.eval.mdm_time_samples draws (an upper bound on the NLL, like the mdm ELBO)."""
    rngs = jax.random.split(rng, cfg.eval.mdm_time_samples)
    eps = cfg.objective.mdm_eps
    elbo_SB = jax.lax.map(lambda r: weighted_nll(params, batch["tokens"], r, cfg, eps, 1.0)[0], rngs)
    return elbo_SB.mean(axis=0)


def loss(params, batch: dict, rng: jax.Array, cfg: Config) -> tuple[jnp.ndarray, dict]:
    tokens_BL = batch["tokens"]
    o = cfg.objective
    elbo_B, t_BK = weighted_nll(params, tokens_BL, rng, cfg, o.noise_min, o.noise_max)
    value = elbo_B.mean() / tokens_BL.shape[1]
    return value, {"loss": value, "nll_per_token": value, "mask_rate": t_BK.mean()}


OPTIONS = DIFFUSION_TIME_OPTIONS + (
    Option("block_size", 4, "tokens per block (1 = AR, seq_len = MDM); divides data.seq_len"),
    Option("noise_min", 0.0, "clipped training schedule: mask rate ~ U[noise_min, noise_max]"),
    Option("noise_max", 1.0, "upper end of the clipped training schedule"),
)


def validate_config(cfg: Config) -> None:
    check_diffusion_time(cfg)
    o, d, m = cfg.objective, cfg.data, cfg.model
    if o.block_size < 1 or d.seq_len % o.block_size:
        raise ConfigError(f"objective.block_size={o.block_size} must divide data.seq_len={d.seq_len}")
    if 2 * d.seq_len > m.max_len:
        raise ConfigError(f"bd3 trains on 2 x data.seq_len={2 * d.seq_len} tokens > "
                          f"model.max_len={m.max_len}; raise model.max_len")
    if not 0 <= o.noise_min < o.noise_max <= 1:
        raise ConfigError(f"need 0 <= objective.noise_min < objective.noise_max <= 1, "
                          f"got {o.noise_min}, {o.noise_max}")


def position_nll(params, tokens_BL: jnp.ndarray, rng: jax.Array, cfg: Config) -> dict[str, jnp.ndarray]:
    """One draw of the ELBO per position [B, n]: (1/t_k) -log p(x_i | ...) at masked i, full schedule."""
    o = cfg.objective
    B, n = tokens_BL.shape
    t_rng, m_rng = jax.random.split(rng)
    t_BK = block_times(t_rng, B, n // o.block_size, o.mdm_eps, 1.0, o.mdm_eps, o.antithetic)
    x_t_BL, is_masked_BL = corrupt(tokens_BL, t_BK, m_rng, special_ids(cfg.model).mask, o.block_size)
    nll_BL = masked_token_nll(params, tokens_BL, x_t_BL, is_masked_BL, cfg, o.block_size)
    return {"elbo": nll_BL / jnp.repeat(t_BK, o.block_size, axis=1)}


def rate_nll(params, tokens_BL: jnp.ndarray, t_B: jnp.ndarray, rng: jax.Array,
             cfg: Config) -> tuple[jnp.ndarray, jnp.ndarray]:
    """-log p(x_i | ...) [B, n] (0 where unmasked) and is_masked [B, n], every block at mask rate t_B."""
    b = cfg.objective.block_size
    t_BK = jnp.broadcast_to(t_B[:, None], (tokens_BL.shape[0], tokens_BL.shape[1] // b))
    x_t_BL, is_masked_BL = corrupt(tokens_BL, t_BK, rng, special_ids(cfg.model).mask, b)
    return masked_token_nll(params, tokens_BL, x_t_BL, is_masked_BL, cfg, b), is_masked_BL


def analysis_inputs(tokens_NL: np.ndarray, cfg: Config, mask_rate: float, seed: int) -> tuple:
    """The training layout [x_t ; x] (2n slots, positions 0..n-1 twice, mask bd3:<block_size>) with
    x_t the window with each token replaced by MASK with probability `mask_rate` (0 = clean)."""
    rng = np.random.default_rng(seed)
    x_t_NL = np.where(rng.random(tokens_NL.shape) < mask_rate, special_ids(cfg.model).mask, tokens_NL)
    N, L = tokens_NL.shape
    pos_NL = np.broadcast_to(np.arange(L, dtype=np.int32), (N, L))
    return (np.concatenate([x_t_NL, tokens_NL], axis=1).astype(np.int32), mask_kind(cfg.objective.block_size),
            mask_rate, np.concatenate([pos_NL, pos_NL], axis=1), None)


OBJECTIVE = register(Objective(
    name="bd3", loss=loss, nll=nll, exact=False, yardstick="upper bound (ELBO)", sampling="block",
    default_sampler="confidence", position_nll=position_nll, rate_nll=rate_nll, options=OPTIONS,
    validate_config=validate_config, analysis_inputs=analysis_inputs))
