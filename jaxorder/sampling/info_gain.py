"""The Info-Gain sampler of masked-diffusion (family "masked") and block-diffusion (family "block",
its loop in ``jaxorder.sampling.bd3``) runs: each step scores C candidate actions by a look-ahead
and commits the cheapest.

One step on the log-probs p(. | x) of the current sequence (SUBS, temperature 1), over the
eligible positions (the masked positions of the current block):

1. Tokens: one draw per position, ``mdm_steps.draw`` at the step key (the confidence sampler's
   draw: same noise, same tokens). Confidence = p(drawn token).
2. Count: k = ``mdm_steps.tokens_per_step`` (ceil(eligible left / steps left)), the confidence
   rule's count, so the samplers are compared at the same number of committed tokens per step.
3. Skipping: eligible positions whose top-1 probability max_v p(v) is >= ``skip_confidence`` are
   committed without evaluation, with their drawn token; they count toward k: at most k of them,
   the most confident first (ties: lower position), so a step never commits more than k.
   ``skip_confidence`` = 0 turns skipping off.
4. Candidates: C = ``candidates`` actions. Candidate c commits the skipped positions and k - (number
   skipped) more, drawn by Gumbel-top-k among the other eligible positions on the scores
   log(confidence) / ``position_temperature`` + g_c, with g_c = ``gumbel_noise(fold_in(fold_in(step
   key, CANDIDATE_NOISE), c), [B, L])`` (distinct from the token noise; candidate c's noise does
   not depend on C).
5. Cost of candidate c: the summed entropy (under p(. | x)) of the positions it commits + the mean
   entropy of the positions of the block still masked after it, under the look-ahead p(. | x_c),
   x_c = x with candidate c applied (0 if none is left). With ``commit_cost`` = "surprisal" the
   first term is the summed -log p(drawn token) of the positions it commits instead: the entropy
   prices a position, the surprisal also the draw at it, so an unlikely draw is left for a later
   step as the confidence rule leaves it. All C look-aheads are ONE batched
   bidirectional pass over B * C sequences. Each row commits its cheapest candidate (ties: the
   lowest c).
6. The chosen candidate's look-ahead is p(. | x_next) exactly, so it is the next step's log-probs:
   in steady state a step costs C sequence passes, not C + 1. When the C candidates of every row
   are the same action (C = 1, k = all that is left, or every commit skipped) the look-ahead is one
   pass over B sequences (cost still exact, choice 0); when nothing would be left masked for a
   later step (the last step of the decode; bd3: of a block, whose next block starts fresh from the
   cache) there is no look-ahead at all.

``nfe`` counts sequence passes per row (a look-ahead over the B * C sequences counts C, the first
pass of a decode (bd3: of a block) 1), ``rows`` the positions run through the model per row (C * L
for a look-ahead of the mdm loop). Memory: a look-ahead holds log-probs [C, B, L, V].

Every masked and block sampler returns ``uncertainty`` [B], the cumulative uncertainty: the
summed entropy of each committed position under the distribution of the step that committed it
(the first term of the cost, summed over the decode).

The mdm loop (``build``) is the uncached one of ``jaxorder.sampling.mdm``: semi-autoregressive
blocks (``block_length``, ``mdm_steps.block_schedule``), step j keyed by ``fold_in(key, j)``.
Not available: ``fused`` (the cost needs every look-ahead's entropies, not one sample), the
approximate caches, Prophet and remasking (each a different next-step distribution than the
look-ahead the sampler reuses); those options are refused as options the sampler does not read.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxorder.config import Config
from jaxorder.objectives import mdm as mdm_objective
from jaxorder.objectives.common import special_ids
from jaxorder.sampling import mdm
from jaxorder.sampling.base import Sampler, SamplerOptions, register
from jaxorder.sampling.eos import eos_id
from jaxorder.sampling.mdm_steps import (
    Loop,
    advance,
    block_schedule,
    draw,
    entropy,
    initial_state,
    over_blocks,
    result,
    tokens_per_step,
)
from jaxorder.sampling.noise import gumbel_noise
from pallas_kernels.sampling import commit as commit_top_k

NAME = "info-gain"
OWN_OPTIONS = ("candidates", "position_temperature", "skip_confidence", "commit_cost")
OPTIONS = ("steps", "temperature", "block_length", "noise", "ignore_eos") + OWN_OPTIONS
CANDIDATE_NOISE = 2  # fold_in(step key, 2) keys the candidates' position noise (ancestral uses 1)


def skip_commits(logp_BLV: jnp.ndarray, eligible_BL: jnp.ndarray, k_B: jnp.ndarray,
                 skip_confidence: float) -> jnp.ndarray:
    """The positions committed without evaluation [B, L]: eligible ones with top-1 probability >=
    ``skip_confidence``, at most k_B of them per row (the most confident first); none when 0."""
    if skip_confidence <= 0:
        return jnp.zeros_like(eligible_BL)
    top1_BL = jnp.exp(jnp.max(logp_BLV, axis=-1))
    return commit_top_k(top1_BL, eligible_BL & (top1_BL >= skip_confidence), k=k_B)


def candidate_commits(lp_tok_BL: jnp.ndarray, eligible_BL: jnp.ndarray, skip_BL: jnp.ndarray,
                      k_B: jnp.ndarray, step_key: jax.Array, opts: SamplerOptions) -> jnp.ndarray:
    """The C candidates' commit masks [C, B, L]: the skipped positions plus a Gumbel-top-(k - skipped)
    draw of the other eligible positions on log(confidence) / position_temperature (module docstring)."""
    rest_BL = eligible_BL & ~skip_BL
    k_rest_B = k_B - skip_BL.sum(axis=1)
    score_BL = lp_tok_BL * (1.0 / opts.position_temperature)
    cand_key = jax.random.fold_in(step_key, CANDIDATE_NOISE)
    out = []
    for c in range(opts.candidates):
        g_BL = gumbel_noise(jax.random.fold_in(cand_key, c), eligible_BL.shape, opts.noise)
        out.append(skip_BL | commit_top_k(score_BL + g_BL, rest_BL, k=k_rest_B))
    return jnp.stack(out)


def _mean_left(ent_NBL: jnp.ndarray, left_NBL: jnp.ndarray) -> jnp.ndarray:
    """Mean entropy over the positions still masked [N, B] (0 where none is)."""
    count = left_NBL.sum(axis=-1)
    return jnp.sum(jnp.where(left_NBL, ent_NBL, 0.0), axis=-1) / jnp.maximum(count, 1)


def step(logp_BLV: jnp.ndarray, x_BL: jnp.ndarray, eligible_BL: jnp.ndarray, step_key: jax.Array, steps_left,
         opts: SamplerOptions, lookahead, others_masked) -> dict:
    """One Info-Gain step (module docstring) on the current log-probs [B, L, V] (L: the window the
    loop decodes, the sequence for mdm, the block for bd3). ``lookahead(x_NBL)`` -> log-probs
    [N, B, L, V] of N sequences per row (N = C or 1); ``others_masked``: whether a position outside
    ``eligible_BL`` still needs the next step's log-probs.

    Returns dict(tokens [B, L] (drawn at every position), commit [B, L], lp_tok [B, L], entropy
    [B, L] (of p(. | x)), candidates [C, B, L], cost [C, B], choice [B], next_logp [B, L, V]
    (the chosen look-ahead; zeros when none ran), nfe (sequence passes run: 0, 1 or C))."""
    tok_BL = draw(logp_BLV, step_key, opts)
    lp_tok_BL = jnp.take_along_axis(logp_BLV, tok_BL[..., None], axis=-1)[..., 0]
    ent_BL = entropy(logp_BLV)
    k_B = tokens_per_step(eligible_BL, steps_left)
    skip_BL = skip_commits(logp_BLV, eligible_BL, k_B, opts.skip_confidence)
    commit_CBL = candidate_commits(lp_tok_BL, eligible_BL, skip_BL, k_B, step_key, opts)
    C, B = commit_CBL.shape[:2]
    x_CBL = jnp.where(commit_CBL, tok_BL[None], x_BL[None])
    left_CBL = eligible_BL[None] & ~commit_CBL
    immediate_BL = ent_BL if opts.commit_cost == "entropy" else -lp_tok_BL
    committed_CB = jnp.sum(jnp.where(commit_CBL, immediate_BL[None], 0.0), axis=-1)
    first_B = jnp.zeros((B,), jnp.int32)

    def no_pass():
        return committed_CB, first_B, jnp.zeros_like(logp_BLV), jnp.int32(0)

    def one_pass():  # every candidate of every row is the same action
        la_BLV = lookahead(x_CBL[:1])[0]
        return (committed_CB + _mean_left(entropy(la_BLV)[None], left_CBL[:1]), first_B, la_BLV,
                jnp.int32(1))

    def batched():
        la_CBLV = lookahead(x_CBL)
        cost_CB = committed_CB + _mean_left(entropy(la_CBLV), left_CBL)
        choice_B = jnp.argmin(cost_CB, axis=0).astype(jnp.int32)
        return cost_CB, choice_B, jnp.take_along_axis(la_CBLV, choice_B[None, :, None, None], axis=0)[0], \
            jnp.int32(C)

    same = jnp.all(commit_CBL == commit_CBL[:1])
    need = others_masked | jnp.any(left_CBL[0])
    cost_CB, choice_B, next_BLV, nfe = lax.switch(jnp.where(need, jnp.where(same, 1, 2), 0),
                                                  [no_pass, one_pass, batched])
    commit_BL = jnp.take_along_axis(commit_CBL, choice_B[None, :, None], axis=0)[0]
    return dict(tokens=tok_BL, commit=commit_BL, lp_tok=lp_tok_BL, entropy=ent_BL, candidates=commit_CBL,
                cost=cost_CB, choice=choice_B, next_logp=next_BLV, nfe=nfe)


def build(cfg: Config, loop: Loop):
    """run(params, key, tokens_BL, threshold) of the mdm Info-Gain sampler (the threshold is mdm's
    prepare's traced argument, unused)."""
    mask_id, sc = special_ids(cfg.model).mask, loop.options

    def run(params, key, tokens_BL, threshold):
        del threshold
        B, L = tokens_BL.shape
        block_np, budget_np = block_schedule(L, sc.steps, sc.block_length, loop.block_start)
        block_L, budget = jnp.asarray(block_np), jnp.asarray(budget_np)
        st = dict(initial_state(tokens_BL, mask_id, sc.steps),
                  logp=jnp.zeros((B, L, cfg.model.vocab_size), jnp.float32), fresh=jnp.zeros((), bool))

        def lookahead(x_NBL):
            N = x_NBL.shape[0]
            logp = mdm_objective.masked_log_probs(params, x_NBL.reshape(N * B, L), cfg)
            return logp.reshape(N, B, L, logp.shape[-1])

        def one_step(st, eligible_BL, steps_left):
            logp_BLV = lax.cond(st["fresh"], lambda: st["logp"],
                                lambda: mdm_objective.masked_log_probs(params, st["x"], cfg))
            out = step(logp_BLV, st["x"], eligible_BL, jax.random.fold_in(key, st["step"]), steps_left, sc,
                       lookahead, jnp.any(st["masked"] & ~eligible_BL))
            nfe = (~st["fresh"]).astype(jnp.int32) + out["nfe"]
            st = advance(st, out["tokens"], out["commit"], out["lp_tok"], nfe, out["entropy"])
            return dict(st, rows=st["rows"] + nfe * L, logp=out["next_logp"], fresh=out["nfe"] > 0)

        def block_step(s, in_block_L, j, block_budget):
            return one_step(s, s["masked"] & in_block_L[None, :], block_budget - j)

        return result(over_blocks(st, block_L, budget, block_step, eos_id(cfg, sc)))

    return run


register(Sampler(name=NAME, family="masked", options=OPTIONS, prepare=mdm.prepare_rule(NAME), build=build,
                 description="C candidate commits per step scored by one batched look-ahead pass"))
