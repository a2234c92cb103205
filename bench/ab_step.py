"""Interleaved A/B of the jitted train step of two source trees, in one process (issue 7).

    git archive HEAD | tar -x -C /tmp/ab_base          # the "A" tree (e.g. the last commit)
    python bench/ab_step.py /tmp/ab_base . --shape a --objective l2r
    python bench/ab_step.py /tmp/ab_base . --shape b --steps 10 --rounds 3

On a shared machine absolute step times drift with the load of other processes; a ratio of two
step functions timed alternately in the same process does not. Each tree's `jaxorder` (and
`pallas_kernels`) is imported in turn under its own sys.path, its train step built exactly as
`bench/train_step.py` builds it (same config, placement, donation) and compiled ahead of time;
then the compiled steps run in alternating chunks. Per round: the median step time of each
tree; reported: B/A per round and the median ratio (< 1: B is faster).

Numerics: both trees start from their own `init_state` (same seed); if the parameter trees
agree, the first-step losses and the parameters after `--check-steps` steps on the same batch
are compared and the max absolute differences printed.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("jaxorder", "pallas_kernels")


def _purge() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in PACKAGES:
            del sys.modules[name]


def build(tree: Path, shape: str, objective: str, overrides: list[str], options: dict) -> dict:
    """Imports `tree`'s jaxorder and returns its compiled step, a fresh-state factory and a batch."""
    _purge()
    sys.path.insert(0, str(tree))
    try:
        config_lib = importlib.import_module("jaxorder.config")
        data_lib = importlib.import_module("jaxorder.data")
        train = _training_api()
        shapes = _shapes()
        cfg = config_lib.load(tree / "configs" / "experiments" / "smoke.yaml",
                              shapes[shape].split() + [f"objective.name={objective}"] + overrides)
        optimizer = train.make_optimizer(cfg)
        placement = train.make_placement(cfg, optimizer)
        with placement.active():
            init = jax.jit(lambda: train.init_state(cfg, optimizer), out_shardings=placement.state)
            tokens = placement.put_batch(next(data_lib.make_data(cfg.data, 0, 1).train_iterator())["tokens"])
            state = init()
            t = time.perf_counter()
            lowered = train.compile_train_step(cfg, optimizer, placement).lower(state, tokens)
            step = lowered.compile(options or None)
            compile_s = time.perf_counter() - t
    finally:
        sys.path.remove(str(tree))
        _purge()
    return {"step": step, "init": init, "tokens": tokens, "compile_s": compile_s}


def _training_api() -> SimpleNamespace:
    """make_optimizer, make_placement, init_state, compile_train_step of the imported tree (the
    jaxorder.training package, or the single jaxorder.train module of trees before it)."""
    if importlib.util.find_spec("jaxorder.training") is None:
        return importlib.import_module("jaxorder.train")
    return SimpleNamespace(**{name: getattr(importlib.import_module(f"jaxorder.training.{mod}"), name)
                              for mod, name in (("optimizer", "make_optimizer"), ("state", "make_placement"),
                                                ("state", "init_state"), ("step", "compile_train_step"))})


def _shapes() -> dict:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return {k: v[0] for k, v in importlib.import_module("train_step").SHAPES.items()}
    finally:
        sys.path.remove(str(ROOT / "bench"))
        sys.modules.pop("train_step", None)


def time_steps(run: dict, state, n: int):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        state, metrics = run["step"](state, run["tokens"])
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t)
    return state, times


def check_numerics(a: dict, b: dict, steps: int) -> None:
    sa, sb = a["init"](), b["init"]()
    if jax.tree.structure(sa) != jax.tree.structure(sb):
        print("# numerics: state trees differ; not compared")
        return
    diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(sa["params"]), jax.tree.leaves(sb["params"])))
    print(f"# numerics: initial params max |A - B| = {diff:.3g}")
    for i in range(steps):
        sa, ma = a["step"](sa, a["tokens"])
        sb, mb = b["step"](sb, b["tokens"])
        la, lb = float(ma["loss"]), float(mb["loss"])
        print(f"# numerics: step {i + 1} loss A {la:.7f} B {lb:.7f} |diff| {abs(la - lb):.3g} "
              f"(rel {abs(la - lb) / abs(la):.2g}); grad_norm A {float(ma['grad_norm']):.6f} B "
              f"{float(mb['grad_norm']):.6f}")
    diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(sa["params"]), jax.tree.leaves(sb["params"])))
    print(f"# numerics: params after {steps} steps max |A - B| = {diff:.3g}")


def _options(items: list[str]) -> dict:
    """FLAG=VALUE strings -> compiler options ('true'/'false' become booleans)."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", type=Path, help="source tree A (baseline)")
    ap.add_argument("b", type=Path, help="source tree B (candidate)")
    ap.add_argument("--shape", default="a", help="a shape of bench/train_step.py (a, b, small, smoke)")
    ap.add_argument("--objective", default="l2r")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per tree per round")
    ap.add_argument("--chunk", type=int, default=1, help="steps of one tree before switching to the other")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--check-steps", type=int, default=3, help="steps compared for numerics (0: skip)")
    ap.add_argument("--set", nargs="*", default=[], help="extra dotted config overrides for both trees")
    ap.add_argument("--a-options", nargs="*", default=[], metavar="FLAG=VALUE",
                    help="XLA compiler options for A's step only (e.g. xla_cpu_use_onednn=true)")
    ap.add_argument("--b-options", nargs="*", default=[], metavar="FLAG=VALUE", help="the same for B")
    args = ap.parse_args()
    # this tree's host_memory: both trees' steps share the process
    from jaxorder.platform.host_memory import configure_host_malloc

    print(f"# host malloc: {configure_host_malloc()}")
    a = build(args.a.resolve(), args.shape, args.objective, args.set, _options(args.a_options))
    b = build(args.b.resolve(), args.shape, args.objective, args.set, _options(args.b_options))
    print(f"# A {args.a} {' '.join(args.a_options)} (compile {a['compile_s']:.1f} s)  "
          f"B {args.b} {' '.join(args.b_options)} (compile {b['compile_s']:.1f} s); shape "
          f"{args.shape}, {args.objective}")
    if args.check_steps:
        check_numerics(a, b, args.check_steps)
    sa, sb = a["init"](), b["init"]()
    sa, _ = time_steps(a, sa, 2)  # warm-up
    sb, _ = time_steps(b, sb, 2)
    ratios, min_ratios = [], []
    for r in range(args.rounds):
        ta, tb = [], []
        for _ in range(max(1, args.steps // args.chunk)):
            sa, t = time_steps(a, sa, args.chunk)
            ta += t
            sb, t = time_steps(b, sb, args.chunk)
            tb += t
        ma, mb = statistics.median(ta), statistics.median(tb)
        ratios.append(mb / ma)
        min_ratios.append(min(tb) / min(ta))
        print(f"round {r + 1}: median A {ma * 1e3:.2f} ms  B {mb * 1e3:.2f} ms  B/A {mb / ma:.3f};  "
              f"min A {min(ta) * 1e3:.2f} ms  B {min(tb) * 1e3:.2f} ms  B/A {min(tb) / min(ta):.3f}",
              flush=True)
    print(f"B/A of medians, median over {args.rounds} rounds: {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f}); B/A of minima: {statistics.median(min_ratios):.3f} "
          f"(range {min(min_ratios):.3f}-{max(min_ratios):.3f})")


if __name__ == "__main__":
    main()
