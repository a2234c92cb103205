"""Plot validation bits/byte over training for groups of runs, and each run's difference to a baseline.

    python tools/plot_learning_curves.py OUT.png --baseline RUN LABEL=RUN [LABEL=RUN ...]

Runs with the same LABEL share a colour (seeds of one recipe). Reads each run's metrics.jsonl (the
`val` records that training writes every train.eval_every steps: the same validation windows at
every step and in every run of one data config, so the right panel's differences are paired) and
prints, per run, the last validation value and its difference to the baseline at that step.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxorder.training.metrics import read_metrics  # noqa: E402


def val_curve(run: Path) -> dict[int, float]:
    """step -> validation bits/byte (the newest record of a step, if a resumed run wrote it twice)."""
    return {r["step"]: r["bpb"] for r in read_metrics(run) if r.get("split") == "val"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--baseline", type=Path, required=True, help="the run the right panel subtracts")
    parser.add_argument("--title", default="", help="a title over both panels")
    parser.add_argument("runs", nargs="+", metavar="LABEL=RUN")
    args = parser.parse_args(argv)
    base = val_curve(args.baseline)
    labels: list[str] = []
    lowest = float("inf")
    fig, (ax_v, ax_d) = plt.subplots(1, 2, figsize=(11, 4.2))
    print("| run | label | last step | val bits/byte | − baseline |")
    print("|---|---|---|---|---|")
    for item in args.runs:
        label, _, run = item.partition("=")
        if not run:
            parser.error(f"'{item}' is not LABEL=RUN")
        curve = val_curve(Path(run))
        if not curve:
            parser.error(f"{run} has no validation records in metrics.jsonl")
        first = label not in labels  # one legend entry per label
        if first:
            labels.append(label)
        colour = f"C{labels.index(label)}"
        lowest = min(lowest, min(curve.values()))
        steps = sorted(curve)
        ax_v.plot(steps, [curve[s] for s in steps], color=colour, lw=1.2, label=label if first else None)
        shared = [s for s in steps if s in base]
        ax_d.plot(shared, [curve[s] - base[s] for s in shared], color=colour, lw=1.2)
        last = steps[-1]
        diff = f"{curve[last] - base[last]:+.3f}" if last in base else "n/a"
        print(f"| {Path(run).name} | {label} | {last} | {curve[last]:.3f} | {diff} |")
    ax_v.set(xlabel="step", ylabel="validation bits/byte", ylim=(lowest - 0.05, lowest + 1.0))
    ax_d.axhline(0.0, color="k", lw=0.8)
    ax_d.set(xlabel="step", ylabel=f"− {args.baseline.name} (same windows)", ylim=(-0.25, 0.25))
    ax_v.legend(fontsize=8)
    for ax in (ax_v, ax_d):
        ax.grid(alpha=0.3)
    if args.title:
        fig.suptitle(args.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
