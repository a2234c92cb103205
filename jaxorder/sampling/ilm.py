"""Insertion sampling of ilm runs (sampler ``insert``, family ``insertion``; see jaxorder.objectives.ilm).

Input: tokens [B, L] with MASK where text may be inserted; every other token (PAD excepted) is
fixed. The MASK count is NOT used as a length: a run of MASKs marks one insertion point (a gap of
the fixed tokens), and L is the length cap. A prompt (prompt, then MASKs) continues at its end, an
infilling template (``prompts.py``) fills each masked span with as many tokens as the model decides,
an all-MASK row is unconditional generation.

State: the current sequence y (the fixed tokens, then the insertions) in a buffer [BOS, y, PAD...]
of L + 1 slots (positions 0..L, so model.max_len >= L + 1); a gap is open when it lies inside a
masked span (inserting v into an open gap splits it into two open gaps around v). Each step is one
bidirectional pass over the buffer (padding keys masked) and draws, with the process of
``objectives.ilm`` restricted to the open gaps:
  - stop with probability s(y) = prod_{open g} P_g(0) (u < s from the step's key);
  - else a gap g with probability w_g / sum w, w_g = 1 - P_g(0) (Gumbel-max over log w);
  - and a token from the token head at gap g (``ar.choose_tokens``: temperature, top_k, top_p,
    Gumbel noise; PAD, MASK and BOS never), inserted at the gap's left end (right after slot g).
At temperature 0 all three are argmax: stop iff s >= 1/2, the gap of largest w, the top token.
A row ends when it stops, has no open gap, or reaches L tokens (the cap). ``logprob`` sums the
log-probabilities (temperature 1, unfiltered) of every choice made, the stop included, so for an
all-MASK row that stopped it equals -ilm.order_nll(tokens, insertion order).

Result: ``tokens`` [B, L] (y, then PAD), ``generated`` [B, L] (inserted tokens), ``committed_at``
[B, L] (the step that inserted each token, -1 for fixed tokens and padding), ``eos`` [B] (the row
stopped by the model's own stop, not by the cap), ``length`` [B], ``logprob``, ``nfe`` (passes)
and ``steps``. Inserted tokens after the first inserted EOS are returned as EOS unless
``ignore_eos`` (``jaxorder.sampling.eos``; the loop itself ends by the model's stop or the cap).
Randomness: step t draws from fold_in(key, t). Same key -> same output.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder.config import Config, ConfigError
from jaxorder.objectives import ilm
from jaxorder.objectives.common import special_ids
from jaxorder.sampling.ar import choose_tokens
from jaxorder.sampling.base import Prepared, Sampler, SamplerOptions, register
from jaxorder.sampling.eos import eos_id, fill_after_eos
from jaxorder.sampling.noise import gumbel_noise


@dataclass(frozen=True)
class Loop:
    options: SamplerOptions


def initial_state(tokens_BL: np.ndarray, mask: int, pad: int, bos: int) -> tuple[np.ndarray, ...]:
    """(buffer [B, L+1] = [BOS, fixed tokens, PAD...], fixed count m [B], open gaps [B, L+1]:
    gap g, right after slot g, is open when a MASK lies between fixed tokens g-1 and g)."""
    B, L = tokens_BL.shape
    buf_BS = np.full((B, L + 1), pad, np.int32)
    open_BS = np.zeros((B, L + 1), bool)
    m_B = np.zeros(B, np.int32)
    for b in range(B):
        buf_BS[b, 0], m = bos, 0
        for tok in tokens_BL[b]:
            if tok == mask:
                open_BS[b, m] = True  # the gap after the m fixed tokens so far
            elif tok != pad:
                m += 1
                buf_BS[b, m] = tok
        m_B[b] = m
    return buf_BS, m_B, open_BS


def shift_in(x_BS: jnp.ndarray, at_B: jnp.ndarray, value_B: jnp.ndarray, do_B: jnp.ndarray) -> jnp.ndarray:
    """x with value written at slot `at` and the slots from `at` on moved right by one (rows with do)."""
    slot_S = jnp.arange(x_BS.shape[1])
    moved_BS = jnp.concatenate([x_BS[:, :1], x_BS[:, :-1]], axis=1)
    at_B1 = at_B[:, None]
    new_BS = jnp.where(slot_S < at_B1, x_BS, jnp.where(slot_S == at_B1, value_B[:, None], moved_BS))
    return jnp.where(do_B[:, None], new_BS, x_BS)


def build(cfg: Config, loop: Loop):
    """run(params, key, buf_BS, m_B, open_BS) -> dict."""
    opts = loop.options

    def run(params, key, buf_BS, m_B, open_BS):
        B, S = buf_BS.shape
        L = S - 1
        slot_S = jnp.arange(S)
        rows_B = jnp.arange(B)
        st = dict(buf=buf_BS, m=m_B, open=open_BS, gen=jnp.zeros((B, S), bool),
                  at=jnp.full((B, S), -1, jnp.int32), logprob=jnp.zeros((B,), jnp.float32),
                  eos=jnp.zeros((B,), bool), t=jnp.int32(0))
        st["done"] = (m_B >= L) | ~(open_BS & (slot_S <= m_B[:, None])).any(axis=1)

        def body(st):
            st = dict(st)
            valid_BS = slot_S <= st["m"][:, None]
            gaps_BS = st["open"] & valid_BS
            logq_BSV, logP_BSC = ilm.insertion_log_probs(params, st["buf"], valid_BS, cfg)
            log_s_B, log_go_B, log_gap_BS = ilm.step_log_probs(logP_BSC, gaps_BS)
            k_stop, k_gap, k_tok = jax.random.split(jax.random.fold_in(key, st["t"]), 3)
            if opts.temperature == 0:
                stop_B = log_s_B >= jnp.log(0.5)
                gap_B = jnp.argmax(log_gap_BS, axis=1)
            else:
                stop_B = jnp.log(jax.random.uniform(k_stop, (B,))) < log_s_B
                gap_B = jnp.argmax(log_gap_BS + gumbel_noise(k_gap, log_gap_BS.shape, opts.noise), axis=1)
            logq_BV = logq_BSV[rows_B, gap_B]
            tok_B = choose_tokens(logq_BV, k_tok, opts)
            insert_B = ~st["done"] & ~stop_B
            insert_lp_B = log_go_B + log_gap_BS[rows_B, gap_B] + logq_BV[rows_B, tok_B]
            step_lp_B = jnp.where(stop_B, log_s_B, insert_lp_B)
            st["logprob"] = st["logprob"] + jnp.where(st["done"], 0.0, step_lp_B)
            st["eos"] = st["eos"] | (~st["done"] & stop_B)
            at_B = gap_B + 1  # the gap's left end: right after slot g
            st["buf"] = shift_in(st["buf"], at_B, tok_B, insert_B)
            st["gen"] = shift_in(st["gen"], at_B, jnp.ones((B,), bool), insert_B)
            st["at"] = shift_in(st["at"], at_B, jnp.full((B,), st["t"]), insert_B)
            st["open"] = shift_in(st["open"], at_B, jnp.ones((B,), bool), insert_B)  # both halves stay open
            st["m"] = st["m"] + insert_B
            st["done"] = st["done"] | stop_B | (st["m"] >= L)
            st["t"] = st["t"] + 1
            return st

        st = jax.lax.while_loop(lambda st: ~st["done"].all(), body, st)
        # the end-of-text rule of every sampler: inserted tokens after the first inserted EOS become EOS
        # (the output only, as for the any-order samplers: the model's stop ends the loop)
        tokens_BL = fill_after_eos(st["buf"][:, 1:], st["gen"][:, 1:], eos_id(cfg, opts))
        return dict(tokens=tokens_BL, generated=st["gen"][:, 1:], committed_at=st["at"][:, 1:],
                    eos=st["eos"], length=st["m"], logprob=st["logprob"], nfe=st["t"], steps=st["t"])

    return run


def prepare(cfg: Config, tokens_BL: np.ndarray, options: SamplerOptions) -> Prepared:
    L = tokens_BL.shape[1]
    if L + 1 > cfg.model.max_len:
        raise ConfigError(f"the insert sampler puts BOS before the {L} tokens: model.max_len="
                          f"{cfg.model.max_len} must be >= {L + 1}; use a shorter --length or template")
    ids = special_ids(cfg.model)
    buf_BS, m_B, open_BS = initial_state(np.asarray(tokens_BL), ids.mask, ids.pad, ids.bos)
    return Prepared(Loop(options), (jnp.asarray(buf_BS), jnp.asarray(m_B), jnp.asarray(open_BS)))


register(Sampler(name="insert", family="insertion", prepare=prepare, build=build,
                 options=("temperature", "top_k", "top_p", "noise", "ignore_eos"),
                 description="insert one token per pass into an open gap until the model stops"))
