"""Sampling throughput on this machine.

    python bench/sampling.py            # masked: steps 8, 32, 128 at length 128, batch 8, every rule
    python bench/sampling.py --quick    # steps 8, 32 at batch 4; ar at 128 tokens only
    python bench/sampling.py --only ar  # one section

Section "masked": tokens/s of the masked-diffusion samplers (jaxorder.sampling.mdm) vs the number
of steps, on the `small` model size (configs/model/small.yaml: d_model 256, 6 layers, 8 heads)
with randomly initialised weights (speed does not depend on the weights, except for the
threshold sampler, see its note). Generated tokens / wall time of one compiled call (the loop
over all steps; compilation excluded). The time is ~ steps x one bidirectional forward pass of
[B, L]: the commitment rule itself is noise next to the model. `nfe` = forward passes actually
run (ancestral reuses the previous pass when a step reveals nothing in the whole batch, MDLM's
cache; threshold stops when every row is complete).

Section "ar": AR (l2r) decoding tokens/s with vs without the KV cache at 128 and 512 generated
tokens (--quick: 128 only), batch 1, `small` model with random weights (jaxorder.sampling.ar:
one jitted while_loop; cached = one-token decode steps over the KV cache, uncached = a full
causal forward pass over the whole buffer per generated token).

Section "any_order": any-order AR (ao_ar) sampling tokens/s with vs without the KV cache at 128
and 512 generated tokens (--quick: 128 only), batch 1, unconditional, `small` model with random
weights (jaxorder.sampling.any_order): random order cached vs uncached (uncached = a full causal
pass over the permuted sequence per token), greedy order (most confident position first) cached,
at 128 only.

Section "block": block-diffusion sampling tokens/s with vs without the KV cache over finished blocks
(jaxorder.sampling.bd3), `small` model with random weights, length 128, batch 4 (--quick: 2),
unconditional, confidence sampler, block sizes 4 and 16 at 32 and 128 steps (--quick: 32 only).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder import config as config_lib
from jaxorder import model
from jaxorder.objectives.common import special_ids
from jaxorder.platform.host_memory import configure_host_malloc
from jaxorder.sampling import SamplerOptions, compile_sample

SMALL = Path(__file__).resolve().parents[1] / "configs" / "model" / "small.yaml"


def machine_line() -> str:
    dev = jax.devices()[0]
    load = "n/a"
    if hasattr(os, "getloadavg"):
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} CPU cores "
            f"visible, JAX {jax.__version__} backend '{jax.default_backend()}' "
            f"({dev.device_kind}), load average {load}")


def timed(run) -> tuple[dict, float]:
    """(outputs, wall seconds) of one call of a compiled sampler, waiting for the device."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(run())
    return out, time.perf_counter() - t0


def model_line(mcfg, params) -> str:
    return (f"{mcfg.d_model} d_model, {mcfg.n_layers} layers, {mcfg.n_heads} heads, "
            f"{model.count_params(params) / 1e6:.2f}M params")


def bench_mdm(quick: bool, run_dir: str | None = None) -> None:
    B, L = (4, 128) if quick else (8, 128)
    steps_list = (8, 32) if quick else (8, 32, 128)
    if run_dir:  # a trained mdm run instead of random weights (the threshold sampler then stops early)
        from jaxorder.evaluation.runs import load_params
        cfg, params, _ = load_params(Path(run_dir))
        L = min(L, cfg.model.max_len)
        what = f"run {Path(run_dir).name}"
    else:
        cfg = config_lib.load(SMALL, ["objective.name=mdm", f"data.seq_len={L}"])
        params = model.init_params(cfg.model, jax.random.key(0))
        what = "`small` model"
    tokens = jnp.full((B, L), special_ids(cfg.model).mask, jnp.int32)
    key = jax.random.key(0)
    rows = [("ancestral", {}), ("confidence", {}), ("margin", {}), ("entropy", {}), ("threshold", {}),
            ("confidence", {"fused": True})]
    print("=" * 100)
    print(f"mdm samplers: {what} ({model_line(cfg.model, params)}, "
          f"{'trained' if run_dir else 'random'} weights), length {L}, batch {B}, "
          f"T = 1, high-precision noise")
    print("  tokens/s = B*L / wall time of one compiled sampling call (compile "
          "excluded); s/pass = time / nfe")
    header = f"  {'sampler':<34}" + "".join(f"{f'steps={s}':>26}" for s in steps_list)
    print(header)
    print(f"  {'':<34}" + "".join(f"{'tok/s    nfe   s/pass':>26}" for _ in steps_list))
    for name, extra in rows:
        label = name + (" (fused, CPU reference)" if extra.get("fused") and jax.default_backend() == "cpu"
                        else " (fused)" if extra.get("fused") else "")
        cells = []
        for steps in steps_list:
            opts = SamplerOptions(steps=steps, temperature=1.0, **extra,
                                  **({"threshold": 0.9} if name == "threshold" else {}))
            out, dt = timed(compile_sample(params, cfg, tokens, key, name, opts))
            nfe = int(out["nfe"])
            assert bool(np.all(np.asarray(out["complete"])))
            cells.append(f"{B * L / dt:>10.0f} {nfe:>6d} {dt / max(nfe, 1):>8.3f}")
        print(f"  {label:<34}" + "".join(f"{c:>26}" for c in cells), flush=True)
    if not run_dir:
        print("  note: random weights give every token p ~ 1/256, so `threshold` (0.9) "
              "never fires and takes all")
        print("  its steps like `confidence`; with a trained model (--run RUN_DIR) it stops early.")
    print("  Ancestral reuses the last pass (nfe < steps) only when a step reveals "
          "nothing in every row of the")
    print("  batch (~e^-B at steps = L): rare at B = 8. The fused row on CPU runs pallas_kernels' plain-JAX")
    print("  reference, not the kernel.")


def bench_ar(quick: bool) -> None:
    """AR decode tokens/s with vs without the KV cache (jaxorder.sampling.ar), `small` model."""

    B = 1
    lengths = (128,) if quick else (128, 512)
    cfg = config_lib.load(SMALL, ["objective.name=l2r"])
    params = model.init_params(cfg.model, jax.random.key(0))
    print("=" * 100)
    print(f"ar (l2r) decoding: `small` model ({model_line(cfg.model, params)}, random weights), batch {B}, "
          f"unconditional (BOS only), T = 1, no EOS stop")
    print("  tokens/s = generated tokens / wall time of one compiled call (the whole jitted while_loop; "
          "compile excluded)")
    print("  no cache = every step recomputes the full causal forward pass over the [B, 1 + N] buffer")
    print(f"  {'generated':>10} {'cache tok/s':>12} {'no-cache tok/s':>15} {'speedup':>8} {'cache s':>8} "
          f"{'no-cache s':>11}")
    for n in lengths:
        times = {}
        for cache in (True, False):
            opts = SamplerOptions(temperature=1.0, ignore_eos=True, cache=cache)
            rows = np.full((B, n), special_ids(cfg.model).mask, np.int32)  # unprompted: n tokens per row
            out, times[cache] = timed(compile_sample(params, cfg, rows, jax.random.key(0), "ar", opts))
            assert int(np.asarray(out["generated"]).sum()) == B * n
        print(f"  {n:>10d} {B * n / times[True]:>12.0f} {B * n / times[False]:>15.1f} "
              f"{times[False] / times[True]:>7.1f}x {times[True]:>8.2f} {times[False]:>11.2f}", flush=True)
    print("  The cached step attends over the whole cache (max length slots, unwritten ones "
          "masked): its cost is")
    print("  ~ flat in the position; the uncached step costs a full forward pass of 1 + N slots every time.")


def bench_any_order(quick: bool) -> None:
    """Any-order AR tokens/s with vs without the KV cache (jaxorder.sampling.any_order), `small` model."""

    B = 1
    lengths = (128,) if quick else (128, 512)
    cfg = config_lib.load(SMALL, ["objective.name=ao_ar"])
    params = model.init_params(cfg.model, jax.random.key(0), target_positions=True)
    print("=" * 100)
    print(f"any-order AR (ao_ar) sampling: `small` model ({model_line(cfg.model, params)}, random weights), "
          f"batch {B}, "
          f"unconditional (all MASK), T = 1")
    print("  tokens/s = generated tokens / wall time of one compiled call (compile "
          "excluded); nfe = network calls")
    print("  no cache = every step recomputes the full causal pass over the permuted sequence "
          "(ao_ar.order_logits)")
    print(f"  {'order':>7} {'length':>7} {'cache tok/s':>12} {'no-cache tok/s':>15} {'speedup':>8} "
          f"{'cache s':>8} {'no-cache s':>11} {'nfe':>5}")
    for order in ("random", "greedy"):
        for n in lengths if order != "greedy" else lengths[:1]:  # greedy at 128 only: modest runtime
            tokens = np.full((B, n), special_ids(cfg.model).mask, np.int32)
            times = {}
            for cache in (True, False) if order != "greedy" else (True,):
                opts = SamplerOptions(temperature=1.0, cache=cache)
                out, times[cache] = timed(compile_sample(params, cfg, tokens, jax.random.key(0), order, opts))
                assert not np.any(np.asarray(out["tokens"]) == special_ids(cfg.model).mask)
            if False in times:
                no_cache = (f"{B * n / times[False]:>15.1f} {times[False] / times[True]:>7.1f}x "
                            f"{times[True]:>8.2f} {times[False]:>11.2f}")
            else:
                no_cache = f"{'-':>15} {'-':>8} {times[True]:>8.2f} {'-':>11}"
            print(f"  {order:>7} {n:>7d} {B * n / times[True]:>12.0f} {no_cache} {int(out['nfe']):>5d}",
                  flush=True)
    print("  l2r / r2l cost what random costs (same calls). Greedy adds per step one call "
          "scoring all n positions")
    print("  as candidates of the next slot (a [B, n] 'self' decode call over the cache); "
          "uncached greedy does one")
    print("  pass over n copies of the sequence per step (n times a full pass) and is not timed here.")


def bench_bd3(quick: bool) -> None:
    """Block-diffusion (bd3) tokens/s with vs without the KV cache (jaxorder.sampling.bd3), `small` model."""

    B, L = (2, 128) if quick else (4, 128)
    # (block size, steps)
    settings = ((4, 32), (16, 32)) if quick else ((4, 32), (4, 128), (16, 32), (16, 128))
    cfgs = {b: config_lib.load(SMALL, ["objective.name=bd3", f"objective.block_size={b}",
                                       f"data.seq_len={L}"])
            for b, _ in settings}
    mcfg = next(iter(cfgs.values())).model  # the block size changes the objective only, not the model
    params = model.init_params(mcfg, jax.random.key(0))
    tokens = np.full((B, L), special_ids(mcfg).mask, np.int32)
    print("=" * 100)
    print(f"bd3 sampling: `small` model ({model_line(mcfg, params)}, random weights), length {L}, batch {B}, "
          f"unconditional (all MASK), confidence sampler, T = 1")
    print("  tokens/s = B*L / wall time of one compiled call (compile excluded); steps split "
          "evenly over the L/b blocks")
    print("  cache = per step one decode call of the noisy block (b slots) over the finished blocks, plus "
          "one write per block")
    print("  no cache = per step a full pass over [x_t ; x] (2L slots, mask bd3:<b>); nfe = model calls")
    print(f"  {'b':>4} {'steps':>6} {'cache tok/s':>12} {'no-cache tok/s':>15} {'speedup':>8} {'cache s':>8} "
          f"{'no-cache s':>11} {'nfe cache/no':>13}")
    for b, steps in settings:
        times, nfe = {}, {}
        for cache in (True, False):
            opts = SamplerOptions(steps=steps, temperature=1.0, cache=cache)
            out, times[cache] = timed(compile_sample(params, cfgs[b], tokens, jax.random.key(0),
                                                     "confidence", opts))
            nfe[cache] = int(out["nfe"])
            assert bool(np.all(np.asarray(out["complete"])))
        print(f"  {b:>4d} {steps:>6d} {B * L / times[True]:>12.0f} {B * L / times[False]:>15.0f} "
              f"{times[False] / times[True]:>7.1f}x {times[True]:>8.2f} {times[False]:>11.2f} "
              f"{f'{nfe[True]}/{nfe[False]}':>13}", flush=True)
    print("  A cached step is a b-slot pass attending over the L-slot cache, an uncached "
          "one a 2L-slot pass; the")
    print("  L/b - 1 block writes are b-slot passes too (nfe cache = steps + L/b - 1).")


# sections by sampling family (an Objective's `sampling`): the samplers each one times
SECTIONS = {"masked": bench_mdm, "ar": bench_ar, "any_order": bench_any_order, "block": bench_bd3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, smaller batch")
    parser.add_argument("--only", choices=sorted(SECTIONS), help="run one section")
    parser.add_argument("--run",
                        help="masked section: a trained mdm run directory instead of random `small` weights")
    args = parser.parse_args()
    host_malloc = configure_host_malloc()  # before JAX's CPU client exists (machine_line creates it)
    print(f"machine: {machine_line()}; host malloc: {host_malloc}")
    print("  NOTE: timings drift with the machine's load (above): compare within one run only.")
    for name, section in SECTIONS.items():
        if args.only not in (None, name):
            continue
        if section is bench_mdm:  # the one section that can time a trained run's weights
            section(args.quick, args.run)
        else:
            section(args.quick)


if __name__ == "__main__":
    main()
