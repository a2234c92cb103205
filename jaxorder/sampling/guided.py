"""AR-guided unmasking ("Guided Diffusion") of masked-diffusion runs: sampler ``guided`` (family "masked").

A small l2r run, the *guide* (a companion run, ``--guide RUN_DIR``: same vocabulary and tokenizer,
``model.max_len`` >= the length), decides which of the mdm's parallel proposals to accept. Step i:

1. one mdm pass on the current x gives p(. | x) at every position; a token is drawn at every masked
   position with the confidence sampler's draw (``mdm_steps.draw`` at ``temperature``, step key
   ``fold_in(key, i)``, Gumbel noise for [B, L, V]): the proposals. y = x with the proposals filled in.
2. f = the row's first open position (first masked position of the current block). The guide reads
   y left to right from f, as an l2r model reads [BOS, y_0, y_1, ...], and gives for every position j
   in the window [f, f + W) p_guide(y_j | y_<j) at temperature 1.
3. Accepted: f itself whatever its probability, then f + 1, f + 2, ... while each proposal's guide
   probability is >= ``guide_threshold``, stopping at the first one below (or at the first masked
   position outside the window or the block). Fixed tokens (prompts, template text) inside the run
   are read, not tested. Committed tokens are final; the others are masked again and re-proposed.

``guide_fallback`` chooses the token at f when its proposal's guide probability is below the threshold:
"mdm" (default) commits the proposal anyway, as above; "guide" commits f alone with a token drawn from
the guide's p(. | y_<f) (the scoring call's logits at f, MASK excluded, at ``temperature``, noise key
``fold_in(fold_in(key, i), 1)``); "product" the same from p_guide(. | y_<f) p_mdm(. | x) renormalized
(a product of the two experts at f). With "guide" every committed token is one the guide found likely
or one it drew itself; threshold 1 makes the sampler the guide's own reading-order sampling, one token
and one mdm pass per step.

So ``guide_threshold`` 0 accepts every proposal of the step (with the default window and no block
schedule that binds, a whole sample in one mdm pass: the mdm's first-pass proposals), and a threshold
no proposal reaches gives one token per step in reading order. ``guide_window`` W > 0 caps the
positions scored per step (and so the run: at most W per step); 0 (default) means to the end of the
sequence. ``steps`` is an upper bound as for the threshold sampler: a block's last budgeted step
commits everything the block has left (without the guide's say), and the loop ends when every row is
complete. ``block_length`` > 0 runs mdm's semi-autoregressive blocks (``mdm_steps.block_schedule``):
f and the run stay inside the current block, each block gets its share of ``steps``.

The guide's KV cache. Slot s of the guide holds [BOS, y_0, ...][s] at position s, and its logits give
p(y_s | y_<s). Each row keeps its own cache index c_B (the caches are decoded per row under
``jax.vmap``, a batch of one each, as in ``ar_speculative``) with the invariant: slots < c hold final
tokens (c <= the row's first masked position). A step first catches the cache up to c = f (calls of
W slots from c, keeping only the slots < f: needed only after fixed tokens longer than a window, or
for rows whose prompt is longer than the shortest one), then makes ONE causal call over slots
f .. f + W - 1 with the proposals. Afterwards c = min(first masked position, f + W): the slots of
committed and fixed tokens are kept, those of rejected proposals are past c and never read
(``attention.decode_mask`` shows a new slot only the slots below the index) and are overwritten.
The slots 0 .. P - 1 (BOS and the columns before every row's first mask) are prefilled in one call
at the start. W = ``guide_window`` or, at 0, L - P, so the call reaches the end of every row; the
cache then saves the P prompt slots per step, and a window W < L - P makes a step's guide cost
independent of the length. The cache has W scratch slots past the end; positions past L - 1 are
clamped (their outputs are unused).

Counts: ``nfe`` = mdm passes (one per step), ``guide_nfe`` = guide calls (batched: the prefill, then
per step one scoring call plus the catch-up calls of the row needing most), ``rows`` = positions run
through the mdm (nfe x L), ``guide_rows`` = slots run through the guide per row. ``logprob`` is log p
of the committed tokens under the mdm (temperature 1, at the step that committed them), as for the
other masked samplers; ``guide_logp`` [B, L] the guide's log p of each committed token at the step
that committed it (NaN where the guide gave none: fixed tokens, budget commits outside the window) -
always log p_guide(final token | final tokens to its left), which the tests check against the
uncached guide. ``committed_at``, ``commits``, ``complete``, ``steps`` as in ``mdm_steps.result``.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxorder.config import Config, ConfigError, ModelConfig
from jaxorder.model import decode
from jaxorder.objectives import mdm as mdm_objective
from jaxorder.objectives.common import special_ids, subs_log_probs
from jaxorder.sampling.base import Companion, Prepared, Sampler, SamplerOptions, check_companion, register
from jaxorder.sampling.eos import eos_id
from jaxorder.sampling.mdm_steps import (
    advance,
    block_schedule,
    draw,
    entropy,
    initial_state,
    over_blocks,
    result,
)


@dataclasses.dataclass(frozen=True)
class Loop:
    """What the compiled loop is specialized on (the threshold is traced: changing it does not recompile)."""

    options: SamplerOptions
    guide: ModelConfig  # the guide run's model (its params are an argument)
    prefill: int  # P: the first column with a mask in some row; guide slots 0..P-1 are prefilled
    window: int  # W: positions the guide scores per step = slots per guide call


def first_true(m_BL: jnp.ndarray) -> jnp.ndarray:
    """Index [B] of the first True of each row, L where there is none."""
    L = m_BL.shape[1]
    return jnp.where(m_BL.any(axis=1), jnp.argmax(m_BL, axis=1), L).astype(jnp.int32)


def accepted_run(masked_BL: jnp.ndarray, eligible_BL: jnp.ndarray, guide_p_BL: jnp.ndarray,
                 scored_BL: jnp.ndarray, threshold) -> jnp.ndarray:
    """The proposals a step accepts [B, L]: from the first eligible position f, the longest run in reading
    order whose guide probabilities are >= threshold (fixed tokens read, not tested; a masked position
    outside the window or the block ends the run), and f itself whatever its probability."""
    f_B = first_true(eligible_BL)
    at_f_BL = jnp.arange(masked_BL.shape[1])[None, :] == f_B[:, None]
    ok_BL = ~masked_BL | (eligible_BL & scored_BL & (guide_p_BL >= threshold)) | at_f_BL
    return eligible_BL & (jnp.cumprod(ok_BL.astype(jnp.int32), axis=1) > 0)  # positions < f: all fixed


def guide_fallback(logp_BLV, tok_BL, lp_tok_BL, lp_guide_BL, commit_BL, eligible_BL, f_B, guide_logits_BV,
                   threshold, key, opts: SamplerOptions, mask_id: int):
    """``guide_fallback`` "guide" or "product": in the rows whose proposal at f the guide rejects
    (probability below the threshold), f alone is committed, with a token drawn from the guide's
    p(. | y_<f) (its logits at f, MASK excluded), or from that times the mdm's p(. | x) at f,
    renormalized, at the sampler's temperature with noise from ``key``; the later proposals were
    scored after the rejected one and are not accepted. Returns the step's tokens, their mdm log-probs,
    their guide log-probs, the commits, and [B] the slot past which the guide's cache is stale (f + 1 in
    those rows: slot f + 1 holds the rejected proposal; L + 1 elsewhere)."""
    L = tok_BL.shape[1]
    at_f_BL = jnp.arange(L)[None, :] == f_B[:, None]
    rejected_B = (eligible_BL & at_f_BL).any(axis=1) & (
        jnp.exp(jnp.sum(jnp.where(at_f_BL, lp_guide_BL, 0.0), axis=1)) < threshold)
    glogp_BV = subs_log_probs(guide_logits_BV, mask_id)
    mdm_at_f_BV = jnp.take_along_axis(logp_BLV, jnp.minimum(f_B, L - 1)[:, None, None], axis=1)[:, 0]
    product = opts.guide_fallback == "product"  # p_guide(.) p_mdm(.) renormalized: both models' say at f
    at_f_BV = jax.nn.log_softmax(glogp_BV + mdm_at_f_BV, axis=-1) if product else glogp_BV
    gtok_B = draw(at_f_BV[:, None, :], key, opts)[:, 0]
    swap_BL = at_f_BL & rejected_B[:, None]

    def at_gtok(logp_BV):
        return jnp.take_along_axis(logp_BV, gtok_B[:, None], axis=1)  # [B, 1]

    return (jnp.where(swap_BL, gtok_B[:, None], tok_BL), jnp.where(swap_BL, at_gtok(mdm_at_f_BV), lp_tok_BL),
            jnp.where(swap_BL, at_gtok(glogp_BV), lp_guide_BL),
            jnp.where(rejected_B[:, None], swap_BL, commit_BL), jnp.where(rejected_B, f_B + 1, L + 1))


def _with_index(cache, index):
    """The cache with every layer's next write slot set to `index` (per row under vmap)."""
    return {layer: {"attn": dict(c["attn"], cache_index=jnp.asarray(index, jnp.int32))}
            for layer, c in cache.items()}


def build(cfg: Config, loop: Loop):
    """run(params, key, guide_params, tokens_BL, threshold) -> dict."""
    mcfg, gcfg, sc, P, W = cfg.model, loop.guide, loop.options, loop.prefill, loop.window
    ids = special_ids(mcfg)

    def run(params, key, guide_params, tokens_BL, threshold):
        guide_params = decode.decode_params(guide_params, gcfg)  # the guide only decodes: once, outside loops
        B, L = tokens_BL.shape
        block_np, budget_np = block_schedule(L, sc.steps, sc.block_length, P)
        block_L, budget = jnp.asarray(block_np), jnp.asarray(budget_np)
        pos_L = jnp.arange(L, dtype=jnp.int32)

        def buffer(y_BL):  # the guide's slots [BOS, y_0 .. y_{L-1}] and W scratch slots, [B, L + 1 + W]
            return jnp.concatenate([jnp.full((B, 1), ids.bos, jnp.int32), y_BL.astype(jnp.int32),
                                    jnp.full((B, W), ids.pad, jnp.int32)], axis=1)

        def feed_row(cache, c, buf_S):
            """One row's guide call over slots c .. c + W - 1: logits [W, V] and the cache."""
            tokens_1W = lax.dynamic_slice_in_dim(buf_S, c, W)[None]
            positions_1W = jnp.minimum(c + jnp.arange(W, dtype=jnp.int32), L - 1)[None]
            cache_1 = jax.tree.map(lambda x: x[None] if x.ndim else x, _with_index(cache, c))
            logits_1WV, cache_1 = decode.decode_step(guide_params, gcfg, cache_1, tokens_1W, positions_1W)
            return logits_1WV[0], jax.tree.map(lambda x: x[0] if x.ndim else x, cache_1)

        def guide_row(cache, c, f, buf_S):
            """Catch the row's cache up to c = f (keeping only final slots < f), then score f .. f + W - 1."""
            def catch_up(carry):
                cache, c, n = carry
                return feed_row(cache, c, buf_S)[1], jnp.minimum(f, c + W), n + 1

            cache, c, n = lax.while_loop(lambda carry: carry[1] < f, catch_up, (cache, c, jnp.int32(0)))
            logits_WV, cache = feed_row(cache, c, buf_S)
            return logits_WV, cache, c, n

        # prefill slots 0..P-1 (BOS and the columns fixed in every row) in one batched call
        gcache = decode.init_cache(gcfg, B, L + W)
        if P > 0:
            prompt_BP = buffer(tokens_BL)[:, :P]
            _, gcache = decode.decode_step(guide_params, gcfg, gcache, prompt_BP,
                                           jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), (B, P)))
        gcache = _with_index(gcache, jnp.full((B,), P, jnp.int32))  # per-row indices from here on
        st = initial_state(tokens_BL, ids.mask, sc.steps)
        st.update(gcache=gcache, c=jnp.full((B,), P, jnp.int32), guide_nfe=jnp.int32(int(P > 0)),
                  guide_rows=jnp.int32(P), guide_logp=jnp.full((B, L), jnp.nan, jnp.float32))

        def one_step(st, eligible_BL, steps_left):
            i, x_BL, masked_BL = st["step"], st["x"], st["masked"]
            logp_BLV = mdm_objective.masked_log_probs(params, x_BL, cfg)
            tok_BL = draw(logp_BLV, jax.random.fold_in(key, i), sc)
            lp_tok_BL = jnp.take_along_axis(logp_BLV, tok_BL[..., None], axis=-1)[..., 0]
            buf_BS = buffer(jnp.where(masked_BL, tok_BL, x_BL))
            # rows with nothing to commit in this block do not catch up (their f stays at c)
            f_B = jnp.where(eligible_BL.any(axis=1), first_true(eligible_BL), st["c"])
            logits_BWV, gcache, c_B, catch_ups_B = jax.vmap(guide_row)(st["gcache"], st["c"], f_B, buf_BS)
            slot_BW = c_B[:, None] + jnp.arange(W)  # slot s predicts position s: the token in slot s + 1
            lp_guide_BW = jnp.take_along_axis(jax.nn.log_softmax(logits_BWV, axis=-1),
                                              jnp.take_along_axis(buf_BS, slot_BW + 1, axis=1)[..., None],
                                              axis=-1)[..., 0]
            offset_BL = pos_L[None, :] - c_B[:, None]
            scored_BL = (offset_BL >= 0) & (offset_BL < W)
            lp_guide_BL = jnp.take_along_axis(lp_guide_BW, jnp.clip(offset_BL, 0, W - 1), axis=1)
            commit_BL = accepted_run(masked_BL, eligible_BL, jnp.exp(lp_guide_BL), scored_BL, threshold)
            stale_B = jnp.full((B,), L + 1, jnp.int32)
            if sc.guide_fallback != "mdm":  # a rejected proposal at f: a draw the guide has a say in, alone
                tok_BL, lp_tok_BL, lp_guide_BL, commit_BL, stale_B = guide_fallback(
                    logp_BLV, tok_BL, lp_tok_BL, lp_guide_BL, commit_BL, eligible_BL, f_B, logits_BWV[:, 0],
                    threshold, jax.random.fold_in(jax.random.fold_in(key, i), 1), sc, ids.mask)
                scored_BL &= pos_L[None, :] < stale_B[:, None]  # scores after a rejected f are stale
            commit_BL = commit_BL | (eligible_BL & (steps_left <= 1))  # the block's budget is spent
            calls = 1 + jnp.max(catch_ups_B)
            st = advance(st, tok_BL, commit_BL, lp_tok_BL, 1, entropy(logp_BLV))
            return dict(st, rows=st["rows"] + L, gcache=gcache,
                        # drop the rejected slots
                        c=jnp.minimum(jnp.minimum(first_true(st["masked"]), c_B + W), stale_B),
                        guide_nfe=st["guide_nfe"] + calls, guide_rows=st["guide_rows"] + calls * W,
                        guide_logp=jnp.where(commit_BL & scored_BL, lp_guide_BL, st["guide_logp"]))

        def block_step(s, in_block_L, j, block_budget):
            return one_step(s, s["masked"] & in_block_L[None, :], block_budget - j)

        st = over_blocks(st, block_L, budget, block_step, eos_id(cfg, sc))
        return dict(result(st), guide_nfe=st["guide_nfe"], guide_rows=st["guide_rows"],
                    guide_logp=st["guide_logp"])

    return run


def prepare(cfg: Config, tokens_BL: np.ndarray, options: SamplerOptions,
            companions: Mapping[str, Companion]) -> Prepared:
    """Rows [B, L] with MASK at the positions to generate (prompts, templates); the guide comes loaded
    in companions["guide"]."""
    guide = companions.get("guide")
    if options.guide and guide is None:
        raise ConfigError(f"guide run {options.guide} is not loaded: pass companions={{'guide': Companion}} "
                          f"to sampling.sample (jaxorder sample and sample_run load it)")
    L = tokens_BL.shape[1]
    check_companion(cfg, guide, L, role="guide", sampler="guided", order="l2r", why="it reads left to right",
                    hint="an l2r run with the same tokenizer", target="the sampled run")
    masked = tokens_BL == special_ids(cfg.model).mask
    # the first column with a mask: blocks start there and the guide prefills the columns before it
    start = int(np.argmax(masked.any(axis=0))) if masked.any() else 0
    window = options.guide_window if 0 < options.guide_window < L - start else max(L - start, 1)
    static = dataclasses.replace(options, guide="", guide_threshold=SamplerOptions.guide_threshold)
    return Prepared(Loop(static, guide.cfg.model, start, window),
                    (guide.params, jnp.asarray(tokens_BL), jnp.float32(options.guide_threshold)))


register(Sampler(name="guided", family="masked", prepare=prepare, build=build,
                 options=("steps", "temperature", "noise", "block_length", "ignore_eos", "guide",
                          "guide_threshold", "guide_window", "guide_fallback"),
                 companions=("guide",),
                 description="AR-guided unmasking: a guide l2r run accepts the longest run of the mdm's "
                             "proposals, in reading order, that it finds likely (>= guide_threshold)"))
