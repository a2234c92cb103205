"""Data-constrained training: validation bits/byte against epochs, and where two curves cross.

A run's epochs at a step are ``tokens_seen / unique_train_tokens`` (``data.max_train_tokens``
limits the unique tokens; one epoch visits every training window once). The crossing of two runs'
curves is computed on the piecewise-linear interpolation of their validation points, over the
epochs both runs cover.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxorder.training.metrics import read_metrics

POSTERIOR_KEYS = ("w_l2r", "w_r2l", "w_random")  # latent_order's average posterior weight per kind


def curve_crossings(x1: Sequence[float], y1: Sequence[float], x2: Sequence[float],
                    y2: Sequence[float]) -> list[tuple[float, float, int]]:
    """Points (x, y, sign) where the piecewise-linear curves (x1, y1) and (x2, y2) cross, over the
    x range both cover (x1, x2 strictly increasing). ``sign`` is the sign of y1 - y2 just after the
    crossing (-1: curve 1 goes below curve 2). Touching without changing sides is no crossing."""
    x1, y1, x2, y2 = (np.asarray(v, np.float64) for v in (x1, y1, x2, y2))
    if len(x1) < 2 or len(x2) < 2:
        return []
    lo, hi = max(x1[0], x2[0]), min(x1[-1], x2[-1])
    if lo >= hi:
        return []
    # on the union of breakpoints both curves, hence their difference, are linear between neighbours
    xs = np.unique(np.concatenate([[lo, hi], x1[(x1 > lo) & (x1 < hi)], x2[(x2 > lo) & (x2 < hi)]]))
    d = np.interp(xs, x1, y1) - np.interp(xs, x2, y2)
    signs = np.sign(d)
    out: list[tuple[float, float, int]] = []
    last, zero_from = 0.0, None  # the side so far; where the current run of equal values began
    for i in range(len(xs)):
        if signs[i] == 0:
            zero_from = xs[i] if zero_from is None else zero_from
            continue
        if last != 0 and signs[i] != last:
            # after equal values the curves parted where they met; else d is linear on [xs[i-1], xs[i]]
            x = zero_from if zero_from is not None else xs[i - 1] + (xs[i] - xs[i - 1]) * d[i - 1] / (
                d[i - 1] - d[i])
            out.append((float(x), float(np.interp(x, x1, y1)), int(signs[i])))
        last, zero_from = signs[i], None
    return out


def epoch_curve(run_dir: Path, result: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """(epochs, val bits/byte) of a run's validation records, or None without the token counts."""
    unique, step, seen = result.get("unique_train_tokens"), result.get("step"), result.get("tokens_seen")
    if not unique or not step or not seen:
        return None
    tokens_per_step = seen / step
    points = sorted((r["step"], r["bpb"]) for r in read_metrics(run_dir) if r.get("split") == "val")
    if not points:
        return None
    steps, bpb = (np.array(v, np.float64) for v in zip(*points))
    return steps * tokens_per_step / unique, bpb


def max_epochs(result: dict) -> float:
    unique = result.get("unique_train_tokens")
    return result["tokens_seen"] / unique if unique and result.get("tokens_seen") else 0.0


def crossing_rows(results: Sequence[dict], curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    """One row per pair of runs with the same unique training tokens: where their curves cross."""
    rows = []
    by_name = {r["run"]: r for r in results}
    for a, b in itertools.combinations([n for n in by_name if n in curves], 2):
        if by_name[a].get("unique_train_tokens") != by_name[b].get("unique_train_tokens"):
            continue
        found = curve_crossings(*curves[a], *curves[b])
        if not found:
            rows.append({"runs": f"{a} vs {b}", "crossing": "none in the range both cover"})
        for x, y, sign in found:
            below = a if sign < 0 else b
            rows.append({"runs": f"{a} vs {b}", "crossing": f"epoch {x:.2f} at {y:.4f} bits/byte; "
                                                            f"{below} lower after it"})
    return rows


def plot_epochs(curves: dict[str, tuple[np.ndarray, np.ndarray]], crossings: Sequence[tuple[float, float]],
                path: Path, title: str) -> None:
    """Validation bits/byte vs epochs, one line per run, crossings marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, (epochs, bpb) in curves.items():
        ax.plot(epochs, bpb, marker="o", markersize=3, label=name)
    for x, y in crossings:
        ax.plot([x], [y], marker="x", color="black", markersize=9)
    ax.set_xlabel("epochs (tokens seen / unique training tokens)")
    ax.set_ylabel("validation bits/byte (bounds for diffusion)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def epochs_section(results: Sequence[dict], run_dirs: dict[str, Path], out_dir: Path, title: str) -> str:
    """The Markdown section and val_bpb_epochs.png when some run repeated its data (> 1 epoch), else ''."""
    if not any(max_epochs(r) > 1 for r in results):
        return ""
    curves = {r["run"]: c for r in results if (c := epoch_curve(run_dirs[r["run"]], r)) is not None}
    rows = crossing_rows(results, curves)
    marks = [(float(x), float(y)) for a, b in itertools.combinations(curves, 2)
             for x, y, _ in curve_crossings(*curves[a], *curves[b])]
    plot_epochs(curves, marks, Path(out_dir) / "val_bpb_epochs.png", f"{title}: repeated data")
    lines = ["\n## Repeated data\n", "Validation bits/byte against epochs (tokens seen / unique training "
             "tokens); crossings from straight lines between the validation points.\n",
             "| runs | crossing |", "|---|---|"] + [f"| {r['runs']} | {r['crossing']} |" for r in rows]
    return "\n".join(lines) + "\n\n![epochs](val_bpb_epochs.png)\n"


def posterior_weights(run_dir: Path) -> dict:
    """latent_order's posterior weights (``POSTERIOR_KEYS``) at the run's last logged training step."""
    rows = [r for r in read_metrics(run_dir) if r.get("split") == "train" and "w_random" in r]
    return {k: rows[-1][k] for k in POSTERIOR_KEYS if k in rows[-1]} if rows else {}
