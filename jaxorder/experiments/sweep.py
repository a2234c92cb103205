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
    order_windows: 64                   # validation windows for those scores (default 64)
    attention_summary: false            # optional: slash-dominant head fraction per run
    curve: objective.block_size         # optional: report bits/byte vs this key (block_curve.png) for the
                                        #   runs of the axis whose parts set it; that axis's other parts
                                        #   are reference lines, the other axes' parts name the panels
    scaling:                            # optional: compute scaling (scaling.png, fits, multiplier)
      sizes: model.d_model              #   the key the size axis sets (default model.d_model); the other
                                        #   axes' parts name the series (e.g. l2r, mdm, bd3_b4)
      tokens_per_param: 20              #   train.steps = ceil(20 * matmul params / tokens per step)
      reference: l2r                    #   the series the compute multiplier is relative to
    generate:                           # optional: the sampler table (jaxorder eval --generate per sampler)
      num_samples: 8                    #   unprompted samples per run and sampler
      samplers: [confidence, ar]        #   each run uses those its objective has (default: its default one)
      steps: [16, 32]                   #   any sampler option (jaxorder.sampling.SamplerOptions), a value
      threshold: 0.8                    #   or a list; a sampler gets the options it takes, one table row
                                        #   per combination of the listed values (steps default: the window)
      draft: [l2r_small]                #   speculative sampler: a relative draft run dir names a run of
                                        #   this sweep (OUT/<name>); an absolute path is used as is
Runs live in OUT/<run name>; finished runs are skipped and partial ones resume. The extras (fixed
orders, attention summary, samples) run after all training, so the l2r run that judges the
samples of the others exists by then.
"""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Sequence

from jaxorder import config as config_lib
from jaxorder import sampling
from jaxorder.config import ConfigError
from jaxorder.evaluation.fixed_orders import parse_orders, scorable, supported_specs
from jaxorder.evaluation.runs import companion_dirs, eval_run
from jaxorder.evaluation.sample_quality import generation_quality
from jaxorder.experiments.analysis.attention import summarize_run, supported
from jaxorder.experiments.epochs import posterior_weights
from jaxorder.experiments.report import sampler_columns, sampler_rows, text_table, write_report
from jaxorder.experiments.restarts import total_steps, train_with_restarts
from jaxorder.experiments.scaling import (
    compute_optimal_steps,
    measure_step_seconds,
    model_size,
    training_flops,
)
from jaxorder.platform import progress
from jaxorder.platform.distributed import initialize, is_main_process, log

SWEEP_KEYS = ("name", "base", "overrides", "axes", "grid", "orders", "order_windows", "attention_summary",
              "generate", "curve", "scaling")
SCALING_KEYS = ("sizes", "tokens_per_param", "reference")
GENERATE_KEYS = ("num_samples", "samplers")  # plus any sampler option name


def _generate_spec(path: Path, value) -> dict | None:
    """The validated `generate:` mapping (None when absent): num_samples, samplers and options, each
    option a list of values."""
    if value is None:
        return None
    keys = GENERATE_KEYS + sampling.OPTION_NAMES
    if not isinstance(value, dict) or set(value) - set(keys):
        unknown = sorted(set(value) - set(keys)) if isinstance(value, dict) else value
        raise ConfigError(f"{path}: 'generate' must be a mapping of {', '.join(keys)}; got {unknown}")
    samplers = value.get("samplers")
    if samplers is not None and (not isinstance(samplers, list)
                                 or not all(isinstance(x, str) for x in samplers)):
        raise ConfigError(f"{path}: 'generate.samplers' must be a list of sampler names, "
                          f"e.g. [confidence, ar]")
    known = sampling.sampler_names()
    unknown = sorted(set(samplers or ()) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown samplers {unknown} in 'generate.samplers'; "
                          f"known: {', '.join(known)}")
    num_samples = value.get("num_samples", 8)
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ConfigError(f"{path}: 'generate.num_samples' must be a positive integer, got {num_samples!r}")
    candidates = [s for s in sampling.all_samplers() if samplers is None or s.name in samplers]
    options = {}
    for name in sampling.OPTION_NAMES:
        if name not in value:
            continue
        values = value[name] if isinstance(value[name], list) else [value[name]]
        takers = [s for s in candidates if name in s.options]
        if not values or not takers:
            raise ConfigError(f"{path}: 'generate.{name}' needs a value (or a list) and a sampler that takes "
                              f"it; none of {', '.join(sorted({s.name for s in candidates}))} does")
        for v in values:  # each value must be a valid setting for the samplers that take it
            sampling.make_options(takers[0], {name: v})
        options[name] = values
    return {"num_samples": num_samples, "samplers": samplers, "options": options}


def _scaling_spec(path: Path, value) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - set(SCALING_KEYS):
        raise ConfigError(f"{path}: 'scaling' must be a mapping of {', '.join(SCALING_KEYS)}; got {value!r}")
    tpp = value.get("tokens_per_param")
    if tpp is not None and (isinstance(tpp, bool) or not isinstance(tpp, (int, float)) or tpp <= 0):
        raise ConfigError(f"{path}: 'scaling.tokens_per_param' must be a positive number (e.g. 20), "
                          f"got {tpp!r}")
    return {"sizes": str(value.get("sizes", "model.d_model")), "tokens_per_param": tpp,
            "reference": value.get("reference")}


def axis_setting(spec: dict, key: str) -> int:
    """Index of the axis whose parts set the dotted `key` (a ConfigError naming the fix when none does)."""
    for i, axis in enumerate(spec["axes"]):
        if any(ov.split("=", 1)[0].strip() == key for ovs in axis.values() for ov in ovs):
            return i
    raise ConfigError(f"no axis of sweep {spec['name']} sets {key}; add an axis whose parts set {key}=VALUE")


def run_parts(spec: dict) -> dict[str, list[tuple[str, list[str]]]]:
    """Run name -> its axis parts [(part name, overrides)], in the order `expand` names them."""
    parts = {}
    for named in itertools.product(*(list(axis.items()) for axis in spec["axes"])):
        for values in itertools.product(*spec["grid"].values()):
            name = "_".join([n for n, _ in named] + _grid_name(dict(zip(spec["grid"], values)))) or "base"
            parts[name] = list(named)
    return parts


def series_labels(spec: dict, key: str) -> dict[str, tuple[str, str, bool]]:
    """Run name -> (group: its parts on the other axes, label: its part on `key`'s axis, whether that
    part sets `key`)."""
    axis = axis_setting(spec, key)
    out = {}
    for name, named in run_parts(spec).items():
        part, overrides = named[axis]
        group = "_".join(n for i, (n, _) in enumerate(named) if i != axis)
        out[name] = (group, part, any(ov.split("=", 1)[0].strip() == key for ov in overrides))
    return out


def config_value(cfg: config_lib.Config, key: str):
    value = cfg
    for attr in key.split("."):
        value = getattr(value, attr)
    return value


def load_sweep(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    spec = config_lib.read_yaml_mapping(path, "a sweep")
    unknown = set(spec) - set(SWEEP_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown sweep keys {sorted(unknown)}; a sweep has "
                          f"{', '.join(SWEEP_KEYS)}")
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
        parse_orders(str(orders))
    return {"name": spec.get("name", path.stem), "base": (path.parent / spec["base"]).resolve(),
            "overrides": list(spec.get("overrides") or []), "grid": grid, "axes": axes,
            "orders": orders, "order_windows": int(spec.get("order_windows", 64)),
            "attention_summary": bool(spec.get("attention_summary", False)),
            "generate": _generate_spec(path, spec.get("generate")),
            "curve": None if spec.get("curve") is None else str(spec["curve"]),
            "scaling": _scaling_spec(path, spec.get("scaling"))}


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
            grid_overrides = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                              for k, v in assignment.items()]
            axis_overrides = [ov for _, ovs in named for ov in ovs]
            name = "_".join([n for n, _ in named] + _grid_name(assignment)) or "base"
            overrides = [*spec["overrides"], *axis_overrides, *grid_overrides, *extra_overrides]
            cfg = config_lib.load(spec["base"], overrides)
            if spec.get("scaling") and spec["scaling"]["tokens_per_param"]:  # compute-optimal budget
                steps = compute_optimal_steps(cfg, spec["scaling"]["tokens_per_param"])
                cfg = config_lib.load(spec["base"], [*overrides, f"train.steps={steps}"])
            runs.append((name, cfg))
    names = [n for n, _ in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep run names repeat "
                          f"({', '.join(sorted({n for n in names if names.count(n) > 1}))}); give "
                          f"the axes distinct names")
    return runs


def _extras(spec: dict, name: str, cfg: config_lib.Config, run_dir: Path) -> dict:
    """Fixed-order scores and the attention summary of one finished run, cached in the run dir."""
    cache = run_dir / "sweep_extras.json"
    # version 2: order scores carry their s.e. (older caches are recomputed)
    key = {"version": 2, "orders": spec["orders"], "order_windows": spec["order_windows"],
           "attention_summary": spec["attention_summary"], "slash_threshold": cfg.eval.slash_threshold,
           "generate": spec["generate"]}
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["extras"]
    extras: dict = {}
    if spec["orders"] and scorable(cfg):
        orders = ",".join(o.label for o in supported_specs(cfg, parse_orders(str(spec["orders"]))))
        log(f"[{name}] fixed-order scores ({orders}) on {spec['order_windows']} windows")
        scored = eval_run(run_dir, orders, spec["order_windows"])["orders"]
        extras["orders"] = {label: {"bpb": r["bpb"], "bpb_stderr": r["bpb_stderr"], "windows": r["windows"]}
                            for label, r in scored.items()}
    if spec["attention_summary"] and supported(cfg):
        summary = summarize_run(run_dir, threshold=cfg.eval.slash_threshold)
        extras["slash_dominant_fraction"] = summary["slash_dominant_fraction"]
    if spec["generate"]:
        import jax

        if jax.process_count() > 1:
            log(f"[{name}] sample quality is single-process: run `jaxorder eval RUN_DIR "
                f"--generate` afterwards")
        else:
            extras["generate"] = _sample_quality(spec["generate"], name, cfg, run_dir)
    if is_main_process():
        cache.write_text(json.dumps({"key": key, "extras": extras}) + "\n")
    return extras


def _settings(sampler: sampling.Sampler, options: dict) -> list[dict]:
    """One dict of option values per combination of the listed values of the options `sampler` takes."""
    taken = {k: v for k, v in options.items() if k in sampler.options}
    return [dict(zip(taken, values)) for values in itertools.product(*taken.values())]


def _sample_quality(gen: dict, name: str, cfg: config_lib.Config, run_dir: Path) -> list[dict]:
    """One `generation_quality` row per sampler of `gen` that this run's objective has, and per setting."""
    available = sampling.for_config(cfg)
    chosen = available[:1] if gen["samplers"] is None else [s for s in available if s.name in gen["samplers"]]
    rows = []
    for sampler in chosen:
        for setting in progress.track(_settings(sampler, gen["options"]), f"{name} {sampler.name}",
                                      unit="setting", leave=False):
            label = ", ".join(f"{k}={v}" for k, v in setting.items() if len(gen["options"][k]) > 1)
            log(f"[{name}] sample quality: {gen['num_samples']} samples with the {sampler.name} sampler"
                + (f" ({label})" if label else ""))
            # a relative companion run (the speculative draft) names a run of this sweep
            resolved = {**setting, **companion_dirs(sampler, setting, run_dir.parent)}
            row = generation_quality(run_dir, num_samples=gen["num_samples"], sampler=sampler.name,
                                     options=resolved)
            rows.append({**row, "setting": label} if label else row)
    return rows


def _annotate(spec: dict, results: list[dict], runs: list[tuple[str, config_lib.Config]]) -> None:
    """Adds what the curve and scaling figures read: curve_group/label/x and series/compute_flops."""
    curve = series_labels(spec, spec["curve"]) if spec["curve"] else {}
    sizes = series_labels(spec, spec["scaling"]["sizes"]) if spec["scaling"] else {}
    for result, (name, cfg) in zip(results, runs):
        if name in curve:
            group, label, on_curve = curve[name]
            result.update({"curve_group": group, "curve_label": label, "curve_key": spec["curve"],
                           "curve_x": config_value(cfg, spec["curve"]) if on_curve else None})
        if name in sizes:
            result.update({"series": sizes[name][0], "scaling_reference": spec["scaling"]["reference"],
                           "compute_flops": training_flops(cfg, int(result["tokens_seen"]))})


def plan(path: Path, overrides: Sequence[str] = ()) -> float:
    """Prints each run's size, steps, tokens, compute and measured step time; returns the estimated
    total training seconds (`jaxorder sweep --plan`; nothing is trained)."""
    spec = load_sweep(path)
    total = 0.0
    print(f"{'run':<24} {'params':>10} {'matmul':>10} {'steps':>7} {'tokens':>12} {'FLOPs':>9} "
          f"{'s/step':>7} {'est. min':>8}")
    for name, cfg in expand(spec, overrides):
        params, matmul = model_size(cfg)
        steps = total_steps(cfg)  # with train.restarts: every candidate's steps too
        tokens = steps * cfg.data.batch_size * cfg.data.seq_len
        seconds = measure_step_seconds(cfg) * steps
        total += seconds
        print(f"{name:<24} {params:>10,} {matmul:>10,} {steps:>7} {tokens:>12,} "
              f"{training_flops(cfg, tokens):>9.2e} {seconds / steps:>7.3f} {seconds / 60:>8.1f}",
              flush=True)
    print(f"estimated training time: {total / 60:.1f} minutes (steps only: no evaluation, no compile)")
    return total


def run_sweep(path: Path, out_dir: Path | None = None, overrides: Sequence[str] = (),
              table_to_stderr: bool = False) -> list[dict]:
    spec = load_sweep(path)
    out_dir = Path(out_dir) if out_dir else Path("runs") / "sweeps" / spec["name"]
    runs = expand(spec, overrides)
    if spec["curve"]:  # fail before training on a curve key no axis sets
        axis_setting(spec, spec["curve"])
    if spec["scaling"]:
        axis_setting(spec, spec["scaling"]["sizes"])
    initialize(runs[0][1].distributed)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"sweep {spec['name']}: {len(runs)} runs -> {out_dir}", file=sys.stderr, flush=True)
    results, run_dirs = [], {}
    for name, cfg in progress.track(runs, f"sweep {spec['name']}", unit="run"):
        run_dirs[name] = out_dir / name
        results.append(train_with_restarts(cfg, run_dirs[name], name=name))
        results[-1].update(posterior_weights(run_dirs[name]))  # latent_order only; {} otherwise
    for result, (name, cfg) in zip(results, runs):  # after training: the judges exist
        result.update(_extras(spec, name, cfg, run_dirs[name]))
    _annotate(spec, results, runs)
    if not is_main_process():
        return results
    write_report(results, run_dirs, out_dir, f"sweep {spec['name']}")
    table_file = sys.stderr if table_to_stderr else sys.stdout
    print(text_table(results), end="", file=table_file)
    rows = sampler_rows(results)
    if rows:
        print("\n" + text_table(rows, sampler_columns(rows)), end="", file=table_file)
    print(f"wrote {out_dir / 'results.md'}, {out_dir / 'results.csv'}, {out_dir / 'val_bpb.png'}"
          + (f", {out_dir / 'samplers.csv'}" if rows else ""), file=sys.stderr, flush=True)
    return results
