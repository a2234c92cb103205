"""Samplers for masked-diffusion (mdm) runs, each one jitted loop over steps, batched.

Input: tokens [B, L] where MASK marks the positions to generate; every other token is fixed and
never changes (prompts, infilling templates). The conditionals p(. | x_t) are
``jaxorder.objectives.mdm.masked_log_probs`` (SUBS: MASK has probability 0, so it is never
sampled); the fused path computes the same conditionals inside ``pallas_kernels``.

Samplers (registered at the end of this file, family "masked"; the rule is the sampler's name):
- ``ancestral`` (MDLM, log-linear schedule): going from time t to s < t every masked position
  is revealed with probability (t - s) / t and its token drawn from p(. | x_t); revealed tokens
  carry over (SUBS). On the uniform time grid t_j = (S - j) / S of a block with S steps that
  probability is 1 / (steps left), so the last step reveals everything. A step that reveals
  nothing in any row leaves x_t unchanged, so the previous forward pass is reused (MDLM's
  cache; batch-wide, so it mostly helps small batches): ``nfe`` counts the passes actually run.
- ``confidence`` / ``margin`` / ``entropy`` (LLaDA, Dream): draw a token at every masked
  position (Gumbel-max at temperature T, argmax at T = 0), score each position by the rule —
  p(sampled token), p1 - p2, or minus the entropy, all under the model's distribution at
  temperature 1 — and commit the k best masked positions, k = ceil(masked left / steps left).
- ``threshold`` (Fast-dLLM): commit every masked position whose confidence is >= ``threshold``, and
  the most confident one when none is (one per step at least, no other floor). ``factor``
  (Fast-dLLM's factor rule): commit the n most confident where n is the largest with
  (n + 1)(1 - p_(n)) < ``factor``, p_(n) the n-th highest confidence, and at least one. For both,
  ``steps`` is an upper bound: a block's last budgeted step commits everything it has left, and a
  batch stops as soon as all rows are complete (steps >= masked positions: the budget never binds).
- ``block_length`` > 0: semi-autoregressive blocks. Positions from the first masked column on
  are cut into blocks of ``block_length``; blocks are filled left to right, each with its share
  of ``steps`` (split as evenly as possible, earlier blocks get the remainder), attending to the
  whole sequence (later blocks still masked). A block whose masks are all filled early ends early.

``prophet`` = G > 0 (Prophet early commit, on top of any rule): after a step's commits, a row whose
still-masked positions of the current block have a mean top-2 logit gap above G x (1.5, 1, 0.5)
(the first, second, last third of the block's step budget) commits them all at their argmax from
that step's log-probs; ``early`` [B] counts those positions. G = 5 is Prophet's 7.5 / 5 / 2.5.

``approx_cache`` (Fast-dLLM's caches; APPROXIMATE for a bidirectional model): a KV cache with one
slot per position (``model.decode.rewrite_positions``). A step runs only a window of positions
through the model; they see the cached keys/values of every other position, computed when the
tokens there may have been different (still MASK, or not yet final). Per block [s, e):
- ``prefix``: the first step is a full pass (it refreshes the cache); later steps run [s, L): the
  prompt and finished blocks are read from the cache;
- ``dual``: the first step is a full pass; later steps run [s, e) only: the masked suffix is cached too;
- ``free`` (FreeCache-style, no full refresh after the first pass): a block's first step runs
  [previous block start, e), giving the previous block's committed tokens fresh keys/values;
  later steps run [s, e).
``cache_refresh`` = r > 0 makes every step with j % r == 0 (j the step within the block) a full
pass; r = 1 is exactly the uncached sampler. Blocks are unrolled (their windows have different
static shapes). ``rows`` counts the positions run through the model (a full pass: L).

The per-step commitment on given log-probs (``commit_step``: draw, rule, commit; ``advance``: the
state update) is shared with the block-diffusion sampler ``jaxorder.sampling.bd3``.

Randomness: step j uses ``fold_in(key, j)``; the Gumbel noise is ``gumbel_noise(step_key,
[B, L, V], noise)`` (``"high"``: float64-accurate tails; ``"float32"``: the naive 24-bit one).
Same key -> same output; temperature 0 with a k-best rule uses no randomness at all.

``fused=True`` (rules confidence, margin, entropy, threshold, factor) replaces the per-step logits +
sampling + scoring by ``pallas_kernels.mdm_sample_step`` on the model's final hidden states and
``head`` matrix (on CPU: its plain-JAX reference, or Pallas interpret mode with
``interpret=True``). It draws the identical noise for the same step key, so it gives the same
tokens as the plain path.

Output (besides the contract's ``tokens``, ``logprob``, ``nfe``, ``steps``): ``commits``
[steps, B] (positions committed per step and row; rows past ``steps`` are 0), ``complete`` [B],
``early`` [B] (Prophet) and ``rows`` (positions run through the model, summed over passes).

``score_path``: the sampler's loop with the commitment forced (one given position per step) and
the tokens teacher-forced; it returns log p of the path, which for an order sigma is the exact
chain rule sum_j log p(x_sigma_j | x_sigma_<j) of ``jaxorder.objectives.mdm.chain_rule_nll``.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxorder import model
from jaxorder.config import Config, ConfigError
from jaxorder.model import decode
from jaxorder.objectives import mdm as mdm_objective
from jaxorder.objectives.common import positions_like, special_ids, subs_log_probs
from jaxorder.sampling.base import Prepared, Sampler, SamplerOptions, register
from jaxorder.sampling.noise import first_argmax, gumbel_noise
from pallas_kernels import mdm_sample_step
from pallas_kernels.sampling import commit as commit_top_k

RULES = ("ancestral", "confidence", "margin", "entropy", "threshold", "factor")
_SCORE = {"confidence": "confidence", "margin": "margin", "entropy": "entropy", "threshold": "confidence",
          "factor": "confidence"}
PARALLEL_RULES = ("threshold", "factor")  # rules that commit a variable number per step (Fast-dLLM)
RULE_OPTIONS = {"threshold": ("threshold",), "factor": ("factor",)}  # options a rule adds to OPTIONS
OPTIONS = ("steps", "temperature", "block_length", "noise", "fused", "interpret", "prophet", "approx_cache",
           "cache_refresh")
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


def final_hidden(params, x_BL: jnp.ndarray, cfg: Config) -> jnp.ndarray:
    """Final hidden states [B, L, d] (after the final norm) of the bidirectional model; the
    logits are hidden @ params['head'] (the head matmul is dead code here and removed by XLA)."""
    _, state = model.Transformer(cfg.model).apply(
        {"params": params}, x_BL, positions_like(x_BL), "bidirectional",
        capture_intermediates=lambda mdl, method: mdl.name == "final_norm", mutable=["intermediates"])
    return state["intermediates"]["final_norm"]["__call__"][0]


def _draw(logp_BLV: jnp.ndarray, key: jax.Array, opts: SamplerOptions, noise_rows=None) -> jnp.ndarray:
    if opts.temperature == 0:
        return jnp.argmax(logp_BLV, axis=-1).astype(jnp.int32)
    g_BLV = gumbel_noise(key, logp_BLV.shape, opts.noise, noise_rows)
    return first_argmax(logp_BLV * (1.0 / opts.temperature) + g_BLV)


def _rule_score(logp_BLV: jnp.ndarray, lp_tok_BL: jnp.ndarray, rule: str) -> jnp.ndarray:
    if rule == "confidence":
        return jnp.exp(lp_tok_BL)
    if rule == "margin":
        top2 = lax.top_k(logp_BLV, 2)[0]
        return jnp.exp(top2[..., 0]) - jnp.exp(top2[..., 1])
    p_BLV = jnp.exp(logp_BLV)
    return jnp.sum(jnp.where(p_BLV > 0, p_BLV * logp_BLV, 0.0), axis=-1)  # -entropy


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
    tok_BL = _draw(logp_BLV, step_key, opts, noise_rows)
    lp_tok_BL = jnp.take_along_axis(logp_BLV, tok_BL[..., None], axis=-1)[..., 0]
    if rule == "ancestral":
        u_BL = jax.random.uniform(jax.random.fold_in(step_key, 1), eligible_BL.shape)
        return tok_BL, eligible_BL & (u_BL * steps_left < 1.0), lp_tok_BL  # (t - s) / t = 1 / steps left
    if rule in PARALLEL_RULES:
        return tok_BL, parallel_commit(jnp.exp(lp_tok_BL), eligible_BL, steps_left, rule, opts,
                                       threshold), lp_tok_BL
    commit_BL = commit_top_k(_rule_score(logp_BLV, lp_tok_BL, _SCORE[rule]), eligible_BL,
                             k=tokens_per_step(eligible_BL, steps_left))
    return tok_BL, commit_BL, lp_tok_BL


def advance(st: dict, tok_BL: jnp.ndarray, commit_BL: jnp.ndarray, lp_tok_BL: jnp.ndarray, nfe) -> dict:
    """The loop state after a step: committed tokens written into ``x``, unmasked in ``masked``,
    their log p added to ``logprob``, the commit count recorded in ``commits[step]``; step and nfe
    advanced."""
    i = st["step"]
    return dict(st, x=jnp.where(commit_BL, tok_BL, st["x"]), masked=st["masked"] & ~commit_BL,
                logprob=st["logprob"] + jnp.sum(jnp.where(commit_BL, lp_tok_BL, 0.0), axis=1),
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
    (positions committed early)."""
    n = logp_BnV.shape[1]
    left_Bn = lax.dynamic_slice_in_dim(st["masked"] & in_block_L[None, :], start, n, axis=1)
    top2_Bn2 = lax.top_k(logp_BnV, 2)[0]
    count_B = left_Bn.sum(axis=1)
    gap_Bn = top2_Bn2[..., 0] - top2_Bn2[..., 1]
    gap_B = jnp.sum(jnp.where(left_Bn, gap_Bn, 0.0), axis=1) / jnp.maximum(count_B, 1)
    commit_Bn = left_Bn & ((count_B > 0) & (gap_B > gap_threshold))[:, None]
    tok_Bn = jnp.argmax(logp_BnV, axis=-1).astype(jnp.int32)
    x_Bn = lax.dynamic_slice_in_dim(st["x"], start, n, axis=1)
    masked_Bn = lax.dynamic_slice_in_dim(st["masked"], start, n, axis=1)
    i = st["step"] - 1  # the step just taken
    x_Bn = jnp.where(commit_Bn, tok_Bn, x_Bn)
    return dict(st, x=lax.dynamic_update_slice_in_dim(st["x"], x_Bn, start, axis=1),
                masked=lax.dynamic_update_slice_in_dim(st["masked"], masked_Bn & ~commit_Bn, start, axis=1),
                logprob=st["logprob"] + jnp.sum(jnp.where(commit_Bn, top2_Bn2[..., 0], 0.0), axis=1),
                commits=st["commits"].at[i].add(commit_Bn.sum(axis=1).astype(jnp.int32)),
                early=st["early"] + commit_Bn.sum(axis=1).astype(jnp.int32))


def _initial_state(tokens_BL: jnp.ndarray, mask_id: int, steps: int) -> dict:
    B = tokens_BL.shape[0]
    return dict(x=tokens_BL.astype(jnp.int32), masked=tokens_BL == mask_id,
                logprob=jnp.zeros((B,), jnp.float32), step=jnp.zeros((), jnp.int32),
                nfe=jnp.zeros((), jnp.int32), rows=jnp.zeros((), jnp.int32),
                commits=jnp.zeros((steps, B), jnp.int32), early=jnp.zeros((B,), jnp.int32))


def _result(st: dict) -> dict:
    return dict(tokens=st["x"], logprob=st["logprob"], nfe=st["nfe"], steps=st["step"], rows=st["rows"],
                commits=st["commits"], early=st["early"], complete=~st["masked"].any(axis=1))


def _block_bounds(block_np: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each block of a block_schedule, in order."""
    return [(int(np.argmax(block_np == b)), int(len(block_np) - np.argmax(block_np[::-1] == b)))
            for b in range(int(block_np.max()) + 1)]


def build(cfg: Config, loop: Loop):
    """The sampling loop run(params, key, tokens_BL, threshold[, forced order, forced tokens])."""
    if loop.options.approx_cache != "none":
        return _build_cached(cfg, loop)
    mask_id = special_ids(cfg.model).mask
    rule, sc, block_start, forced = loop.rule, loop.options, loop.block_start, loop.forced
    score_rule = _SCORE.get(rule)

    def run(params, key, tokens_BL, threshold, forced_order_BL=None, forced_tokens_BL=None):
        B, L = tokens_BL.shape
        block_np, budget_np = block_schedule(L, sc.steps, sc.block_length, block_start)
        block_L, budget = jnp.asarray(block_np), jnp.asarray(budget_np)
        pos_L = jnp.arange(L, dtype=jnp.int32)
        st = _initial_state(tokens_BL, mask_id, sc.steps)
        if rule == "ancestral" and not forced:
            st["logp"] = jnp.zeros((B, L, cfg.model.vocab_size), jnp.float32)
            st["dirty"] = jnp.ones((), bool)

        def one_step(st, eligible_BL, steps_left):
            i, x_BL = st["step"], st["x"]
            k_step = jax.random.fold_in(key, i)
            logp_BLV = None
            if forced:
                logp_BLV = mdm_objective.masked_log_probs(params, x_BL, cfg)
                tok_BL = forced_tokens_BL.astype(jnp.int32)
                commit_BL = eligible_BL & (pos_L[None, :] == forced_order_BL[:, i][:, None])
                lp_tok_BL = jnp.take_along_axis(logp_BLV, tok_BL[..., None], axis=-1)[..., 0]
                nfe = 1
            elif rule == "ancestral":
                logp_BLV = lax.cond(st["dirty"], lambda: mdm_objective.masked_log_probs(params, x_BL, cfg),
                                    lambda: st["logp"])
                nfe = st["dirty"].astype(jnp.int32)
                tok_BL, commit_BL, lp_tok_BL = commit_step(logp_BLV, eligible_BL, k_step, steps_left, rule,
                                                           sc, threshold)
                st = dict(st, logp=logp_BLV, dirty=commit_BL.any())
            elif sc.fused:
                hidden_BLd = final_hidden(params, x_BL, cfg)
                floor = (parallel_floor(eligible_BL, steps_left) if rule in PARALLEL_RULES
                         else tokens_per_step(eligible_BL, steps_left))
                res = mdm_sample_step(hidden_BLd, params["head"], x_BL, eligible_BL, k_step,
                                      temperature=float(sc.temperature), rule=score_rule, k=floor,
                                      forbidden_ids=(mask_id,), interpret=sc.interpret)
                tok_BL, commit_BL = res["sampled"].astype(jnp.int32), res["committed"]
                lp_tok_BL = jnp.log(res["confidence"])
                if rule in PARALLEL_RULES:
                    commit_BL = parallel_commit(res["confidence"], eligible_BL, steps_left, rule, sc,
                                                threshold)
                nfe = 1
            else:
                logp_BLV = mdm_objective.masked_log_probs(params, x_BL, cfg)
                tok_BL, commit_BL, lp_tok_BL = commit_step(logp_BLV, eligible_BL, k_step, steps_left, rule,
                                                           sc, threshold)
                nfe = 1
            st = advance(st, tok_BL, commit_BL, lp_tok_BL, nfe)
            return dict(st, rows=st["rows"] + nfe * L), logp_BLV

        def block_body(b, st):
            in_block_L = block_L == b

            def cond(carry):
                j, s = carry
                return (j < budget[b]) & jnp.any(s["masked"] & in_block_L[None, :])

            def body(carry):
                j, s = carry
                s, logp_BLV = one_step(s, s["masked"] & in_block_L[None, :], budget[b] - j)
                if sc.prophet > 0:
                    s = prophet_commit(s, logp_BLV, 0, in_block_L,
                                       prophet_threshold(sc.prophet, j, budget[b]))
                return j + 1, s

            return lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), st))[1]

        st = lax.fori_loop(0, len(budget_np), block_body, st)
        return _result(st)

    return run


def _build_cached(cfg: Config, loop: Loop):
    """The loop with an approximate KV cache (``approx_cache``, module docstring): the cache holds one
    slot per position (``model.decode.rewrite_positions``); each step recomputes a window of
    positions, the rest of the sequence is read from the cache, and draws, scores and commits on
    the block's positions only (the noise at the uncached sampler's counters). ``dual`` and
    ``free`` windows have one size for every block, so blocks run in a fori_loop (a window or block
    that would pass the end is moved back to end at L: it recomputes a little more); ``prefix``
    windows [s, L) shrink block by block, so its blocks are unrolled (one compiled window each)."""
    mcfg, mask_id = cfg.model, special_ids(cfg.model).mask
    rule, sc, block_start, mode = loop.rule, loop.options, loop.block_start, loop.options.approx_cache

    def run(params, key, tokens_BL, threshold):
        B, L = tokens_BL.shape
        block_np, budget_np = block_schedule(L, sc.steps, sc.block_length, block_start)
        bounds = _block_bounds(block_np)
        bl = bounds[0][1] - bounds[0][0]
        pos_L = jnp.arange(L, dtype=jnp.int32)
        st = _initial_state(tokens_BL, mask_id, sc.steps)
        st["cache"] = decode.init_cache(mcfg, B, L)

        def window(n: int, nb: int):
            """pass(st, qs, qb): positions [qs, qs + n) through the model; the logits [B, nb, V] of the
            block positions [qb, qb + nb) (inside the window) and the cache."""
            def run_window(st, qs, qb):
                qs = jnp.clip(qs, 0, L - n)
                x_Bn = lax.dynamic_slice_in_dim(st["x"], qs, n, axis=1)
                logits_BnV, cache = decode.rewrite_positions(params, mcfg, st["cache"], x_Bn, qs)
                return lax.dynamic_slice_in_dim(logits_BnV, qb - qs, nb, axis=1), cache
            return run_window

        def run_block(st, b, s, e, qb, nb, steps_b, first, later, full):
            """The steps of block [s, e), whose positions lie in [qb, qb + nb); first / later / full
            (st) -> (block logits, cache) are the passes of module docstring."""
            in_block_L = (pos_L >= s) & (pos_L < e)
            rows_Bn = (jnp.arange(B, dtype=jnp.int32)[:, None] * L + qb + jnp.arange(nb, dtype=jnp.int32))

            def cond(carry):
                j, st = carry
                return (j < steps_b) & jnp.any(st["masked"] & in_block_L[None, :])

            def body(carry):
                j, st = carry
                refresh = (sc.cache_refresh > 0) & (j % max(sc.cache_refresh, 1) == 0)
                which = jnp.where(refresh, 2, jnp.where(j == 0, 0, 1))
                logits_BnV, cache = lax.switch(which, [first, later, full], st)
                logp_BnV = subs_log_probs(logits_BnV, mask_id)
                eligible_Bn = lax.dynamic_slice_in_dim(st["masked"] & in_block_L[None, :], qb, nb, axis=1)
                step_key = jax.random.fold_in(key, st["step"])
                tok_Bn, commit_Bn, lp_Bn = commit_step(logp_BnV, eligible_Bn, step_key, steps_b - j, rule, sc,
                                                       threshold, noise_rows=rows_Bn)

                def place(window_Bn, base_BL):  # window values into a full-length array
                    return lax.dynamic_update_slice_in_dim(base_BL, window_Bn, qb, axis=1)

                tok_BL = place(tok_Bn, st["x"])
                commit_BL = place(commit_Bn, jnp.zeros_like(st["masked"]))
                lp_BL = place(lp_Bn, jnp.zeros(st["x"].shape, jnp.float32))
                rows = jnp.where(which == 0, first_rows(b), jnp.where(which == 1, later_rows(s), L))
                st = advance(dict(st, cache=cache, rows=st["rows"] + rows), tok_BL, commit_BL, lp_BL, 1)
                if sc.prophet > 0:
                    gap = prophet_threshold(sc.prophet, j, steps_b)
                    st = prophet_commit(st, logp_BnV, qb, in_block_L, gap)
                return j + 1, st

            return lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), st))[1]

        if mode == "prefix":  # a full pass first, then [s, L): the prompt and finished blocks are cached
            def first_rows(b):
                return L

            def later_rows(s):
                return L - s

            for b, (s, e) in enumerate(bounds):
                nb = e - s
                full = functools.partial(window(L, nb), qs=0, qb=s)
                st = run_block(st, b, s, e, s, nb, int(budget_np[b]), full,
                               functools.partial(window(L - s, nb), qs=s, qb=s), full)
            return _result(st)

        starts = jnp.asarray([s for s, _ in bounds], jnp.int32)
        budget = jnp.asarray(budget_np)
        catch_up = min(2 * bl, L)  # free: the previous block and this one

        def first_rows(b):
            return L if mode == "dual" else jnp.where(b == 0, L, catch_up)

        def later_rows(s):
            return bl

        def block_body(b, st):
            s = starts[b]
            qb = jnp.minimum(s, L - bl)  # the last block may be shorter: its window ends at L
            full = functools.partial(window(L, bl), qs=0, qb=qb)
            if mode == "dual":  # a full pass first, then the block: the masked suffix is cached too
                first = full
            else:  # free: no refresh after the very first pass; the previous block's tokens catch up
                def first(st):
                    return lax.cond(b == 0, lambda: full(st), lambda: window(catch_up, bl)(st, s - bl, qb))
            return run_block(st, b, s, jnp.minimum(s + bl, L), qb, bl, budget[b], first,
                             functools.partial(window(bl, bl), qs=s, qb=qb), full)

        return _result(lax.fori_loop(0, len(bounds), block_body, st))

    return run


def _check_options(rule: str, options: SamplerOptions) -> None:
    """One-line errors for combinations of the masked options that do not work together."""
    if options.fused and rule == "ancestral":
        raise ConfigError("the fused step commits by a rule (confidence, margin, entropy, threshold, "
                          "factor); the ancestral sampler has no fused path")
    if options.fused and (options.prophet > 0 or options.approx_cache != "none"):
        what = "--prophet" if options.prophet > 0 else "--approx-cache"
        raise ConfigError(f"{what} needs the model's log-probs, which the fused step never materializes; "
                          f"drop --fused")
    if options.approx_cache != "none" and rule == "ancestral":
        raise ConfigError("--approx-cache decodes with a commit rule (confidence, margin, entropy, "
                          "threshold, factor); the ancestral sampler already reuses passes when nothing "
                          "changed")
    if options.cache_refresh and options.approx_cache == "none":
        raise ConfigError("--cache-refresh sets how often an approximate cache is recomputed; give "
                          "--approx-cache prefix|dual|free too")


def prepare_rule(rule: str):
    """prepare(cfg, tokens_BL, options) of the sampler committing by `rule`."""

    def prepare(cfg: Config, tokens_BL: np.ndarray, options: SamplerOptions) -> Prepared:
        _check_options(rule, options)
        masked = tokens_BL == special_ids(cfg.model).mask
        # blocks start at the first column with a mask (a shared prompt is never a block of its own)
        start = int(np.argmax(masked.any(axis=0))) if masked.any() else 0
        static = dataclasses.replace(options, threshold=SamplerOptions.threshold)  # traced, see Loop
        return Prepared(Loop(rule, static, start), (jnp.asarray(tokens_BL), jnp.float32(options.threshold)))

    return prepare


def score_path(params, cfg: Config, tokens_BL, order_BL) -> jnp.ndarray:
    """log p [B] of revealing ``tokens_BL`` one position per step in ``order_BL`` (position revealed
    at each step, [B, L]) starting from all-MASK, run through the sampler loop with the commitment
    forced and the tokens teacher-forced. Equals -``objectives.mdm.chain_rule_nll`` for that order."""
    tokens = jnp.asarray(tokens_BL, jnp.int32)
    B, L = tokens.shape
    loop = Loop("confidence", SamplerOptions(steps=L, temperature=0.0), forced=True)
    start = jnp.full((B, L), special_ids(cfg.model).mask, jnp.int32)
    out = jax.jit(build(cfg, loop))(params, jax.random.key(0), start, jnp.float32(1.0),
                                    jnp.asarray(order_BL, jnp.int32), tokens)
    return out["logprob"]


for _rule in RULES:
    register(Sampler(name=_rule, family="masked", options=OPTIONS + RULE_OPTIONS.get(_rule, ()),
                     prepare=prepare_rule(_rule), build=build))
