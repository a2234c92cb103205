"""Where a masked-sampler step's time goes at batch 1: a per-op profile of one compiled decode.

    python bench/decoding_step_profile.py [SETTING] [--top 30]

SETTING is one of `decoding_step_cost.SETTINGS` (default "threshold 0.9, dual"). Decodes 256 tokens
(blocks of 32) once to compile, then once under `jax.profiler.trace` with XLA:CPU's per-op trace
events on, and prints the ops by time per decode step (microseconds, summed over the threads that
ran them), with their output shapes. The profiler slows every op a little, so read the shares,
not the totals. Needs the mdm run of configs/sweeps/decoding.yaml in runs/sweeps/decoding/mdm.
"""
from __future__ import annotations

import os

# Per-op trace events of the XLA:CPU runtime; must be set before jax is imported.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

import argparse  # noqa: E402
import collections  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench modules

import jax  # noqa: E402
from decoding_common import BLOCK, LENGTH, REPO, machine_line, unprompted  # noqa: E402
from decoding_step_cost import SETTINGS  # noqa: E402

from jaxorder import sampling  # noqa: E402
from jaxorder.evaluation.runs import load_params  # noqa: E402


def op_shapes(hlo_text: str) -> dict[str, str]:
    """Instruction name -> its output shape, from compiled HLO text."""
    shapes = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*%?(\S+) = (\S+) ", line)
        if m:
            shapes[m.group(1)] = m.group(2).split("{")[0]
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("setting", nargs="?", default="threshold 0.9, dual", choices=list(SETTINGS))
    parser.add_argument("--top", type=int, default=30, help="ops to print")
    args = parser.parse_args()
    cfg, params, _ = load_params(REPO / "runs" / "sweeps" / "decoding" / "mdm")
    rule, extra = SETTINGS[args.setting]
    sampler = sampling.resolve(cfg, rule)
    opts = sampling.make_options(sampler, {"steps": LENGTH, "block_length": BLOCK, **extra})
    rows = unprompted(cfg, 1)
    compiled = sampling.compile_sample(params, cfg, rows, jax.random.key(1), sampler, opts)
    out = jax.block_until_ready(compiled())
    steps = int(out["nfe"])
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled())
            wall = time.perf_counter() - t0
        profile = jax.profiler.ProfileData.from_file(str(next(Path(trace_dir).rglob("*.xplane.pb"))))
        per_op, calls = collections.Counter(), collections.Counter()
        for plane in profile.planes:
            for line in plane.lines:
                if not line.name.startswith("tf_XLAEigen"):  # the threads that run the ops
                    continue
                for event in line.events:
                    if event.name != "ThunkExecutor::Execute":
                        per_op[event.name] += event.duration_ns
                        calls[event.name] += 1
    shapes = op_shapes(compiled.compiled.as_text())
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine_line()}")
    print(f"{args.setting}: {steps} steps, {wall / steps * 1e3:.2f} ms per step under the profiler; "
          f"ops sum to {sum(per_op.values()) / steps / 1e3:.0f} us per step")
    print(f"{'us/step':>8} {'calls/step':>10}  {'op':<32} output")
    for name, ns in per_op.most_common(args.top):
        print(f"{ns / steps / 1e3:8.1f} {calls[name] / steps:10.2f}  {name:<32} {shapes.get(name, '')}")


if __name__ == "__main__":
    main()
