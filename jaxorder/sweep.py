"""Sweeps: named and gridded override sets over a base config, run one after another, then reported.

A sweep file:
    name: orders_study
    base: ../experiments/study.yaml     # relative to the sweep file
    overrides: [train.steps=300]        # applied to every run (optional)
    axes:                               # optional: product of named override sets
      - {l2r: [objective.name=l2r], bd3_b4: [objective.name=bd3, objective.block_size=4]}
      - {corpus: [], markov: [data.source=markov]}
    grid:                               # optional: cartesian product of dotted keys
      objective.name: [l2r, r2l, mdm]
    orders: l2r,r2l,random:4,greedy     # optional: fixed-order scores of mdm/ao_ar/latent_order runs
    order_windows: 16                   # validation windows for those scores
    attention_summary: false            # optional: slash-dominant head fraction per run
Runs live in OUT/<run name>; finished runs are skipped and partial ones resume.
"""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Sequence

from jaxorder import config as config_lib
from jaxorder.config import ConfigError
from jaxorder.distributed import initialize, is_main_process
from jaxorder.report import text_table, write_report
from jaxorder.train import eval_run, log, train

SWEEP_KEYS = ("name", "base", "overrides", "axes", "grid", "orders", "order_windows", "attention_summary")


def load_sweep(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    spec = config_lib.read_yaml_mapping(path, "a sweep")
    unknown = set(spec) - set(SWEEP_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown sweep keys {sorted(unknown)}; a sweep has {', '.join(SWEEP_KEYS)}")
    if "base" not in spec:
        raise ConfigError(f"{path}: a sweep needs 'base: CONFIG.yaml'")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{path}: 'grid' must map dotted keys to non-empty lists of values")
    axes = spec.get("axes") or []
    if not isinstance(axes, list) or not all(
            isinstance(a, dict) and a and all(isinstance(v, list) for v in a.values()) for a in axes):
        raise ConfigError(f"{path}: 'axes' must be a list of mappings from run-name parts to override lists")
    orders = spec.get("orders")
    if orders is not None:
        from jaxorder.fixed_orders import parse_orders

        parse_orders(str(orders))
    return {"name": spec.get("name", path.stem), "base": (path.parent / spec["base"]).resolve(),
            "overrides": list(spec.get("overrides") or []), "grid": grid, "axes": axes,
            "orders": orders, "order_windows": int(spec.get("order_windows", 16)),
            "attention_summary": bool(spec.get("attention_summary", False))}


def _grid_name(assignment: dict) -> list[str]:
    return [str(v) if k == "objective.name" else f"{k.split('.')[-1]}-{v}" for k, v in assignment.items()]


def expand(spec: dict, extra_overrides: Sequence[str] = ()) -> list[tuple[str, config_lib.Config]]:
    """(run name, validated config) for every point of axes x grid; errors before anything runs."""
    keys = list(spec["grid"])
    axis_points = itertools.product(*(list(axis.items()) for axis in spec["axes"]))
    runs = []
    for named in axis_points:
        for values in itertools.product(*(spec["grid"][k] for k in keys)):
            assignment = dict(zip(keys, values))
            grid_overrides = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in assignment.items()]
            axis_overrides = [ov for _, ovs in named for ov in ovs]
            name = "_".join([n for n, _ in named] + _grid_name(assignment)) or "base"
            cfg = config_lib.load(spec["base"], [*spec["overrides"], *axis_overrides, *grid_overrides,
                                                 *extra_overrides])
            runs.append((name, cfg))
    names = [n for n, _ in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep run names repeat ({', '.join(sorted({n for n in names if names.count(n) > 1}))}); "
                          f"give the axes distinct names")
    return runs


def _extras(spec: dict, name: str, cfg: config_lib.Config, run_dir: Path) -> dict:
    """Fixed-order scores and the attention summary of one finished run, cached in the run dir."""
    from jaxorder.fixed_orders import ORDER_SCORED

    cache = run_dir / "sweep_extras.json"
    key = {"orders": spec["orders"], "order_windows": spec["order_windows"],
           "attention_summary": spec["attention_summary"], "slash_threshold": cfg.eval.slash_threshold}
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["extras"]
    extras: dict = {}
    if spec["orders"] and cfg.objective.name in ORDER_SCORED:
        orders = ",".join(o for o in str(spec["orders"]).split(",")
                          if cfg.objective.name == "mdm" or o.strip() != "greedy")
        log(f"[{name}] fixed-order scores ({orders}) on {spec['order_windows']} windows")
        scored = eval_run(run_dir, orders, spec["order_windows"])["orders"]
        extras["orders"] = {label: r["bpb"] for label, r in scored.items()}
    if spec["attention_summary"]:
        from jaxorder.analysis.attention import mask_kind_for, summarize_run

        try:
            mask_kind_for(cfg.objective.name)
        except ConfigError:
            pass  # no attention analysis for this mask kind
        else:
            summary = summarize_run(run_dir, threshold=cfg.eval.slash_threshold)
            extras["slash_dominant_fraction"] = summary["slash_dominant_fraction"]
    if is_main_process():
        cache.write_text(json.dumps({"key": key, "extras": extras}) + "\n")
    return extras


def run_sweep(path: Path, out_dir: Path | None = None, overrides: Sequence[str] = (),
              table_to_stderr: bool = False) -> list[dict]:
    spec = load_sweep(path)
    out_dir = Path(out_dir) if out_dir else Path("runs") / "sweeps" / spec["name"]
    runs = expand(spec, overrides)
    initialize(runs[0][1].distributed)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"sweep {spec['name']}: {len(runs)} runs -> {out_dir}", file=sys.stderr, flush=True)
    results, run_dirs = [], {}
    for name, cfg in runs:
        run_dirs[name] = out_dir / name
        result = train(cfg, run_dirs[name], name=name)
        results.append({**result, **_extras(spec, name, cfg, run_dirs[name])})
    if not is_main_process():
        return results
    write_report(results, run_dirs, out_dir, f"sweep {spec['name']}")
    print(text_table(results), end="", file=sys.stderr if table_to_stderr else sys.stdout)
    print(f"wrote {out_dir / 'results.md'}, {out_dir / 'results.csv'}, {out_dir / 'val_bpb.png'}",
          file=sys.stderr, flush=True)
    return results
