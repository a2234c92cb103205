"""Ahead-of-time sizing: lower and compile the train step for N devices without running it.

`jaxorder compile CONFIG --devices N [overrides]` re-runs this module in a subprocess with N forced
host devices (XLA_FLAGS must be set before JAX starts), builds the mesh and shardings exactly as
training does, compiles the step on abstract inputs (nothing is allocated) and prints the
per-device memory from the compiled executable's memory analysis, the FLOPs per step and the
compile time, so an out-of-memory configuration shows up before a pod is rented.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax

from jaxorder import config as config_lib
from jaxorder import model
from jaxorder.config import ConfigError
from jaxorder.training.optimizer import make_optimizer
from jaxorder.training.state import make_placement
from jaxorder.training.step import compile_train_step

GIB = 1024 ** 3


def compile_report(config_path: str, overrides: list[str]) -> dict:
    cfg = config_lib.load(config_path, overrides)
    optimizer = make_optimizer(cfg)
    placement = make_placement(cfg, optimizer)
    with placement.active():
        abstract_state = placement.abstract_state(cfg, optimizer)
        batch = jax.ShapeDtypeStruct((cfg.data.batch_size, cfg.data.seq_len), jax.numpy.int32,
                                     sharding=placement.batch)
        started = time.time()
        lowered = compile_train_step(cfg, optimizer, placement).lower(abstract_state, batch)
        compiled = lowered.compile()
        compile_seconds = time.time() - started
    n_params = sum(x.size for x in jax.tree.leaves(abstract_state["params"]))
    n_devices = placement.mesh.size

    def per_device_bytes(tree) -> float:
        total = 0
        for leaf in jax.tree.leaves(tree):
            shard = leaf.sharding.shard_shape(leaf.shape)
            total += leaf.dtype.itemsize * int(jax.numpy.prod(jax.numpy.asarray(shard)))
        return total

    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    return {
        "config": config_path,
        "objective": cfg.objective.name,
        "devices": n_devices,
        "mesh": dict(placement.mesh.shape),
        "params": int(n_params),
        "non_embedding_params": int(n_params - model.count_params(
            {k: v for k, v in abstract_state["params"].items() if k in ("embed", "head", "target_embed")})),
        "tokens_per_step": cfg.data.batch_size * cfg.data.seq_len,
        "param_gib_per_device": per_device_bytes(abstract_state["params"]) / GIB,
        "opt_state_gib_per_device": per_device_bytes(abstract_state["opt_state"]) / GIB,
        "argument_gib_per_device": mem.argument_size_in_bytes / GIB,
        "output_gib_per_device": mem.output_size_in_bytes / GIB,
        "temp_gib_per_device": mem.temp_size_in_bytes / GIB,
        "alias_gib_per_device": mem.alias_size_in_bytes / GIB,
        "peak_gib_per_device": (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                                - mem.alias_size_in_bytes) / GIB,
        "flops_per_step_per_device": flops,
        "compile_seconds": compile_seconds,
    }


def format_report(r: dict) -> str:
    mesh = " x ".join(f"{k}={v}" for k, v in r["mesh"].items())
    lines = [
        f"{r['config']} ({r['objective']}): {r['params'] / 1e6:,.2f}M params "
        f"({r['non_embedding_params'] / 1e6:,.2f}M non-embedding), {r['tokens_per_step']:,} tokens/step",
        f"mesh {mesh} ({r['devices']} devices); compiled in {r['compile_seconds']:.1f} s",
        "per device:",
        f"  params            {r['param_gib_per_device']:9.3f} GiB",
        f"  optimizer state   {r['opt_state_gib_per_device']:9.3f} GiB",
        f"  arguments         {r['argument_gib_per_device']:9.3f} GiB (state + batch, donated)",
        f"  temporaries       {r['temp_gib_per_device']:9.3f} GiB (activations, gradients, workspace)",
        f"  peak estimate     {r['peak_gib_per_device']:9.3f} GiB (arguments + outputs + "
        f"temporaries - aliased)",
        f"  FLOPs per step    {r['flops_per_step_per_device']:.3e} (XLA cost analysis, per device)",
    ]
    return "\n".join(lines)


def run_in_subprocess(config_path: str, overrides: list[str], devices: int, as_json: bool) -> int:
    """Runs this module with `devices` forced host devices; returns its exit code."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    cmd = ([sys.executable, "-m", "jaxorder.platform.aot", config_path, *overrides]
           + (["--json"] if as_json else []))
    return subprocess.call(cmd, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxorder.platform.aot")
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    try:
        report = compile_report(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
