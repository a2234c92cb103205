"""Remasking corrector for the masked samplers (after ReMDM): committed tokens can be undone.

With ``remask`` = rho > 0 (k-best rules confidence, margin, entropy), each step of a block with S
budgeted steps, at its step j (0-based), after committing its k tokens, returns up to

    r = floor(rho * k * (S - 1 - j) / S)

committed tokens of the block to MASK. The budget decays linearly to 0 at the block's last step,
which therefore fills everything left, so the sampler still ends with every mask filled; k =
ceil(masked left / steps left) grows again when tokens are returned. Fixed tokens (prompts,
templates) are never candidates.

Which tokens: the ``remask_candidates`` = n committed tokens of the block with the lowest log-prob at
the time they were committed are re-scored under the *current* conditionals, exactly: row c of n
extra copies of the sequence has candidate c masked (everything else as it is now), and its score
is log p(x_c | x with c masked). The copies go through the model in one extra call of B n rows,
besides the step's own pass (which is the base rule's, unchanged), and only when some row has a
budget this step. The r lowest-scoring candidates are remasked. A token committed in parallel
with a neighbour it does not fit (the failure of parallel decoding) scores low once that
neighbour is visible.

With ``remask_dropped``, a candidate is undone only if its current score is below its log-prob at
commit (the context committed since made it less likely); the budget r is then an upper bound and a
step may undo nothing.

Bookkeeping: ``logprob`` sums the log-prob of the final tokens at their (last) commit, so a
remasked token's log-prob is removed (``uncertainty`` likewise sums the entropies of the final
tokens at their last commit); ``committed_at`` is the step of the last commit; ``remasked`` [B]
counts the tokens returned to MASK; ``nfe`` and ``rows`` count the extra calls and copies.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxorder.config import Config
from jaxorder.objectives import mdm as mdm_objective
from jaxorder.sampling.mdm_steps import draw, entropy


def budget(rho: float, k_B: jnp.ndarray, steps_left, block_budget) -> jnp.ndarray:
    """r [B]: how many committed tokens a row may return to MASK at this step (0 on a block's last)."""
    later = jnp.maximum(steps_left - 1, 0).astype(jnp.float32)
    return jnp.floor(rho * k_B.astype(jnp.float32) * later / jnp.maximum(block_budget, 1)).astype(jnp.int32)


def candidates(lp_at_BL: jnp.ndarray, region_BL: jnp.ndarray, n: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(positions [B, n], valid [B, n]): the n tokens of ``region_BL`` (committed, generated, in the
    block) with the lowest log-prob at commit time; rows with fewer have invalid slots."""
    score_BL = jnp.where(region_BL, lp_at_BL, jnp.inf)
    neg_Bn, pos_Bn = lax.top_k(-score_BL, n)
    return pos_Bn.astype(jnp.int32), jnp.isfinite(neg_Bn)


def leave_one_out(params, cfg: Config, x_BL: jnp.ndarray, pos_Bn: jnp.ndarray, mask_id: int) -> jnp.ndarray:
    """log-probs [B, n, V] of p(. | x with pos masked) at each candidate, from one call on n copies of
    each row with one candidate masked each."""
    B, L = x_BL.shape
    n = pos_Bn.shape[1]
    hide_BnL = jnp.arange(L)[None, None, :] == pos_Bn[:, :, None]
    copies_BnL = jnp.where(hide_BnL, mask_id, x_BL[:, None, :])
    logp_BnLV = mdm_objective.masked_log_probs(params, copies_BnL.reshape(B * n, L), cfg).reshape(B, n, L, -1)
    return jnp.take_along_axis(logp_BnLV, pos_Bn[:, :, None, None], axis=2)[:, :, 0]


def scores(params, cfg: Config, st: dict, region_BL: jnp.ndarray, r_B: jnp.ndarray, n: int,
           mask_id: int, redraw_key=None, opts=None):
    """(candidates [B, n], their current scores [B, n] (+inf for invalid slots), network calls,
    positions run per row, redraw): the copies go through the model only when some row has a budget
    this step. With ``redraw_key`` (resample mode), redraw = (token, its log-prob, entropy) [B, n]
    each, a fresh draw from every candidate's leave-one-out conditional; else None."""
    B, L = st["x"].shape
    pos_Bn, valid_Bn = candidates(st["lp_at"], region_BL, n)
    tok_Bn = jnp.take_along_axis(st["x"], pos_Bn, axis=1)

    def with_copies():
        logp_BnV = leave_one_out(params, cfg, st["x"], pos_Bn, mask_id)
        score_Bn = jnp.take_along_axis(logp_BnV, tok_Bn[..., None], axis=-1)[..., 0]
        out = (jnp.where(valid_Bn, score_Bn, jnp.inf), jnp.int32(1), jnp.int32(n * L))
        if redraw_key is None:
            return out
        new_Bn = draw(logp_BnV, redraw_key, opts)
        return out + (new_Bn, jnp.take_along_axis(logp_BnV, new_Bn[..., None], axis=-1)[..., 0],
                      entropy(logp_BnV))

    def without():
        out = (jnp.full((B, n), jnp.inf), jnp.int32(0), jnp.int32(0))
        if redraw_key is None:
            return out
        return out + (tok_Bn, jnp.zeros((B, n)), jnp.zeros((B, n)))

    score_Bn, calls, rows, *redraw = lax.cond(jnp.any(r_B > 0), with_copies, without)
    return pos_Bn, score_Bn, calls, rows, (tuple(redraw) if redraw else None)


def apply(st: dict, pos_Bn: jnp.ndarray, score_Bn: jnp.ndarray, r_B: jnp.ndarray, mask_id: int,
          only_dropped: bool = False, redraw=None) -> dict:
    """Returns the r lowest-scoring valid candidates of each row to MASK (after the step's commits);
    ``only_dropped``: the r lowest among the candidates whose score is below their log-prob at commit;
    ``redraw`` (from ``scores``): writes each chosen candidate's fresh draw instead of MASK."""
    B, n = pos_Bn.shape
    if only_dropped:  # a candidate that did not get worse is no candidate: it frees its rank for one that did
        at_commit_Bn = jnp.take_along_axis(st["lp_at"], pos_Bn, axis=1)
        score_Bn = jnp.where(score_Bn < at_commit_Bn, score_Bn, jnp.inf)
    rank_Bn = jnp.argsort(jnp.argsort(score_Bn, axis=1), axis=1)  # 0 = lowest score
    chosen_Bn = (rank_Bn < r_B[:, None]) & jnp.isfinite(score_Bn)
    back_BL = jnp.zeros(st["x"].shape, bool).at[jnp.arange(B)[:, None], pos_Bn].max(chosen_Bn)
    if redraw is not None:
        return _rewrite(st, pos_Bn, chosen_Bn, back_BL, *redraw)
    return dict(st, x=jnp.where(back_BL, mask_id, st["x"]), masked=st["masked"] | back_BL,
                committed_at=jnp.where(back_BL, -1, st["committed_at"]),
                logprob=st["logprob"] - jnp.sum(jnp.where(back_BL, st["lp_at"], 0.0), axis=1),
                uncertainty=st["uncertainty"] - jnp.sum(jnp.where(back_BL, st["ent_at"], 0.0), axis=1),
                lp_at=jnp.where(back_BL, jnp.inf, st["lp_at"]), ent_at=jnp.where(back_BL, 0.0, st["ent_at"]),
                remasked=st["remasked"] + back_BL.sum(axis=1).astype(jnp.int32))


def _rewrite(st: dict, pos_Bn, chosen_Bn, back_BL, tok_Bn, lp_Bn, ent_Bn) -> dict:
    """The chosen candidates rewritten in place by their redraws (a Gibbs step each): their log-prob
    and entropy at commit become the redraw's, ``committed_at`` the step just taken."""
    B = pos_Bn.shape[0]
    rows_Bn = jnp.arange(B)[:, None]

    def scatter(base_BL, val_Bn):  # chosen slots only; a position is a candidate at most once
        return base_BL.at[rows_Bn, pos_Bn].set(jnp.where(chosen_Bn, val_Bn, base_BL[rows_Bn, pos_Bn]))

    lp_at_BL, ent_at_BL = scatter(st["lp_at"], lp_Bn), scatter(st["ent_at"], ent_Bn)
    d_lp_B = jnp.sum(jnp.where(back_BL, lp_at_BL - st["lp_at"], 0.0), axis=1)
    d_ent_B = jnp.sum(jnp.where(back_BL, ent_at_BL - st["ent_at"], 0.0), axis=1)
    return dict(st, x=scatter(st["x"], tok_Bn),
                committed_at=jnp.where(back_BL, st["step"] - 1, st["committed_at"]),
                logprob=st["logprob"] + d_lp_B, uncertainty=st["uncertainty"] + d_ent_B,
                lp_at=lp_at_BL, ent_at=ent_at_BL,
                remasked=st["remasked"] + back_BL.sum(axis=1).astype(jnp.int32))


def record(st: dict, commit_BL: jnp.ndarray, lp_tok_BL: jnp.ndarray, ent_BL: jnp.ndarray) -> dict:
    """Keeps the log-prob (+inf: not a candidate) and the entropy at commit of the tokens this step
    committed."""
    return dict(st, lp_at=jnp.where(commit_BL, lp_tok_BL, st["lp_at"]),
                ent_at=jnp.where(commit_BL, ent_BL, st["ent_at"]))


def initial(st: dict) -> dict:
    B, L = st["x"].shape
    return dict(st, lp_at=jnp.full((B, L), jnp.inf, jnp.float32), ent_at=jnp.zeros((B, L), jnp.float32),
                remasked=jnp.zeros((B,), jnp.int32))

