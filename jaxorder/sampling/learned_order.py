"""Samplers of learned_order runs: exact ancestral sampling of (sigma, x), and the fixed any-order rules.

``policy`` (the default): at slot c the order policy draws the next position sigma_c from pi(. | x_sigma<c,
sigma_<c) over the still-open positions (``learned_order.policy_log_probs``: its head on the final
hidden state of the causal pass WITHOUT target positions), then the token head (ao_ar's pass, target
sigma_c) draws x_sigma_c. Both streams read the same slot inputs (``any_order.slot_inputs``: BOS at
position 0, then x_sigma_{c-1} at sigma_{c-1}) and keep one KV cache each (``cache=True``): the policy
stream without target positions, the token stream with them. With ``cache=False`` every step
recomputes both full passes over the permuted row (``learned_order.policy_terms``' pass and
``ao_ar.order_logits``) and reads slot c: the uncached reference, same noise, same output.

Prompts and templates: the fixed tokens come first in position order (teacher-forced, as
``any_order``), and the policy chooses only among the positions to fill (its open mask is the row's
still-masked positions); rows with different numbers of fixed tokens are handled as in any_order
(the first min_b F_b slots are prefilled in one call per stream). With no prompt this is exact
ancestral sampling of p(x, sigma).

The policy always samples at temperature 1 (it is the model's order distribution); temperature,
top-k, top-p and the noise precision apply to the token head (``ar.choose_tokens``). ``logprob``
is the sum of log p(token) of the generated tokens (temperature 1, unfiltered; the token head's
-order_nll of the returned order restricted to the generated slots) and ``order_logprob`` the sum of
log pi of the chosen positions, so log p(x, sigma) = logprob + order_logprob for an unprompted row.

Randomness: ``noise_key, order_key = split(key)``; slot c's token noise is fold_in(noise_key, c) (as
any_order) and its position draw fold_in(order_key, c). Same key -> same output.

The fixed rules l2r, r2l, random, greedy and perm (``--order``) of ``any_order`` are registered for
learned_order runs too (the token head is ao_ar's network), so ``eval --generate`` and ``sample``
can compare them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder.config import Config
from jaxorder.model import apply_with_hidden, decode
from jaxorder.objectives import learned_order
from jaxorder.objectives.common import special_ids
from jaxorder.sampling import any_order
from jaxorder.sampling.ar import banned_tokens, choose_tokens
from jaxorder.sampling.base import Prepared, Sampler, SamplerOptions, register
from jaxorder.sampling.eos import eos_id, fill_after_eos

FAMILY = "learned_order"


def build(cfg: Config, loop: any_order.Loop):
    """run(params, key, tokens_BL) -> dict for a static (cfg, loop); loop.order is "policy"."""
    mcfg = cfg.model
    ids = special_ids(mcfg)
    tc, prefill = loop.options, loop.prefill

    def run(params, key, tokens_BL):
        B, L = tokens_BL.shape
        x_BL = tokens_BL.astype(jnp.int32)
        masked_BL = x_BL == ids.mask
        n_fixed_B = L - masked_BL.sum(axis=1)
        noise_key, order_key = jax.random.split(key)
        banned_V = banned_tokens(mcfg)
        pos_L = jnp.arange(L, dtype=jnp.int32)
        st = dict(x=x_BL, order=any_order.initial_orders(masked_BL, "l2r", order_key), open=masked_BL,
                  logprob=jnp.zeros((B,), jnp.float32), order_logprob=jnp.zeros((B,), jnp.float32),
                  nfe=jnp.int32(0), token_cache=None, policy_cache=None)
        if tc.cache:
            st["token_cache"] = decode.init_cache(mcfg, B, L)
            st["policy_cache"] = decode.init_cache(mcfg, B, L)
            if 0 < prefill < L:
                inputs_BL, positions_BL = any_order.slot_inputs(x_BL, st["order"], ids.bos)
                _, st["token_cache"] = decode.decode_step(params, mcfg, st["token_cache"],
                                                          inputs_BL[:, :prefill], positions_BL[:, :prefill],
                                                          target_positions_BL=st["order"][:, :prefill])
                _, _, st["policy_cache"] = decode.decode_step_hidden(params, mcfg, st["policy_cache"],
                                                                     inputs_BL[:, :prefill],
                                                                     positions_BL[:, :prefill])
                st["nfe"] = jnp.int32(2)

        def policy_hidden(st, c, tok_B, pos_B):  # [B, d] of slot c (no target position), and the cache
            if tc.cache:
                _, hidden_B1d, cache = decode.decode_step_hidden(params, mcfg, st["policy_cache"],
                                                                 tok_B[:, None], pos_B[:, None])
                return hidden_B1d[:, 0], cache
            inputs_BL, positions_BL = any_order.slot_inputs(st["x"], st["order"], ids.bos)
            _, hidden_BLd = apply_with_hidden(params, mcfg, inputs_BL, positions_BL, "causal")
            return jax.lax.dynamic_index_in_dim(hidden_BLd, c, axis=1, keepdims=False), None

        def token_logits(st, c, tok_B, pos_B, target_B):  # [B, V] of slot c with its target, and the cache
            return any_order.slot_step(params, cfg, st["token_cache"] if tc.cache else None, st["x"],
                                       st["order"], c, tok_B, pos_B, target_B)

        def body(c, st):
            st = dict(st)
            inputs_BL, positions_BL = any_order.slot_inputs(st["x"], st["order"], ids.bos)
            tok_B = jax.lax.dynamic_index_in_dim(inputs_BL, c, axis=1, keepdims=False)
            pos_B = jax.lax.dynamic_index_in_dim(positions_BL, c, axis=1, keepdims=False)
            forced_B = c < n_fixed_B
            hidden_Bd, st["policy_cache"] = policy_hidden(st, c, tok_B, pos_B)
            # the open positions of this slot: the row's still-masked ones (forced rows: any, unused)
            open_B1L = jnp.where(forced_B[:, None], True, st["open"])[:, None, :]
            previous_B = jnp.where(c == 0, cfg.model.max_len, pos_B)  # slot c's input sits at sigma_{c-1}
            logp_BL = learned_order.policy_log_probs(hidden_Bd[:, None], params, open_B1L,
                                                     previous_B[:, None])[:, 0]
            chosen_B = jax.random.categorical(jax.random.fold_in(order_key, c), logp_BL, axis=-1)
            chosen_B = chosen_B.astype(jnp.int32)
            current_B = jax.lax.dynamic_index_in_dim(st["order"], c, axis=1, keepdims=False)
            target_B = jnp.where(forced_B, current_B, chosen_B)
            st["order"] = jax.lax.dynamic_update_index_in_dim(st["order"], target_B, c, axis=1)
            logits_BV, st["token_cache"] = token_logits(st, c, tok_B, pos_B, target_B)
            new_B = choose_tokens(jnp.where(banned_V, -jnp.inf, logits_BV), jax.random.fold_in(noise_key, c),
                                  tc)
            lp_B = jnp.take_along_axis(jax.nn.log_softmax(logits_BV, axis=-1), new_B[:, None], axis=-1)[:, 0]
            olp_B = jnp.take_along_axis(logp_BL, chosen_B[:, None], axis=-1)[:, 0]
            write_BL = (pos_L[None, :] == target_B[:, None]) & ~forced_B[:, None]
            st["x"] = jnp.where(write_BL, new_B[:, None], st["x"])
            st["open"] = st["open"] & ~write_BL
            st["logprob"] = st["logprob"] + jnp.where(forced_B, 0.0, lp_B)
            st["order_logprob"] = st["order_logprob"] + jnp.where(forced_B, 0.0, olp_B)
            st["nfe"] = st["nfe"] + 2
            return st

        st = jax.lax.fori_loop(prefill, L, body, st)
        return dict(tokens=fill_after_eos(st["x"], masked_BL, eos_id(cfg, tc)), order=st["order"],
                    logprob=st["logprob"], order_logprob=st["order_logprob"], nfe=st["nfe"],
                    steps=jnp.int32(L - prefill), committed_at=any_order.commit_index(st["order"], masked_BL))

    return run


def prepare(cfg: Config, tokens_BL: np.ndarray, options: SamplerOptions) -> Prepared:
    prefill = int((tokens_BL != special_ids(cfg.model).mask).sum(axis=1).min())
    return Prepared(any_order.Loop("policy", options, prefill), (jnp.asarray(tokens_BL),))


register(Sampler(name="policy", family=FAMILY, prepare=prepare, build=build,
                 options=("temperature", "top_k", "top_p", "noise", "cache", "ignore_eos")))
for _order in any_order.ORDERS:  # the fixed rules decode the token head alone, as for ao_ar runs
    register(Sampler(name=_order, family=FAMILY, prepare=any_order.prepare_order(_order),
                     build=any_order.build, options=any_order.SAMPLER_OPTIONS))
register(Sampler(name="perm", family=FAMILY, prepare=any_order.prepare_order("perm"), build=any_order.build,
                 options=("order", *any_order.SAMPLER_OPTIONS),
                 description="the token head in the order --order names (l2r, r2l, random, perm:...)"))
