"""Decode masks of the chunked prompt cache (Prefilling-dLLM style; `jaxorder.sampling.mdm_cached`).

A long prompt of P tokens is cut into N = ceil(P / C) chunks of C tokens; each chunk is encoded on
its own, started by an anchor token, and its keys/values are cached once. Cache layout: chunk n
occupies slots [n (C + 1), (n + 1)(C + 1)), its anchor first; the slots after the N (C + 1) prompt
slots hold the generated positions. The last chunk is padded to C tokens; padded slots are never
attended to. Two masks, passed as `new_mask` to the decode path:

- `ChunkPrefill`: the N chunks of a batch row run as N rows of a batch of their own (row r is chunk
  r mod N), each in a fresh C + 1 slot cache: bidirectional attention within the chunk, padding
  excluded.
- `ChunkSelect`: new (generated) slots see every generated slot, and of the prompt only the `top_k`
  chunks most relevant to them plus the most recent chunk. Relevance, per layer and batch row, is
  the mean query-key score between the queries of new slots [query_start, query_end) (the block
  being decoded) and the chunk's non-anchor keys, over heads: the mean query dotted with the mean
  key. The chosen chunks' keys/values are gathered, so attention costs O(new x (K + 1)(C + 1))
  instead of O(new x P).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class ChunkLayout:
    """Where a prompt of `prompt_length` tokens lives in a chunked cache of `chunk_length`-token chunks."""

    prompt_length: int
    chunk_length: int

    @property
    def n_chunks(self) -> int:
        return -(-self.prompt_length // self.chunk_length)

    @property
    def chunk_slots(self) -> int:  # the anchor, then the chunk's tokens
        return self.chunk_length + 1

    @property
    def prompt_slots(self) -> int:
        return self.n_chunks * self.chunk_slots

    def valid(self) -> tuple[int, ...]:
        """Slots of each chunk holding the anchor or a prompt token (the rest is padding)."""
        return tuple(1 + min(self.chunk_length, self.prompt_length - n * self.chunk_length)
                     for n in range(self.n_chunks))

    def valid_NC(self) -> np.ndarray:
        """[N, C + 1] bool: slot c of chunk n is the anchor or a prompt token."""
        return np.arange(self.chunk_slots)[None, :] < np.asarray(self.valid())[:, None]


@dataclass(frozen=True)
class ChunkPrefill:
    """Mask of the chunk prefill: batch row r is chunk r mod len(valid); slots >= valid[chunk] are padding."""

    valid: tuple[int, ...]


@dataclass(frozen=True)
class ChunkSelect:
    """Mask of a generated window over a chunked cache (module docstring)."""

    layout: ChunkLayout
    top_k: int
    query_start: int
    query_end: int


def prefill_attention(q_BLHD: jnp.ndarray, k_BLHD: jnp.ndarray, v_BLHD: jnp.ndarray, spec: ChunkPrefill,
                      attend) -> jnp.ndarray:
    """Bidirectional attention within each chunk row, padding excluded as keys (`attend`: the
    attention function taking a mask broadcastable to [B, H, L, T])."""
    B, L = q_BLHD.shape[:2]
    valid_R = np.tile(np.asarray(spec.valid), B // len(spec.valid))
    key_ok_B11T = (np.arange(L)[None, :] < valid_R[:, None])[:, None, None, :]
    return attend(q_BLHD, k_BLHD, v_BLHD, jnp.asarray(key_ok_B11T))


def select_chunks(q_BLHD: jnp.ndarray, kp_BNCHD: jnp.ndarray, spec: ChunkSelect) -> jnp.ndarray:
    """Indices [B, K'] of the chunks the window attends to: the most recent one and the `top_k` most
    relevant others (K' = min(top_k + 1, N))."""
    layout = spec.layout
    N = layout.n_chunks
    valid_NC = layout.valid_NC()
    weight_NC = valid_NC & (np.arange(layout.chunk_slots)[None, :] > 0)  # tokens only, not the anchor
    weight_NC = weight_NC / weight_NC.sum(axis=1, keepdims=True)
    kbar_BNHD = jnp.einsum("bnchd,nc->bnhd", kp_BNCHD.astype(jnp.float32),
                           jnp.asarray(weight_NC, jnp.float32))
    qbar_BHD = q_BLHD[:, spec.query_start:spec.query_end].astype(jnp.float32).mean(axis=1)
    score_BN = jnp.einsum("bhd,bnhd->bn", qbar_BHD, kbar_BNHD)
    score_BN = score_BN.at[:, N - 1].set(jnp.inf)  # the chunk next to the generated text, always
    return jax.lax.top_k(score_BN, min(spec.top_k + 1, N))[1]


def select_attention(q_BLHD: jnp.ndarray, k_BTHD: jnp.ndarray, v_BTHD: jnp.ndarray, spec: ChunkSelect,
                     attend) -> jnp.ndarray:
    """Attention of the new slots over the chosen prompt chunks and every generated slot of the cache
    (keys/values [B, T, H, D], the new slots already written)."""
    layout = spec.layout
    B, _, H, D = k_BTHD.shape
    N, C1, P = layout.n_chunks, layout.chunk_slots, layout.prompt_slots
    kp_BNCHD = k_BTHD[:, :P].reshape(B, N, C1, H, D)
    vp_BNCHD = v_BTHD[:, :P].reshape(B, N, C1, H, D)
    idx_BK = select_chunks(q_BLHD, kp_BNCHD, spec)
    K = idx_BK.shape[1]

    def gather(x_BNCHD):
        return jnp.take_along_axis(x_BNCHD, idx_BK[:, :, None, None, None], axis=1).reshape(B, K * C1, H, D)

    keys_BSHD = jnp.concatenate([gather(kp_BNCHD), k_BTHD[:, P:]], axis=1)
    values_BSHD = jnp.concatenate([gather(vp_BNCHD), v_BTHD[:, P:]], axis=1)
    valid_BS = jnp.concatenate([jnp.asarray(layout.valid_NC())[idx_BK].reshape(B, K * C1),
                                jnp.ones((B, k_BTHD.shape[1] - P), bool)], axis=1)
    return attend(q_BLHD, keys_BSHD, values_BSHD, valid_BS[:, None, None, :])
