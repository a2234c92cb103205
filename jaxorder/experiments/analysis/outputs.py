"""Files of an attention analysis: heads.json, heads.csv, attention_heads.png, slash_vs_offset.png,
and for two runs compare.json, compare_offsets.png, compare_heads.png."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxorder.experiments.analysis.attention import AttentionAnalysis

CSV_COLUMNS = ("layer", "head", "dominant_offset", "dominant_score", "self_score", "rank1_q", "rank1_k",
               "entropy", "entropy_norm", "sink_mass", "slash_dominant")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def top_heads(a: AttentionAnalysis, k: int) -> list[dict]:
    """The k heads with the highest best-Δ≠0 slash score."""
    return sorted(a.table["heads"], key=lambda h: -h["dominant_score"])[:k]


def write_table(a: AttentionAnalysis, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "heads.json").write_text(json.dumps(a.table, indent=1, allow_nan=False) + "\n")
    offsets = a.table["offsets"]
    with (out_dir / "heads.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*CSV_COLUMNS, *(f"slash_{d}" for d in offsets)])
        for h in a.table["heads"]:
            w.writerow([_fmt(h[c]) for c in CSV_COLUMNS]
                       + ["" if s is None else f"{s:.6f}" for s in h["slash_scores"]])


def _fmt(x):
    return f"{x:.6f}" if isinstance(x, float) else x


def _label(a: AttentionAnalysis) -> str:
    t = a.table
    extra = f", mask {t['mask_rate']:g}" if t.get("mask_rate") else ""
    return f"{t['run']} ({t['objective']}, {t['inputs']}{extra})"


def _draw_heads(axes: Sequence, a: AttentionAnalysis, heads: list[dict], crop: int | None) -> None:
    for ax, h in zip(axes, heads):
        m = a.mean_probs[h["layer"], h["head"]]
        if crop:
            m = m[:crop, :crop]
        ax.imshow(m, cmap="viridis", vmin=0.0, vmax=max(float(np.quantile(m, 0.995)), 1e-6),
                  interpolation="nearest")
        ax.set_title(f"L{h['layer']}H{h['head']}  Δ={h['dominant_offset']:+d}  s={h['dominant_score']:.2f}\n"
                     f"self {h['self_score']:.2f}  sink {h['sink_mass']:.2f}  r1q {h['rank1_q']:.2f}",
                     fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(heads):]:
        ax.axis("off")


def plot_heads(a: AttentionAnalysis, path: Path, k: int = 8, crop: int | None = 64) -> None:
    """Heatmaps (mean over the windows; query rows, key columns) of the k most slash-like heads."""
    plt = _plt()
    heads = top_heads(a, k)
    cols = min(4, len(heads))
    rows = -(-len(heads) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows + 0.4), dpi=110, squeeze=False)
    _draw_heads(list(axes.flat), a, heads, crop)
    fig.suptitle(f"most slash-like heads: {_label(a)}" + (f", first {crop} positions" if crop else ""),
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _draw_offsets(ax, a: AttentionAnalysis, layer: int, ymax: float) -> None:
    offsets = np.array(a.table["offsets"])
    for h in range(a.scores.shape[1]):
        ax.plot(offsets, a.scores[layer, h], marker=".", markersize=3, linewidth=1, label=f"head {h}")
    base = np.array([np.nan if x is None else x for x in a.table["uniform_baseline"]])
    ax.plot(offsets, base, color="grey", linestyle=":", linewidth=1, label="uniform")
    ax.set_ylim(0, ymax)
    ax.set_title(f"layer {layer}", fontsize=8)
    ax.set_xlabel("Δ = key - query", fontsize=7)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)


def plot_offsets(a: AttentionAnalysis, path: Path) -> None:
    """Slash score vs offset, one panel per layer, one line per head."""
    plt = _plt()
    n = a.scores.shape[0]
    ymax = min(1.0, float(np.nanmax(a.scores)) * 1.05 + 1e-3)
    fig, axes = plt.subplots(1, n, figsize=(3.0 * n, 3.0), dpi=110, sharey=True, squeeze=False)
    for layer, ax in enumerate(axes[0]):
        _draw_offsets(ax, a, layer, ymax)
    axes[0][0].set_ylabel("slash score (mean mass on the Δ-diagonal)", fontsize=7)
    axes[0][-1].legend(fontsize=6)
    fig.suptitle(_label(a), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(a: AttentionAnalysis, out_dir: Path, top_k: int = 8) -> list[Path]:
    out_dir = Path(out_dir)
    write_table(a, out_dir)
    plot_heads(a, out_dir / "attention_heads.png", top_k)
    plot_offsets(a, out_dir / "slash_vs_offset.png")
    return [out_dir / n for n in ("heads.json", "heads.csv", "attention_heads.png", "slash_vs_offset.png")]


def write_compare(a: AttentionAnalysis, b: AttentionAnalysis, out_dir: Path, top_k: int = 4) -> list[Path]:
    """Side by side: compare.json (both summaries), compare_offsets.png (layers x runs) and
    compare_heads.png (top heads of each run, one row per run)."""
    plt = _plt()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.json").write_text(json.dumps(
        {"runs": [{k: v for k, v in x.table.items() if k != "heads"} for x in (a, b)]}, indent=1,
        allow_nan=False) + "\n")

    n = max(a.scores.shape[0], b.scores.shape[0])
    ymax = min(1.0, max(float(np.nanmax(a.scores)), float(np.nanmax(b.scores))) * 1.05 + 1e-3)
    fig, axes = plt.subplots(n, 2, figsize=(7.0, 2.6 * n), dpi=110, sharey=True, squeeze=False)
    for col, x in enumerate((a, b)):
        for layer in range(n):
            ax = axes[layer][col]
            if layer < x.scores.shape[0]:
                _draw_offsets(ax, x, layer, ymax)
                ax.set_title(f"{_label(x)}: layer {layer}", fontsize=7)
            else:
                ax.axis("off")
    axes[0][1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out_dir / "compare_offsets.png")
    plt.close(fig)

    fig, axes = plt.subplots(2, top_k, figsize=(2.6 * top_k, 6.0), dpi=110, squeeze=False)
    for row, x in enumerate((a, b)):
        _draw_heads(list(axes[row]), x, top_heads(x, top_k), 64)
        axes[row][0].set_ylabel(_label(x), fontsize=7)
    fig.suptitle("most slash-like heads (first 64 positions)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "compare_heads.png")
    plt.close(fig)
    return [out_dir / n for n in ("compare.json", "compare_offsets.png", "compare_heads.png")]


SUMMARY_ROWS = (  # (key, label, format)
    ("slash_dominant_fraction", "slash-dominant heads", "{:.2f}"),
    ("max_dominant_score", "max best-Δ≠0 score", "{:.3f}"),
    ("mean_dominant_score", "mean best-Δ≠0 score", "{:.3f}"),
    ("mean_self_score", "mean Δ=0 score", "{:.3f}"),
    ("mean_rank1_q", "mean rank-one Q", "{:.3f}"),
    ("mean_rank1_k", "mean rank-one K", "{:.3f}"),
    ("mean_entropy_norm", "mean entropy / log(keys)", "{:.3f}"),
    ("mean_sink_mass", "mean sink mass", "{:.3f}"),
)


def summary_text(analyses: Sequence[AttentionAnalysis], top_k: int = 5) -> str:
    """Terminal text: a summary table (one column per run) and each run's top heads."""
    names = [_label(x) for x in analyses]
    rows = [["", *names]]
    thr = analyses[0].table["summary"]["slash_threshold"]
    for key, label, fmt in SUMMARY_ROWS:
        label = f"{label} (>= {thr:g})" if key == "slash_dominant_fraction" else label
        rows.append([label, *(fmt.format(x.table["summary"][key]) for x in analyses)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for x, name in zip(analyses, names):
        lines.append(f"top heads of {name}:")
        for h in top_heads(x, top_k):
            lines.append(f"  L{h['layer']}H{h['head']}: Δ={h['dominant_offset']:+d} score "
                         f"{h['dominant_score']:.3f} | self {h['self_score']:.3f} | rank-one Q "
                         f"{h['rank1_q']:.3f} K {h['rank1_k']:.3f} | entropy {h['entropy_norm']:.2f} | sink "
                         f"{h['sink_mass']:.3f}")
    return "\n".join(lines) + "\n"
