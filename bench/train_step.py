"""Train-step throughput against this machine's own dense-matmul peak (issue 7).

    python bench/train_step.py                 # shapes a, b, small, smoke; l2r and mdm (~5 min on 2 cores)
    python bench/train_step.py --shapes a --objectives l2r --steps 30

In one process: the float32 jnp.dot 2048^3 peak (sampled before every row; the table uses the
median of all samples), then for every shape x objective the jitted train step exactly as
`jaxorder train` builds it (placement, shardings, donation), timed step by step with
`block_until_ready`:
  * device: the same token batch already on the device (the model + optimizer alone);
  * pipeline: each step first takes the next batch from the real grain iterator and puts it on
    the device (serialized, no overlap: an upper bound on what the loop pays);
and the input pipeline alone (next batch + device put) in batches/s, so a data stall is visible.

Model FLOPs per token = 6 N + 12 * n_layers * n_heads * head_dim * T (jaxorder/platform/flops.py,
the formula training's MFU uses: N = parameters that take part in matmuls, T = sequence length).
Fraction of peak = model GFLOP/s / jnp.dot GFLOP/s.
Peak RSS is the process high-water mark during the row (reset per row through
/proc/self/clear_refs where the kernel allows, else the running process maximum).

The machine may be shared: ratios to the peak measured in the same run are the numbers to
compare, not absolute timings. Everything is seeded; the data are the embedded corpus.
The process first tunes glibc malloc (jaxorder.platform.host_memory; the header says whether it did):
JAXORDER_HOST_MALLOC=system python bench/train_step.py measures with glibc's defaults.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxorder import config as config_lib
from jaxorder.data import make_data
from jaxorder.platform import flops
from jaxorder.platform.host_memory import ENV as HOST_MALLOC_ENV
from jaxorder.platform.host_memory import configure_host_malloc
from jaxorder.training.optimizer import make_optimizer
from jaxorder.training.state import init_state, make_placement
from jaxorder.training.step import compile_train_step

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "experiments" / "smoke.yaml"

# name -> (overrides, description); all on the smoke base (embedded corpus, byte vocabulary 260)
SHAPES = {
    "a": ("model.d_model=128 model.n_layers=4 model.n_heads=4 data.seq_len=64 data.batch_size=12",
          "4 layers, 4 heads, d=128, T=64, batch 12"),
    "b": ("model.d_model=384 model.n_layers=6 model.n_heads=6 data.seq_len=256 data.batch_size=16",
          "6 layers, 6 heads, d=384, T=256, batch 16"),
    "small": ("model.d_model=256 model.n_layers=6 model.n_heads=8 data.seq_len=128 data.batch_size=32",
              "configs/model/small.yaml: 6 layers, 8 heads, d=256, T=128, batch 32"),
    "smoke": ("", "make demo (smoke.yaml, tiny): 4 layers, 4 heads, d=128, T=128, batch 32"),
}


def matmul_peak(reps: int = 5, n: int = 2048) -> float:
    """GFLOP/s of a float32 n^3 jnp.dot (median of reps)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    f(a, a).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """VmHWM (resettable, see _reset_peak_rss) where /proc has it, else the process-lifetime ru_maxrss."""
    status = Path("/proc/self/status")
    lines = status.read_text().splitlines() if status.is_file() else []
    for line in lines:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_row(shape: str, objective: str, steps: int) -> dict:
    cfg = config_lib.load(BASE, SHAPES[shape][0].split() + [f"objective.name={objective}"])
    rss_reset = _reset_peak_rss()
    data = make_data(cfg.data, 0, 1)
    optimizer = make_optimizer(cfg)
    placement = make_placement(cfg, optimizer)
    with placement.active():
        state = jax.jit(lambda: init_state(cfg, optimizer), out_shardings=placement.state)()
        n = flops.matmul_params(state["params"])
        fpt = flops.flops_per_token(cfg.model, cfg.data.seq_len, n)
        step_fn = compile_train_step(cfg, optimizer, placement)
        iterator = data.train_iterator()
        fixed = placement.put_batch(next(iterator)["tokens"])
        t = time.perf_counter()
        state, metrics = step_fn(state, fixed)
        jax.block_until_ready((state, metrics))
        compile_s = time.perf_counter() - t
        for _ in range(2):  # warm-up
            state, metrics = step_fn(state, fixed)
        jax.block_until_ready(state)

        device = []
        for _ in range(steps):
            t = time.perf_counter()
            state, metrics = step_fn(state, fixed)
            jax.block_until_ready(state)
            device.append(time.perf_counter() - t)
        piped = []
        for _ in range(steps):
            t = time.perf_counter()
            tokens = placement.put_batch(next(iterator)["tokens"])
            state, metrics = step_fn(state, tokens)
            jax.block_until_ready(state)
            piped.append(time.perf_counter() - t)
        loss = float(metrics["loss"])
        # the input pipeline alone: next batch + device put
        fresh = data.train_iterator()
        placement.put_batch(next(fresh)["tokens"]).block_until_ready()
        k, t = 0, time.perf_counter()
        while k < 20 or time.perf_counter() - t < 0.5:
            placement.put_batch(next(fresh)["tokens"]).block_until_ready()
            k += 1
        pipe_bps = k / (time.perf_counter() - t)
    tokens = cfg.data.batch_size * cfg.data.seq_len
    return {"shape": shape, "objective": objective, "n": n, "fpt": fpt, "tokens": tokens,
            "device_s": statistics.median(device), "piped_s": statistics.median(piped),
            "compile_s": compile_s, "rss_mb": _peak_rss_mb(), "rss_reset": rss_reset,
            "pipe_bps": pipe_bps, "loss": loss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="a,b,small,smoke", help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--objectives", default="l2r,mdm")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per row and mode (median)")
    args = ap.parse_args()
    host_malloc = configure_host_malloc()  # before JAX's CPU client exists
    shapes, objs = args.shapes.split(","), args.objectives.split(",")
    for s in shapes:
        if s not in SHAPES:
            raise SystemExit(f"unknown shape {s!r}; known: {', '.join(SHAPES)}")

    cpu = (next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor())
           if Path("/proc/cpuinfo").exists() else platform.processor())
    import os
    avx512 = "avx512f" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False
    print(f"# jaxorder train-step bench, {datetime.date.today()}, {cpu}, {os.cpu_count()} cores"
          f"{' (AVX-512)' if avx512 else ''}, {jax.device_count()} {jax.default_backend()} device(s); "
          f"jax {jax.__version__}; float32")
    print("# FLOPs/token = 6N + 12*n_layers*n_heads*head_dim*T; N = params without the token-embedding "
          "table (lookup); 'device' = batch already on device, 'pipeline' = grain batch + "
          "device put each step")
    print(f"# host malloc ({HOST_MALLOC_ENV}): {host_malloc}")
    for s in shapes:
        print(f"# shape {s}: {SHAPES[s][1]}")

    peaks, rows = [matmul_peak()], []
    for s in shapes:
        for o in objs:
            peaks.append(matmul_peak())
            rows.append(bench_row(s, o, args.steps))
            r = rows[-1]
            print(f"#   done {s}/{o}: {r['device_s'] * 1e3:.1f} ms/step (compile {r['compile_s']:.1f} s)",
                  flush=True)
    peaks.append(matmul_peak())
    peak = statistics.median(peaks)
    print(f"\njnp.dot float32 2048^3 peak: {peak:.0f} GFLOP/s (median of {len(peaks)} samples, "
          f"range {min(peaks):.0f}-{max(peaks):.0f})\n")
    head = ("| shape | obj | N (M) | MFLOP/tok | ms/step | tok/s | GFLOP/s | of peak | "
            "ms/step pipeline | of peak pipeline | pipeline alone batch/s | peak RSS MB |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        def rate(sec):
            tps = r["tokens"] / sec
            return tps, tps * r["fpt"] / 1e9
        tps, gf = rate(r["device_s"])
        _, gfp = rate(r["piped_s"])
        print(f"| {r['shape']} | {r['objective']} | {r['n'] / 1e6:.2f} | {r['fpt'] / 1e6:.2f} | "
              f"{r['device_s'] * 1e3:.1f} | {tps:,.0f} | {gf:.0f} | {gf / peak:.2f} | "
              f"{r['piped_s'] * 1e3:.1f} | {gfp / peak:.2f} | {r['pipe_bps']:,.0f} | "
              f"{r['rss_mb']:.0f}{'' if r['rss_reset'] else '*'} |")
    if not all(r["rss_reset"] for r in rows):
        print("\n* peak RSS could not be reset per row: process maximum so far")


if __name__ == "__main__":
    main()
