"""The per-step commitment of the masked samplers, shared by ``jaxorder.sampling.mdm`` (uncached
loop), ``jaxorder.sampling.mdm_cached`` (approximate caches) and ``jaxorder.sampling.bd3``: the block
schedule, the draw, the commit rules (k-best, threshold, factor, ancestral), the state update and
Prophet's early commit. The rules themselves are described in ``jaxorder.sampling.mdm``."""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxorder.config import ConfigError
from jaxorder.sampling.base import SamplerOptions
from jaxorder.sampling.eos import commit_after_eos
from jaxorder.sampling.noise import first_argmax, gumbel_noise
from pallas_kernels.sampling import commit as commit_top_k

RULES = ("ancestral", "confidence", "margin", "entropy", "threshold", "factor")
_SCORE = {"confidence": "confidence", "margin": "margin", "entropy": "entropy", "threshold": "confidence",
          "factor": "confidence"}
PARALLEL_RULES = ("threshold", "factor")  # rules that commit a variable number per step (Fast-dLLM)
PROPHET_SCALES = (1.5, 1.0, 0.5)  # early-commit gap, times `prophet`, in each third of a block's budget


@dataclass(frozen=True)
class Loop:
    """What the compiled loop is specialized on: the rule and the static options (the threshold
    value is traced, so changing it does not recompile)."""

    rule: str
    options: SamplerOptions
    block_start: int = 0
    forced: bool = False


def block_schedule(length: int, steps: int, block_length: int,
                   start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(block id of each position [L] (-1 before ``start``), step budget of each block [nb])."""
    span = length - start
    bl = block_length if 0 < block_length < span else max(span, 1)
    nb = -(-span // bl) if span > 0 else 1
    if steps < nb:
        raise ConfigError(f"{steps} steps cannot fill {nb} blocks of {bl} positions; use --steps >= {nb} "
                          f"or a longer --block-length")
    block_L = np.where(np.arange(length) >= start, (np.arange(length) - start) // bl, -1).astype(np.int32)
    return block_L, split_steps(steps, nb)


def split_steps(steps: int, num_blocks: int) -> np.ndarray:
    """Step budget of each of ``num_blocks`` blocks [nb]: ``steps`` split as evenly as possible, the
    earlier blocks get the remainder (needs steps >= num_blocks for every block to get one)."""
    budget = np.full(num_blocks, steps // num_blocks, np.int32)
    budget[: steps % num_blocks] += 1
    return budget


def step_key(key: jax.Array, step, opts: SamplerOptions) -> jax.Array:
    """The key of step ``step``'s token noise: fold_in(key, step), or with ``fixed_noise`` the decode's
    key itself, so every step draws the same noise and a position's draw changes only when its
    conditional does (what makes "the current prediction" of a position stable at temperature > 0)."""
    return key if opts.fixed_noise else jax.random.fold_in(key, step)


def draw(logp_BLV: jnp.ndarray, key: jax.Array, opts: SamplerOptions, noise_rows=None) -> jnp.ndarray:
    if opts.temperature == 0:
        return jnp.argmax(logp_BLV, axis=-1).astype(jnp.int32)
    g_BLV = gumbel_noise(key, logp_BLV.shape, opts.noise, noise_rows)
    return first_argmax(logp_BLV * (1.0 / opts.temperature) + g_BLV)


def entropy(logp_BLV: jnp.ndarray) -> jnp.ndarray:
    """Entropy in nats [B, L] of each position's distribution (log-probs [B, L, V], temperature 1;
    a MASK logit of -inf contributes 0)."""
    p_BLV = jnp.exp(logp_BLV)
    return -jnp.sum(jnp.where(p_BLV > 0, p_BLV * logp_BLV, 0.0), axis=-1)


def rule_score(logp_BLV: jnp.ndarray, lp_tok_BL: jnp.ndarray, rule: str) -> jnp.ndarray:
    if rule == "confidence":
        return jnp.exp(lp_tok_BL)
    if rule == "margin":
        top2 = lax.top_k(logp_BLV, 2)[0]
        return jnp.exp(top2[..., 0]) - jnp.exp(top2[..., 1])
    return -entropy(logp_BLV)


def tokens_per_step(eligible_BL: jnp.ndarray, steps_left) -> jnp.ndarray:
    """k [B] = ceil(eligible positions left / steps left): what a k-best rule commits this step."""
    return (eligible_BL.sum(axis=1) + steps_left - 1) // steps_left


def parallel_floor(eligible_BL: jnp.ndarray, steps_left) -> jnp.ndarray:
    """k [B] a threshold / factor rule commits at least: 1, or everything left on a block's last step
    (the step budget is an upper bound, never a per-step floor)."""
    return jnp.where(steps_left <= 1, eligible_BL.sum(axis=1), 1).astype(jnp.int32)


def factor_count(conf_BL: jnp.ndarray, eligible_BL: jnp.ndarray, factor: float) -> jnp.ndarray:
    """n [B]: the largest n with (n + 1)(1 - p_(n)) < factor, p_(n) the n-th highest confidence among
    the eligible positions (Fast-dLLM's factor rule; the left side grows with n, so the n that
    pass form a prefix of the ranking)."""
    p_BL = -jnp.sort(-jnp.where(eligible_BL, conf_BL, -1.0), axis=1)  # descending, ineligible last
    n_L = jnp.arange(1, conf_BL.shape[1] + 1, dtype=jnp.float32)
    ok_BL = ((n_L + 1.0) * (1.0 - p_BL) < factor) & (p_BL >= 0.0)
    return jnp.sum(jnp.cumprod(ok_BL.astype(jnp.int32), axis=1), axis=1).astype(jnp.int32)


def parallel_commit(conf_BL: jnp.ndarray, eligible_BL: jnp.ndarray, steps_left, rule: str,
                    opts: SamplerOptions, threshold) -> jnp.ndarray:
    """The positions a threshold or factor rule commits [B, L] given the confidences: those with
    confidence >= threshold (threshold rule) or the factor rule's n most confident, and at least
    ``parallel_floor`` of the most confident."""
    k_B = parallel_floor(eligible_BL, steps_left)
    if rule == "factor":
        k_B = jnp.maximum(k_B, factor_count(conf_BL, eligible_BL, opts.factor))
    commit_BL = commit_top_k(conf_BL, eligible_BL, k=k_B)
    if rule == "threshold":
        commit_BL = commit_BL | (eligible_BL & (conf_BL >= threshold))
    return commit_BL


def commit_step(logp_BLV: jnp.ndarray, eligible_BL: jnp.ndarray, step_key: jax.Array, steps_left,
                rule: str, opts: SamplerOptions, threshold,
                noise_rows=None) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """One unfused sampler step on given log-probs [B, L, V] (SUBS applied): draws a token at every
    position and picks the positions to commit among ``eligible_BL`` by ``rule``
    (module docstring), ``steps_left`` counting this step. Returns (tokens [B, L] int32, commit
    [B, L] bool, log p of the tokens [B, L]); the noise is drawn for the shape of ``logp_BLV``
    (``noise_rows`` [B, L]: its row counters, for a window of a longer sequence)."""
    tok_BL = draw(logp_BLV, step_key, opts, noise_rows)
    lp_tok_BL = jnp.take_along_axis(logp_BLV, tok_BL[..., None], axis=-1)[..., 0]
    if rule == "ancestral":
        u_BL = jax.random.uniform(jax.random.fold_in(step_key, 1), eligible_BL.shape)
        return tok_BL, eligible_BL & (u_BL * steps_left < 1.0), lp_tok_BL  # (t - s) / t = 1 / steps left
    if rule in PARALLEL_RULES:
        return tok_BL, parallel_commit(jnp.exp(lp_tok_BL), eligible_BL, steps_left, rule, opts,
                                       threshold), lp_tok_BL
    commit_BL = commit_top_k(rule_score(logp_BLV, lp_tok_BL, _SCORE[rule]), eligible_BL,
                             k=tokens_per_step(eligible_BL, steps_left))
    return tok_BL, commit_BL, lp_tok_BL


def advance(st: dict, tok_BL: jnp.ndarray, commit_BL: jnp.ndarray, lp_tok_BL: jnp.ndarray, nfe,
            ent_BL: jnp.ndarray) -> dict:
    """The loop state after a step: committed tokens written into ``x``, unmasked in ``masked``,
    their log p added to ``logprob`` and the entropy of their distribution (``ent_BL``, nats, the
    committing step's distribution at temperature 1) to ``uncertainty``, the commit count recorded
    in ``commits[step]`` and the step in ``committed_at`` (the commit order); step and nfe advanced."""
    i = st["step"]
    return dict(st, x=jnp.where(commit_BL, tok_BL, st["x"]), masked=st["masked"] & ~commit_BL,
                committed_at=jnp.where(commit_BL, i, st["committed_at"]),
                logprob=st["logprob"] + jnp.sum(jnp.where(commit_BL, lp_tok_BL, 0.0), axis=1),
                uncertainty=st["uncertainty"] + jnp.sum(jnp.where(commit_BL, ent_BL, 0.0), axis=1),
                commits=st["commits"].at[i].set(commit_BL.sum(axis=1).astype(jnp.int32)),
                step=i + 1, nfe=st["nfe"] + nfe)


def prophet_threshold(prophet: float, step_in_block, budget) -> jnp.ndarray:
    """The early-commit gap at step ``step_in_block`` (0-based) of a block with ``budget`` steps:
    prophet x PROPHET_SCALES[third of the budget the step falls in]."""
    third = jnp.minimum((3 * step_in_block) // jnp.maximum(budget, 1), 2)
    return prophet * jnp.asarray(PROPHET_SCALES, jnp.float32)[third]


def prophet_commit(st: dict, logp_BnV: jnp.ndarray, start, in_block_L: jnp.ndarray, gap_threshold) -> dict:
    """Prophet's early commit, after a step's own commits: a row whose still-masked positions of the
    block have a mean top-2 log-prob gap (= logit gap) above ``gap_threshold`` commits them all at
    their argmax, from this step's log-probs (no extra forward pass). ``logp_BnV`` covers positions
    [start, start + n), the block included. Counted in the step's ``commits`` and in ``early`` [B]
    (positions committed early); their entropies under this step's log-probs join ``uncertainty``."""
    n = logp_BnV.shape[1]
    left_Bn = lax.dynamic_slice_in_dim(st["masked"] & in_block_L[None, :], start, n, axis=1)
    # max reductions, not lax.top_k / jnp.argmax: those run scalar on XLA:CPU (docs/performance.md)
    tok_Bn = first_argmax(logp_BnV)
    top_Bn = jnp.max(logp_BnV, axis=-1)
    second_Bn = jnp.max(jnp.where(jnp.arange(logp_BnV.shape[-1]) == tok_Bn[..., None], -jnp.inf, logp_BnV),
                        axis=-1)
    count_B = left_Bn.sum(axis=1)
    gap_Bn = top_Bn - second_Bn
    gap_B = jnp.sum(jnp.where(left_Bn, gap_Bn, 0.0), axis=1) / jnp.maximum(count_B, 1)
    commit_Bn = left_Bn & ((count_B > 0) & (gap_B > gap_threshold))[:, None]
    x_Bn = lax.dynamic_slice_in_dim(st["x"], start, n, axis=1)
    masked_Bn = lax.dynamic_slice_in_dim(st["masked"], start, n, axis=1)
    i = st["step"] - 1  # the step just taken
    x_Bn = jnp.where(commit_Bn, tok_Bn, x_Bn)
    at_Bn = jnp.where(commit_Bn, i, lax.dynamic_slice_in_dim(st["committed_at"], start, n, axis=1))
    return dict(st, x=lax.dynamic_update_slice_in_dim(st["x"], x_Bn, start, axis=1),
                committed_at=lax.dynamic_update_slice_in_dim(st["committed_at"], at_Bn, start, axis=1),
                masked=lax.dynamic_update_slice_in_dim(st["masked"], masked_Bn & ~commit_Bn, start, axis=1),
                logprob=st["logprob"] + jnp.sum(jnp.where(commit_Bn, top_Bn, 0.0), axis=1),
                uncertainty=st["uncertainty"] + jnp.sum(jnp.where(commit_Bn, entropy(logp_BnV), 0.0), axis=1),
                commits=st["commits"].at[i].add(commit_Bn.sum(axis=1).astype(jnp.int32)),
                early=st["early"] + commit_Bn.sum(axis=1).astype(jnp.int32))


def initial_state(tokens_BL: jnp.ndarray, mask_id: int, steps: int) -> dict:
    B = tokens_BL.shape[0]
    return dict(x=tokens_BL.astype(jnp.int32), masked=tokens_BL == mask_id,
                committed_at=jnp.full(tokens_BL.shape, -1, jnp.int32),
                logprob=jnp.zeros((B,), jnp.float32), uncertainty=jnp.zeros((B,), jnp.float32),
                step=jnp.zeros((), jnp.int32), nfe=jnp.zeros((), jnp.int32), rows=jnp.zeros((), jnp.int32),
                commits=jnp.zeros((steps, B), jnp.int32), early=jnp.zeros((B,), jnp.int32),
                eos_filled=jnp.zeros((B,), jnp.int32))


def result(st: dict) -> dict:
    return dict(tokens=st["x"], logprob=st["logprob"], uncertainty=st["uncertainty"], nfe=st["nfe"],
                steps=st["step"], rows=st["rows"], commits=st["commits"], early=st["early"],
                eos_filled=st["eos_filled"],
                complete=~st["masked"].any(axis=1), committed_at=st["committed_at"])


def over_blocks(st: dict, block_L: jnp.ndarray, budget: jnp.ndarray, step, eos: int | None = None) -> dict:
    """The blocks in order, each with ``step(st, in_block_L, j, block_budget) -> st`` for j = 0, 1, ...
    while the block has budget left and a row still has a masked position in it (a block whose
    masks are all filled ends early). ``eos`` (``eos.eos_id``): after every step the positions after
    a committed EOS are committed as EOS (``eos.commit_after_eos``), so the blocks after the end of
    the text cost nothing."""

    def block_body(b, st):
        in_block_L = block_L == b

        def cond(carry):
            j, s = carry
            return (j < budget[b]) & jnp.any(s["masked"] & in_block_L[None, :])

        def body(carry):
            j, s = carry
            return j + 1, commit_after_eos(step(s, in_block_L, j, budget[b]), eos)

        return lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), st))[1]

    return lax.fori_loop(0, budget.shape[0], block_body, st)


def block_bounds(block_np: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each block of a block_schedule, in order."""
    return [(int(np.argmax(block_np == b)), int(len(block_np) - np.argmax(block_np[::-1] == b)))
            for b in range(int(block_np.max()) + 1)]
