"""Model FLOPs per token and accelerator peaks: the two halves of MFU (model FLOPs utilization).

FLOPs per token = 6 N + 12 * n_layers * n_heads * head_dim * T, the PaLM/nanoGPT convention:
N = parameters that take part in matmuls (all but the lookup tables `embed` and `target_embed`; the
unembedding `head` and the norm scales are counted), T = data.seq_len; attention is counted at full
T x T (causal masking is not subtracted). It counts the model's forward + backward on one window of
T tokens, so objectives that feed the network more than T slots per window (bd3's [x_t ; x]) do more
work than it says: their MFU reads low.

Peaks are dense bf16 TFLOP/s per JAX device (one chip; v4 and v5p megacore chips are one device).
"""
from __future__ import annotations

from typing import Any

import jax

from jaxorder.config import ModelConfig

LOOKUP_TABLES = ("embed", "target_embed")  # indexed, not multiplied: no matmul FLOPs

# (substring of jax's device_kind, lower-cased) -> dense bf16 TFLOP/s per device, most specific first.
PEAK_TFLOPS = (
    ("tpu v6 lite", 918.0), ("tpu v6e", 918.0),
    ("tpu v5 lite", 197.0), ("tpu v5e", 197.0),
    ("tpu v5p", 459.0), ("tpu v5", 459.0),
    ("tpu v4", 275.0),
    ("h100 pcie", 756.0), ("h100", 989.0), ("h200", 989.0),
    ("a100", 312.0),
    ("l4", 121.0),
)


def matmul_params(params: dict[str, Any]) -> int:
    """Parameters that take part in matmuls: every leaf outside the top-level lookup tables."""
    return sum(int(x.size) for name, sub in params.items() if name not in LOOKUP_TABLES
               for x in jax.tree.leaves(sub))


def flops_per_token(model_cfg: ModelConfig, seq_len: int, n_matmul_params: int) -> float:
    """Training FLOPs (forward + backward) per token of a window of `seq_len` tokens."""
    attention = 12 * model_cfg.n_layers * model_cfg.n_heads * model_cfg.head_dim * seq_len
    return 6.0 * n_matmul_params + attention


def detected_peak_tflops(device_kind: str) -> float | None:
    """The table's peak for a device kind (e.g. 'TPU v5 lite'), None when unknown (CPUs)."""
    kind = device_kind.lower()
    return next((peak for key, peak in PEAK_TFLOPS if key in kind), None)


def mfu(tokens_per_s: float, flops_token: float, peak_tflops_per_device: float, n_devices: int) -> float:
    """Achieved model FLOP/s over the mesh's peak FLOP/s (a fraction, not a percentage)."""
    return tokens_per_s * flops_token / (peak_tflops_per_device * 1e12 * n_devices)
