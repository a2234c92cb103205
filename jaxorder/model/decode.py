"""Incremental (KV-cache) decoding with the causal Transformer.

    cache = init_cache(cfg, batch, max_length)             # zeros; cache_index 0 in every layer
    logits_BLV, cache = decode_step(params, cfg, cache, tokens_BL, positions_BL)

`decode_step` runs the model on L new slots (L = the prompt for a prefill, 1 per generated token),
attends over every slot written so far and appends the new keys/values. With the default
`new_mask="causal"` its logits equal those of `model.apply(..., "causal")` on the whole sequence
up to float rounding (same parameters, same math; the attention runs over the cache's
max_length slots with the unwritten ones masked out). `new_mask` (attention.DECODE_MASKS) says
how the new slots see each other: "bidirectional" for a block (block diffusion), "self" for L
independent candidates of one slot (greedy order choice), "all" for a cache whose slots are the
positions of one bidirectional sequence (`rewrite_positions`); the cache is a value, so a call
whose slots must not stay is simply not kept. `prefill_chunks` lays a long prompt into a cache as
independently encoded chunks (`chunk_attention`), which later windows read through a
`ChunkSelect` mask. `target_positions_BL` feeds the any-order model's
target positions (ao_ar / latent_order runs). The cache is the Flax "cache" collection of each
`Attention` layer (`cached_key`, `cached_value` [B, H, T, D] in model.dtype, `cache_index` int32);
the Attention module takes its decode path only when that collection is passed, so training is
unchanged.

Runs with `model.scan_layers` or `model.remat` decode with the equivalent unrolled model (the
stacked "layers" parameters are split per layer; remat only matters for gradients). The decode
path is XLA attention for every `model.attention_impl` (the fused kernel is a full-sequence
kernel).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder.config import ModelConfig
from jaxorder.model.chunk_attention import ChunkLayout, ChunkPrefill
from jaxorder.model.transformer import Transformer, cast_params, final_norm_only, jnp_dtype, unstack_layers

Cache = Any


def decode_config(cfg: ModelConfig) -> ModelConfig:
    """The model config decoding runs with: unrolled layers, no remat, XLA attention."""
    return dataclasses.replace(cfg, scan_layers=False, remat="none", attention_impl="xla")


def init_cache(cfg: ModelConfig, batch: int, max_length: int) -> Cache:
    """An empty cache for `batch` sequences of at most `max_length` slots.

    Slots are not positions: model.max_len bounds the position ids the caller feeds (samplers
    check it), while a cache may hold more slots, e.g. scratch slots for scored candidates."""
    if max_length < 1:
        raise ValueError(f"a KV cache needs at least one slot, got {max_length}")
    shape = (batch, cfg.n_heads, max_length, cfg.head_dim)
    dt = jnp_dtype(cfg.dtype)
    return {f"layer_{i}": {"attn": {"cached_key": jnp.zeros(shape, dt), "cached_value": jnp.zeros(shape, dt),
                                    "cache_index": jnp.zeros((), jnp.int32)}}
            for i in range(cfg.n_layers)}


def decode_params(params: Any, cfg: ModelConfig) -> Any:
    """The parameters in the layout the decode path reads: layers unrolled (a scan_layers run is
    decoded by the equivalent unrolled model), cast to the forward pass's dtype, and each MLP's fused
    gate/up weight [d, 2, F] split into contiguous `gate` and `up` [d, F]. Idempotent. A sampler
    calls it once before its step loop: XLA:CPU copies a sliced weight on every call and does not
    hoist the slice out of a loop; `decode_step` calls it too, so unprepared parameters also work."""
    if "layers" in params:
        params = unstack_layers(params, cfg.n_layers)
    return _split_gate_up(cast_params(params, cfg))


def _split_gate_up(tree: Any) -> Any:
    if not isinstance(tree, Mapping):
        return tree
    out = {k: _split_gate_up(v) for k, v in tree.items() if k != "gate_up"}
    if "gate_up" in tree:
        out["gate"], out["up"] = tree["gate_up"][:, 0], tree["gate_up"][:, 1]
    return out


def decode_step(params: Any, cfg: ModelConfig, cache: Cache, tokens_BL: jnp.ndarray,
                positions_BL: jnp.ndarray, new_mask: Any = "causal",
                target_positions_BL: jnp.ndarray | None = None) -> tuple[jnp.ndarray, Cache]:
    """Logits [B, L, V] (float32) of L new slots given the cached ones, and the updated cache."""
    logits_BLV, mutated = _apply(params, cfg, cache, tokens_BL, positions_BL, new_mask, target_positions_BL,
                                 mutable=["cache"])
    return logits_BLV, mutated["cache"]


def decode_step_hidden(params: Any, cfg: ModelConfig, cache: Cache, tokens_BL: jnp.ndarray,
                       positions_BL: jnp.ndarray, new_mask: Any = "causal",
                       target_positions_BL: jnp.ndarray | None = None,
                       ) -> tuple[jnp.ndarray, jnp.ndarray, Cache]:
    """`decode_step` that also returns the final hidden state [B, L, d_model] of the new slots (what the
    head reads; `transformer.apply_with_hidden`'s, for an objective's own output heads)."""
    logits_BLV, mutated = _apply(params, cfg, cache, tokens_BL, positions_BL, new_mask, target_positions_BL,
                                 mutable=["cache", "intermediates"], capture_intermediates=final_norm_only)
    return logits_BLV, mutated["intermediates"]["final_norm"]["__call__"][0], mutated["cache"]


def _apply(params: Any, cfg: ModelConfig, cache: Cache, tokens_BL: jnp.ndarray, positions_BL: jnp.ndarray,
           new_mask: Any, target_positions_BL: jnp.ndarray | None, **apply_kwargs) -> tuple[jnp.ndarray, Any]:
    """The decode model (`decode_config`) on the decode layout of `params` over `cache`: (logits, mutated)."""
    params = decode_params(params, cfg)
    if target_positions_BL is not None and "target_embed" not in params:
        raise ValueError("target positions need a model initialized with them (ao_ar / latent_order runs)")
    return Transformer(decode_config(cfg)).apply({"params": params, "cache": cache}, tokens_BL, positions_BL,
                                                 new_mask, target_positions_BL, **apply_kwargs)


def rewrite_positions(params: Any, cfg: ModelConfig, cache: Cache, tokens_BQ: jnp.ndarray,
                      start: int, slot: int | None = None,
                      new_mask: Any = "all") -> tuple[jnp.ndarray, Cache]:
    """A bidirectional pass over positions start..start+Q-1 of a cache whose slot i holds position i.

    (`slot`, default `start`: the slot position `start` is written at when slots are offset from
    positions, as in the chunked prompt cache, whose `new_mask` is a `chunk_attention.ChunkSelect`.)

    The Q positions get fresh keys/values (written over their slots) and see every slot of the
    cache: the others keep whatever keys/values they were last given, possibly computed when their
    neighbours held other tokens. That makes this an approximate pass (the masked-diffusion caches
    of `jaxorder.sampling.mdm`), exact only when no other slot is stale; over the whole length
    (start 0, Q = T) it is the model's bidirectional pass. Returns logits [B, Q, V] and the cache."""
    B, Q = tokens_BQ.shape
    slot = start if slot is None else slot
    cache = {layer: {**c, "attn": {**c["attn"], "cache_index": jnp.asarray(slot, jnp.int32)}}
             for layer, c in cache.items()}
    positions_BQ = jnp.broadcast_to(start + jnp.arange(Q, dtype=jnp.int32), (B, Q))
    return decode_step(params, cfg, cache, tokens_BQ, positions_BQ, new_mask)


def prefill_chunks(params: Any, cfg: ModelConfig, cache: Cache, prompt_BP: jnp.ndarray, layout: ChunkLayout,
                   anchor_id: int) -> Cache:
    """`cache` with its first `layout.prompt_slots` slots holding the chunked prompt
    (`chunk_attention`): each chunk of `prompt_BP` encoded on its own, bidirectionally, after an
    anchor token (`anchor_id`, at the position of the chunk's first token); tokens keep their
    positions in the sequence."""
    B, P = prompt_BP.shape
    N, C = layout.n_chunks, layout.chunk_length
    pad_BX = jnp.full((B, N * C - P), anchor_id, jnp.int32)  # padding: never attended to
    chunks_BNC = jnp.concatenate([prompt_BP.astype(jnp.int32), pad_BX], axis=1).reshape(B, N, C)
    tokens_RC1 = jnp.concatenate([jnp.full((B, N, 1), anchor_id, jnp.int32), chunks_BNC], axis=2)
    tokens_RC1 = tokens_RC1.reshape(B * N, C + 1)
    pos_NC1 = np.minimum(np.arange(N)[:, None] * C + np.maximum(np.arange(C + 1) - 1, 0)[None, :], P - 1)
    positions_RC1 = jnp.asarray(np.tile(pos_NC1, (B, 1)), jnp.int32)
    _, chunk_cache = decode_step(params, cfg, init_cache(cfg, B * N, C + 1), tokens_RC1, positions_RC1,
                                 ChunkPrefill(layout.valid()))
    out = {}
    for layer, c in cache.items():
        attn = dict(c["attn"])
        for name in ("cached_key", "cached_value"):
            chunk_RHCD = chunk_cache[layer]["attn"][name]  # rows b * N + n, slots c of chunk n
            H, D = chunk_RHCD.shape[1], chunk_RHCD.shape[3]
            chunk_BHSD = (chunk_RHCD.reshape(B, N, H, C + 1, D).transpose(0, 2, 1, 3, 4)
                          .reshape(B, H, layout.prompt_slots, D))
            attn[name] = jax.lax.dynamic_update_slice_in_dim(attn[name], chunk_BHSD, 0, axis=2)
        out[layer] = {**c, "attn": attn}
    return out
