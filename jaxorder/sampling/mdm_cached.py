"""The masked samplers with an approximate KV cache (``approx_cache``; Fast-dLLM's prefix and dual
caches, FreeCache-style reuse, and a Prefilling-dLLM-style chunked prompt cache). APPROXIMATE for a
bidirectional model: a cached key/value was computed when the tokens around it may have differed.

The cache holds one slot per position (``model.decode.rewrite_positions``). A step runs only a
window of positions through the model; they see the cached keys/values of every other position.
It draws, scores and commits on the block's positions only, with the noise at the uncached
sampler's counters (``gumbel_noise(rows=)``), so with a fresh cache it commits what the uncached
sampler commits. Per block [s, e):
- ``prefix``: the first step is a full pass (it refreshes the cache); later steps run [s, L): the
  prompt and finished blocks are read from the cache;
- ``dual``: the first step is a full pass; later steps run [s, e) only: the masked suffix is cached too;
- ``free`` (no full refresh after the first pass): a block's first step runs [previous block start,
  e), giving the previous block's committed tokens fresh keys/values; later steps run [s, e);
- ``chunked`` (long prompts): the prompt [0, P) is cut into chunks of ``chunk_length`` tokens, each
  encoded once on its own after an anchor token (BOS) and cached (``model.chunk_attention``); the
  generated positions attend to the ``chunks`` chunks most relevant to the block (mean query-key
  score, per layer) plus the most recent one. A block's first step runs [P, L), later steps [s, L);
  the prompt chunks are never recomputed.
``cache_refresh`` = r > 0 makes every step with j % r == 0 (j the step within the block) a full pass
(chunked: a pass over [P, L)); r = 1 is the uncached sampler up to float rounding (the decode path
projects q/k/v in one dot; chunked: its prompt is still chunked). ``dual`` and ``free`` windows have
one size for every block, so blocks run in a fori_loop
(a window or block that would pass the end is moved back to end at L: it recomputes a little more);
``prefix`` and ``chunked`` windows [s, L) shrink block by block, so their blocks are unrolled (one
compiled window each). ``rows`` counts the positions run through the model (a full pass: L; the
chunk prefill: its slots, anchors and padding included).
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax

from jaxorder.config import Config
from jaxorder.model import decode
from jaxorder.model.chunk_attention import ChunkLayout, ChunkSelect
from jaxorder.objectives.common import special_ids, subs_log_probs
from jaxorder.sampling.eos import commit_after_eos, eos_id
from jaxorder.sampling.mdm_steps import (
    Loop,
    advance,
    block_bounds,
    block_schedule,
    commit_step,
    entropy,
    initial_state,
    prophet_commit,
    prophet_threshold,
    result,
    step_key,
)


def build(cfg: Config, loop: Loop):
    """The loop with an approximate KV cache (``approx_cache``, module docstring): the cache holds one
    slot per position (``model.decode.rewrite_positions``); each step recomputes a window of
    positions, the rest of the sequence is read from the cache, and draws, scores and commits on
    the block's positions only (the noise at the uncached sampler's counters). ``dual`` and
    ``free`` windows have one size for every block, so blocks run in a fori_loop (a window or block
    that would pass the end is moved back to end at L: it recomputes a little more); ``prefix``
    windows [s, L) shrink block by block, so its blocks are unrolled (one compiled window each)."""
    mcfg, mask_id = cfg.model, special_ids(cfg.model).mask
    rule, sc, block_start, mode = loop.rule, loop.options, loop.block_start, loop.options.approx_cache
    eos = eos_id(cfg, sc)

    def run(params, key, tokens_BL, threshold):
        params = decode.decode_params(params, mcfg)  # once, outside the step loops
        B, L = tokens_BL.shape
        block_np, budget_np = block_schedule(L, sc.steps, sc.block_length, block_start)
        bounds = block_bounds(block_np)
        bl = bounds[0][1] - bounds[0][0]
        pos_L = jnp.arange(L, dtype=jnp.int32)
        st = initial_state(tokens_BL, mask_id, sc.steps)
        layout = ChunkLayout(block_start, sc.chunk_length)

        def window(n: int, nb: int, select: ChunkSelect | None = None):
            """pass(st, qs, qb): positions [qs, qs + n) through the model; the logits [B, nb, V] of the
            block positions [qb, qb + nb) (inside the window) and the cache. With `select` (chunked
            mode) the positions' slots start after the prompt chunks."""
            def run_window(st, qs, qb):
                qs = jnp.clip(qs, 0, L - n)
                x_Bn = lax.dynamic_slice_in_dim(st["x"], qs, n, axis=1)
                if select is None:
                    logits_BnV, cache = decode.rewrite_positions(params, mcfg, st["cache"], x_Bn, qs)
                else:
                    logits_BnV, cache = decode.rewrite_positions(
                        params, mcfg, st["cache"], x_Bn, qs, slot=qs - block_start + layout.prompt_slots,
                        new_mask=select)
                return lax.dynamic_slice_in_dim(logits_BnV, qb - qs, nb, axis=1), cache
            return run_window

        def run_block(st, s, e, qb, nb, steps_b, first, later, full, rows):
            """The steps of block [s, e), whose positions lie in [qb, qb + nb); first / later / full
            (st) -> (block logits, cache) are the passes of the module docstring, `rows` the positions
            each runs through the model. The first step is peeled off the loop, so a step of the loop
            runs one pass (or, with cache_refresh, chooses between two): a pass chosen inside the
            loop would have XLA copy the whole cache at every step."""
            in_block_L = (pos_L >= s) & (pos_L < e)
            rows_Bn = (jnp.arange(B, dtype=jnp.int32)[:, None] * L + qb + jnp.arange(nb, dtype=jnp.int32))

            def open_in_block(st):
                return jnp.any(st["masked"] & in_block_L[None, :])

            def step(j, st, logits_BnV, cache, ran):
                logp_BnV = subs_log_probs(logits_BnV, mask_id)
                eligible_Bn = lax.dynamic_slice_in_dim(st["masked"] & in_block_L[None, :], qb, nb, axis=1)
                tok_Bn, commit_Bn, lp_Bn = commit_step(logp_BnV, eligible_Bn, step_key(key, st["step"], sc),
                                                       steps_b - j, rule, sc, threshold, noise_rows=rows_Bn)

                def place(window_Bn, base_BL):  # window values into a full-length array
                    return lax.dynamic_update_slice_in_dim(base_BL, window_Bn, qb, axis=1)

                tok_BL = place(tok_Bn, st["x"])
                commit_BL = place(commit_Bn, jnp.zeros_like(st["masked"]))
                lp_BL = place(lp_Bn, jnp.zeros(st["x"].shape, jnp.float32))
                ent_BL = place(entropy(logp_BnV), jnp.zeros(st["x"].shape, jnp.float32))
                st = advance(dict(st, cache=cache, rows=st["rows"] + ran), tok_BL, commit_BL, lp_BL, 1,
                             ent_BL)
                if sc.prophet > 0:
                    gap = prophet_threshold(sc.prophet, j, steps_b)
                    st = prophet_commit(st, logp_BnV, qb, in_block_L, gap)
                return commit_after_eos(st, eos)

            # step 0: with cache_refresh every step j % r == 0 is a full pass, step 0 included
            first_pass, first_rows = (full, rows[2]) if sc.cache_refresh > 0 else (first, rows[0])

            def first_step(st):
                return step(jnp.zeros((), jnp.int32), st, *first_pass(st), jnp.asarray(first_rows, jnp.int32))

            st = lax.cond((steps_b > 0) & open_in_block(st), first_step, lambda st: st, st)

            def cond(carry):
                j, st = carry
                return (j < steps_b) & open_in_block(st)

            def body(carry):
                j, st = carry
                if sc.cache_refresh > 0:
                    refresh = j % sc.cache_refresh == 0
                    logits_BnV, cache = lax.cond(refresh, full, later, st)
                    ran = jnp.where(refresh, rows[2], rows[1])
                else:
                    (logits_BnV, cache), ran = later(st), rows[1]
                return j + 1, step(j, st, logits_BnV, cache, jnp.asarray(ran, jnp.int32))

            return lax.while_loop(cond, body, (jnp.ones((), jnp.int32), st))[1]

        if mode == "chunked":  # the prompt's chunks once; per block [P, L) first, then [s, L)
            P, G = block_start, L - block_start
            empty = decode.init_cache(mcfg, B, layout.prompt_slots + G)
            st["cache"] = decode.prefill_chunks(params, mcfg, empty, st["x"][:, :P], layout,
                                                special_ids(mcfg).bos)
            st["rows"] = st["rows"] + layout.prompt_slots
            for b, (s, e) in enumerate(bounds):
                nb = e - s
                refresh = functools.partial(window(G, nb, ChunkSelect(layout, sc.chunks, s - P, e - P)),
                                            qs=P, qb=s)
                later = functools.partial(window(L - s, nb, ChunkSelect(layout, sc.chunks, 0, nb)),
                                          qs=s, qb=s)
                st = run_block(st, s, e, s, nb, int(budget_np[b]), refresh, later, refresh, (G, L - s, G))
            return result(st)

        st["cache"] = decode.init_cache(mcfg, B, L)
        if mode == "prefix":  # a full pass first, then [s, L): the prompt and finished blocks are cached
            for b, (s, e) in enumerate(bounds):
                nb = e - s
                full = functools.partial(window(L, nb), qs=0, qb=s)
                st = run_block(st, s, e, s, nb, int(budget_np[b]), full,
                               functools.partial(window(L - s, nb), qs=s, qb=s), full, (L, L - s, L))
            return result(st)

        starts = jnp.asarray([s for s, _ in bounds], jnp.int32)
        budget = jnp.asarray(budget_np)
        catch_up = min(2 * bl, L)  # free: the previous block and this one

        def block_body(b, st):
            s = starts[b]
            qb = jnp.minimum(s, L - bl)  # the last block may be shorter: its window ends at L
            full = functools.partial(window(L, bl), qs=0, qb=qb)
            if mode == "dual":  # a full pass first, then the block: the masked suffix is cached too
                first = full
            else:  # free: no refresh after the very first pass; the previous block's tokens catch up
                def first(st):
                    return lax.cond(b == 0, lambda: full(st), lambda: window(catch_up, bl)(st, s - bl, qb))
            first_rows = L if mode == "dual" else jnp.where(b == 0, L, catch_up)
            return run_block(st, s, jnp.minimum(s + bl, L), qb, bl, budget[b], first,
                             functools.partial(window(bl, bl), qs=s, qb=qb), full, (first_rows, bl, L))

        return result(lax.fori_loop(0, len(bounds), block_body, st))

    return run
