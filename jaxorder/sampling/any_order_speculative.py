"""Any-subset speculative decoding (ASSD; Guo & Ermon 2025) of any-order runs (ao_ar / latent_order).

The order sigma is fixed in advance as for the ``random`` sampler of ``any_order`` (fixed tokens
first in position order, then a uniform permutation of the row's masked positions, from the same
key split, so both samplers read a row in the same order for the same key), or given by the
``order`` option (``given_order``: l2r, r2l, perm:..., perm@FILE; the given positions still come
first: exactness holds for any order fixed before sampling), with the slot layout
of ``ao_ar``: slot j feeds x_sigma_{j-1} at position sigma_{j-1} and predicts position sigma_j.
A round at slot c (x_sigma_<c known, cache slots 0..c-1 written) makes two network calls, with
K = ``draft_length``:

1. DRAFT: K candidates of slot c in one "self" decode call (each sees the cache and itself, as
   greedy's candidate call), with targets sigma_c..sigma_{c+K-1}: q_i = p(x_sigma_{c+i} | x_sigma_<c).
   Drafts d_i ~ q_i independently. q_0 is the true next conditional, so d_0 is an exact sample
   (always kept). Candidate 0 is exactly the causal slot c, so the call's cache is kept with its
   index set to c + 1: slot c stays, the other candidates are scratch.
2. VERIFY: one causal call over slots c+1..c+K feeding d_0..d_{K-1} (targets sigma_{c+1..c+K})
   gives p_i = p(x_sigma_{c+i} | x_sigma_<c, d_<i), i = 1..K. Drafts i = 1..K-1 are accepted in
   turn with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection r the token is
   redrawn from the residual max(0, p_r - q_r) (normalized) and the round stops. If every draft
   is accepted, r = K: a bonus token from p_K (q_K = 0, so the same residual rule), exact because
   d_{K-1} was fed.

The round keeps n = min(r + 1, L - c) tokens (at least 2 when two are left: nfe <= generated
tokens, one call per token at worst). Why exact: given the row so far, d_i ~ q_i independently
of the earlier accept decisions, so token i is d_i w.p. sum_v min(q_i, p_i)(v) and otherwise a
residual draw: together exactly p_i (standard speculative sampling), and stopping a round at a
rejection or at the row's end is a stopping rule that does not look at later tokens. Exactness is
w.r.t. the distribution every sampler draws from: PAD/MASK/BOS excluded, then temperature,
top-k, top-p (``ar.filter_logits``; q and p are filtered alike). Temperature 0 is greedy: d_i =
argmax q_i, accepted iff it is argmax p_i, else argmax p_r: the ``random`` sampler's tokens at
temperature 0 for the same key, up to float-rounding ties.

Cache: slots c+1..c+r hold accepted inputs (d_0..d_{r-1}), so after a round the row's cache
index is c + n; the slots after it (rejected drafts, scratch candidates) are never seen (decode
masks show only slots < index and the call's own new slots) and the next round overwrites them.
Rows accept different numbers of tokens, while a cache has one index, so every row has its own
batch-of-one cache and the decode calls are vmapped over rows (one network call for the batch).
Ragged rows (different numbers F_b of fixed tokens) work: one prefill call writes max_b F_b slots
and each row's index is set to its own F_b. The cache has L + K slots (slots are not positions).

Accounting: ``nfe`` counts the batch's network calls (the prefill; per round the draft call, and
the verify call unless every row has at most one token left); ``steps`` the rounds (until the
slowest row is done). Per row: ``row_nfe`` [B] (the calls a batch of that row alone would make),
``rounds`` [B] and ``accepted`` [B] (accepted drafts, d_0 and resampled/bonus tokens not counted;
a row generates rounds + accepted + (resampled or bonus tokens) tokens). ``logprob`` is the chain
rule of ``ao_ar.order_nll`` for the returned ``order`` over the generated slots (temperature 1,
unfiltered). Randomness: ``noise_key, order_key = split(key)`` as ``any_order``; round t draws
from fold_in(noise_key, t).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder.config import Config
from jaxorder.model import decode
from jaxorder.objectives.common import special_ids
from jaxorder.sampling import given_order
from jaxorder.sampling.any_order import commit_index, initial_orders, slot_inputs
from jaxorder.sampling.ar import banned_tokens, filter_logits
from jaxorder.sampling.base import Prepared, Sampler, SamplerOptions, register
from jaxorder.sampling.eos import eos_id, fill_after_eos
from jaxorder.sampling.noise import gumbel_noise


@dataclass(frozen=True)
class Loop:
    """What the compiled loop is specialized on."""

    options: SamplerOptions
    prefill: int  # max over rows of the fixed tokens: slots written by one prefill call (0: none)


def with_cache_index(cache, index: jnp.ndarray):
    """The cache with every layer's next slot to write set to `index` (later slots are not seen)."""
    def set_leaf(path, leaf):
        return jnp.asarray(index, leaf.dtype) if getattr(path[-1], "key", None) == "cache_index" else leaf

    return jax.tree_util.tree_map_with_path(set_leaf, cache)


def sampling_logits(logits_NV: jnp.ndarray, banned_V: jnp.ndarray, options: SamplerOptions) -> jnp.ndarray:
    """The logits every token is drawn from: banned ids at -inf, then temperature / top-k / top-p."""
    logits_NV = jnp.where(banned_V, -jnp.inf, logits_NV)
    if options.temperature == 0:
        return logits_NV
    flat_NV = logits_NV.reshape(-1, logits_NV.shape[-1])  # filter_logits takes [rows, V]
    return filter_logits(flat_NV, options.temperature, options.top_k, options.top_p).reshape(logits_NV.shape)


def draw(logits_BKV: jnp.ndarray, key: jax.Array, options: SamplerOptions) -> jnp.ndarray:
    """Tokens [B, K] drawn from sampling logits: argmax at temperature 0, else Gumbel-max."""
    if options.temperature == 0:
        return jnp.argmax(logits_BKV, axis=-1).astype(jnp.int32)
    noisy_BKV = logits_BKV + gumbel_noise(key, logits_BKV.shape, options.noise)
    return jnp.argmax(noisy_BKV, axis=-1).astype(jnp.int32)


def gather_slots(a_BL: jnp.ndarray, slot_BK: jnp.ndarray) -> jnp.ndarray:
    """a at slots [B, K], clamped to the last slot (slots past the row's end are never kept)."""
    return jnp.take_along_axis(a_BL, jnp.minimum(slot_BK, a_BL.shape[1] - 1), axis=1)


def verify_drafts(q_BKV: jnp.ndarray, p_BKV: jnp.ndarray, draft_BK: jnp.ndarray, key: jax.Array,
                  options: SamplerOptions) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(first rejection r_B in 1..K, tokens [B, K+1] of round slots 0..K, valid up to r inclusive).

    q_BKV, p_BKV: the sampling logits (``sampling_logits``) of the drafts q_0..q_{K-1} and of the
    verify slots p_1..p_K; draft_BK: d_0..d_{K-1}. Slot 0 keeps d_0 (q_0 is the true conditional);
    slot i in 1..K-1 keeps d_i while accepted; slot r gets the residual draw (K: the bonus)."""
    B, K, V = q_BKV.shape
    accept_key, residual_key = jax.random.split(key)
    # drafts and draft distributions of slots 1..K (slot K has none: q_K = 0, so it always "rejects")
    next_BK = jnp.concatenate([draft_BK[:, 1:], jnp.zeros_like(draft_BK[:, :1])], axis=1)
    has_draft_K = jnp.arange(1, K + 1) < K
    if options.temperature == 0:
        target_BK = jnp.argmax(p_BKV, axis=-1).astype(jnp.int32)
        accept_BK = (next_BK == target_BK) & has_draft_K
        redraw_BK = target_BK
    else:
        qn_BKV = jnp.concatenate([jax.nn.softmax(q_BKV[:, 1:], axis=-1), jnp.zeros_like(q_BKV[:, :1])],
                                 axis=1)
        pn_BKV = jax.nn.softmax(p_BKV, axis=-1)
        q_d_BK = jnp.take_along_axis(qn_BKV, next_BK[..., None], axis=-1)[..., 0]
        p_d_BK = jnp.take_along_axis(pn_BKV, next_BK[..., None], axis=-1)[..., 0]
        u_BK = jax.random.uniform(accept_key, (B, K))
        accept_BK = (u_BK * q_d_BK < p_d_BK) & has_draft_K  # u < p/q without dividing by q
        residual_BKV = jnp.maximum(pn_BKV - qn_BKV, 0.0)
        # p == q up to rounding leaves no residual; a rejection there is a rounding event: draw from p
        residual_BKV = jnp.where(residual_BKV.sum(-1, keepdims=True) > 0, residual_BKV, pn_BKV)
        noisy_BKV = jnp.log(residual_BKV) + gumbel_noise(residual_key, (B, K, V), options.noise)
        redraw_BK = jnp.argmax(noisy_BKV, axis=-1).astype(jnp.int32)
    r_B = 1 + jnp.argmax(~accept_BK, axis=1).astype(jnp.int32)  # slot K never accepts: r <= K
    later_BK = jnp.where(jnp.arange(1, K + 1)[None, :] < r_B[:, None], next_BK, redraw_BK)
    return r_B, jnp.concatenate([draft_BK[:, :1], later_BK], axis=1)


def build(cfg: Config, loop: Loop):
    """run(params, key, tokens_BL) -> dict for a static (cfg, loop)."""
    mcfg, opts = cfg.model, loop.options
    ids = special_ids(mcfg)
    K = opts.draft_length

    def row_call(params, cache, tokens_K, positions_K, targets_K, mask: str):
        """One row's decode call on its batch-of-one cache: (logits [K, V], cache)."""
        logits_1KV, cache = decode.decode_step(params, mcfg, cache, tokens_K[None], positions_K[None], mask,
                                               target_positions_BL=targets_K[None])
        return logits_1KV[0], cache

    def run(params, key, tokens_BL, given_rank_BL=None):
        params = decode.decode_params(params, mcfg)  # only decode calls: once, outside the loop
        B, L = tokens_BL.shape
        x_BL = tokens_BL.astype(jnp.int32)
        masked_BL = x_BL == ids.mask
        n_fixed_B = (L - masked_BL.sum(axis=1)).astype(jnp.int32)
        noise_key, order_key = jax.random.split(key)
        order_BL = initial_orders(masked_BL, "random", order_key, given_rank_BL)
        banned_V = banned_tokens(mcfg)
        calls = jax.vmap(row_call, in_axes=(None, 0, 0, 0, 0, None))
        row_cache = decode.init_cache(mcfg, 1, L + K)
        cache = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (B, *a.shape)), row_cache)
        nfe = jnp.int32(0)
        row_nfe_B = ((n_fixed_B > 0) & (n_fixed_B < L)).astype(jnp.int32)
        if loop.prefill:  # slots 0..F_b-1 of every row; a row's later prefilled slots are past its index
            inputs_BL, positions_BL = slot_inputs(x_BL, order_BL, ids.bos)
            P = loop.prefill
            _, cache = calls(params, cache, inputs_BL[:, :P], positions_BL[:, :P], order_BL[:, :P], "causal")
            cache = jax.vmap(with_cache_index)(cache, n_fixed_B)
            nfe = jnp.int32(1)
        st = dict(x=x_BL, c=n_fixed_B, cache=cache, logprob=jnp.zeros((B,), jnp.float32), nfe=nfe,
                  row_nfe=row_nfe_B, steps=jnp.int32(0), rounds=jnp.zeros((B,), jnp.int32),
                  accepted=jnp.zeros((B,), jnp.int32))

        def body(st):
            st = dict(st)
            c_B, x_BL = st["c"], st["x"]
            active_B = c_B < L
            left_B = L - c_B
            round_key = jax.random.fold_in(noise_key, st["steps"])
            draft_key, verify_key = jax.random.split(round_key)
            inputs_BL, positions_BL = slot_inputs(x_BL, order_BL, ids.bos)
            c_B1 = jnp.minimum(c_B, L - 1)[:, None]
            ahead_BK = c_B[:, None] + jnp.arange(K)  # round slots 0..K-1
            # DRAFT: K candidates of slot c, targets sigma_c..sigma_{c+K-1}
            tok_BK = jnp.repeat(jnp.take_along_axis(inputs_BL, c_B1, axis=1), K, axis=1)
            pos_BK = jnp.repeat(jnp.take_along_axis(positions_BL, c_B1, axis=1), K, axis=1)
            q_raw_BKV, cache = calls(params, st["cache"], tok_BK, pos_BK, gather_slots(order_BL, ahead_BK),
                                     "self")
            cache = jax.vmap(with_cache_index)(cache, c_B + 1)  # candidate 0 is the causal slot c
            q_BKV = sampling_logits(q_raw_BKV, banned_V, opts)
            draft_BK = draw(q_BKV, draft_key, opts)
            need_verify_B = active_B & (left_B >= 2)

            def verify(cache):  # slots c+1..c+K feed d_0..d_{K-1} at sigma_c.., targets sigma_{c+1}..
                return calls(params, cache, draft_BK, gather_slots(order_BL, ahead_BK),
                             gather_slots(order_BL, ahead_BK + 1), "causal")

            p_raw_BKV, cache = jax.lax.cond(jnp.any(need_verify_B), verify,
                                            lambda cache: (jnp.zeros_like(q_BKV), cache), cache)
            p_BKV = sampling_logits(p_raw_BKV, banned_V, opts)
            r_B, new_BK1 = verify_drafts(q_BKV, p_BKV, draft_BK, verify_key, opts)
            n_B = jnp.where(active_B, jnp.minimum(r_B + 1, left_B), 0)
            kept_BK1 = jnp.arange(K + 1)[None, :] < n_B[:, None]
            # log p (temperature 1, unfiltered) of the kept tokens: slot 0 from the draft call (= the
            # causal slot c), slot i >= 1 from verify slot i
            raw_BKV = jnp.concatenate([q_raw_BKV[:, :1], p_raw_BKV], axis=1)
            logp_BKV = jax.nn.log_softmax(raw_BKV, axis=-1)
            lp_BK1 = jnp.take_along_axis(logp_BKV, new_BK1[..., None], axis=-1)[..., 0]
            st["logprob"] = st["logprob"] + jnp.sum(jnp.where(kept_BK1, lp_BK1, 0.0), axis=1)
            target_BK1 = jnp.where(kept_BK1, gather_slots(order_BL, c_B[:, None] + jnp.arange(K + 1)), L)
            rows_BK1 = jnp.broadcast_to(jnp.arange(B)[:, None], target_BK1.shape)
            st["x"] = x_BL.at[rows_BK1, target_BK1].set(new_BK1, mode="drop")  # position L: not kept
            st["c"] = c_B + n_B
            st["cache"] = jax.vmap(with_cache_index)(cache, st["c"])
            st["nfe"] = st["nfe"] + 1 + jnp.any(need_verify_B).astype(jnp.int32)
            st["row_nfe"] = st["row_nfe"] + active_B.astype(jnp.int32) + need_verify_B.astype(jnp.int32)
            st["rounds"] = st["rounds"] + active_B.astype(jnp.int32)
            st["accepted"] = st["accepted"] + jnp.where(active_B, jnp.minimum(r_B, n_B) - 1, 0)
            st["steps"] = st["steps"] + 1
            return st

        st = jax.lax.while_loop(lambda st: jnp.any(st["c"] < L), body, st)
        # the text ends at its first generated EOS (reading order; every round still runs)
        return dict(tokens=fill_after_eos(st["x"], masked_BL, eos_id(cfg, opts)), order=order_BL,
                    committed_at=commit_index(order_BL, masked_BL),
                    logprob=st["logprob"], nfe=st["nfe"], steps=st["steps"],
                    row_nfe=st["row_nfe"], rounds=st["rounds"], accepted=st["accepted"])

    return run


def prepare(cfg: Config, tokens_BL: np.ndarray, options: SamplerOptions) -> Prepared:
    n_fixed_B = (tokens_BL != special_ids(cfg.model).mask).sum(axis=1)
    # nothing to generate in any row: no call at all
    prefill = int(n_fixed_B.max()) if (n_fixed_B < tokens_BL.shape[1]).any() else 0
    given_BL = given_order.explicit_order(options.order or given_order.RANDOM, tokens_BL,
                                          special_ids(cfg.model).mask)
    if given_BL is None:
        return Prepared(Loop(options, prefill), (jnp.asarray(tokens_BL),))
    rank_BL = jnp.asarray(given_order.ranks(given_BL))
    return Prepared(Loop(options, prefill), (jnp.asarray(tokens_BL), rank_BL))


register(Sampler(name="speculative", family="any_order", prepare=prepare, build=build,
                 options=("temperature", "top_k", "top_p", "noise", "ignore_eos", "draft_length", "order"),
                 description="any-subset speculative decoding in a random order (or --order): K drafts "
                             "per round, verified in one causal call (exact)"))
