"""How fast can the train step be on this CPU if only its matmuls took time? (issue 7)

    python bench/dot_bound.py                      # shapes a and b, l2r
    python bench/dot_bound.py --shapes a,b,small --objective mdm

For each shape, the jitted train step is built exactly as `bench/train_step.py` builds it and
compiled; every dot of the compiled HLO (plain `dot` instructions and the dots inside XLA:CPU
library fusions) is read off with its operand shapes and dimension numbers, and each distinct dot
is timed alone as a jitted `lax.dot_general` on the same shapes (minimum over repetitions: the
best this machine's matmul library does on that shape). Their sum, weighted by how often each
occurs, is the step time a perfect step would have if everything but the matmuls were free
(operand layouts are not reproduced: each isolated dot gets the layouts XLA picks for it alone).
Then, in the same process: the real step (best and median) with the jnp.dot 2048^3 peak sampled
every 10 steps.

Printed per shape: model FLOPs per step, the dots' own FLOPs, the dot-only time and its fraction of
the best peak sample (an upper bound for the step's fraction of peak at this shape with these
matmul kernels), the real step's fraction of peak, and the slowest dot shapes. Best-case times
are compared with the best peak sample (on a shared machine both are what it does undisturbed).
Fractions use the model-FLOP convention of bench/train_step.py.
"""
from __future__ import annotations

import argparse
import collections
import re
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import BASE, SHAPES, flops_per_token, matmul_peak  # noqa: E402

from jaxorder import config as config_lib  # noqa: E402
from jaxorder.data import make_data  # noqa: E402
from jaxorder.platform.host_memory import configure_host_malloc  # noqa: E402
from jaxorder.training.optimizer import make_optimizer  # noqa: E402
from jaxorder.training.state import init_state, make_placement  # noqa: E402
from jaxorder.training.step import compile_train_step  # noqa: E402

_DEF = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\]")
_DOT = re.compile(r"^\s*(?:ROOT )?%[\w.\-]+ = \w+\[[\d,]*\]\S* dot\(%([\w.\-]+), %([\w.\-]+)\)(.*)$")


def _dims(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def hlo_dots(hlo_text: str) -> collections.Counter:
    """(dtype, lhs shape, rhs shape, dimension numbers) -> count, over every dot of a compiled module."""
    shapes = {}
    for line in hlo_text.splitlines():
        m = _DEF.match(line)
        if m:
            shapes[m.group(1)] = (m.group(2), _dims(m.group(3)))
    for header in re.finditer(r"^%[\w.\-]+ \((.*)\) -> ", hlo_text, re.M):  # fused-computation parameters
        for name, dtype, dims in re.findall(r"([\w.\-]+): (\w+)\[([\d,]*)\]", header.group(1)):
            shapes[name] = (dtype, _dims(dims))
    dots = collections.Counter()
    for line in hlo_text.splitlines():
        m = _DOT.match(line)
        if not m:
            continue
        (dtype, lhs), (_, rhs) = shapes[m.group(1)], shapes[m.group(2)]
        attrs = m.group(3)

        def attr(name):
            a = re.search(name + r"=\{([\d,]*)\}", attrs)
            return _dims(a.group(1)) if a else ()
        dn = ((attr("lhs_contracting_dims"), attr("rhs_contracting_dims")),
              (attr("lhs_batch_dims"), attr("rhs_batch_dims")))
        dots[(dtype, lhs, rhs, dn)] += 1
    return dots


def dot_flops(lhs: tuple, rhs: tuple, dn) -> int:
    """2 x (all lhs dims: batch, free, contracting) x (rhs free dims)."""
    (_, rhs_contract), (_, rhs_batch) = dn
    count = 1
    for n in lhs:
        count *= n
    for i, n in enumerate(rhs):
        if i not in rhs_contract and i not in rhs_batch:
            count *= n
    return 2 * count


def time_dot(dtype: str, lhs: tuple, rhs: tuple, dn, budget_s: float = 0.3) -> float:
    """Minimum seconds of one jitted dot_general on these shapes."""
    dt = {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16, "f64": jnp.float64}[dtype]
    a = jax.random.normal(jax.random.key(0), lhs, dt)
    b = jax.random.normal(jax.random.key(1), rhs, dt)
    f = jax.jit(lambda a, b: jax.lax.dot_general(a, b, dn))
    f(a, b).block_until_ready()
    best, start, reps = float("inf"), time.perf_counter(), 0
    while reps < 5 or (time.perf_counter() - start < budget_s and reps < 200):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
        reps += 1
    return best


def bound_row(shape: str, objective: str, steps: int) -> dict:
    cfg = config_lib.load(BASE, SHAPES[shape][0].split() + [f"objective.name={objective}"])
    optimizer = make_optimizer(cfg)
    placement = make_placement(cfg, optimizer)
    with placement.active():
        state = jax.jit(lambda: init_state(cfg, optimizer), out_shardings=placement.state)()
        _, fpt = flops_per_token(cfg, state["params"])
        tokens = placement.put_batch(next(make_data(cfg.data, 0, 1).train_iterator())["tokens"])
        step = compile_train_step(cfg, optimizer, placement).lower(state, tokens).compile()
    dots = hlo_dots(step.as_text())
    timed = {key: time_dot(*key) for key in dots}
    for _ in range(2):
        state, _ = step(state, tokens)
    jax.block_until_ready(state)
    step_times, peaks = [], [matmul_peak()]
    for i in range(steps):
        t = time.perf_counter()
        state, _ = step(state, tokens)
        jax.block_until_ready(state)
        step_times.append(time.perf_counter() - t)
        if i % 10 == 9:
            peaks.append(matmul_peak())
    model_flops = fpt * cfg.data.batch_size * cfg.data.seq_len
    rows = sorted(((timed[k] * n, n, k) for k, n in dots.items()), reverse=True)
    return {"shape": shape, "objective": objective, "model_flops": model_flops,
            "dot_flops": sum(dot_flops(k[1], k[2], k[3]) * n for k, n in dots.items()),
            "dot_s": sum(r[0] for r in rows), "n_dots": sum(dots.values()),
            "step_s": statistics.median(step_times), "step_min_s": min(step_times),
            "peak": statistics.median(peaks), "peak_max": max(peaks), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="a,b", help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--objective", default="l2r")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--top", type=int, default=8, help="slowest dot shapes listed per row")
    args = ap.parse_args()
    print(f"# host malloc: {configure_host_malloc()}")
    for s in args.shapes.split(","):
        r = bound_row(s, args.objective, args.steps)
        gf = r["model_flops"] / 1e9
        print(f"shape {s} ({SHAPES[s][1]}), {r['objective']}: {gf:.2f} model GFLOP/step, "
              f"{r['dot_flops'] / 1e9:.2f} GFLOP in {r['n_dots']} dots; jnp.dot peak median "
              f"{r['peak']:.0f}, best {r['peak_max']:.0f} GFLOP/s")
        # best-case times against the best-case peak: both are what the machine does when not disturbed
        print(f"  dots alone (each at its best isolated speed): {r['dot_s'] * 1e3:.1f} ms "
              f"= {gf / r['dot_s'] / r['peak_max']:.2f} of best peak (upper bound for the step)")
        print(f"  real step: best {r['step_min_s'] * 1e3:.1f} ms = "
              f"{gf / r['step_min_s'] / r['peak_max']:.2f} of best peak; median {r['step_s'] * 1e3:.1f} ms = "
              f"{gf / r['step_s'] / r['peak']:.2f} of median peak; dots alone are "
              f"{r['dot_s'] / r['step_min_s']:.0%} of the best step")
        for t, n, (dtype, lhs, rhs, dn) in r["rows"][:args.top]:
            fl = dot_flops(lhs, rhs, dn)
            print(f"    {t * 1e3:7.2f} ms  {n:3d}x  {dtype}{list(lhs)} . {list(rhs)} contract {dn[0]} batch "
                  f"{dn[1]}: {fl / (t / n) / 1e9:.0f} GFLOP/s")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
