"""Block-diffusion (bd3) sampling: block by block, diffusion steps inside a block, one jitted loop.

Input as for ``jaxorder.sampling.mdm.sample``: tokens [B, n] where MASK marks the positions to
generate; every other token is fixed and never changes (prompts, infilling templates). The run's
objective must be bd3 and n a multiple of its block size b = ``cfg.objective.block_size`` (the
model was trained on windows of whole blocks; a length that is not a multiple is refused with a
ConfigError naming the nearest valid lengths, nothing is padded).

The n/b blocks are generated left to right. Inside block k the rule of the sampler (registered
here for family "block": ancestral, confidence, margin, entropy, threshold, factor, info-gain) runs
over that block's masked positions only, with ``mdm_steps.commit_step`` (the same per-step rule,
noise and tie-breaking as the mdm samplers) or ``info_gain.step`` (Info-Gain: its C candidate
look-aheads are one b-slot pass of B * C blocks over the cache tiled C times, uncached: the
[x_t ; x] layout of B * C sequences; the chosen look-ahead is the block's next step's pass, and
each block starts with a pass of its own). The conditionals are bd3's noisy-half ones,
p(. | noisy block k, clean blocks < k) with SUBS (MASK logit -inf, ``bd3.noisy_log_probs``):

- ``cache=True``: a KV cache over the finished blocks. A denoising step is one
  ``decode.decode_step`` of the noisy block (b slots, "bidirectional") over the cache; its
  cache is not kept. When the block is complete, its clean tokens are written with one more
  "bidirectional" ``decode_step`` whose cache is kept (nothing follows the last block, so it is
  not written). A step attends over b new slots and at most n cached ones.
- ``cache=False``: the uncached reference: every step recomputes ``bd3.noisy_logits`` over the
  whole training layout [x_t ; x] (2n slots, mask bd3:<b>) with x_t = x = the tokens so far
  (committed blocks, the current block with its masks, later blocks still masked; the noisy
  block k sees only itself and clean blocks < k, so the rest does not matter) and takes block k.

Steps: ``sampler.steps`` is the total over the blocks that have a position to generate in some
row (blocks made only of fixed tokens, e.g. a prompt, get no step and are just written). It is
split as evenly as possible, earlier blocks get the remainder (``mdm_steps.split_steps``, the rule of
mdm's semi-autoregressive blocks), so it must be >= the number of such blocks. Inside a block
with S steps the schedule is mdm's: ancestral reveals each masked position with probability
1 / (steps left), the k-best rules commit ceil(masked left / steps left), so the block is
complete after its last step; threshold (and a block whose masks are all filled early) ends the
block early. Ancestral reuses the block's previous pass when a step reveals nothing in the whole
batch (as mdm does).

Randomness: the step with global index i (counting over all blocks) uses ``fold_in(key, i)``;
the Gumbel noise is drawn for the block's shape [B, b, V]. Both paths draw the same noise, so
they give the same tokens whenever their logits agree (at temperature 0 up to ties within float
rounding). With b = n (one block) the sampler is ``mdm.sample`` on the bidirectional model of
x_t: same noise shape, same steps, same rule.

The loop (``lax.fori_loop`` over blocks, ``lax.while_loop`` over a block's steps) is compiled once
per (cfg, rule, options without the threshold value) and input shape; the threshold and each
block's step budget are traced arguments.

``nfe`` counts the model calls run: denoising passes (each a b-slot decode step with the cache,
a full 2n-slot pass without; an Info-Gain look-ahead of C candidates counts C) plus, with the
cache, the block writes (one per block except the last; a block write is a b-slot pass too).
``uncertainty`` [B]: the summed entropy of each committed position's distribution at the step that
committed it (``mdm_steps.advance``).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxorder.config import Config, ConfigError
from jaxorder.model import decode
from jaxorder.objectives import bd3 as bd3_objective
from jaxorder.objectives.common import special_ids, subs_log_probs
from jaxorder.sampling import info_gain, mdm, mdm_steps
from jaxorder.sampling.base import Prepared, Sampler, SamplerOptions, register
from jaxorder.sampling.eos import commit_after_eos, eos_id


def build(cfg: Config, loop: mdm_steps.Loop):
    """run(params, key, tokens_BL, threshold, budget_K) -> dict for a static (cfg, loop)."""
    mcfg, b = cfg.model, cfg.objective.block_size
    mask_id = special_ids(mcfg).mask
    sc, cache = loop.options, loop.options.cache
    eos = eos_id(cfg, sc)
    ancestral, info = loop.rule == "ancestral", loop.rule == info_gain.NAME

    def run(params, key, tokens_BL, threshold, budget_K):
        B, n = tokens_BL.shape
        K = n // b
        st = dict(x=tokens_BL.astype(jnp.int32), masked=tokens_BL == mask_id,
                  committed_at=jnp.full(tokens_BL.shape, -1, jnp.int32),
                  logprob=jnp.zeros((B,), jnp.float32), uncertainty=jnp.zeros((B,), jnp.float32),
                  step=jnp.zeros((), jnp.int32),
                  nfe=jnp.zeros((), jnp.int32), commits=jnp.zeros((sc.steps, B), jnp.int32),
                  eos_filled=jnp.zeros((B,), jnp.int32))
        if cache:
            st["cache"] = decode.init_cache(mcfg, B, n)

        def block_body(k, st):
            start = k * b
            pos_Bb = jnp.broadcast_to(start + jnp.arange(b, dtype=jnp.int32), (B, b))

            def many_log_probs(x_NBb):  # p(. | noisy block k, clean blocks < k) [N, B, b, V], N per row
                N = x_NBb.shape[0]
                x_Mb = x_NBb.reshape(N * B, b)
                if cache:  # the cache tiled N times (a no-op for N = 1)
                    tiled = jax.tree_util.tree_map(lambda a: jnp.tile(a, (N,) + (1,) * (a.ndim - 1))
                                                   if a.ndim else a, st["cache"])
                    logits_MbV, _ = decode.decode_step(params, mcfg, tiled, x_Mb, jnp.tile(pos_Bb, (N, 1)),
                                                       "bidirectional")
                else:
                    x_ML = lax.dynamic_update_slice_in_dim(jnp.tile(st["x"], (N, 1)), x_Mb, start, axis=1)
                    logits_MbV = lax.dynamic_slice_in_dim(
                        bd3_objective.noisy_logits(params, x_ML, x_ML, cfg, b), start, b, axis=1)
                logp_MbV = subs_log_probs(logits_MbV, mask_id)
                return logp_MbV.reshape(N, B, b, logp_MbV.shape[-1])

            def block_log_probs(x_Bb):  # [B, b, V]
                return many_log_probs(x_Bb[None])[0]

            def one_step(s, steps_left):
                k_step = jax.random.fold_in(key, s["step"])
                if info:  # the next step reuses the chosen look-ahead (jaxorder.sampling.info_gain)
                    logp_BbV = lax.cond(s["fresh"], lambda: s["logp"], lambda: block_log_probs(s["x"]))
                    out = info_gain.step(logp_BbV, s["x"], s["masked"], k_step, steps_left, sc,
                                         many_log_probs, False)
                    s = mdm_steps.advance(s, out["tokens"], out["commit"], out["lp_tok"],
                                          (~s["fresh"]).astype(jnp.int32) + out["nfe"], out["entropy"])
                    return dict(s, logp=out["next_logp"], fresh=out["nfe"] > 0)
                if ancestral:  # a step that revealed nothing left the block unchanged: reuse its pass
                    logp_BbV = lax.cond(s["dirty"], lambda: block_log_probs(s["x"]), lambda: s["logp"])
                    nfe = s["dirty"].astype(jnp.int32)
                else:
                    logp_BbV, nfe = block_log_probs(s["x"]), 1
                tok_Bb, commit_Bb, lp_tok_Bb = mdm_steps.commit_step(logp_BbV, s["masked"], k_step,
                                                                     steps_left, loop.rule, sc, threshold)
                s = mdm_steps.advance(s, tok_Bb, commit_Bb, lp_tok_Bb, nfe, mdm_steps.entropy(logp_BbV))
                if ancestral:
                    s = dict(s, logp=logp_BbV, dirty=commit_Bb.any())
                return s

            def cond(carry):
                j, s = carry
                return (j < budget_K[k]) & jnp.any(s["masked"])

            def body(carry):
                j, s = carry
                return j + 1, commit_after_eos(one_step(s, budget_K[k] - j), eos)  # within the block

            blk = dict(x=lax.dynamic_slice_in_dim(st["x"], start, b, axis=1),
                       masked=lax.dynamic_slice_in_dim(st["masked"], start, b, axis=1),
                       committed_at=lax.dynamic_slice_in_dim(st["committed_at"], start, b, axis=1),
                       logprob=st["logprob"], uncertainty=st["uncertainty"], step=st["step"], nfe=st["nfe"],
                       commits=st["commits"], eos_filled=st["eos_filled"])
            if ancestral or info:
                blk["logp"] = jnp.zeros((B, b, mcfg.vocab_size), jnp.float32)
            if ancestral:
                blk["dirty"] = jnp.ones((), bool)
            if info:  # a block starts with a pass of its own
                blk["fresh"] = jnp.zeros((), bool)
            blk = lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), blk))[1]
            out = dict(st, x=lax.dynamic_update_slice_in_dim(st["x"], blk["x"], start, axis=1),
                       masked=lax.dynamic_update_slice_in_dim(st["masked"], blk["masked"], start, axis=1),
                       committed_at=lax.dynamic_update_slice_in_dim(st["committed_at"], blk["committed_at"],
                                                                    start, axis=1),
                       logprob=blk["logprob"], uncertainty=blk["uncertainty"], step=blk["step"],
                       nfe=blk["nfe"], commits=blk["commits"], eos_filled=blk["eos_filled"])
            out = commit_after_eos(out, eos)  # the later blocks after an EOS: filled, never decoded
            if cache:  # the finished block's clean tokens join the cache (not the last one: nothing follows)
                def write(c):
                    return decode.decode_step(params, mcfg, c, blk["x"], pos_Bb, "bidirectional")[1]

                last = (k == K - 1) | ~jnp.any(out["masked"])  # nothing follows, or nothing left to decode
                out["cache"] = lax.cond(last, lambda c: c, write, st["cache"])
                out["nfe"] = out["nfe"] + (~last).astype(jnp.int32)
            return out

        st = lax.fori_loop(0, K, block_body, st)
        return dict(tokens=st["x"], logprob=st["logprob"], uncertainty=st["uncertainty"], nfe=st["nfe"],
                    steps=st["step"],
                    commits=st["commits"], complete=~st["masked"].any(axis=1), eos_filled=st["eos_filled"],
                    committed_at=st["committed_at"])

    return run


def step_budget(masked_BL: np.ndarray, block_size: int, steps: int) -> np.ndarray:
    """Steps of each block [n / b]: ``steps`` split over the blocks with a masked position in some
    row (``mdm_steps.split_steps``), 0 for blocks of fixed tokens only."""
    has_mask_K = masked_BL.reshape(masked_BL.shape[0], -1, block_size).any(axis=(0, 2))
    budget_K = np.zeros(has_mask_K.shape, np.int32)
    nb = int(has_mask_K.sum())
    if nb > steps:
        raise ConfigError(f"{steps} steps cannot fill {nb} blocks with positions to generate (block size "
                          f"{block_size}); use --steps >= {nb}")
    if nb:
        budget_K[has_mask_K] = mdm_steps.split_steps(steps, nb)
    return budget_K


def prepare_rule(rule: str):
    """prepare(cfg, tokens_BL, options) of the block sampler committing by `rule`."""

    def prepare(cfg: Config, tokens_BL: np.ndarray, options: SamplerOptions) -> Prepared:
        b, n = cfg.objective.block_size, tokens_BL.shape[1]
        if n % b:
            lo, hi = n // b * b, -(-n // b) * b
            near = f"{lo} or {hi}" if lo else f"{hi}"
            raise ConfigError(f"bd3 sampling needs a length that is a multiple of the block size {b}, got "
                              f"{n}; use {near}")
        budget_K = step_budget(tokens_BL == special_ids(cfg.model).mask, b, options.steps)
        static = dataclasses.replace(options, threshold=SamplerOptions.threshold)  # traced
        return Prepared(mdm_steps.Loop(rule, static),
                        (jnp.asarray(tokens_BL), jnp.float32(options.threshold), jnp.asarray(budget_K)))

    return prepare


# fused and block_length do not apply: the fused step needs the full sequence, and the blocks are
# the run's objective.block_size
OPTIONS = ("steps", "temperature", "noise", "cache", "ignore_eos")
for _rule in mdm_steps.RULES:
    register(Sampler(name=_rule, family="block",
                     options=OPTIONS + mdm.RULE_OPTIONS.get(_rule, ()),
                     prepare=prepare_rule(_rule), build=build))
register(Sampler(name=info_gain.NAME, family="block", options=OPTIONS + info_gain.OWN_OPTIONS,
                 prepare=prepare_rule(info_gain.NAME), build=build))
