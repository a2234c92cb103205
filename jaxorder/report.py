"""Sweep reports: a results table (Markdown, CSV, terminal) and a plot of validation bits/byte vs step."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from jaxorder.metrics import read_metrics

COLUMNS = [  # (key in the result dict, header, format)
    ("run", "run", "{}"),
    ("objective", "objective", "{}"),
    ("bpb", "val bits/byte", "{:.4f}"),
    ("bpb_stderr", "± s.e.", "{:.4f}"),
    ("kind", "kind", "{}"),
    ("step", "steps", "{}"),
    ("tokens_seen", "tokens seen", "{:,}"),
    ("params", "params", "{:,}"),
    ("train_seconds", "train s", "{:.0f}"),
]


def _cells(result: dict) -> list[str]:
    return [fmt.format(result[key]) if key in result else "" for key, _, fmt in COLUMNS]


def markdown_table(results: Sequence[dict]) -> str:
    headers = [h for _, h, _ in COLUMNS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in results]
    return "\n".join(lines) + "\n"


def text_table(results: Sequence[dict]) -> str:
    rows = [[h for _, h, _ in COLUMNS]] + [_cells(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows) + "\n"


def write_csv(results: Sequence[dict], path: Path) -> None:
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([key for key, _, _ in COLUMNS])
        for r in results:
            writer.writerow([r.get(key, "") for key, _, _ in COLUMNS])


def plot_curves(run_dirs: dict[str, Path], path: Path, title: str) -> None:
    """Validation bits/byte vs step, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, run_dir in run_dirs.items():
        points = [(r["step"], r["bpb"]) for r in read_metrics(run_dir) if r.get("split") == "val"]
        if points:
            steps, bpb = zip(*sorted(points))
            ax.plot(steps, bpb, marker="o", markersize=3, label=name)
    ax.axhline(8.0, color="grey", linestyle=":", linewidth=1, label="uniform bytes (8)")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation bits/byte (bounds for diffusion)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(results: Sequence[dict], run_dirs: dict[str, Path], out_dir: Path, title: str) -> None:
    out_dir = Path(out_dir)
    (out_dir / "results.md").write_text(
        f"# {title}\n\nValidation bits per byte (lower is better); `upper bound (ELBO)` rows are bounds on "
        f"the model's NLL, `exact` rows are exact.\n\n{markdown_table(results)}\n![curves](val_bpb.png)\n")
    write_csv(results, out_dir / "results.csv")
    plot_curves(run_dirs, out_dir / "val_bpb.png", title)
