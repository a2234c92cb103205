"""Ahead-of-time sizing: lower and compile the train step for N devices without running it.

`jaxorder compile CONFIG --devices N [overrides]` re-runs this module in a subprocess with N forced
host devices (XLA_FLAGS must be set before JAX starts), builds the mesh and shardings exactly as
training does, compiles the step on abstract inputs (nothing is allocated) and prints the
per-device memory from the compiled executable's memory analysis, the FLOPs per step and the
compile time, so an out-of-memory configuration shows up before a pod is rented. With
model.positions=rope it also prints the lower bound on the RoPE base for model.max_len
(`model.rope.rope_base_lower_bound`) and warns in one line on stderr when model.rope_base is below it.

`--topology v5e-256` compiles for that Cloud TPU slice's compile-only devices (times mesh.dcn_data
slices) where this JAX can describe TPU topologies (libtpu installed); elsewhere it says so in one
line and prints the CPU estimate on as many forced host devices, labelled as such.
`compile.cache_dir` is honoured, and the report counts the persistent-cache hits.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax

from jaxorder import config as config_lib
from jaxorder import model
from jaxorder.config import ConfigError
from jaxorder.model.rope import rope_base_lower_bound
from jaxorder.platform import compile_cache, topology
from jaxorder.training.optimizer import make_optimizer
from jaxorder.training.state import make_placement
from jaxorder.training.step import compile_train_step

GIB = 1024 ** 3


def compile_report(config_path: str, overrides: list[str], devices: list | None = None,
                   target: str = "") -> dict:
    """The compiled train step's memory and FLOPs on `devices` (default: this process's devices)."""
    cfg = config_lib.load(config_path, overrides)
    # relative cache dirs resolve as for a run in train's default run dir, runs/<config name>
    cache_dir = compile_cache.configure(cfg.compile, Path.cwd() / "runs" / Path(config_path).stem)
    cache_events: dict[str, int] = {}
    if cache_dir:
        jax.monitoring.register_event_listener(
            lambda event, **kw: cache_events.update({event: cache_events.get(event, 0) + 1}))
    optimizer = make_optimizer(cfg)
    placement = make_placement(cfg, optimizer, devices)
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
    cache = ({"dir": cache_dir, "hits": cache_events.get("/jax/compilation_cache/cache_hits", 0),
              "requests": cache_events.get("/jax/compilation_cache/compile_requests_use_cache", 0)}
             if cache_dir else None)
    return {
        "config": config_path,
        "target": target or f"{placement.mesh.devices.flat[0].platform} ({n_devices} devices)",
        "objective": cfg.objective.name,
        "devices": n_devices,
        "mesh": dict(placement.mesh.shape),
        "slices": cfg.mesh.dcn_data,  # the mesh's data axis spans them
        "params": int(n_params),
        "non_embedding_params": int(n_params - model.count_params(
            {k: v for k, v in abstract_state["params"].items()
             if k in ("embed", "head", "target_embed", "pos_embed")})),
        "positions": cfg.model.positions,
        "rope_base": cfg.model.rope_base,
        "max_len": cfg.model.max_len,
        "head_dim": cfg.model.head_dim,
        # Men et al. 2024's lower bound on the base for max_len (None: no RoPE to bound)
        "rope_base_bound": (rope_base_lower_bound(cfg.model.head_dim, cfg.model.max_len)
                            if cfg.model.positions == "rope" else None),
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
        "compile_cache": cache,
    }


def format_report(r: dict) -> str:
    mesh = " x ".join(f"{k}={v}" for k, v in r["mesh"].items())
    slices = f", data over {r['slices']} slices" if r["slices"] > 1 else ""
    lines = [
        f"{r['config']} ({r['objective']}): {r['params'] / 1e6:,.2f}M params "
        f"({r['non_embedding_params'] / 1e6:,.2f}M non-embedding), {r['tokens_per_step']:,} tokens/step",
        f"target: {r['target']}",
        f"mesh {mesh} ({r['devices']} devices{slices}); compiled in {r['compile_seconds']:.1f} s",
        "per device:",
        f"  params            {r['param_gib_per_device']:9.3f} GiB",
        f"  optimizer state   {r['opt_state_gib_per_device']:9.3f} GiB",
        f"  arguments         {r['argument_gib_per_device']:9.3f} GiB (state + batch, donated)",
        f"  temporaries       {r['temp_gib_per_device']:9.3f} GiB (activations, gradients, workspace)",
        f"  peak estimate     {r['peak_gib_per_device']:9.3f} GiB (arguments + outputs + "
        f"temporaries - aliased)",
        f"  FLOPs per step    {r['flops_per_step_per_device']:.3e} (XLA cost analysis, per device)",
    ]
    if r["rope_base_bound"] is not None:
        lines.append(f"RoPE base {r['rope_base']:,g}; lower bound for max_len {r['max_len']:,} at head dim "
                     f"{r['head_dim']}: {r['rope_base_bound']:,.4g} (B_m >= 0 for all m < max_len, "
                     f"Men et al. 2024)")
    else:
        lines.append(f"positions: {r['positions']} (no RoPE base to bound)")
    if r["compile_cache"]:
        c = r["compile_cache"]
        lines.append(f"compilation cache {c['dir']}: {c['hits']} of {c['requests']} compilations loaded")
    return "\n".join(lines)


def run_in_subprocess(config_path: str, overrides: list[str], devices: int, as_json: bool,
                      tpu_slice: str = "") -> int:
    """Runs this module with `devices` forced host devices; returns its exit code."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    cmd = ([sys.executable, "-m", "jaxorder.platform.aot", config_path, *overrides]
           + (["--json"] if as_json else []) + (["--topology", tpu_slice] if tpu_slice else []))
    return subprocess.call(cmd, env=env)


def targeted_report(config_path: str, overrides: list[str], tpu_slice: str) -> dict:
    """compile_report for the TPU slice `tpu_slice` (x mesh.dcn_data), or for this process's forced
    host devices, labelled a CPU estimate, when there is no TPU compiler here."""
    if not tpu_slice:
        return compile_report(config_path, overrides)
    tpu = topology.parse_slice(tpu_slice)
    slices = config_lib.load(config_path, overrides).mesh.dcn_data
    name = tpu.name if slices == 1 else f"{slices} x {tpu.name}"
    try:
        devices = topology.devices(tpu, slices)
    except topology.TopologyUnavailable as e:
        n = jax.device_count()
        print(f"--topology {name}: no TPU compiler here ({e}); falling back to a CPU estimate on {n} forced "
              f"host devices", file=sys.stderr)
        label = f"CPU estimate for {name} (XLA:CPU on {n} forced host devices, not a TPU compile)"
        return compile_report(config_path, overrides, target=label)
    label = f"{name} (TPU topology {tpu.topology_name})"
    return compile_report(config_path, overrides, devices, target=label)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxorder.platform.aot")
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--topology", default="")
    args = parser.parse_args(argv)

    try:
        report = targeted_report(args.config, args.overrides, args.topology)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report) if args.json else format_report(report))
    warning = rope_base_warning(report)
    if warning:
        print(warning, file=sys.stderr)
    return 0


def rope_base_warning(r: dict) -> str:
    """One line when model.rope_base is below the long-context bound for max_len, else ''."""
    if r["rope_base_bound"] is None or r["rope_base"] >= r["rope_base_bound"]:
        return ""
    return (f"warning: model.rope_base={r['rope_base']:g} is below {r['rope_base_bound']:.4g}, the lower "
            f"bound for max_len {r['max_len']} (Men et al. 2024: some m < max_len has B_m < 0); raise "
            f"model.rope_base or lower model.max_len")


def cmd_compile(args: argparse.Namespace) -> int:
    cfg = config_lib.load(args.config, args.overrides)  # a bad config fails here, in one line
    if args.topology and args.devices is not None:
        raise ConfigError("give --devices N or --topology SLICE, not both (a slice sets the device count)")
    devices = 8 if args.devices is None else args.devices
    if args.topology:
        devices = topology.parse_slice(args.topology).chips * cfg.mesh.dcn_data
    if devices < 1:
        raise ConfigError(f"--devices must be >= 1, got {devices}")
    return run_in_subprocess(args.config, args.overrides, devices, args.json, args.topology)


def add_parser(sub: Any, epilog_overrides: str) -> None:
    """The `jaxorder compile` subcommand."""
    p = sub.add_parser("compile",
                       help="compile the train step ahead of time for N devices and print its memory",
                       description="Lower and compile the train step for N forced host devices (or a Cloud "
                                   "TPU slice's compile-only devices, --topology) without running it "
                                   "(nothing is allocated), and print per-device parameter, optimizer and "
                                   "activation memory from the compiled executable, FLOPs per step and "
                                   "compile time: an out-of-memory config shows up before a pod is rented.",
                       epilog="Mesh overrides: mesh.data, mesh.fsdp, mesh.tensor (-1 = fill), mesh.dcn_data "
                              "(slices). " + epilog_overrides)
    p.add_argument("config", help="experiment YAML, e.g. configs/experiments/1b.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument("--devices", type=int, help="number of (forced host) devices (default 8)")
    p.add_argument("--topology", default="",
                   help="a Cloud TPU slice, e.g. v5e-256, v5p-128, v4-32, v6e-8 (times mesh.dcn_data "
                        "slices): compile for its TPU devices (needs libtpu; otherwise a labelled CPU "
                        "estimate on as many host devices)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=cmd_compile)


if __name__ == "__main__":
    sys.exit(main())
