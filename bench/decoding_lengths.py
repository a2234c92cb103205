"""Caches against length: the confidence sampler (one token per step, blocks of 32, batch 1) without
cache, with the prefix cache and with the dual cache at total lengths 256, 512 and 1024.

    python bench/decoding.py --lengths      (or python bench/decoding_lengths.py [--out DIR])
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
from decoding_common import BLOCK, LENGTH, REPO, machine_line, timed_call, unprompted

from jaxorder import config as config_lib
from jaxorder import model, sampling
from jaxorder.sampling import SamplerOptions


def bench_lengths(out_dir: Path, repeats: int) -> None:
    """Speed only (random weights: one token per step does not depend on them): the confidence sampler
    (one token per step, blocks of 32, batch 1) without cache, with the prefix cache and with the dual
    cache, at total lengths 256, 512 and 1024, unprompted (every position generated) and prompted
    (the last 256 positions generated after a prompt of the rest)."""
    tiny = REPO / "configs" / "model" / "tiny.yaml"
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine_line()}")
    print("confidence sampler, 1 token/step, blocks of 32, batch 1, tiny model with random weights, "
          "max_len 1024")
    print(f"{'length':>7} {'generated':>10} {'no cache tok/s':>15} {'prefix tok/s':>13} {'×':>5} "
          f"{'dual tok/s':>11} {'×':>5}")
    results = []
    for length in (256, 512, 1024):
        cfg = config_lib.load(tiny, ["objective.name=mdm", f"data.seq_len={length}", "model.max_len=1024"])
        params = model.init_params(cfg.model, jax.random.key(0))
        for generated in sorted({length, LENGTH}, reverse=True):
            rows = unprompted(cfg, 1, length)
            rows[:, :length - generated] = 101  # a prompt (the weights are random: its text does not matter)
            speeds = {}
            for cache in ("none", "prefix", "dual"):
                opts = SamplerOptions(steps=generated, block_length=BLOCK, approx_cache=cache)
                fn = sampling.compile_sample(params, cfg, rows, jax.random.key(0), "confidence", opts)
                _, dt = timed_call(fn, repeats)
                speeds[cache] = generated / dt
            results.append({"length": length, "generated": generated, **speeds})
            print(f"{length:>7} {generated:>10} {speeds['none']:>15.1f} {speeds['prefix']:>13.1f} "
                  f"{speeds['prefix'] / speeds['none']:>5.1f} {speeds['dual']:>11.1f} "
                  f"{speeds['dual'] / speeds['none']:>5.1f}", flush=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    payload = {"date": stamp, "machine": machine_line(), "rows": results}
    (out_dir / "lengths.json").write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "runs" / "sweeps" / "decoding" / "frontier"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    bench_lengths(Path(args.out), args.repeats)
