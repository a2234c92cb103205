"""Study figures beyond the training curves: bits/byte vs a swept key (the block-size curve) and
compute scaling (L vs C per series with the power-law fits and the compute multiplier)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxorder.experiments.scaling import compute_multiplier, fit_power_law, multiplier_interval, power_law


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_key_curve(results: Sequence[dict], path: Path) -> bool:
    """Bits/byte ± s.e. vs `curve_x` (log2 axis) per `curve_group`, the group's runs without an x as
    horizontal reference lines (with their ± s.e. band); False when no result is on a curve."""
    points = [r for r in results if r.get("curve_x") is not None]
    if not points:
        return False
    plt = _pyplot()
    groups = sorted({r["curve_group"] for r in points})
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), dpi=110, squeeze=False)
    for ax, group in zip(axes[0], groups):
        mine = sorted((r for r in points if r["curve_group"] == group), key=lambda r: r["curve_x"])
        x = [r["curve_x"] for r in mine]
        ax.errorbar(x, [r["bpb"] for r in mine], yerr=[r["bpb_stderr"] for r in mine], marker="o",
                    capsize=3, label=mine[0]["curve_label"].split("_")[0])
        refs = [r for r in results if r.get("curve_group") == group and r.get("curve_x") is None]
        for i, ref in enumerate(refs):
            color = f"C{i + 1}"
            ax.axhline(ref["bpb"], color=color, linestyle="--", linewidth=1, label=ref["curve_label"])
            ax.axhspan(ref["bpb"] - ref["bpb_stderr"], ref["bpb"] + ref["bpb_stderr"], color=color,
                       alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [str(v) for v in x])
        ax.set_xlabel(mine[0]["curve_key"])
        ax.set_ylabel("validation bits/byte ± s.e.")
        ax.set_title(group or "all runs")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def scaling_fits(results: Sequence[dict]) -> dict[str, dict]:
    """Per series with >= 3 sizes: its points and fitted (a, alpha, L_inf) of bits/byte vs FLOPs."""
    fits = {}
    for series in sorted({r["series"] for r in results if r.get("compute_flops")}):
        mine = sorted((r for r in results if r.get("series") == series), key=lambda r: r["compute_flops"])
        C, L = [r["compute_flops"] for r in mine], [r["bpb"] for r in mine]
        sigma = [max(r.get("bpb_stderr") or 0.0, 1e-6) for r in mine]
        fits[series] = {"C": C, "L": L, "stderr": sigma,
                        "fit": fit_power_law(C, L, sigma) if len(mine) >= 3 else None}
    return fits


def multipliers(fits: dict[str, dict], reference: str) -> tuple[float, dict[str, float]] | None:
    """(target loss: the reference's fitted loss at its largest C, {series: C_series / C_reference})."""
    ref = fits.get(reference)
    if not ref or ref["fit"] is None:
        return None
    target = float(power_law(ref["C"][-1], *ref["fit"]))
    return target, {s: compute_multiplier(ref["fit"], f["fit"], target) for s, f in fits.items()
                    if s != reference and f["fit"] is not None}


def plot_scaling(fits: dict[str, dict], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for i, (series, f) in enumerate(fits.items()):
        ax.errorbar(f["C"], f["L"], yerr=f["stderr"], marker="o", linestyle="none", capsize=3,
                    color=f"C{i}", label=series)
        if f["fit"] is not None:
            grid = np.logspace(math.log10(min(f["C"])), math.log10(max(f["C"])), 100)
            a, alpha, L_inf = f["fit"]
            ax.plot(grid, power_law(grid, *f["fit"]), color=f"C{i}", linewidth=1,
                    label=f"{series}: {a:.3g} C^-{alpha:.3f} + {L_inf:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("validation bits/byte ± s.e.")
    ax.set_title("compute scaling")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def scaling_section(results: Sequence[dict], out_dir: Path) -> str:
    """The Markdown compute-scaling section (and scaling.png); '' when no run has a compute count."""
    fits = scaling_fits(results)
    if not fits:
        return ""
    plot_scaling(fits, Path(out_dir) / "scaling.png")
    lines = ["\n## Compute scaling\n", "Fits of L(C) = a C^-alpha + L_inf (bits/byte vs training FLOPs, "
             "weighted by the standard errors):\n", "| series | sizes | a | alpha | L_inf |",
             "|---|---|---|---|---|"]
    for series, f in fits.items():
        cells = ["", "", ""] if f["fit"] is None else [f"{f['fit'][0]:.4g}", f"{f['fit'][1]:.4f}",
                                                         f"{f['fit'][2]:.4f}"]
        lines.append(f"| {series} | {len(f['C'])} | " + " | ".join(cells) + " |")
    reference = next((r.get("scaling_reference") for r in results if r.get("scaling_reference")), None)
    found = multipliers(fits, reference) if reference else None
    if found:
        target, mult = found
        lines.append(f"\nCompute multiplier at {reference}'s fitted loss at its largest C ({target:.4f} "
                     f"bits/byte): C_series(L) / C_{reference}(L), inf when the series' L_inf is above L. "
                     f"In brackets the 16-84 % interval of a parametric bootstrap (each point redrawn "
                     f"from its standard error, both curves refitted; 200 draws).\n")
        never = "inf (its fitted L_inf is above the target)"
        for s, m in mult.items():
            low, high = multiplier_interval(fits[reference], fits[s])
            interval = f" [{low:.3g}x, {high:.3g}x]"
            lines.append((f"- {s}: {m:.3g}x" if math.isfinite(m) else f"- {s}: {never}") + interval)
    return "\n".join(lines) + "\n\n![scaling](scaling.png)\n"
