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

``approx_cache`` (prefix, dual, free, chunked): the loop with an APPROXIMATE KV cache, in
``jaxorder.sampling.mdm_cached`` (its docstring says what each mode caches).

The per-step commitment on given log-probs (``commit_step``: draw, rule, commit; ``advance``: the
state update) lives in ``jaxorder.sampling.mdm_steps``, shared with the cached loop and the
block-diffusion sampler ``jaxorder.sampling.bd3``.

Randomness: step j uses ``fold_in(key, j)``; the Gumbel noise is ``gumbel_noise(step_key,
[B, L, V], noise)`` (``"high"``: float64-accurate tails; ``"float32"``: the naive 24-bit one).
Same key -> same output; temperature 0 with a k-best rule uses no randomness at all. ``fixed_noise``
(not ancestral): every step draws with ``key`` itself (``mdm_steps.step_key``), the same noise at
each step, so a position's draw changes only when its conditional does.

``fused=True`` (rules confidence, margin, entropy, threshold, factor) replaces the per-step logits +
sampling + scoring by ``pallas_kernels.mdm_sample_step`` on the model's final hidden states and
``head`` matrix (on CPU: its plain-JAX reference, or Pallas interpret mode with
``interpret=True``). It draws the identical noise for the same step key, so it gives the same
tokens as the plain path.

Output (besides the contract's ``tokens``, ``logprob``, ``nfe``, ``steps``): ``commits``
[steps, B] (positions committed per step and row; rows past ``steps`` are 0), ``complete`` [B],
``early`` [B] (Prophet), ``rows`` (positions run through the model, summed over passes) and
``uncertainty`` [B], the cumulative uncertainty: the summed entropy in nats (temperature 1) of
each committed position's distribution at the step that committed it (Prophet's early commits
included; the fused path takes the kernel's entropy, computed online without the logits).

``score_path``: the sampler's loop with the commitment forced (one given position per step) and
the tokens teacher-forced; it returns log p of the path, which for an order sigma is the exact
chain rule sum_j log p(x_sigma_j | x_sigma_<j) of ``jaxorder.objectives.mdm.chain_rule_nll``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxorder import model
from jaxorder.config import Config, ConfigError
from jaxorder.objectives import mdm as mdm_objective
from jaxorder.objectives.common import positions_like, special_ids
from jaxorder.sampling import mdm_cached, remask
from jaxorder.sampling.base import Prepared, Sampler, SamplerOptions, register
from jaxorder.sampling.eos import eos_id, release_padding
from jaxorder.sampling.mdm_steps import (
    _SCORE,
    PARALLEL_RULES,
    RULES,
    Loop,
    advance,
    block_schedule,
    commit_step,
    entropy,
    initial_state,
    over_blocks,
    parallel_commit,
    parallel_floor,
    prophet_commit,
    prophet_threshold,
    result,
    step_key,
    tokens_per_step,
)
from pallas_kernels import mdm_sample_step

RULE_OPTIONS = {"threshold": ("threshold",), "factor": ("factor",),  # options a rule adds to OPTIONS
                **{rule: ("remask", "remask_candidates", "remask_dropped", "remask_resample")
                   for rule in ("confidence", "margin", "entropy")}}
OPTIONS = ("steps", "temperature", "block_length", "noise", "fixed_noise", "ignore_eos", "fused", "interpret",
           "prophet", "approx_cache", "cache_refresh", "chunk_length", "chunks")


def final_hidden(params, x_BL: jnp.ndarray, cfg: Config) -> jnp.ndarray:
    """Final hidden states [B, L, d] (after the final norm) of the bidirectional model; the
    logits are hidden @ params['head'] (the head matmul is dead code here and removed by XLA)."""
    _, state = model.Transformer(cfg.model).apply(
        {"params": params}, x_BL, positions_like(x_BL), "bidirectional",
        capture_intermediates=lambda mdl, method: mdl.name == "final_norm", mutable=["intermediates"])
    return state["intermediates"]["final_norm"]["__call__"][0]


def build(cfg: Config, loop: Loop):
    """The sampling loop run(params, key, tokens_BL, threshold[, forced order, forced tokens])."""
    if loop.options.approx_cache != "none":
        return mdm_cached.build(cfg, loop)
    mask_id = special_ids(cfg.model).mask
    rule, sc, block_start, forced = loop.rule, loop.options, loop.block_start, loop.forced
    score_rule = _SCORE.get(rule)

    def run(params, key, tokens_BL, threshold, forced_order_BL=None, forced_tokens_BL=None):
        B, L = tokens_BL.shape
        block_np, budget_np = block_schedule(L, sc.steps, sc.block_length, block_start)
        block_L, budget = jnp.asarray(block_np), jnp.asarray(budget_np)
        pos_L = jnp.arange(L, dtype=jnp.int32)
        st = initial_state(tokens_BL, mask_id, sc.steps)
        if sc.remask > 0:
            st = remask.initial(st)
        if rule == "ancestral" and not forced:
            st["logp"] = jnp.zeros((B, L, cfg.model.vocab_size), jnp.float32)
            st["dirty"] = jnp.ones((), bool)

        def one_step(st, eligible_BL, steps_left, block_budget, in_block_L):
            i, x_BL = st["step"], st["x"]
            k_step, k_draw = jax.random.fold_in(key, i), step_key(key, i, sc)
            logp_BLV = None
            if sc.remask > 0 and not forced:
                k_B = tokens_per_step(eligible_BL, steps_left)
                r_B = remask.budget(sc.remask, k_B, steps_left, block_budget)
                region_BL = (st["committed_at"] >= 0) & in_block_L[None, :]
                redraw_key = jax.random.fold_in(k_step, 1) if sc.remask_resample else None
                pos_Bn, score_Bn, calls, rows, redraw = remask.scores(params, cfg, st, region_BL, r_B,
                                                                      sc.remask_candidates, mask_id,
                                                                      redraw_key, sc)
                logp_BLV = mdm_objective.masked_log_probs(params, x_BL, cfg)
                tok_BL, commit_BL, lp_tok_BL = commit_step(logp_BLV, eligible_BL, k_draw, steps_left, rule,
                                                           sc, threshold)
                ent_BL = entropy(logp_BLV)
                st = remask.record(advance(st, tok_BL, commit_BL, lp_tok_BL, 1 + calls, ent_BL), commit_BL,
                                   lp_tok_BL, ent_BL)
                st = release_padding(remask.apply(st, pos_Bn, score_Bn, r_B, mask_id,
                                                  sc.remask_dropped, redraw), eos_id(cfg, sc),
                                     mask_id)
                return dict(st, rows=st["rows"] + L + rows), logp_BLV
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
                res = mdm_sample_step(hidden_BLd, params["head"], x_BL, eligible_BL, k_draw,
                                      temperature=float(sc.temperature), rule=score_rule, k=floor,
                                      forbidden_ids=(mask_id,), interpret=sc.interpret)
                tok_BL, commit_BL = res["sampled"].astype(jnp.int32), res["committed"]
                lp_tok_BL = jnp.log(res["confidence"])
                ent_BL = res["entropy"].astype(jnp.float32)  # the kernel's, from its online softmax
                if rule in PARALLEL_RULES:
                    commit_BL = parallel_commit(res["confidence"], eligible_BL, steps_left, rule, sc,
                                                threshold)
                nfe = 1
            else:
                logp_BLV = mdm_objective.masked_log_probs(params, x_BL, cfg)
                tok_BL, commit_BL, lp_tok_BL = commit_step(logp_BLV, eligible_BL, k_draw, steps_left, rule,
                                                           sc, threshold)
                nfe = 1
            if logp_BLV is not None:
                ent_BL = entropy(logp_BLV)
            st = advance(st, tok_BL, commit_BL, lp_tok_BL, nfe, ent_BL)
            return dict(st, rows=st["rows"] + nfe * L), logp_BLV

        def block_step(s, in_block_L, j, block_budget):
            s, logp_BLV = one_step(s, s["masked"] & in_block_L[None, :], block_budget - j, block_budget,
                                   in_block_L)
            if sc.prophet > 0:
                s = prophet_commit(s, logp_BLV, 0, in_block_L, prophet_threshold(sc.prophet, j, block_budget))
            return s

        st = over_blocks(st, block_L, budget, block_step, None if forced else eos_id(cfg, sc))
        return dict(result(st), remasked=st["remasked"]) if sc.remask > 0 else result(st)

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
    if options.fixed_noise and rule == "ancestral":
        raise ConfigError("--fixed-noise keeps each position's token noise for a rule that redraws every "
                          "step (confidence, margin, entropy, threshold, factor); the ancestral sampler "
                          "draws each token once already")
    if options.approx_cache != "none" and rule == "ancestral":
        raise ConfigError("--approx-cache decodes with a commit rule (confidence, margin, entropy, "
                          "threshold, factor); the ancestral sampler already reuses passes when nothing "
                          "changed")
    if options.remask > 0 and (options.fused or options.prophet > 0 or options.approx_cache != "none"):
        what = "--fused" if options.fused else "--prophet" if options.prophet > 0 else "--approx-cache"
        raise ConfigError(f"--remask re-scores committed tokens on the full uncached pass; drop {what}")
    if options.remask_candidates != SamplerOptions.remask_candidates and options.remask == 0:
        raise ConfigError("--remask-candidates sets how many tokens --remask re-scores; give --remask too")
    if options.remask_dropped and options.remask == 0:
        raise ConfigError("--remask-dropped narrows which tokens --remask undoes; give --remask too")
    if options.remask_resample and options.remask == 0:
        raise ConfigError("--remask-resample changes how --remask undoes a token; give --remask too")
    if options.cache_refresh and options.approx_cache == "none":
        raise ConfigError("--cache-refresh sets how often an approximate cache is recomputed; give "
                          "--approx-cache prefix|dual|free|chunked too")
    defaults = SamplerOptions()
    if ((options.chunk_length, options.chunks) != (defaults.chunk_length, defaults.chunks)
            and options.approx_cache != "chunked"):
        raise ConfigError("--chunk-length and --chunks set the chunked prompt cache; give --approx-cache "
                          "chunked too")


def prepare_rule(rule: str):
    """prepare(cfg, tokens_BL, options) of the sampler committing by `rule`."""

    def prepare(cfg: Config, tokens_BL: np.ndarray, options: SamplerOptions) -> Prepared:
        _check_options(rule, options)
        masked = tokens_BL == special_ids(cfg.model).mask
        # blocks start at the first column with a mask (a shared prompt is never a block of its own)
        start = int(np.argmax(masked.any(axis=0))) if masked.any() else 0
        if options.approx_cache == "chunked" and start == 0:
            raise ConfigError("--approx-cache chunked caches a prompt, and these rows start with a position "
                              "to generate; give a prompt (--prompt) or use --approx-cache prefix|dual|free")
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
