"""Order-choosing decoders on Sudoku: conflicts and valid grids against steps, for each sampler.

    python bench/sudoku.py [--runs runs/sweeps/sudoku_decoding] [--samples 64] [--steps 82,41,21]

The mdm run of configs/sweeps/sudoku_decoding.yaml (trained first if missing, with `jaxorder sweep`)
generates `--samples` unprompted 82-token windows (one grid and a newline) per setting, in batches
of 16 (one seed each, the same seeds for every setting), at temperature 1. For each setting it
reports the valid-grid fraction, the mean conflicts per grid (digits missing from the grid's 27
rows, columns and boxes; 0 iff valid) with its standard error, the cumulative uncertainty (summed
entropy at commit time, nats per generated token) and network calls per generated token (for
`guided`: passes of the mdm; the guide is the sweep's l2r run). Writes
DIR/sudoku.json, sudoku.md and sudoku.png (conflicts against steps).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import numpy as np
from decoding_common import REPO, machine_line

from jaxorder import sampling
from jaxorder.data.synthetic import grid_conflicts, is_valid_grid
from jaxorder.evaluation.runs import companion_dirs, load_companions, load_params, run_tokenizer
from jaxorder.objectives.common import special_ids

SWEEP = REPO / "configs" / "sweeps" / "sudoku_decoding.yaml"
BATCH, LENGTH = 16, 82
SETTINGS = (("confidence", {}), ("info-gain", {}), ("margin", {}),
            ("guided", {"guide": "l2r", "guide_threshold": 0.1}))  # the sweep's l2r run guides


def grid_line(text: str) -> str:
    """The sample's grid: its first 81 characters (the newline position is generated too), with
    every character that is not a digit 1-9 (whitespace included) written as 0, a missing digit."""
    return "".join(c if c in "123456789" else "0" for c in text[:81])


def grid_cells(tokens_L: np.ndarray, tokenizer) -> str:
    """The grid of a row of tokens by position: its first 81 tokens, each a digit 1-9 or 0 (a missing
    digit: anything else, specials included), so every cell stays at its place whatever was generated."""
    chars = (tokenizer.decode(np.asarray([t])) for t in np.asarray(tokens_L)[:81])
    return "".join(c if len(c) == 1 and c in "123456789" else "0" for c in chars)


def grid_stats(lines: list[str]) -> dict:
    """Valid-grid fraction (with its binomial s.e.) and conflicts per grid ± s.e. of 81-character lines
    (a line of another length counts as an empty grid, 27 * 9 conflicts)."""
    valid = np.asarray([is_valid_grid(x) for x in lines], np.float64)
    conflicts = np.asarray([grid_conflicts(x) if len(x) == 81 else 27 * 9 for x in lines], np.float64)
    n = len(lines)
    return {"samples": n, "valid": int(valid.sum()), "valid_fraction": float(valid.mean()),
            "valid_se": float(math.sqrt(valid.mean() * (1 - valid.mean()) / n)),
            "conflicts": float(conflicts.mean()), "conflicts_se": float(conflicts.std(ddof=1) / math.sqrt(n))}


def measure(cfg, params, tokenizer, name: str, options: dict, steps: int, samples: int,
            runs: Path) -> dict:
    sampler = sampling.resolve(cfg, name)
    given = {"steps": steps, **options, **companion_dirs(sampler, options, runs)}
    opts = sampling.make_options(sampler, given)
    companions = load_companions(sampler, opts)
    rows = np.full((BATCH, LENGTH), special_ids(cfg.model).mask, np.int32)
    lines, uncertainty, nfe, t0 = [], [], 0, time.perf_counter()
    for seed in range(max(samples // BATCH, 1)):
        out = jax.device_get(sampling.sample(params, cfg, rows, jax.random.key(seed), sampler, opts,
                                             companions=companions))
        tokens = np.asarray(out["tokens"])
        lines += [grid_line(tokenizer.decode(t[t != tokenizer.pad_id])) for t in tokens]
        uncertainty += list(np.asarray(out["uncertainty"]) / LENGTH)
        nfe += int(out["nfe"])
    stats = grid_stats(lines)
    return {"sampler": name, "steps": steps, **options, "samples": len(lines),
            "valid_fraction": stats["valid_fraction"], "conflicts": stats["conflicts"],
            "conflicts_se": stats["conflicts_se"], "uncertainty_per_token": float(np.mean(uncertainty)),
            "passes_per_token": nfe / (max(samples // BATCH, 1) * LENGTH),
            "seconds": time.perf_counter() - t0}


def markdown(results: list[dict]) -> str:
    lines = ["| sampler | steps | valid grids | conflicts/grid | uncertainty (nats/token) | passes/token |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['valid_fraction']:.3f} | "
                     f"{r['conflicts']:.2f} ± {r['conflicts_se']:.2f} | {r['uncertainty_per_token']:.3f} | "
                     f"{r['passes_per_token']:.2f} |")
    return "\n".join(lines)


def plot(results: list[dict], out_dir: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["sampler"] for r in results):
        rs = [r for r in results if r["sampler"] == name]
        ax.errorbar([r["steps"] for r in rs], [r["conflicts"] for r in rs],
                    yerr=[r["conflicts_se"] for r in rs], marker="o", capsize=2, label=name)
    ax.set_xlabel("steps (82 positions)")
    ax.set_ylabel("conflicts per grid (0 = valid)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "sudoku.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(REPO / "runs" / "sweeps" / "sudoku_decoding"))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--steps", default="82,41,21")
    parser.add_argument("--samplers", default=",".join(name for name, _ in SETTINGS))
    args = parser.parse_args()
    runs = Path(args.runs)
    if not (runs / "mdm" / "checkpoints").is_dir():
        import subprocess
        subprocess.run([sys.executable, "-m", "jaxorder.cli", "sweep", str(SWEEP), "--out", str(runs)],
                       check=True)
    cfg, params, step = load_params(runs / "mdm")
    tokenizer = run_tokenizer(cfg, runs / "mdm")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{stamp}; {machine_line()}; sudoku mdm step {step}", flush=True)
    wanted = args.samplers.split(",")
    results = []
    for steps in (int(s) for s in args.steps.split(",")):
        for name, options in SETTINGS:
            if name not in wanted:
                continue
            r = measure(cfg, params, tokenizer, name, options, steps, args.samples, runs)
            results.append(r)
            print(f"{name:<12} steps {steps:>3}  valid {r['valid_fraction']:.3f}  conflicts "
                  f"{r['conflicts']:.2f}±{r['conflicts_se']:.2f}  "
                  f"uncertainty {r['uncertainty_per_token']:.3f}  passes/token {r['passes_per_token']:.2f}  "
                  f"({r['seconds']:.0f} s)", flush=True)
    out = runs / "bench"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sudoku.json"
    if path.exists():  # rows of earlier invocations stay unless this one measured the same setting
        key = lambda r: (r["sampler"], r["steps"])  # noqa: E731
        new = {key(r) for r in results}
        results = [r for r in json.loads(path.read_text())["rows"] if key(r) not in new] + results
    path.write_text(json.dumps({"date": stamp, "machine": machine_line(), "step": step,
                                                 "rows": results}, indent=1))
    (out / "sudoku.md").write_text(f"{stamp}; {machine_line()}\n\n{markdown(results)}\n")
    plot(results, out)
    print(markdown(results))


if __name__ == "__main__":
    main()
