"""The model's own cost at batch 1 against the positions it runs: a full bidirectional pass, cached
windows (``decode.rewrite_positions`` over a 256-slot cache) and plain passes of 32 and 64 positions
(no cache), on the mdm run of configs/sweeps/decoding.yaml; ms per call, mean of 200 calls.

    python bench/decoding_window_cost.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench modules

import jax
import jax.numpy as jnp
from decoding_common import LENGTH, REPO

from jaxorder.evaluation.runs import load_params
from jaxorder.model import decode
from jaxorder.objectives import mdm as mdm_objective


def per_call_ms(f, *args, n: int = 200) -> float:
    jax.block_until_ready(f(*args))
    t0 = time.perf_counter()
    for _ in range(n):
        out = f(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / n * 1e3


def main() -> None:
    cfg, params, _ = load_params(REPO / "runs" / "sweeps" / "decoding" / "mdm")
    L = LENGTH
    x_BL = jnp.full((1, L), 3, jnp.int32)
    cache = decode.init_cache(cfg.model, 1, L)
    full = jax.jit(lambda p, x: mdm_objective.masked_log_probs(p, x, cfg))
    window = jax.jit(lambda p, c, x, s: decode.rewrite_positions(p, cfg.model, c, x, s))
    print(f"full pass {L} (log-probs)        {per_call_ms(full, params, x_BL):7.3f} ms")
    for n in (1, 32, 64, 128, 256):
        ms = per_call_ms(window, params, cache, x_BL[:, :n], jnp.int32(0))
        print(f"cached window {n:<3} of {L} slots  {ms:7.3f} ms")
    for n in (32, 64):
        print(f"plain pass {n} (no cache)         {per_call_ms(full, params, x_BL[:, :n]):7.3f} ms")


if __name__ == "__main__":
    main()
