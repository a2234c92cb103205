"""The `jaxorder` command: train, eval, sweep."""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from jaxorder.config import ConfigError

EPILOG_OVERRIDES = ("Overrides are section.field=value pairs applied after the config file, e.g. "
                    "model.n_layers=4 train.steps=500 objective.name=mdm data.source=text data.path=my.txt")


def _default_run_dir(config_path: str, overrides: list[str]) -> Path:
    stem = Path(config_path).stem
    if not overrides:
        return Path("runs") / stem
    digest = hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:8]
    return Path("runs") / f"{stem}-{digest}"


def cmd_train(args: argparse.Namespace) -> int:
    from jaxorder import config as config_lib
    from jaxorder.train import train

    cfg = config_lib.load(args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else _default_run_dir(args.config, args.overrides)
    result = train(cfg, run_dir)
    _print_result(result, args.json)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from jaxorder.train import eval_run

    _print_result(eval_run(Path(args.run_dir)), args.json)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from jaxorder.sweep import run_sweep

    results = run_sweep(Path(args.sweep), Path(args.out) if args.out else None, args.overrides)
    if args.json:
        print(json.dumps({"runs": results}))
    return 0


def _print_result(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        print(f"{result['run']}: {result['bpb']:.4f} ± {result['bpb_stderr']:.4f} bits/byte "
              f"({result['kind']}, {result['objective']}, step {result['step']}, {result['windows']} windows)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxorder",
        description="Generation-order experiments: train L2R, R2L and masked-diffusion LMs on one yardstick.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train (or resume) one run from a YAML config",
                       description="Train a model from a YAML config. Re-running on an existing run directory "
                                   "resumes from its newest checkpoint.", epilog=EPILOG_OVERRIDES)
    p.add_argument("config", help="experiment YAML, e.g. configs/experiments/l2r_tiny.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument("--run-dir", help="where checkpoints, metrics and the resolved config go "
                                     "(default: runs/<config name>[-<hash of overrides>])")
    p.add_argument("--json", action="store_true", help="print the final evaluation as one JSON object on stdout")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="validation bits/byte of a run's newest checkpoint",
                       description="Score a run directory's newest checkpoint on the validation windows: exact "
                                   "bits/byte for l2r/r2l, the ELBO upper bound for mdm (with its standard error).")
    p.add_argument("run_dir", help="a run directory made by `jaxorder train` or `jaxorder sweep`")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object on stdout")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sweep", help="run a grid of configs and write results.md/.csv and a plot",
                       description="Run every grid point of a sweep YAML (finished runs are reused, partial ones "
                                   "resume), then write results.md, results.csv and val_bpb.png.",
                       epilog="Overrides apply to every run of the sweep. " + EPILOG_OVERRIDES)
    p.add_argument("sweep", help="sweep YAML, e.g. configs/sweeps/orders_smoke.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides for every run")
    p.add_argument("--out", help="sweep directory (default: runs/sweeps/<sweep name>)")
    p.add_argument("--json", action="store_true", help="also print all results as one JSON object on stdout")
    p.set_defaults(func=cmd_sweep)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may follow options (`train CONFIG --run-dir D a.b=1`), which argparse leaves unparsed.
    unknown = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    from jaxorder.train import Preempted

    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Preempted:
        return 143
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
