"""Autoregressive sampling (objectives l2r and r2l) with a KV cache, in one jitted loop.

The l2r model reads [BOS, x_0, x_1, ...] at positions 0, 1, ...: the logits of slot s predict
slot s + 1. A batch of prompts of different lengths shares one buffer [B, T] with slot 0 = BOS,
slots 1..p_b = row b's prompt and T = 1 + max p_b + max_new. The shortest prompt is prefilled
in one call; after that every step decodes one slot for all rows at once: a row still inside
its prompt takes its prompt token (teacher forcing), the others sample. A row stops after
`max_new` generated tokens or at EOS (`stop_at_eos`); the loop (`lax.while_loop`) ends when
every row has stopped. With `cache=True` each step feeds one token through
`jaxorder.model.decode` (O(T) attention over the cache); with `cache=False` each step recomputes
the full causal forward pass over the whole buffer (the reference, O(T^2) per step) and takes
the logits of the current slot. Both use the same noise, so they give the same tokens whenever
their logits agree (exactly at temperature 0 up to ties within float rounding).

r2l is l2r on the reversed sequence: the prompt is the *end* of the text (a suffix), it is fed
reversed, tokens are generated right to left and `generate` returns every row in reading order.

Sampling per step: logits / temperature, then top-k (k > 0) and top-p (nucleus, p < 1)
filtering, then Gumbel-max with `noise.gumbel_noise` (high-precision tails); temperature 0 is
argmax. PAD, MASK and BOS are never generated. `logprob` sums the model's log p (temperature 1,
unfiltered) of the generated tokens, EOS included.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder import model
from jaxorder.config import Config, ConfigError, ModelConfig
from jaxorder.model import decode
from jaxorder.objectives.common import special_ids
from jaxorder.sampling.noise import PRECISIONS, gumbel_noise

DIRECTIONS = ("l2r", "r2l")


@dataclasses.dataclass(frozen=True)
class ARConfig:
    temperature: float = 1.0  # 0 = argmax
    top_k: int = 0  # keep the k most likely tokens (0 = off)
    top_p: float = 1.0  # keep the smallest set with probability >= p (1 = off)
    stop_at_eos: bool = True
    cache: bool = True  # False: recompute the full forward pass every step (reference, slow)
    noise: str = "high"  # Gumbel noise precision, see jaxorder.sampling.noise

    def validate(self) -> None:
        if not self.temperature >= 0:
            raise ConfigError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.noise not in PRECISIONS:
            raise ConfigError(f"--noise must be one of {', '.join(PRECISIONS)}, got {self.noise}")


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


def choose_tokens(logits_BV: jnp.ndarray, key: jax.Array, ac: ARConfig) -> jnp.ndarray:
    """Token ids [B]: argmax at temperature 0, else Gumbel-max over the filtered logits (ac's
    temperature / top_k / top_p / noise)."""
    if ac.temperature == 0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    x_BV = filter_logits(logits_BV, ac.temperature, ac.top_k, ac.top_p)
    return jnp.argmax(x_BV + gumbel_noise(key, x_BV.shape, ac.noise), axis=-1).astype(jnp.int32)


def _build(mcfg: ModelConfig, ac: ARConfig, prefill: int, collect_logits: bool):
    """run(params, seq_BT, known_B, max_new, key) -> dict; `prefill` = min(known_B) (static)."""
    ids = special_ids(mcfg)
    banned_V = banned_tokens(mcfg)

    def run(params, seq_BT, known_B, max_new, key):
        B, T = seq_BT.shape
        seq_BT = seq_BT.astype(jnp.int32)
        end_B = known_B + max_new  # first slot past the row's last token
        positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))

        def full_logits(seq):  # uncached reference: the whole causal forward pass, [B, T - 1, V]
            return model.apply(params, mcfg, seq[:, :T - 1], positions_BT[:, :T - 1], "causal")

        if ac.cache:
            cache = decode.init_cache(mcfg, B, T - 1)
            logits_BLV, cache = decode.decode_step(params, mcfg, cache, seq_BT[:, :prefill],
                                                   positions_BT[:, :prefill])
            logits_BV = logits_BLV[:, -1]
        else:
            cache = None
            logits_BV = full_logits(seq_BT)[:, prefill - 1]
        st = dict(c=jnp.int32(prefill - 1), seq=seq_BT, logits=logits_BV, cache=cache,
                  eos=jnp.zeros((B,), bool), n_gen=jnp.zeros((B,), jnp.int32),
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
            forced_B = s < known_B
            active_B = ~forced_B & ~done(st)
            prompt_B = jax.lax.dynamic_index_in_dim(st["seq"], s, axis=1, keepdims=False)
            new_B = jnp.where(forced_B, prompt_B, jnp.where(active_B, tok_B, ids.pad))
            lp_B = jnp.take_along_axis(jax.nn.log_softmax(st["logits"], axis=-1), tok_B[:, None], axis=-1)[:, 0]
            out = dict(st, c=s, steps=st["steps"] + 1,
                       seq=jax.lax.dynamic_update_index_in_dim(st["seq"], new_B, s, axis=1),
                       eos=st["eos"] | (active_B & (tok_B == ids.eos) & ac.stop_at_eos),
                       n_gen=st["n_gen"] + active_B, logprob=st["logprob"] + jnp.where(active_B, lp_B, 0.0))
            if collect_logits:
                out["all_logits"] = jax.lax.dynamic_update_index_in_dim(st["all_logits"], st["logits"], s, axis=1)
            if ac.cache:  # feed slot s (the last slot T - 1 is never fed: nothing follows it)
                def feed(cache):
                    lg, cache = decode.decode_step(params, mcfg, cache, new_B[:, None],
                                                   jnp.full((B, 1), s, jnp.int32))
                    return lg[:, 0], cache

                out["logits"], out["cache"] = jax.lax.cond(
                    s < T - 1, feed, lambda cache: (st["logits"], cache), st["cache"])
            else:
                out["logits"] = jax.lax.dynamic_index_in_dim(full_logits(out["seq"]), jnp.minimum(s, T - 2),
                                                             axis=1, keepdims=False)
            return out

        st = jax.lax.while_loop(cond, body, st)
        result = dict(seq=st["seq"], n_gen=st["n_gen"], eos=st["eos"], logprob=st["logprob"],
                      steps=st["steps"], nfe=st["steps"] + 1)
        if collect_logits:
            result["logits"] = st["all_logits"]
        return result

    return run


@functools.lru_cache(maxsize=32)
def _compiled(mcfg: ModelConfig, ac: ARConfig, prefill: int, collect_logits: bool):
    return jax.jit(_build(mcfg, ac, prefill, collect_logits))  # l2r and r2l runs of one model share it


def prepare(cfg: Config, prompts: Sequence[np.ndarray], max_new: int, direction: str = "l2r"):
    """The buffer [B, T] (BOS, prompts in generation order, PAD), known slots per row [B], prefill."""
    if direction not in DIRECTIONS:
        raise ConfigError(f"unknown AR direction '{direction}'; use one of {', '.join(DIRECTIONS)}")
    if max_new < 1:
        raise ConfigError(f"the number of tokens to generate must be >= 1, got {max_new}")
    if not len(prompts):
        raise ConfigError("no prompts to sample from")
    ids = special_ids(cfg.model)
    rows = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
    if direction == "r2l":
        rows = [r[::-1] for r in rows]
    P = max(len(r) for r in rows)
    T = 1 + P + max_new
    if T - 1 > cfg.model.max_len:
        raise ConfigError(f"prompt ({P} tokens) + {max_new} new tokens need {T - 1} positions, more than the "
                          f"model's max_len={cfg.model.max_len}; generate fewer tokens")
    seq = np.full((len(rows), T), ids.pad, np.int32)
    seq[:, 0] = ids.bos
    for b, r in enumerate(rows):
        seq[b, 1:1 + len(r)] = r
    known = np.array([1 + len(r) for r in rows], np.int32)
    return seq, known, int(known.min())


def compile_sample(params, cfg: Config, prompts: Sequence[np.ndarray], max_new: int, key: jax.Array,
                   ac: ARConfig, direction: str = "l2r", collect_logits: bool = False):
    """A zero-argument callable running the compiled sampler (compiled here; for benchmarks)."""
    ac.validate()
    seq, known, prefill = prepare(cfg, prompts, max_new, direction)
    args = (params, jnp.asarray(seq), jnp.asarray(known), jnp.int32(max_new), key)
    compiled = _compiled(cfg.model, ac, prefill, collect_logits).lower(*args).compile()
    return lambda: compiled(*args)


def generate(params, cfg: Config, prompts: Sequence[np.ndarray], max_new: int, key: jax.Array,
             ac: ARConfig = ARConfig(), direction: str = "l2r", collect_logits: bool = False) -> dict[str, Any]:
    """Samples up to `max_new` tokens after (l2r) or before (r2l) each prompt.

    `prompts`: token-id arrays, any lengths (empty = unconditional). Returns ``tokens``: per row
    the prompt and the generated tokens in reading order (EOS excluded), ``generated`` [B] (new
    tokens, EOS included), ``eos`` [B], ``logprob`` [B], ``steps``/``nfe`` (loop steps; forward
    calls incl. the prefill), ``seq`` the raw buffer [B, T] in generation order and, with
    `collect_logits`, ``logits`` [B, T, V] (float32; slot s holds the logits that chose slot s,
    for s >= the prefill length).
    """
    ac.validate()
    seq, known, prefill = prepare(cfg, prompts, max_new, direction)
    out = jax.device_get(_compiled(cfg.model, ac, prefill, collect_logits)(
        params, jnp.asarray(seq), jnp.asarray(known), jnp.int32(max_new), key))
    tokens = []
    for b in range(len(known)):
        n = int(known[b]) - 1 + int(out["n_gen"][b]) - int(out["eos"][b])
        row = np.asarray(out["seq"][b, 1:1 + n])
        tokens.append(row[::-1].copy() if direction == "r2l" else row)
    result = dict(tokens=tokens, generated=np.asarray(out["n_gen"]), eos=np.asarray(out["eos"]),
                  logprob=np.asarray(out["logprob"]), steps=int(out["steps"]), nfe=int(out["nfe"]),
                  seq=np.asarray(out["seq"]), prompt_lengths=known - 1)
    if collect_logits:
        result["logits"] = np.asarray(out["logits"])
    return result
