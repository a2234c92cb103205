"""Autoregressive sampling (runs of family "ar": l2r, r2l) with a KV cache, in one jitted loop.

Rows [B, L] hold a prompt followed by MASK (r2l runs: MASK, then the prompt as the *end* of the
text), optionally followed by PAD: rows of different lengths end at their last MASK. Fixed tokens
may also sit among (or after) the MASKs, an infilling template's givens: the model reads them when
its order reaches them (teacher-forced, as the prompt) but cannot see them before, so they are
kept, not conditioned on (the row is the model's continuation with those tokens forced). A row is
filled to its end unless it stops at EOS (unless `ignore_eos`; `jaxorder.sampling.eos`). The l2r model reads
[BOS, x_0, x_1, ...] at positions 0, 1, ...: the logits of slot s predict slot s + 1. The batch
shares one buffer [B, T = L + 1] with slot 0 = BOS and slots 1..p_b = row b's prompt. The shortest
prompt is prefilled in one call; after that every step decodes one slot for all rows at once: a
row still inside its prompt takes its prompt token (teacher forcing), the others sample. The loop
(`lax.while_loop`) ends when every row has stopped. With `cache=True` each step feeds one token
through `jaxorder.model.decode` (O(T) attention over the cache); with `cache=False` each step
recomputes the full causal forward pass over the whole buffer (the reference, O(T^2) per step)
and takes the logits of the current slot. Both use the same noise, so they give the same tokens
whenever their logits agree (exactly at temperature 0 up to ties within float rounding).

r2l is l2r on the reversed sequence: rows are fed reversed, generated right to left and returned
in reading order (the objective's `reading_order`).

Sampling per step: logits / temperature, then top-k (k > 0) and top-p (nucleus, p < 1)
filtering, then Gumbel-max with `noise.gumbel_noise` (high-precision tails); temperature 0 is
argmax. PAD, MASK and BOS are never generated. `logprob` sums the model's log p (temperature 1,
unfiltered) of the generated tokens, EOS included. Output: ``tokens`` [B, L] in reading order with
EOS at the row's EOS and at its generated slots after it (the padding of ``data.eos`` windows; r2l:
the slots before it in reading order), PAD where the input had PAD, ``generated`` [B] (new tokens,
EOS included), ``eos`` [B], ``seq`` (the
raw buffer in generation order) and, with `collect_logits`, ``logits`` [B, T, V] (slot s holds the
logits that chose slot s, generation order, for s >= the prefill).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder import model, objectives
from jaxorder.config import Config, ConfigError, ModelConfig
from jaxorder.model import decode
from jaxorder.objectives.common import special_ids
from jaxorder.sampling.base import Prepared, Sampler, SamplerOptions, register
from jaxorder.sampling.eos import ar_rows
from jaxorder.sampling.noise import first_argmax, gumbel_noise


def filter_logits(logits_BV: jnp.ndarray, temperature: float, top_k: int, top_p: float) -> jnp.ndarray:
    """logits / temperature with the tokens outside top-k / top-p set to -inf (temperature > 0)."""
    x_BV = logits_BV.astype(jnp.float32) / temperature
    V = x_BV.shape[-1]
    if 0 < top_k < V:
        kth_B1 = jax.lax.top_k(x_BV, top_k)[0][:, -1:]
        x_BV = jnp.where(x_BV < kth_B1, -jnp.inf, x_BV)
    if top_p < 1.0:
        sorted_BV = -jnp.sort(-x_BV, axis=-1)  # descending
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV  # mass of the strictly more likely tokens
        n_keep_B1 = jnp.maximum(jnp.sum(before_BV < top_p, axis=-1, keepdims=True), 1)
        cut_B1 = jnp.take_along_axis(sorted_BV, n_keep_B1 - 1, axis=-1)
        x_BV = jnp.where(x_BV < cut_B1, -jnp.inf, x_BV)
    return x_BV


def banned_tokens(mcfg: ModelConfig) -> jnp.ndarray:
    """Boolean [V]: the ids samplers never generate (PAD, MASK, BOS)."""
    ids = special_ids(mcfg)
    return jnp.zeros((mcfg.vocab_size,), bool).at[jnp.array([ids.pad, ids.mask, ids.bos])].set(True)


def choose_tokens(logits_BV: jnp.ndarray, key: jax.Array, ac: SamplerOptions) -> jnp.ndarray:
    """Token ids [B]: argmax at temperature 0, else Gumbel-max over the filtered logits (ac's
    temperature / top_k / top_p / noise)."""
    if ac.temperature == 0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    x_BV = filter_logits(logits_BV, ac.temperature, ac.top_k, ac.top_p)
    return first_argmax(x_BV + gumbel_noise(key, x_BV.shape, ac.noise))


@dataclasses.dataclass(frozen=True)
class Loop:
    """What the compiled loop is specialized on."""

    options: SamplerOptions
    prefill: int  # min over rows of the known slots (BOS + prompt): prefilled in one call
    reverse: bool  # r2l runs: rows are generated right to left and returned in reading order


def build(cfg: Config, loop: Loop):
    """run(params, key, seq_BT, known_B, end_B, given_BT) -> dict: the buffer is [BOS, prompt in generation
    order, givens, PAD]; a row's slots are known up to known_B and generated up to end_B (exclusive),
    except the given slots (given_BT), which are teacher-forced."""
    mcfg, ac, prefill, collect_logits = cfg.model, loop.options, loop.prefill, loop.options.collect_logits
    ids = special_ids(mcfg)
    banned_V = banned_tokens(mcfg)

    def run(params, key, seq_BT, known_B, end_B, given_BT):
        B, T = seq_BT.shape
        seq_BT = seq_BT.astype(jnp.int32)
        positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))

        def full_logits(seq):  # uncached reference: the whole causal forward pass, [B, T - 1, V]
            return model.apply(params, mcfg, seq[:, :T - 1], positions_BT[:, :T - 1], "causal")

        if ac.cache:
            dparams = decode.decode_params(params, mcfg)  # once, outside the step loop
            cache = decode.init_cache(mcfg, B, T - 1)
            logits_BLV, cache = decode.decode_step(dparams, mcfg, cache, seq_BT[:, :prefill],
                                                   positions_BT[:, :prefill])
            logits_BV = logits_BLV[:, -1]
        else:
            cache = None
            logits_BV = full_logits(seq_BT)[:, prefill - 1]
        st = dict(c=jnp.int32(prefill - 1), seq=seq_BT, logits=logits_BV, cache=cache,
                  eos=jnp.zeros((B,), bool), n_gen=jnp.zeros((B,), jnp.int32),
                  n_given=jnp.zeros((B,), jnp.int32),
                  logprob=jnp.zeros((B,), jnp.float32), steps=jnp.int32(0))
        if collect_logits:
            st["all_logits"] = jnp.zeros((B, T, mcfg.vocab_size), jnp.float32)

        def done(st):  # rows with nothing left to write after slot c
            return (st["c"] + 1 >= end_B) | st["eos"]

        def cond(st):
            return (st["c"] + 1 < T) & ~jnp.all(done(st))

        def body(st):
            s = st["c"] + 1
            logits_BV = jnp.where(banned_V, -jnp.inf, st["logits"])
            tok_B = choose_tokens(logits_BV, jax.random.fold_in(key, s), ac)
            given_B = jax.lax.dynamic_index_in_dim(given_BT, s, axis=1, keepdims=False)
            forced_B = (s < known_B) | given_B
            active_B = ~forced_B & ~done(st)
            prompt_B = jax.lax.dynamic_index_in_dim(st["seq"], s, axis=1, keepdims=False)
            new_B = jnp.where(forced_B, prompt_B, jnp.where(active_B, tok_B, ids.pad))
            lp_B = jnp.take_along_axis(jax.nn.log_softmax(st["logits"], axis=-1), tok_B[:, None],
                                       axis=-1)[:, 0]
            out = dict(st, c=s, steps=st["steps"] + 1,
                       seq=jax.lax.dynamic_update_index_in_dim(st["seq"], new_B, s, axis=1),
                       eos=st["eos"] | (active_B & (tok_B == ids.eos) & (not ac.ignore_eos)),
                       n_gen=st["n_gen"] + active_B, n_given=st["n_given"] + (given_B & ~done(st)),
                       logprob=st["logprob"] + jnp.where(active_B, lp_B, 0.0))
            if collect_logits:
                out["all_logits"] = jax.lax.dynamic_update_index_in_dim(st["all_logits"], st["logits"], s,
                                                                        axis=1)
            if ac.cache:  # feed slot s (the last slot T - 1 is never fed: nothing follows it)
                def feed(cache):
                    lg, cache = decode.decode_step(dparams, mcfg, cache, new_B[:, None],
                                                   jnp.full((B, 1), s, jnp.int32))
                    return lg[:, 0], cache

                out["logits"], out["cache"] = jax.lax.cond(
                    s < T - 1, feed, lambda cache: (st["logits"], cache), st["cache"])
            else:
                out["logits"] = jax.lax.dynamic_index_in_dim(full_logits(out["seq"]), jnp.minimum(s, T - 2),
                                                             axis=1, keepdims=False)
            return out

        st = jax.lax.while_loop(cond, body, st)
        # slot s of the buffer is row position s - 1 (slot 0 is BOS); givens stay after an EOS too
        written_B = known_B - 1 + st["n_gen"] + st["n_given"]
        tokens_BL = jnp.where(given_BT[:, 1:], st["seq"][:, 1:],
                              ar_rows(st["seq"][:, 1:], written_B, end_B - 1, st["eos"], ids.eos, ids.pad))
        result = dict(tokens=tokens_BL[:, ::-1] if loop.reverse else tokens_BL, generated=st["n_gen"],
                      eos=st["eos"], logprob=st["logprob"], steps=st["steps"], nfe=st["steps"] + 1,
                      seq=st["seq"])
        if collect_logits:  # slot s's logits chose slot s (generation order), for s >= the prefill
            result["logits"] = st["all_logits"]
        return result

    return run


def prepare(cfg: Config, tokens_BL: np.ndarray, options: SamplerOptions) -> Prepared:
    """Rows [B, L]: a prompt (any length, l2r: a prefix; r2l: a suffix), then MASK with any givens (fixed
    tokens) among them, then optionally PAD."""
    reverse = objectives.of(cfg).reading_order == "r2l"
    if reverse and cfg.data.eos and not options.ignore_eos:
        raise ConfigError("this r2l run was trained with data.eos: right to left its EOS padding comes "
                          "first, so EOS cannot end a row; sample it with --ignore-eos")
    ids = special_ids(cfg.model)
    rows_BL = tokens_BL[:, ::-1] if reverse else tokens_BL
    masked_BL, pad_BL = rows_BL == ids.mask, rows_BL == ids.pad
    if not masked_BL.any(axis=1).all():
        raise ConfigError("a row has no MASK left to generate; give a longer length than the prompt")
    B, L = rows_BL.shape
    slot_L = np.arange(L)
    prompt_B, last_B = np.argmax(masked_BL, axis=1), L - 1 - np.argmax(masked_BL[:, ::-1], axis=1)
    text_end_B = L - np.argmax(~pad_BL[:, ::-1], axis=1)  # PAD may only end a row
    if (pad_BL & (slot_L < text_end_B[:, None])).any():
        where = "its start (r2l rows are generated right to left)" if reverse else "its end"
        raise ConfigError(f"a row has PAD among its tokens; PAD may only sit at {where} (mask the positions "
                          f"to generate with MASK)")
    given_BL = ~masked_BL & ~pad_BL & (slot_L > prompt_B[:, None])  # fixed tokens after the first MASK
    seq_BT = np.full((B, L + 1), ids.pad, np.int32)
    seq_BT[:, 0] = ids.bos
    seq_BT[:, 1:] = np.where(masked_BL, ids.pad, rows_BL)
    known_B = (1 + prompt_B).astype(np.int32)
    end_B = (2 + last_B).astype(np.int32)  # the slot after the last MASK
    given_BT = np.zeros((B, L + 1), bool)
    given_BT[:, 1:] = given_BL
    return Prepared(Loop(options, int(known_B.min()), reverse),
                    (jnp.asarray(seq_BT), jnp.asarray(known_B), jnp.asarray(end_B), jnp.asarray(given_BT)))


register(Sampler(name="ar", family="ar", prepare=prepare, build=build,
                 options=("temperature", "top_k", "top_p", "noise", "cache", "ignore_eos", "collect_logits"),
                 description="KV-cache decoding in the run's reading order, stopping at EOS"))
