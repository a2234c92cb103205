"""Cost of one masked-sampler call at batch 1 (256 tokens, blocks of 32) for a few settings: where a
cached window step's time goes against a full pass.

    python bench/decoding_step_cost.py [SUBSTRING ...]    # only the settings whose name has one

Needs the mdm run of configs/sweeps/decoding.yaml in runs/sweeps/decoding/mdm. Prints ms per call
(median of 3 after a warm-up call), tokens/s and ms per network call.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench modules

import jax
from decoding_common import BLOCK, LENGTH, REPO, machine_line, timed_call, unprompted

from jaxorder import sampling
from jaxorder.evaluation.runs import load_params

DUAL = dict(threshold=0.9, approx_cache="dual")
SETTINGS = {
    "confidence (no cache)": ("confidence", {}),
    "confidence + Prophet 5": ("confidence", dict(prophet=5.0)),
    "threshold 0.9, dual": ("threshold", DUAL),
    "threshold 0.9, dual, float32 noise": ("threshold", dict(DUAL, noise="float32")),
    "threshold 0.9, dual, ignore eos": ("threshold", dict(DUAL, ignore_eos=True)),
    "confidence, dual": ("confidence", dict(approx_cache="dual")),
    "confidence, a pass per block": ("confidence", dict(steps=LENGTH // BLOCK)),
}


def main() -> None:
    cfg, params, _ = load_params(REPO / "runs" / "sweeps" / "decoding" / "mdm")
    rows = unprompted(cfg, 1)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine_line()}")
    for name, (rule, extra) in SETTINGS.items():
        if sys.argv[1:] and not any(s in name for s in sys.argv[1:]):
            continue
        sampler = sampling.resolve(cfg, rule)
        opts = sampling.make_options(sampler, {"steps": LENGTH, "block_length": BLOCK, **extra})

        key = jax.random.key(100)
        out, dt = timed_call(lambda: sampling.sample(params, cfg, rows, key, sampler, opts), 3)
        nfe = int(out["nfe"])
        print(f"{name:<38} {dt * 1e3:8.1f} ms/call {LENGTH / dt:7.0f} tok/s  {nfe:4d} calls "
              f"{dt / nfe * 1e3:6.2f} ms/call", flush=True)


if __name__ == "__main__":
    main()
