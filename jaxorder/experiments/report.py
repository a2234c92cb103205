"""Sweep reports: a results table (Markdown, CSV, terminal) and a plot of validation bits/byte vs step."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

from jaxorder.config import ConfigError
from jaxorder.experiments.epochs import epochs_section
from jaxorder.experiments.figures import plot_key_curve, scaling_section
from jaxorder.training.metrics import read_metrics

COLUMNS = [  # (key in the result dict, header, format)
    ("run", "run", "{}"),
    ("objective", "objective", "{}"),
    ("bpb", "val bits/byte", "{:.4f}"),
    ("bpb_stderr", "± s.e.", "{:.4f}"),
    ("kind", "kind", "{}"),
    ("entropy_floor_bpb", "entropy floor", "{:.4f}"),
    ("step", "steps", "{}"),
    ("tokens_seen", "tokens seen", "{:,}"),
    ("params", "params", "{:,}"),
    ("train_seconds", "train s", "{:.0f}"),
    ("slash_dominant_fraction", "slash heads", "{:.2f}"),
    ("w_l2r", "w l2r", "{:.3f}"),  # latent_order: average posterior weight of each kind of order
    ("w_r2l", "w r2l", "{:.3f}"),
    ("w_random", "w random", "{:.3f}"),
]
OPTIONAL = ("entropy_floor_bpb", "slash_dominant_fraction", "w_l2r", "w_r2l", "w_random")  # shown only
# when some run has them
SAMPLER_COLUMNS = [  # the sampler table: one row per run and sampler (sweep `generate:`)
    ("run", "run", "{}"),
    ("objective", "objective", "{}"),
    ("sampler", "sampler", "{}"),
    ("setting", "setting", "{}"),
    ("steps", "steps", "{}"),
    ("forward_passes", "forward passes", "{}"),
    ("draft_forward_passes", "draft passes", "{}"),
    ("accepted_per_round", "accepted/round", "{:.2f}"),
    ("guide_forward_passes", "guide passes", "{}"),
    ("judge_bpb", "judge bits/byte", "{:.4f}"),
    ("judge_bpb_stderr", "± s.e.", "{:.4f}"),
    ("unigram_entropy_bits", "unigram entropy", "{:.3f}"),
    ("valid_grid_fraction", "valid grids", "{:.2f}"),
    ("grid_conflicts", "grid conflicts", "{:.1f}"),
    ("correct_product_fraction", "correct products", "{:.2f}"),
    ("ar_ness", "AR-ness", "{:.2f}"),
    ("commit_distance", "commit distance", "{:.2f}"),
    ("uncertainty_per_token", "uncertainty/token", "{:.3f}"),
    ("tokens_per_s", "tokens/s", "{:,.0f}"),
]


def columns(results: Sequence[dict]) -> list[tuple[str, str, str]]:
    """The fixed columns in use, then per fixed-order score its bits/byte ('order:LABEL') and standard
    error over windows ('order_stderr:LABEL')."""
    cols = [c for c in COLUMNS if c[0] not in OPTIONAL or any(r.get(c[0]) is not None for r in results)]
    labels: list[str] = []
    for r in results:
        labels += [label for label in r.get("orders", {}) if label not in labels]
    for label in labels:
        cols += [(f"order:{label}", f"order {label}", "{:.4f}"),
                 (f"order_stderr:{label}", "± s.e.", "{:.4f}")]
    return cols


def _value(result: dict, key: str):
    kind, _, label = key.partition(":")
    if kind in ("order", "order_stderr"):  # orders: {label: {"bpb": .., "bpb_stderr": ..}}
        score = result.get("orders", {}).get(label)
        return None if score is None else score["bpb" if kind == "order" else "bpb_stderr"]
    return result.get(key)


def _cells(result: dict, cols: Sequence[tuple[str, str, str]]) -> list[str]:
    return ["" if _value(result, key) is None else fmt.format(_value(result, key)) for key, _, fmt in cols]


def sampler_rows(results: Sequence[dict]) -> list[dict]:
    """One row per run and sampler from the results' `generate` lists."""
    return [{"run": r.get("run"), "objective": r.get("objective"), **g}
            for r in results for g in r.get("generate", [])]


def sampler_columns(rows: Sequence[dict]) -> list[tuple[str, str, str]]:
    return [c for c in SAMPLER_COLUMNS if any(row.get(c[0]) is not None for row in rows)]


def markdown_table(results: Sequence[dict], cols: Sequence[tuple[str, str, str]] | None = None) -> str:
    cols = columns(results) if cols is None else cols
    headers = [h for _, h, _ in cols]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cells(r, cols)) + " |" for r in results]
    return "\n".join(lines) + "\n"


def text_table(results: Sequence[dict], cols: Sequence[tuple[str, str, str]] | None = None) -> str:
    cols = columns(results) if cols is None else cols
    rows = [[h for _, h, _ in cols]] + [_cells(r, cols) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows) + "\n"


def write_csv(results: Sequence[dict], path: Path,
              cols: Sequence[tuple[str, str, str]] | None = None) -> None:
    cols = columns(results) if cols is None else cols
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([key for key, _, _ in cols])
        for r in results:
            writer.writerow(["" if _value(r, key) is None else _value(r, key) for key, _, _ in cols])


def plot_curves(run_dirs: dict[str, Path], path: Path, title: str) -> None:
    """Validation bits/byte vs step, one line per run, with ± 1 standard error bars (over windows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, run_dir in run_dirs.items():
        points = [(r["step"], r["bpb"], r.get("bpb_stderr", 0.0)) for r in read_metrics(run_dir)
                  if r.get("split") == "val"]
        if points:
            steps, bpb, stderr = zip(*sorted(points))
            ax.errorbar(steps, bpb, yerr=stderr, marker="o", markersize=3, capsize=2, label=name)
    ax.axhline(8.0, color="grey", linestyle=":", linewidth=1, label="uniform bytes (8)")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation bits/byte (bounds for diffusion)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def sampler_section(results: Sequence[dict]) -> str:
    """The Markdown sampler table ('' when no run was sampled)."""
    rows = sampler_rows(results)
    if not rows:
        return ""
    return ("\n## Samplers\n\nUnprompted samples of each run (`jaxorder eval --generate`): their bits/byte "
            "under the judge with its standard error over samples (the l2r run on the same data; lower = "
            "more plausible, but repetitive text also scores low), the unigram entropy of their tokens in "
            "bits (diversity), the valid-grid fraction on Sudoku data, and generated tokens/s after "
            "compilation on this machine.\n\n"
            + markdown_table(rows, sampler_columns(rows)))


def write_report(results: Sequence[dict], run_dirs: dict[str, Path], out_dir: Path, title: str) -> None:
    out_dir = Path(out_dir)
    repeated = epochs_section(results, run_dirs, out_dir, title)
    curve = plot_key_curve(results, out_dir / "block_curve.png")
    extra = ("\n## Bits/byte vs " + next(r["curve_key"] for r in results if r.get("curve_key"))
             + "\n\nOne panel per data set, ± 1 s.e. bars; dashed lines (with their ± s.e. band) are "
             "the reference runs.\n\n![curve](block_curve.png)\n") if curve else ""
    extra += scaling_section(results, out_dir)
    (out_dir / "results.md").write_text(
        f"# {title}\n\nValidation bits per byte (lower is better), each with its standard error over "
        f"windows (`± s.e.`; for diffusion runs it includes the variance of the time draws). `kind` says "
        f"whether a run's number is exact or an upper bound on its NLL. `w l2r`, `w r2l`, `w random` are "
        f"a latent-order run's average posterior weight of each kind of candidate order at its last "
        f"logged step (1/K each when indifferent). `order X` columns score the same model exactly under a "
        f"fixed generation order (on the sweep's `order_windows`), each with its ± s.e.; `entropy floor` "
        f"is the data's exact entropy rate where known.\n\n"
        f"{markdown_table(results)}\n![curves](val_bpb.png)\n{repeated}{sampler_section(results)}{extra}")
    write_csv(results, out_dir / "results.csv")
    # everything the tables show, for `jaxorder report` to redraw without re-running
    (out_dir / "results.json").write_text(json.dumps({"title": title, "runs": list(results)}, indent=1,
                                                     default=str) + "\n")
    rows = sampler_rows(results)
    if rows:
        write_csv(rows, out_dir / "samplers.csv", sampler_columns(rows))
    plot_curves(run_dirs, out_dir / "val_bpb.png", title)


def redraw(out_dir: Path) -> list[dict]:
    """Rewrites a finished sweep directory's results.md/.csv and figures from its results.json; returns
    its runs' results."""
    out_dir = Path(out_dir)
    if not (out_dir / "results.json").is_file():
        raise ConfigError(f"no results.json in {out_dir}; run `jaxorder sweep SWEEP.yaml --out {out_dir}` "
                          f"first")
    saved = json.loads((out_dir / "results.json").read_text())
    runs = saved["runs"]
    run_dirs = {r["run"]: out_dir / r["run"] for r in runs}
    write_report(runs, run_dirs, out_dir, saved.get("title", out_dir.name))
    return runs


def cmd_report(args) -> int:
    """`jaxorder report SWEEP_DIR`: redraw a finished sweep's tables and figures from results.json."""
    out_dir = Path(args.sweep_dir)
    runs = redraw(out_dir)
    print(text_table(runs), end="")
    print(f"wrote {out_dir / 'results.md'} and its figures")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="redraw a sweep's tables and figures (curves, scaling fits)",
                       description="Rewrite results.md/.csv and the figures of a finished sweep directory "
                                   "from its results.json: validation curves, the bits/byte vs key curve "
                                   "(sweep `curve:`) and the compute-scaling fits with the compute "
                                   "multiplier (sweep `scaling:`).")
    p.add_argument("sweep_dir", help="a sweep output directory (runs/sweeps/<name>)")
    p.set_defaults(func=cmd_report)
