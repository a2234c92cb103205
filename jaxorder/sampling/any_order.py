"""Any-order AR sampling (ao_ar / latent_order runs) with a KV cache over the permuted prefix.

Input: tokens [B, L] with MASK at the positions to generate; every other token is fixed and never
changes (the convention of ``jaxorder.sampling.mdm`` and ``prompts``). A row is read in an order
sigma (a permutation of 0..L-1) with the layout of ``jaxorder.objectives.ao_ar``: slot j holds BOS
at position 0 (j = 0) or x_sigma_{j-1} at position sigma_{j-1} (RoPE), and the target position
sigma_j (target embedding); slots are causal, and the logits of slot j are p(x_sigma_j | x_sigma_<j).
A row of L tokens takes L slots; the token of the last one is never fed.

The order (the sampler's name; samplers of family "any_order"): the fixed tokens come first, in
position order (conditioned on, teacher-forced), then the masked positions, one slot per step:
- ``l2r`` / ``r2l``: by increasing / decreasing position;
- ``random``: a uniform random permutation of the row's masked positions (``ao_ar.random_orders``
  from the key), independently per row;
- ``perm``: the order named by the ``order`` option (``given_order``: l2r, r2l, random, perm:...,
  perm@FILE, a permutation of all L positions whose given ones are skipped);
- ``greedy``: chosen as it goes. At slot c every position is scored as the next target in ONE
  "self" decode call over the cache (L candidates of slot c, each seeing the cache and only
  itself), and the rule takes the still-masked position whose predicted distribution is the most
  confident: the largest max_v p(v), p the model's distribution at temperature 1 over the tokens
  that can be generated (PAD/MASK/BOS excluded and renormalized), independent of the sampling
  temperature and filters (as mdm's confidence rule); ties go to the lowest position. The token
  there is then sampled. A slot's keys/values depend on its target position (target embedding),
  so the candidate call's cache is discarded and the slot is written by a one-slot call with the
  chosen target (its logits, which the token is drawn from, are that candidate's up to rounding).
  The candidate call writes L scratch slots after the kept ones, so the greedy cache has 2L - 1
  slots, which may be more than model.max_len: slots are not positions (every position stays < L),
  so the cache is made with max_len raised to its slot count.

Ragged rows: rows may fix different numbers F_b of tokens. Every row takes exactly L slots, so all
rows end together: the first P = min_b F_b slots are prefilled in one decode call (P is static,
one compilation per P), and at slot c >= P a row with c < F_b is still teacher-forced (its next
fixed token: no sampling, no logprob; greedy does not choose for it) while the other rows
generate. The loop runs L - P steps.

Token choice per generated slot: ``ar.choose_tokens`` (temperature, top-k, top-p, Gumbel-max with
``noise.gumbel_noise`` from fold_in(noise key, c), argmax at temperature 0); PAD, MASK and BOS are
never generated; EOS may be: the generated positions after the first generated EOS (reading order) are
returned as EOS unless ``ignore_eos`` (``jaxorder.sampling.eos``; every step still runs). ``logprob``
sums log p(token)
of the generated tokens under the model at temperature 1, unfiltered: the chain rule of
``ao_ar.order_nll`` for the returned order, restricted to the generated slots.

``cache=True``: one one-slot decode call per step (greedy: plus the candidate call), attention
over the cache. ``cache=False``: the uncached reference: each step recomputes ``ao_ar.order_logits``
(one full causal pass over the permuted sequence) and takes slot c; greedy scores the candidates
with one full pass over L copies of the sequence, one per candidate target. Both paths draw the
same noise, so they give the same orders and tokens whenever their logits agree (exactly at
temperature 0 up to float-rounding ties). ``nfe`` counts network calls: the prefill (cached,
0 < P < L), then per step one call (greedy: two, the candidate call and the slot).

Randomness: ``noise_key, order_key = split(key)``; slot c draws its Gumbel noise from
fold_in(noise_key, c) and the random order comes from order_key. Same key -> same output.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder.config import Config, ConfigError
from jaxorder.model import decode
from jaxorder.objectives import ao_ar
from jaxorder.objectives.common import special_ids
from jaxorder.sampling import given_order
from jaxorder.sampling.ar import banned_tokens, choose_tokens
from jaxorder.sampling.base import Prepared, Sampler, SamplerOptions, register
from jaxorder.sampling.eos import eos_id, fill_after_eos

ORDERS = ("l2r", "r2l", "random", "greedy")


@dataclass(frozen=True)
class Loop:
    """What the compiled loop is specialized on."""

    order: str
    options: SamplerOptions
    prefill: int  # min over rows of the fixed tokens: prefilled in one call


def initial_orders(masked_BL: jnp.ndarray, order: str, key: jax.Array,
                   given_rank_BL: jnp.ndarray | None = None) -> jnp.ndarray:
    """Orders [B, L]: fixed positions first (position order), then the masked ones in `order`
    (greedy: l2r to start with; each slot's entry is replaced when its position is chosen), or by
    `given_rank_BL`, each position's step in an explicit order (``given_order``), when given."""
    B, L = masked_BL.shape
    pos_BL = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    if given_rank_BL is not None:
        rank_BL = given_rank_BL
    elif order == "random":
        # rank of each position
        rank_BL = jnp.argsort(ao_ar.random_orders(key, B, L), axis=1).astype(jnp.int32)
    elif order == "r2l":
        rank_BL = L - 1 - pos_BL
    else:
        rank_BL = pos_BL
    return jnp.argsort(jnp.where(masked_BL, L + rank_BL, pos_BL), axis=1).astype(jnp.int32)


def commit_index(order_BL: jnp.ndarray, generated_BL: jnp.ndarray) -> jnp.ndarray:
    """committed_at [B, L]: each generated position's index in the generation order (0 = first), -1
    for fixed positions (the order lists them first)."""
    B, L = order_BL.shape
    slot_L = jnp.arange(L, dtype=order_BL.dtype)
    slot_BL = jnp.zeros_like(order_BL).at[jnp.arange(B)[:, None], order_BL].set(slot_L)
    n_fixed_B1 = L - generated_BL.sum(axis=1, keepdims=True)
    return jnp.where(generated_BL, slot_BL - n_fixed_B1, -1).astype(jnp.int32)


def slot_inputs(tokens_BL: jnp.ndarray, order_BL: jnp.ndarray, bos: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(input tokens [B, L], positions [B, L]) of the slots: BOS at 0, then x_sigma_{j-1} at sigma_{j-1}."""
    prev_BL = jnp.concatenate([jnp.zeros_like(order_BL[:, :1]), order_BL[:, :-1]], axis=1)
    inputs_BL = jnp.take_along_axis(tokens_BL, prev_BL, axis=1).at[:, 0].set(bos)
    return inputs_BL, prev_BL


def slot_step(params, cfg: Config, cache, x_BL: jnp.ndarray, order_BL: jnp.ndarray, c, tok_B: jnp.ndarray,
              pos_B: jnp.ndarray, target_B: jnp.ndarray):
    """Logits [B, V] of slot c (input tok_B at pos_B, predicting target_B) and the cache with the slot
    written; without a cache (None) one full causal pass over the permuted rows, and None."""
    if cache is not None:
        logits_B1V, cache = decode.decode_step(params, cfg.model, cache, tok_B[:, None], pos_B[:, None],
                                               target_positions_BL=target_B[:, None])
        return logits_B1V[:, 0], cache
    logits_BLV, _ = ao_ar.order_logits(params, x_BL, order_BL, cfg)
    return jax.lax.dynamic_index_in_dim(logits_BLV, c, axis=1, keepdims=False), None


def confidence(logits_BLV: jnp.ndarray, banned_V: jnp.ndarray) -> jnp.ndarray:
    """max_v p(v) [B, L] (as log p) at temperature 1 over the tokens that can be generated."""
    return jnp.max(jax.nn.log_softmax(jnp.where(banned_V, -jnp.inf, logits_BLV), axis=-1), axis=-1)


def _cache_slots(L: int, order: str) -> int:
    return 2 * L - 1 if order == "greedy" else L


def build(cfg: Config, loop: Loop):
    """run(params, key, tokens_BL) -> dict for a static (cfg, loop)."""
    mcfg = cfg.model
    ids = special_ids(mcfg)
    tc, prefill, collect_logits = loop.options, loop.prefill, loop.options.collect_logits
    greedy = loop.order == "greedy"
    calls_per_step = 2 if greedy else 1

    def run(params, key, tokens_BL, given_rank_BL=None):
        B, L = tokens_BL.shape
        x_BL = tokens_BL.astype(jnp.int32)
        masked_BL = x_BL == ids.mask
        n_fixed_B = L - masked_BL.sum(axis=1)
        noise_key, order_key = jax.random.split(key)
        banned_V = banned_tokens(mcfg)
        pos_L = jnp.arange(L, dtype=jnp.int32)
        st = dict(x=x_BL, order=initial_orders(masked_BL, loop.order, order_key, given_rank_BL),
                  masked=masked_BL, logprob=jnp.zeros((B,), jnp.float32), nfe=jnp.int32(0), cache=None)
        if loop.options.cache:
            # scratch slots may pass max_len
            st["cache"] = decode.init_cache(mcfg, B, _cache_slots(L, loop.order))
            if 0 < prefill < L:  # (nothing to generate: no call at all)
                inputs_BL, positions_BL = slot_inputs(x_BL, st["order"], ids.bos)
                _, st["cache"] = decode.decode_step(params, mcfg, st["cache"], inputs_BL[:, :prefill],
                                                    positions_BL[:, :prefill],
                                                    target_positions_BL=st["order"][:, :prefill])
                st["nfe"] = jnp.int32(1)
        if collect_logits:
            st["logits"] = jnp.zeros((B, L, mcfg.vocab_size), jnp.float32)

        def candidate_logits(st, c, tok_B, pos_B):  # [B, L, V]: slot c with every position as its target
            targets_BL = jnp.broadcast_to(pos_L, (B, L))
            if loop.options.cache:
                logits_BLV, _ = decode.decode_step(params, mcfg, st["cache"],
                                                   jnp.repeat(tok_B[:, None], L, 1),
                                                   jnp.repeat(pos_B[:, None], L, 1), "self",
                                                   target_positions_BL=targets_BL)
                return logits_BLV
            orders_BKL = jnp.repeat(st["order"][:, None, :], L, axis=1).at[:, :, c].set(targets_BL)
            logits_NLV, _ = ao_ar.order_logits(params, jnp.repeat(st["x"], L, axis=0),
                                               orders_BKL.reshape(B * L, L), cfg)
            return logits_NLV[:, c].reshape(B, L, -1)

        def slot_logits(st, c, tok_B, pos_B, target_B):  # [B, V] of slot c, and the cache with it written
            return slot_step(params, cfg, st["cache"] if loop.options.cache else None, st["x"], st["order"],
                             c, tok_B, pos_B, target_B)

        def body(c, st):
            st = dict(st)
            inputs_BL, positions_BL = slot_inputs(st["x"], st["order"], ids.bos)
            tok_B = jax.lax.dynamic_index_in_dim(inputs_BL, c, axis=1, keepdims=False)
            pos_B = jax.lax.dynamic_index_in_dim(positions_BL, c, axis=1, keepdims=False)
            forced_B = c < n_fixed_B
            if greedy:
                conf_BL = jnp.where(st["masked"], confidence(candidate_logits(st, c, tok_B, pos_B), banned_V),
                                    -jnp.inf)
                chosen_B = jnp.argmax(conf_BL, axis=1).astype(jnp.int32)  # first maximum: lowest position
                current_B = jax.lax.dynamic_index_in_dim(st["order"], c, axis=1, keepdims=False)
                st["order"] = jax.lax.dynamic_update_index_in_dim(
                    st["order"], jnp.where(forced_B, current_B, chosen_B), c, axis=1)
            target_B = jax.lax.dynamic_index_in_dim(st["order"], c, axis=1, keepdims=False)
            logits_BV, st["cache"] = slot_logits(st, c, tok_B, pos_B, target_B)
            new_B = choose_tokens(jnp.where(banned_V, -jnp.inf, logits_BV), jax.random.fold_in(noise_key, c),
                                  tc)
            lp_B = jnp.take_along_axis(jax.nn.log_softmax(logits_BV, axis=-1), new_B[:, None], axis=-1)[:, 0]
            write_BL = (pos_L[None, :] == target_B[:, None]) & ~forced_B[:, None]
            st["x"] = jnp.where(write_BL, new_B[:, None], st["x"])
            st["masked"] = st["masked"] & ~write_BL
            st["logprob"] = st["logprob"] + jnp.where(forced_B, 0.0, lp_B)
            st["nfe"] = st["nfe"] + calls_per_step
            if collect_logits:
                st["logits"] = jax.lax.dynamic_update_index_in_dim(st["logits"], logits_BV, c, axis=1)
            return st

        st = jax.lax.fori_loop(prefill, L, body, st)
        # the text ends at its first generated EOS (reading order; the loop itself runs to the end)
        out = dict(tokens=fill_after_eos(st["x"], masked_BL, eos_id(cfg, tc)), order=st["order"],
                   logprob=st["logprob"], nfe=st["nfe"],
                   steps=jnp.int32(L - prefill), committed_at=commit_index(st["order"], masked_BL))
        if collect_logits:
            out["logits"] = st["logits"]
        return out

    return run


def prepare_order(order: str):
    """prepare(cfg, tokens_BL, options) of the sampler generating in `order` (`perm`: options.order)."""

    def prepare(cfg: Config, tokens_BL: np.ndarray, options: SamplerOptions) -> Prepared:
        mask = special_ids(cfg.model).mask
        prefill = int((tokens_BL != mask).sum(axis=1).min())
        if order != "perm":
            return Prepared(Loop(order, options, prefill), (jnp.asarray(tokens_BL),))
        if not options.order:
            raise ConfigError(f"the perm sampler needs --order: {given_order.VALUES}")
        given_BL = given_order.explicit_order(options.order, tokens_BL, mask)
        if given_BL is None:  # random: the random sampler's loop, same key -> same order
            return Prepared(Loop("random", options, prefill), (jnp.asarray(tokens_BL),))
        return Prepared(Loop("perm", options, prefill),
                        (jnp.asarray(tokens_BL), jnp.asarray(given_order.ranks(given_BL))))

    return prepare


SAMPLER_OPTIONS = ("temperature", "top_k", "top_p", "noise", "cache", "ignore_eos", "collect_logits")
for _order in ORDERS:
    register(Sampler(name=_order, family="any_order", prepare=prepare_order(_order), build=build,
                     options=SAMPLER_OPTIONS))
register(Sampler(name="perm", family="any_order", prepare=prepare_order("perm"), build=build,
                 options=("order", *SAMPLER_OPTIONS),
                 description="generates in the order --order names (l2r, r2l, random, perm:..., perm@FILE)"))
