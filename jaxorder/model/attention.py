"""Attention masks the model knows (it knows mask kinds, never orders), the XLA attention path,
the choice between it and the fused Pallas kernel (`model.attention_impl`) and the settling of
the model's backend-dependent `auto` choices at run start (`settle_model_config`)."""
from __future__ import annotations

import dataclasses
import sys
from typing import TYPE_CHECKING, Callable

import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels
from jaxorder.model import chunk_attention, cpu_rewrites
from jaxorder.model.cpu_rewrites import PLAIN, Ops

if TYPE_CHECKING:
    from jaxorder.config import ModelConfig

MASK_KINDS = ("causal", "bidirectional", "bd3:<b>")
KERNEL_BACKENDS = ("tpu", "gpu", "cuda", "rocm")  # where `attention_impl: auto` means the Pallas kernel


def bd3_block_size(kind: str) -> int | None:
    """b for a block-diffusion kind 'bd3:<b>' (e.g. 'bd3:4'), None for any other kind."""
    if not kind.startswith("bd3:"):
        return None
    try:
        b = int(kind[4:])
    except ValueError:
        b = 0
    if b < 1:
        raise ValueError(f"bad block-diffusion mask kind '{kind}'; use 'bd3:<block size >= 1>', e.g. 'bd3:4'")
    return b


def attention_mask(kind: str, length: int) -> jnp.ndarray:
    """Boolean [L, L] mask, True where query i may attend to key j.

    'bd3:<b>' is the BD3-LM training layout [x_t ; x] of length L = 2n (docs/design.md,
    'Block diffusion'), with
    half(i) = noisy if i < n else clean and block(i) = (i mod n) // b:
      noisy -> noisy  iff same block;   noisy -> clean iff block(key) <  block(query);
      clean -> clean  iff block(key) <= block(query);   clean -> noisy never.
    """
    if kind == "causal":
        return jnp.tril(jnp.ones((length, length), dtype=bool))
    if kind == "bidirectional":
        return jnp.ones((length, length), dtype=bool)
    b = bd3_block_size(kind)
    if b is not None:
        if length % 2:
            raise ValueError(f"mask kind '{kind}' needs the 2n layout [x_t ; x]: even length, got {length}")
        n = length // 2
        idx = np.arange(length)
        clean = idx >= n
        block = (idx % n) // b
        q_clean, k_clean = clean[:, None], clean[None, :]
        qb, kb = block[:, None], block[None, :]
        mask = ((~q_clean & ~k_clean & (qb == kb)) | (~q_clean & k_clean & (kb < qb))
                | (q_clean & k_clean & (kb <= qb)))
        return jnp.asarray(mask)
    raise ValueError(f"unknown attention mask kind '{kind}'; known: {', '.join(MASK_KINDS)}")


def xla_attention(q_BLHD: jnp.ndarray, k_BLHD: jnp.ndarray, v_BLHD: jnp.ndarray, mask_LL: jnp.ndarray,
                  ops: Ops = PLAIN) -> jnp.ndarray:
    """Softmax attention with scale 1/sqrt(D); softmax in float32. q . k is `ops.attention_scores`."""
    return _softmax_attention(ops.attention_scores(q_BLHD, k_BLHD), v_BLHD, "bhls,bshd->blhd", mask_LL,
                              q_BLHD.shape[-1])


def slot_attention(q_BLHD: jnp.ndarray, k_BHSD: jnp.ndarray, v_BHSD: jnp.ndarray,
                   mask_LS: jnp.ndarray) -> jnp.ndarray:
    """`xla_attention` over keys/values in the KV cache's layout [B, H, S, D] (no backward pass). The
    output is transposed after the probs . v product: a product straight into [B, L, H, D] is a
    batched dot XLA:CPU runs on a slow fallback."""
    o_BHLD = _softmax_attention(jnp.einsum("blhd,bhsd->bhls", q_BLHD, k_BHSD), v_BHSD, "bhls,bhsd->bhld",
                                mask_LS, q_BLHD.shape[-1])
    return o_BHLD.transpose(0, 2, 1, 3)


def _softmax_attention(scores_BHLS: jnp.ndarray, v: jnp.ndarray, out_spec: str, mask_LS: jnp.ndarray,
                       head_dim: int) -> jnp.ndarray:
    """softmax(scores / sqrt(head_dim), masked) in float32, applied to v by the einsum `out_spec`."""
    scale = head_dim ** -0.5
    logits_BHLS = jnp.where(mask_LS, scores_BHLS.astype(jnp.float32) * scale, jnp.finfo(jnp.float32).min)
    probs_BHLS = jax.nn.softmax(logits_BHLS, axis=-1).astype(v.dtype)
    return jnp.einsum(out_spec, probs_BHLS, v)


def pallas_attention(q_BLHD: jnp.ndarray, k_BLHD: jnp.ndarray, v_BLHD: jnp.ndarray, positions_BL: jnp.ndarray,
                     mask_kind: str, rope_base: float, interpret: bool | None = None,
                     query_positions_BL: jnp.ndarray | None = None) -> jnp.ndarray:
    """The fused RoPE flash-attention kernel on un-rotated q/k (`model.attention_impl: pallas`): keys
    rotated at `positions_BL`, queries at `query_positions_BL` (default: the same).

    `interpret=None` runs the kernel on TPU/GPU and its plain-JAX reference on CPU; True forces
    Pallas interpret mode (tests).
    """
    if mask_kind.startswith("bd3:"):
        spec = pallas_kernels.bd3(int(mask_kind.split(":", 1)[1]))
    else:
        spec = pallas_kernels.as_mask_spec(mask_kind)
    q_pos_BL = positions_BL if query_positions_BL is None else query_positions_BL
    return pallas_kernels.rope_attention(q_BLHD, k_BLHD, v_BLHD, q_pos_BL, positions_BL, mask=spec,
                                         rope_base=rope_base, interpret=interpret)


def resolve_attention_impl(impl: str, backend: str | None = None) -> str:
    """The attention path to run: 'auto' is 'pallas' on TPU/GPU and 'xla' on CPU (`backend`
    defaults to jax.default_backend()); 'xla' and 'pallas' are returned as given."""
    if impl != "auto":
        return impl
    return "pallas" if (backend or jax.default_backend()) in KERNEL_BACKENDS else "xla"


def probe_pallas_attention(head_dim: int, dtype: str) -> None:
    """Compiles the fused kernel's forward and backward for every mask kind at a small shape
    (B=1, L=256, 2 heads) with the model's head dim and compute dtype; raises what compiling raises."""
    q_BLHD = jax.ShapeDtypeStruct((1, 256, 2, head_dim), jnp.dtype(dtype))
    positions_BL = jax.ShapeDtypeStruct((1, 256), jnp.int32)

    def loss(q_BLHD, k_BLHD, v_BLHD, positions_BL):
        return sum(pallas_attention(q_BLHD, k_BLHD, v_BLHD, positions_BL, kind, 10000.0)
                   .astype(jnp.float32).sum()
                   for kind in ("causal", "bidirectional", "bd3:16"))

    jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q_BLHD, q_BLHD, q_BLHD, positions_BL).compile()


def settle_attention_impl(model_cfg: ModelConfig, probe: Callable[[int, str], None] = probe_pallas_attention,
                          backend: str | None = None) -> ModelConfig:
    """For a run: replaces `attention_impl: auto` by the path to use. On TPU/GPU the kernel is
    first probe-compiled (`probe`); if that raises, one line on stderr says so and the run uses xla."""
    if model_cfg.attention_impl != "auto":
        return model_cfg
    backend = backend or jax.default_backend()
    impl = resolve_attention_impl("auto", backend)
    if impl == "pallas":
        try:
            probe(model_cfg.head_dim, model_cfg.dtype)
        except Exception as e:  # noqa: BLE001 - any compile failure means: do not use the kernel
            reason = (str(e).strip().splitlines() or [""])[0][:200]
            if jax.process_index() == 0:  # stderr, like run progress: stdout may carry JSON results
                print(f"model.attention_impl=auto: the fused Pallas attention kernel failed to compile on "
                      f"{backend} ({type(e).__name__}: {reason}); falling back to xla attention. Force the "
                      f"kernel with model.attention_impl=pallas, or silence this with "
                      f"model.attention_impl=xla",
                      file=sys.stderr, flush=True)
            impl = "xla"
    return dataclasses.replace(model_cfg, attention_impl=impl)


def resolve_model_config(model_cfg: ModelConfig, backend: str | None = None) -> ModelConfig:
    """`model_cfg` with its `auto` choices (attention_impl, backward_rewrites) replaced as on `backend`
    (default jax.default_backend()), without the kernel's compile probe: the model runs a config no
    run start settled (direct `apply` calls in tests and benches) this way."""
    impl = resolve_attention_impl(model_cfg.attention_impl, backend)
    rewrites = cpu_rewrites.resolve(model_cfg.backward_rewrites, backend)
    if (impl, rewrites) == (model_cfg.attention_impl, model_cfg.backward_rewrites):
        return model_cfg
    return dataclasses.replace(model_cfg, attention_impl=impl, backward_rewrites=rewrites)


def settle_model_config(model_cfg: ModelConfig, probe: Callable[[int, str], None] = probe_pallas_attention,
                        backend: str | None = None) -> ModelConfig:
    """For a run, once per process: replaces every `auto` choice of the model by what to use on this
    backend: attention_impl as `settle_attention_impl` (with its compile probe), backward_rewrites
    'cpu' on CPU and 'none' elsewhere."""
    model_cfg = settle_attention_impl(model_cfg, probe, backend)
    rewrites = cpu_rewrites.resolve(model_cfg.backward_rewrites, backend)
    if rewrites == model_cfg.backward_rewrites:
        return model_cfg
    return dataclasses.replace(model_cfg, backward_rewrites=rewrites)


# Incremental decoding (jaxorder.model.decode): per attention layer, a Flax "cache" collection
# holds the rotated keys and the values of every slot written so far and the next slot to write.
CACHE_NAMES = ("cached_key", "cached_value", "cache_index")
# How the L new slots of one decode call see each other (every new slot sees all cached slots):
#   causal        slot i sees new slots <= i   (prefill / one token per step: the causal model)
#   bidirectional all new slots                (a block: bd3 noisy block, or a clean block written)
#   self          only itself                  (L independent candidates of the same next slot)
#   all           every slot of the cache, written or not (slots = positions: the approximate caches
#                 of masked diffusion; the call's own keys/values replace the slots it writes)
# and two mask objects of the chunked prompt cache (jaxorder.model.chunk_attention): ChunkPrefill,
# ChunkSelect.
DECODE_MASKS = ("causal", "bidirectional", "self", "all")


def decode_mask(kind: str, cache_length: int, index, new_length: int) -> jnp.ndarray:
    """Boolean [L, T]: new slot i (written at index + i) may see cache slot j."""
    if kind not in DECODE_MASKS:
        raise ValueError(f"unknown decode mask '{kind}'; use one of {', '.join(DECODE_MASKS)}")
    slot_T = jnp.arange(cache_length)[None, :]
    new_L1 = index + jnp.arange(new_length)[:, None]
    cached_LT = slot_T < index
    if kind == "causal":
        return cached_LT | ((slot_T >= index) & (slot_T <= new_L1))
    if kind == "bidirectional":
        return jnp.broadcast_to(slot_T < index + new_length, (new_length, cache_length))
    if kind == "all":
        return jnp.ones((new_length, cache_length), bool)
    return cached_LT | (slot_T == new_L1)


def cached_attention(q_BLHD: jnp.ndarray, k_BLHD: jnp.ndarray, v_BLHD: jnp.ndarray,
                     cached_key, cached_value, cache_index, new_mask: str = "causal") -> jnp.ndarray:
    """Attention of L new slots over the cache; writes their keys/values at cache_index.

    q/k are already rotated (RoPE by their own positions). `new_mask` may also be a chunked-cache mask
    object (`chunk_attention.ChunkPrefill`, `ChunkSelect`). The cache variables hold
    cached_key/cached_value [B, H, T, D] (heads first, so a call reads them without a transpose)
    and cache_index (int32 scalar, the slot of the first new token). Every new slot sees cache
    slots 0..index-1; among the new slots `new_mask` (DECODE_MASKS) applies. With "causal" this is the
    causal mask of the full sequence, so the result equals full recomputation up to float rounding. A
    caller that must not keep the new slots (scoring candidates, a bd3 noisy block) discards the
    returned cache.
    """
    idx = cache_index.value
    T, L = cached_key.value.shape[2], q_BLHD.shape[1]
    for var, x_BLHD in ((cached_key, k_BLHD), (cached_value, v_BLHD)):
        x_BHLD = x_BLHD.transpose(0, 2, 1, 3).astype(var.value.dtype)
        var.value = jax.lax.dynamic_update_slice(var.value, x_BHLD, (0, 0, idx, 0))
    cache_index.value = idx + L
    chunked = {chunk_attention.ChunkSelect: chunk_attention.select_attention,
               chunk_attention.ChunkPrefill: chunk_attention.prefill_attention}.get(type(new_mask))
    if chunked is not None:  # both take keys/values [B, T, H, D]
        k_BTHD, v_BTHD = (var.value.transpose(0, 2, 1, 3) for var in (cached_key, cached_value))
        return chunked(q_BLHD, k_BTHD, v_BTHD, new_mask, xla_attention)
    return slot_attention(q_BLHD, cached_key.value, cached_value.value, decode_mask(new_mask, T, idx, L))
