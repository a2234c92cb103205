"""Plot a latent_order sweep's effective number of orders exp(H(w)) and validation bound over training.

    python tools/plot_latent_collapse.py runs/sweeps/latent_collapse docs/img/latent_collapse.png

Reads every run directory of the sweep (its metrics.jsonl: train records with `eff_orders`, val
records with `bpb`) and prints the last values as a table (bound ± standard error, exp(H), weights).
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxorder.training.metrics import read_metrics  # noqa: E402


def main(sweep_dir: Path, png: Path) -> None:
    runs = sorted(p for p in sweep_dir.iterdir() if (p / "metrics.jsonl").exists())
    variants = sorted({run.name.rsplit("_", 1)[0] for run in runs})  # one colour per variant, style per seed
    colour = {v: f"C{i}" for i, v in enumerate(variants)}
    fig, (ax_h, ax_v) = plt.subplots(1, 2, figsize=(10, 4))
    print("| run | val bits/byte (bound) | eff_orders | w_l2r | w_r2l | w_random |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        records = read_metrics(run)
        train = [r for r in records if r.get("split") == "train" and "eff_orders" in r]
        val = [r for r in records if r.get("split") == "val"]
        if not train:
            continue
        style = dict(ls="-" if run.name.endswith("seed0") else "--", color=colour[run.name.rsplit("_", 1)[0]],
                     label=run.name)
        ax_h.plot([r["step"] for r in train], [r["eff_orders"] for r in train], **style)
        ax_v.plot([r["step"] for r in val], [r["bpb"] for r in val], marker="o", **style)
        last, end = train[-1], (val[-1] if val else {})
        nan = float("nan")
        print(f"| {run.name} | {end.get('bpb', nan):.3f} ± {end.get('bpb_stderr', nan):.3f} | "
              f"{last['eff_orders']:.2f} | {last.get('w_l2r', nan):.2f} | "
              f"{last.get('w_r2l', nan):.2f} | {last.get('w_random', nan):.2f} |")
    ax_h.set(xlabel="step", ylabel="exp(H(w)) (train batch mean)", title="effective number of orders")
    ax_v.set(xlabel="step", ylabel="bits/byte", title="validation K-order bound (beta = 1)")
    ax_h.legend(fontsize=7)
    ax_v.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=90)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tools/plot_latent_collapse.py SWEEP_DIR OUT.png")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
