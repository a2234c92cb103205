"""Speculative decoding of AR runs (family "ar": l2r, r2l): a draft run proposes, the target verifies.

Each round a second, smaller AR run (the draft: same vocabulary, tokenizer and reading order)
proposes `draft_length` = k tokens one by one from its own KV cache; the target scores all of them
in ONE causal decode call of k + 1 slots (the last known token and the k drafts), which gives its
distributions p_0..p_k for the k + 1 slots after the known prefix. Draft token i is accepted with
probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection the slot is resampled from the
normalized residual max(0, p_i - q_i); if all k are accepted a bonus token comes from p_k. So a
round writes between 1 and k + 1 tokens, and the output has exactly the distribution of ancestral
sampling from the target (`ar`): p and q are both the filtered sampling distributions (banned ids
PAD/MASK/BOS removed, temperature, top-k, top-p as in `ar`), so the result is the target's
filtered chain rule. At temperature 0 p and q are one-hot argmaxes: a draft is accepted iff it is
the target's argmax and the resample is that argmax, i.e. the tokens of greedy `ar` decoding
(up to ties within float rounding, as between `ar`'s cached and uncached paths).

Per-row positions. Rows accept different numbers of tokens per round, so every row has its own
filled length n_B and its own cache position: the caches of both runs are decoded per row with
`jax.vmap` over the batch (`_rows_decode`), each row a batch of one with a scalar `cache_index`,
so the stacked caches carry `cache_index` [B]. Invariants at the start of a round, per row:
- buffer slots 0..n-1 are final ([BOS, prompt, generated], generation order);
- the target cache holds slots 0..n-2 (index n - 1): the verify call feeds slots n-1..n+k-1;
- the draft cache holds slots 0..n-1 (index n) and its logits for slot n are carried.
Rolling back is setting `cache_index`: after a round that keeps slots up to n' - 1, the target
index becomes n' - 1 and the draft catches up with one 2-slot call over slots n'-2, n'-1 from index
n' - 2 (slot n'-1 is the resampled/bonus token it has not seen; n'-2 is the last draft when all
were accepted, and a rewrite of an identical slot otherwise). Slots past a cache's index hold
stale rejected drafts, but `attention.decode_mask` lets a new slot see only slots below the index
and the new slots up to itself, and every call writes from the index on, so stale slots are never
read. Caches and the buffer have k + 1 scratch slots past the end so a round near the end never
writes out of range; positions past the last real one are clamped (their outputs are unused).

Prompts as in `ar`: rows are [prompt, MASK..., PAD...] (r2l: reversed); ragged prompts are
supported: the shortest is prefilled, and a row still inside its prompt has its "drafts" forced
to the prompt tokens and accepted (teacher forcing), which leaves the generated slots' law intact.
A row stops at EOS (unless `ignore_eos`; tokens after it in the same round are dropped) or at its end.

Counts: ``nfe`` = target calls (the prefill, if the shortest prompt is non-empty, plus one per
round), ``draft_nfe`` = draft calls (its prefill plus k per round: k - 1 proposals and the
catch-up), ``steps`` = rounds. Per row: ``rounds`` [B] (rounds in which the row was active),
``accepted`` [B] (draft tokens accepted at generated slots), ``generated`` [B], ``eos`` [B],
``logprob`` [B] (target log p at temperature 1, unfiltered, EOS included), ``tokens`` [B, L] in
reading order with EOS padding after the EOS (``eos.ar_rows``). Accepted tokens per round = accepted / rounds.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder import objectives
from jaxorder.config import Config, ConfigError, ModelConfig
from jaxorder.model import decode
from jaxorder.objectives.common import special_ids
from jaxorder.sampling import ar
from jaxorder.sampling.base import Companion, Prepared, Sampler, SamplerOptions, check_companion, register
from jaxorder.sampling.eos import ar_rows
from jaxorder.sampling.noise import gumbel_noise


@dataclasses.dataclass(frozen=True)
class Loop:
    """What the compiled loop is specialized on."""

    options: SamplerOptions
    draft: ModelConfig  # the draft run's model (its params are an argument)
    prefill: int  # min over rows of the known slots (BOS + prompt)
    reverse: bool  # r2l runs: generated right to left, returned in reading order


# ----------------------------------------------------------------------------- distributions

def sampling_probs(logits_BKV: jnp.ndarray, banned_V: jnp.ndarray, ac: SamplerOptions) -> jnp.ndarray:
    """The distribution `ar` samples from, [B, K, V]: banned ids removed, then temperature / top-k /
    top-p; one-hot at the argmax for temperature 0."""
    logits_BKV = jnp.where(banned_V, -jnp.inf, logits_BKV.astype(jnp.float32))
    V = logits_BKV.shape[-1]
    if ac.temperature == 0:
        return jax.nn.one_hot(jnp.argmax(logits_BKV, axis=-1), V, dtype=jnp.float32)
    flat_NV = ar.filter_logits(logits_BKV.reshape(-1, V), ac.temperature, ac.top_k, ac.top_p)
    return jax.nn.softmax(flat_NV, axis=-1).reshape(logits_BKV.shape)


def accept_draft(p_BK: jnp.ndarray, q_BK: jnp.ndarray, u_BK: jnp.ndarray) -> jnp.ndarray:
    """Accept draft i with probability min(1, p/q): u < p/q, written without dividing (q > 0 for a
    token the draft sampled)."""
    return u_BK * q_BK < p_BK


def residual(p_BKV: jnp.ndarray, q_BKV: jnp.ndarray) -> jnp.ndarray:
    """The distribution to resample a rejected slot from: max(0, p - q), normalized (unnormalized is
    fine for Gumbel-max); p itself if float rounding left no mass."""
    r_BKV = jnp.maximum(p_BKV - q_BKV, 0.0)
    return jnp.where(jnp.sum(r_BKV, axis=-1, keepdims=True) > 0, r_BKV, p_BKV)


def sample_probs(probs_BKV: jnp.ndarray, key: jax.Array, ac: SamplerOptions) -> jnp.ndarray:
    """Token ids [B, K] from (unnormalized) probabilities: Gumbel-max, argmax at temperature 0."""
    if ac.temperature == 0:
        return jnp.argmax(probs_BKV, axis=-1).astype(jnp.int32)
    return jnp.argmax(jnp.log(probs_BKV) + gumbel_noise(key, probs_BKV.shape, ac.noise),
                      axis=-1).astype(jnp.int32)


def verify(p_BK1V: jnp.ndarray, q_BKV: jnp.ndarray, d_BK: jnp.ndarray, forced_BK1: jnp.ndarray,
           prompt_BK1: jnp.ndarray, ukey: jax.Array, rskey: jax.Array,
           ac: SamplerOptions) -> tuple[jnp.ndarray, jnp.ndarray]:
    """One round's tokens for slots n..n+k [B, k+1] and a_B, the leading accepted drafts: drafts
    0..a-1, then the resample at slot n+a (residual after a rejection, p_k after k acceptances);
    forced (prompt) slots take the prompt token and count as accepted. Slots after n+a are junk."""
    B, k = d_BK.shape
    p_BK = jnp.take_along_axis(p_BK1V[:, :k], d_BK[..., None], axis=-1)[..., 0]
    q_BK = jnp.take_along_axis(q_BKV, d_BK[..., None], axis=-1)[..., 0]
    ok_BK = forced_BK1[:, :k] | accept_draft(p_BK, q_BK, jax.random.uniform(ukey, (B, k)))
    a_B = jnp.sum(jnp.cumprod(ok_BK.astype(jnp.int32), axis=1), axis=1)
    q_BK1V = jnp.concatenate([q_BKV, jnp.zeros_like(q_BKV[:, :1])], axis=1)  # q_k = 0: the bonus is p_k
    fix_BK1 = sample_probs(residual(p_BK1V, q_BK1V), rskey, ac)
    d_BK1 = jnp.concatenate([d_BK, jnp.zeros_like(d_BK[:, :1])], axis=1)
    drafted_BK1 = jnp.arange(k + 1) < a_B[:, None]
    return jnp.where(forced_BK1, prompt_BK1, jnp.where(drafted_BK1, d_BK1, fix_BK1)), a_B


def kept_slots(tok_BK1: jnp.ndarray, a_B: jnp.ndarray, forced_BK1: jnp.ndarray, open_BK1: jnp.ndarray,
               eos: int, stop_at_eos: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Which of slots n..n+k a round keeps [B, k+1] (n..n+a, within the row's open slots, up to and
    including the first generated EOS) and where that EOS is, if the row stops there."""
    valid_BK1 = open_BK1 & (jnp.arange(tok_BK1.shape[1]) <= a_B[:, None])
    eos_BK1 = valid_BK1 & ~forced_BK1 & (tok_BK1 == eos) & stop_at_eos
    keep_BK1 = valid_BK1 & (jnp.cumsum(eos_BK1, axis=1) - eos_BK1 == 0)  # no EOS strictly before
    return keep_BK1, eos_BK1 & keep_BK1


# ----------------------------------------------------------------------------- per-row caches

def _rows_decode(params, mcfg: ModelConfig, cache, tokens_BL: jnp.ndarray, positions_BL: jnp.ndarray):
    """decode_step with one cache position per row (cache_index [B]): each row decoded as a batch
    of one under vmap, so rows that accepted different numbers of tokens share one call."""
    def one(cache_row, tokens_L, positions_L):
        cache_1 = jax.tree.map(lambda x: x[None] if x.ndim else x, cache_row)
        logits_1LV, cache_1 = decode.decode_step(params, mcfg, cache_1, tokens_L[None], positions_L[None])
        return logits_1LV[0], jax.tree.map(lambda x: x[0] if x.ndim else x, cache_1)

    return jax.vmap(one)(cache, tokens_BL, positions_BL)


def _set_index(cache, index_B: jnp.ndarray):
    """The cache with every layer's next write slot set per row (rolling back = lowering it)."""
    return {layer: {"attn": dict(c["attn"], cache_index=index_B.astype(jnp.int32))}
            for layer, c in cache.items()}


def _prefilled(params, mcfg: ModelConfig, B: int, slots: int, seq_BT: jnp.ndarray, n: int):
    """A cache of `slots` slots holding buffer slots 0..n-1 (one batched call; n = 0: empty), with a
    per-row index, and the logits of the last fed slot (None for n = 0)."""
    cache = decode.init_cache(mcfg, B, slots)
    logits_BV = None
    if n > 0:
        positions_BN = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (B, n))
        logits_BNV, cache = decode.decode_step(params, mcfg, cache, seq_BT[:, :n], positions_BN)
        logits_BV = logits_BNV[:, -1]
    return _set_index(cache, jnp.full((B,), n, jnp.int32)), logits_BV


def _take(seq_BT: jnp.ndarray, slots_BK: jnp.ndarray) -> jnp.ndarray:
    return jnp.take_along_axis(seq_BT, slots_BK, axis=1)


# ----------------------------------------------------------------------------- the loop

def build(cfg: Config, loop: Loop):
    """run(params, key, draft_params, seq_BT, known_B, end_B) -> dict (buffer as in `ar.build`)."""
    mcfg, dcfg, ac, k = cfg.model, loop.draft, loop.options, loop.options.draft_length
    ids = special_ids(mcfg)
    banned_V = ar.banned_tokens(mcfg)

    def run(params, key, draft_params, seq_BT, known_B, end_B):
        # both runs only decode: their parameters in the decode layout once, outside the loop
        params, draft_params = decode.decode_params(params, mcfg), decode.decode_params(draft_params, dcfg)
        B, T = seq_BT.shape
        slots = T + k + 1  # k + 1 scratch slots: a round near the end writes past T - 1
        seq_BS = jnp.concatenate([seq_BT.astype(jnp.int32), jnp.full((B, k + 1), ids.pad, jnp.int32)], 1)

        def positions(slots_BK):  # the last position `ar` ever feeds is T - 2; later slots are scratch
            return jnp.clip(slots_BK, 0, T - 2)

        cache, _ = _prefilled(params, mcfg, B, slots, seq_BS, loop.prefill - 1)
        dcache, dlogits_BV = _prefilled(draft_params, dcfg, B, slots, seq_BS, loop.prefill)
        st = dict(n=jnp.full((B,), loop.prefill, jnp.int32), seq=seq_BS, cache=cache, dcache=dcache,
                  dlogits=dlogits_BV, eos=jnp.zeros((B,), bool), logprob=jnp.zeros((B,), jnp.float32),
                  accepted=jnp.zeros((B,), jnp.int32), rounds=jnp.zeros((B,), jnp.int32), steps=jnp.int32(0))

        def done(st):
            return (st["n"] >= end_B) | st["eos"]

        def propose(st, key):
            """k draft tokens d_BK (prompt tokens where forced), the draft's q_BKV and its cache after the
            k - 1 calls (slots n..n+k-2 written)."""
            n_B = st["n"]

            def one(carry, i):
                dlogits_BV, dcache = carry
                q_BV = sampling_probs(dlogits_BV[:, None], banned_V, ac)[:, 0]
                slot_B = n_B + i
                d_B = jnp.where(slot_B < known_B, _take(st["seq"], slot_B[:, None])[:, 0],
                                sample_probs(q_BV[:, None], jax.random.fold_in(key, i), ac)[:, 0])
                return (d_B, q_BV), slot_B

            def step(carry, i):
                (d_B, q_BV), slot_B = one(carry, i)
                dlogits_BV, dcache = _rows_decode(draft_params, dcfg, carry[1], d_B[:, None],
                                                  positions(slot_B)[:, None])
                return (dlogits_BV[:, 0], dcache), (d_B, q_BV)

            carry, (d_KB, q_KBV) = jax.lax.scan(step, (st["dlogits"], st["dcache"]), jnp.arange(k - 1))
            (d_B, q_BV), _ = one(carry, k - 1)  # the last draft is not fed: the catch-up feeds it if kept
            d_BK = jnp.concatenate([d_KB.T, d_B[:, None]], axis=1)
            q_BKV = jnp.concatenate([jnp.swapaxes(q_KBV, 0, 1), q_BV[:, None]], axis=1)
            return d_BK, q_BKV, carry[1]

        def body(st):
            rkey = jax.random.fold_in(key, st["steps"])
            dkey, ukey, rskey = jax.random.split(rkey, 3)
            n_B, active_B = st["n"], ~done(st)
            d_BK, q_BKV, dcache = propose(st, dkey)
            # verify: slots n-1..n+k-1 (the last known token, then the drafts) in one causal call
            fed_BK1 = jnp.concatenate([_take(st["seq"], (n_B - 1)[:, None]), d_BK], axis=1)
            slot_BK1 = n_B[:, None] + jnp.arange(k + 1)  # the slots predicted: n..n+k
            logits_BK1V, cache = _rows_decode(params, mcfg, st["cache"], fed_BK1, positions(slot_BK1 - 1))
            p_BK1V = sampling_probs(logits_BK1V, banned_V, ac)
            forced_BK1 = slot_BK1 < known_B[:, None]
            buffer_BK1 = _take(st["seq"], slot_BK1)  # the prompt where forced
            tok_BK1, a_B = verify(p_BK1V, q_BKV, d_BK, forced_BK1, buffer_BK1, ukey, rskey, ac)
            open_BK1 = active_B[:, None] & (slot_BK1 < end_B[:, None])
            keep_BK1, eos_BK1 = kept_slots(tok_BK1, a_B, forced_BK1, open_BK1, ids.eos, not ac.ignore_eos)
            new_n_B = n_B + jnp.sum(keep_BK1, axis=1)
            i_K1 = jnp.arange(k + 1)
            gen_BK1 = keep_BK1 & ~forced_BK1
            lp_BK1 = jnp.take_along_axis(jax.nn.log_softmax(logits_BK1V, axis=-1), tok_BK1[..., None],
                                         axis=-1)[..., 0]
            rows_B1 = jnp.arange(B)[:, None]
            seq_BS = st["seq"].at[rows_B1, slot_BK1].set(jnp.where(keep_BK1, tok_BK1, buffer_BK1))
            # roll back: the target keeps slots 0..n'-2; the draft re-feeds n'-2, n'-1 from index n'-2
            last_B2 = jnp.maximum(new_n_B[:, None] - 2 + jnp.arange(2), 0)
            dlogits_B2V, dcache = _rows_decode(draft_params, dcfg, _set_index(dcache, last_B2[:, 0]),
                                               _take(seq_BS, last_B2), positions(last_B2))
            dcache = _set_index(dcache, last_B2[:, 0] + 2)
            return dict(st, n=new_n_B, seq=seq_BS, cache=_set_index(cache, new_n_B - 1), dcache=dcache,
                        dlogits=dlogits_B2V[:, 1], eos=st["eos"] | jnp.any(eos_BK1, axis=1),
                        logprob=st["logprob"] + jnp.sum(jnp.where(gen_BK1, lp_BK1, 0.0), axis=1),
                        accepted=st["accepted"] + jnp.sum(gen_BK1 & (i_K1 < a_B[:, None]), axis=1),
                        rounds=st["rounds"] + active_B, steps=st["steps"] + 1)

        st = jax.lax.while_loop(lambda st: ~jnp.all(done(st)), body, st)
        # slot s of the buffer is row position s - 1 (slot 0 is BOS); n_B slots are written
        tokens_BL = ar_rows(st["seq"][:, 1:T], st["n"] - 1, end_B - 1, st["eos"], ids.eos, ids.pad)
        rounds = st["steps"]
        return dict(tokens=tokens_BL[:, ::-1] if loop.reverse else tokens_BL, generated=st["n"] - known_B,
                    eos=st["eos"], logprob=st["logprob"], steps=rounds,
                    nfe=rounds + (1 if loop.prefill > 1 else 0), draft_nfe=1 + k * rounds,
                    accepted=st["accepted"], rounds=st["rounds"], seq=st["seq"][:, :T])

    return run


# ----------------------------------------------------------------------------- prepare

def prepare(cfg: Config, tokens_BL: np.ndarray, options: SamplerOptions,
            companions: Mapping[str, Companion]) -> Prepared:
    """Rows as for `ar`; the draft run comes loaded in companions["draft"]."""
    draft = companions.get("draft")
    if options.draft and draft is None:
        raise ConfigError(f"draft run {options.draft} is not loaded: pass companions={{'draft': Companion}} "
                          f"to sampling.sample (jaxorder sample and sample_run load it)")
    order = objectives.of(cfg).reading_order
    check_companion(cfg, draft, tokens_BL.shape[1], role="draft", sampler="speculative", order=order,
                    why="the target's reading order", hint=f"a smaller {order} run with the same tokenizer",
                    target="the target")
    base = ar.prepare(cfg, tokens_BL, options)  # the same rows and buffer as `ar`; only its args are used
    seq_BT, known_B, end_B, given_BT = base.args
    if np.asarray(given_BT).any():
        raise ConfigError("the speculative sampler continues a prompt, with every other token masked; fixed "
                          "tokens among the masked ones (a template) need the ar sampler")
    loop = Loop(options, draft.cfg.model, int(np.asarray(known_B).min()), order == "r2l")
    return Prepared(loop, (draft.params, seq_BT, known_B, end_B))


register(Sampler(name="speculative", family="ar", prepare=prepare, build=build,
                 options=("temperature", "top_k", "top_p", "noise", "ignore_eos", "draft", "draft_length"),
                 companions=("draft",),
                 description="speculative decoding: a draft run proposes draft_length tokens, the target "
                             "verifies them in one call (exact: the target's distribution)"))
