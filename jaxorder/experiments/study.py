"""`jaxorder study STUDY.yaml`: the whole order study end to end -- its sweeps, then analyses of chosen
runs -- and one report page (DIR/report.md with its PNGs) of all their numbers.

A study file:
    name: order_study_smoke                      # default: the file's stem
    sweeps:                                      # sweep YAMLs, relative to the study file, run in order
      - ../sweeps/orders_study_smoke.yaml
    analyses:                                    # optional: `jaxorder analyze KIND RUN FLAGS` per entry
      - {sweep: orders_study_smoke, run: corpus_mdm, kind: mixtures, flags: "--ks 1,4,16,64"}

`sweep` is a sweep's name (its `name:`), `run` one of its runs (grid-point name), `kind` one of
`KINDS`, `flags` the analysis's options as a string or a list (not --out, --compare or --json: the
study places every output). Sweeps write to SWEEPS_DIR/<name> (default runs/sweeps/<name>), so
finished runs of earlier `jaxorder sweep` calls are reused; analyses write to
DIR/analysis/<sweep>/<run>/<kind>/ and are skipped when their outputs exist, were made with the same
flags, and are newer than the run's newest checkpoint. Every name, path and flag is checked before
any training starts.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from jaxorder import config as config_lib
from jaxorder import objectives
from jaxorder.config import ConfigError
from jaxorder.evaluation.fixed_orders import require_order_scoring
from jaxorder.experiments import report
from jaxorder.experiments.analysis import command as analysis_command
from jaxorder.experiments.analysis import mixtures, profiles
from jaxorder.experiments.analysis.attention import supported
from jaxorder.experiments.study_page import write_page
from jaxorder.experiments.sweep import expand, load_sweep, plan, run_sweep
from jaxorder.platform.distributed import is_main_process

STUDY_KEYS = ("name", "sweeps", "analyses")
ANALYSIS_KEYS = ("sweep", "run", "kind", "flags")
KINDS = ("attention", *profiles.WHATS)
RESERVED_FLAGS = ("--out", "--compare", "--json")  # the study decides where outputs go and reads their files
ARGS_FILE = "study_args.json"  # the argv an analysis directory was made with (a change re-runs it)


@dataclass(frozen=True)
class Sweep:
    name: str
    path: Path
    runs: dict[str, config_lib.Config]  # run name -> validated config


@dataclass(frozen=True)
class Analysis:
    sweep: str
    run: str
    kind: str
    flags: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.kind} on {self.sweep}/{self.run}"

    def out_dir(self, study_dir: Path) -> Path:
        return Path(study_dir) / "analysis" / self.sweep / self.run / self.kind

    def main_file(self, study_dir: Path) -> Path:
        """The JSON every analysis writes last-but-one; its presence means the analysis finished."""
        return self.out_dir(study_dir) / ("heads.json" if self.kind == "attention" else f"{self.kind}.json")


@dataclass(frozen=True)
class Study:
    name: str
    path: Path
    sweeps: list[Sweep]
    analyses: list[Analysis]


class _Parser(argparse.ArgumentParser):
    """`jaxorder analyze`'s parser with errors as ConfigError and no abbreviated options."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise ConfigError(message)


def _analyze_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxorder", add_help=False)
    analysis_command.add_command(parser.add_subparsers(dest="command"))
    return parser


def analysis_args(a: Analysis, run_dir: Path, out_dir: Path) -> argparse.Namespace:
    """The parsed `jaxorder analyze` arguments of one analysis (ConfigError on bad flags)."""
    return _analyze_parser().parse_args(["analyze", a.kind, str(run_dir), *a.flags, "--out", str(out_dir)])


def _flags(where: str, value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        flags = shlex.split(value)
    elif isinstance(value, list) and all(isinstance(x, (str, int, float)) for x in value):
        flags = [str(x) for x in value]
    else:
        raise ConfigError(f"{where}: 'flags' must be a string or a list, e.g. flags: \"--ks 1,4,16,64\"")
    reserved = [f for f in flags if f.split("=", 1)[0] in RESERVED_FLAGS]
    if reserved:
        raise ConfigError(f"{where}: flags {reserved} are set by the study; remove them")
    return tuple(flags)


def _check_analysis(where: str, a: Analysis, cfg: config_lib.Config) -> None:
    """The analysis's flags parse and its kind applies to the run's objective (before any training)."""
    try:
        args = analysis_args(a, Path("RUN"), Path("OUT"))
        if a.kind != "attention":
            profiles.check_args(args)
        if a.kind == "mixtures":
            mixtures.parse_ks(args.ks)
            require_order_scoring(cfg)
        if a.kind == "loss-profile" and objectives.of(cfg).position_nll is None \
                and objectives.of(cfg).rate_nll is None:
            raise ConfigError(f"loss-profile has no curves for objective '{cfg.objective.name}'")
        if a.kind == "attention" and not supported(cfg):
            raise ConfigError(f"the attention analysis does not support objective '{cfg.objective.name}'")
    except ConfigError as e:
        raise ConfigError(f"{where} ({a.label}): {e}") from None


def load_study(path: Path) -> Study:
    """The validated study: every sweep loaded and expanded, every analysis's sweep, run, kind and
    flags checked. Raises a one-line ConfigError naming the entry and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file not found: {path}")
    spec = config_lib.read_yaml_mapping(path, "a study")
    unknown = sorted(set(spec) - set(STUDY_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown study keys {unknown}; a study has {', '.join(STUDY_KEYS)}")
    paths = spec.get("sweeps")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise ConfigError(f"{path}: 'sweeps' must be a non-empty list of sweep YAML paths (relative to the "
                          f"study file), e.g. sweeps: [../sweeps/orders_study_smoke.yaml]")
    sweeps: list[Sweep] = []
    for i, rel in enumerate(paths):
        sweep_path = (path.parent / rel).resolve()
        if not sweep_path.is_file():
            raise ConfigError(f"{path}: sweeps[{i}]: sweep file not found: {sweep_path}; fix the path "
                              f"(relative to the study file)")
        try:
            sweep_spec = load_sweep(sweep_path)
            runs = dict(expand(sweep_spec))
        except ConfigError as e:
            raise ConfigError(f"{path}: sweeps[{i}]: {e}") from None
        if any(s.name == sweep_spec["name"] for s in sweeps):
            raise ConfigError(f"{path}: sweeps[{i}]: sweep '{sweep_spec['name']}' is listed twice")
        sweeps.append(Sweep(sweep_spec["name"], sweep_path, runs))
    by_name = {s.name: s for s in sweeps}
    entries = spec.get("analyses") or []
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: 'analyses' must be a list of mappings with {', '.join(ANALYSIS_KEYS)}")
    analyses: list[Analysis] = []
    for i, entry in enumerate(entries):
        where = f"{path}: analyses[{i}]"
        if (not isinstance(entry, dict) or set(entry) - set(ANALYSIS_KEYS)
                or not {"sweep", "run", "kind"} <= set(entry)):
            raise ConfigError(f"{where}: must be a mapping of sweep, run, kind and optional flags, "
                              f"got {entry!r}")
        sweep, run, kind = (str(entry[k]) for k in ("sweep", "run", "kind"))
        if kind not in KINDS:
            raise ConfigError(f"{where}: unknown analysis kind '{kind}'; known: {', '.join(KINDS)}")
        if sweep not in by_name:
            raise ConfigError(f"{where}: unknown sweep '{sweep}'; the study's sweeps are "
                              f"{', '.join(by_name)}")
        if run not in by_name[sweep].runs:
            raise ConfigError(f"{where}: sweep {sweep} has no run '{run}'; its runs are "
                              f"{', '.join(by_name[sweep].runs)}")
        a = Analysis(sweep, run, kind, _flags(where, entry.get("flags")))
        if any((b.sweep, b.run, b.kind) == (sweep, run, kind) for b in analyses):
            raise ConfigError(f"{where}: {a.label} is listed twice (they would share one output directory)")
        _check_analysis(where, a, by_name[sweep].runs[run])
        analyses.append(a)
    return Study(str(spec.get("name", path.stem)), path, sweeps, analyses)


def newest_checkpoint_mtime(run_dir: Path) -> float:
    """Modification time of the run's newest checkpoint step directory (0 when it has none)."""
    steps = [p for p in (Path(run_dir) / "checkpoints").glob("*") if p.name.isdigit()]
    return max(p.stat().st_mtime for p in steps) if steps else 0.0


def is_current(a: Analysis, study_dir: Path, run_dir: Path) -> bool:
    """Whether the analysis's outputs exist, were made with the same flags, and are newer than the run's
    newest checkpoint (a re-trained or resumed run makes them stale)."""
    main, saved = a.main_file(study_dir), a.out_dir(study_dir) / ARGS_FILE
    if not main.is_file() or not saved.is_file():
        return False
    if json.loads(saved.read_text()).get("flags") != list(a.flags):
        return False
    return main.stat().st_mtime > newest_checkpoint_mtime(run_dir)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_analysis(a: Analysis, study_dir: Path, run_dir: Path) -> None:
    if not (run_dir / "checkpoints").is_dir():
        raise ConfigError(f"{a.label}: no checkpoints in {run_dir}; run its sweep first")
    out = a.out_dir(study_dir)
    (out / ARGS_FILE).unlink(missing_ok=True)  # an interrupted re-run must not look current
    analysis_command.cmd_analyze(analysis_args(a, run_dir, out))
    (out / ARGS_FILE).write_text(json.dumps({"flags": list(a.flags)}) + "\n")


def study_dir_of(study: Study, out: Path | None) -> Path:
    return Path(out) if out else Path("runs") / "studies" / study.name


def plan_study(study: Study, study_dir: Path, sweeps_dir: Path) -> None:
    """Each sweep's `jaxorder sweep --plan` table and the analyses to run; nothing is trained."""
    for s in study.sweeps:
        print(f"sweep {s.name} ({s.path}) -> {sweeps_dir / s.name}: {len(s.runs)} runs", flush=True)
        plan(s.path)
    print(f"analyses ({len(study.analyses)}) -> {study_dir / 'analysis'}:")
    for a in study.analyses:
        state = "reuse" if is_current(a, study_dir, sweeps_dir / a.sweep / a.run) else "run"
        print(f"  {a.kind:<12} {a.sweep}/{a.run:<20} {' '.join(a.flags) or '(defaults)'}  [{state}]")
    print(f"report: {study_dir / 'report.md'}")


def run_study(study: Study, study_dir: Path, sweeps_dir: Path) -> Path:
    """Runs every sweep (finished runs reused) and redraws its report, runs every analysis that is not
    current, and writes study_dir/report.md; returns its path."""
    study_dir.mkdir(parents=True, exist_ok=True)
    n = len(study.sweeps)
    for i, s in enumerate(study.sweeps, 1):
        _progress(f"study {study.name}: sweep {i}/{n} {s.name} ({len(s.runs)} runs) -> {sweeps_dir / s.name}")
        run_sweep(s.path, sweeps_dir / s.name)
        if is_main_process():  # only process 0 writes a sweep's report
            report.redraw(sweeps_dir / s.name)
    if not is_main_process():  # the analyses and the page are single-process work
        return study_dir / "report.md"
    for i, a in enumerate(study.analyses, 1):
        run_dir = sweeps_dir / a.sweep / a.run
        if is_current(a, study_dir, run_dir):
            _progress(f"study {study.name}: analysis {i}/{len(study.analyses)} {a.label}: reused "
                      f"{a.out_dir(study_dir)}")
            continue
        _progress(f"study {study.name}: analysis {i}/{len(study.analyses)} {a.label} -> "
                  f"{a.out_dir(study_dir)}")
        run_analysis(a, study_dir, run_dir)
    page = write_page(study.name, study.path, [s.name for s in study.sweeps], study.analyses, study_dir,
                      sweeps_dir)
    _progress(f"study {study.name}: wrote {page}")
    return page


def cmd_study(args: argparse.Namespace) -> int:
    study = load_study(Path(args.study))  # every error before anything runs
    study_dir = study_dir_of(study, Path(args.out) if args.out else None)
    sweeps_dir = Path(args.sweeps_dir)
    if args.plan:
        plan_study(study, study_dir, sweeps_dir)
    else:
        run_study(study, study_dir, sweeps_dir)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("study", help="run a study's sweeps and analyses and write one report page",
                       description="Run every sweep of a study YAML in order (finished runs are reused), "
                                   "redraw each sweep's report, run the listed `jaxorder analyze` analyses "
                                   "of chosen runs, and write DIR/report.md with every sweep's table and "
                                   "figures and every analysis's key numbers and figures (docs/study.md).")
    p.add_argument("study", help="study YAML, e.g. configs/studies/order_study_smoke.yaml")
    p.add_argument("--out", help="study directory (default: runs/studies/<study name>)")
    p.add_argument("--sweeps-dir", default="runs/sweeps",
                   help="where each sweep's runs live, as SWEEPS_DIR/<sweep name> (default runs/sweeps, "
                        "as `jaxorder sweep` uses)")
    p.add_argument("--plan", action="store_true",
                   help="print each sweep's plan (`jaxorder sweep --plan`) and the analyses; train nothing")
    p.set_defaults(func=cmd_study)
