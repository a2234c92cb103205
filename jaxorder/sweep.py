"""Sweeps: a grid of dotted overrides over a base config, run one after another, then reported.

A sweep file:
    name: orders_smoke
    base: ../experiments/smoke.yaml     # relative to the sweep file
    overrides: [train.steps=300]        # applied to every run (optional)
    grid:                               # cartesian product of dotted keys
      objective.name: [l2r, r2l, mdm]
Runs live in OUT/<run name>; finished runs are skipped and partial ones resume.
"""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Sequence

import yaml

from jaxorder import config as config_lib
from jaxorder.config import ConfigError
from jaxorder.distributed import initialize, is_main_process
from jaxorder.report import text_table, write_report
from jaxorder.train import train

SWEEP_KEYS = ("name", "base", "overrides", "grid")


def load_sweep(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    unknown = set(spec) - set(SWEEP_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown sweep keys {sorted(unknown)}; a sweep has {', '.join(SWEEP_KEYS)}")
    if "base" not in spec:
        raise ConfigError(f"{path}: a sweep needs 'base: CONFIG.yaml'")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{path}: 'grid' must map dotted keys to non-empty lists of values")
    return {"name": spec.get("name", path.stem), "base": (path.parent / spec["base"]).resolve(),
            "overrides": list(spec.get("overrides") or []), "grid": grid}


def _run_name(assignment: dict) -> str:
    parts = [str(v) if k == "objective.name" else f"{k.split('.')[-1]}-{v}" for k, v in assignment.items()]
    return "_".join(parts) or "base"


def expand(spec: dict, extra_overrides: Sequence[str] = ()) -> list[tuple[str, config_lib.Config]]:
    """(run name, validated config) for every grid point; errors before anything runs."""
    keys = list(spec["grid"])
    runs = []
    for values in itertools.product(*(spec["grid"][k] for k in keys)):
        assignment = dict(zip(keys, values))
        grid_overrides = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in assignment.items()]
        cfg = config_lib.load(spec["base"], [*spec["overrides"], *grid_overrides, *extra_overrides])
        runs.append((_run_name(assignment), cfg))
    return runs


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
        results.append(train(cfg, run_dirs[name], name=name))
    if not is_main_process():
        return results
    write_report(results, run_dirs, out_dir, f"sweep {spec['name']}")
    print(text_table(results), end="", file=sys.stderr if table_to_stderr else sys.stdout)
    print(f"wrote {out_dir / 'results.md'}, {out_dir / 'results.csv'}, {out_dir / 'val_bpb.png'}",
          file=sys.stderr, flush=True)
    return results
