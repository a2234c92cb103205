"""Order-choosing decoders on Sudoku: valid grids, solved puzzles and conflicts, for each sampler.

    python bench/sudoku.py [--runs runs/sweeps/sudoku_decoding] [--samples 64] [--per-step 1,2,4]
                           [--givens 0,36,60] [--samplers confidence,info-gain,margin[,guided]]

The mdm run of configs/sweeps/sudoku_decoding.yaml (trained first if missing, with `jaxorder sweep`)
decodes `--samples` 82-token windows (one grid and a newline) per setting, in batches of 16 (key =
batch index, the same keys for every sampler, so the rows are paired), at temperature 1. A setting
is a sampler, a number of commits per step k (steps = ceil(generated positions / k)) and a number
of givens G: G = 0 generates whole windows from nothing; G > 0 solves the first `--samples`
validation grids with G random cells kept (the same cells for every sampler; the separator kept
too) and the others masked. For each setting it reports the valid-grid fraction (G > 0: solved =
a valid grid that keeps every given), the mean conflicts per grid (digits missing from the grid's 27
rows, columns and boxes; 0 iff valid), both with standard errors, their paired differences from
`confidence` at the same k and G, the cumulative uncertainty (summed entropy at commit time, nats
per generated token) and network calls per generated token (for `guided`: passes of the mdm; the
guide is the sweep's l2r run). Writes DIR/sudoku.json, sudoku.md and sudoku.png (conflicts
against commits per step).
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
from decoding_common import REPO, machine_line, mean_se, record_confidence_traces

from jaxorder import sampling
from jaxorder.data import make_data
from jaxorder.data.synthetic import grid_conflicts, is_valid_grid, solves
from jaxorder.evaluation.filter_training import train_filter
from jaxorder.evaluation.runs import companion_dirs, load_companions, load_params, run_tokenizer
from jaxorder.objectives.common import special_ids

SWEEP = REPO / "configs" / "sweeps" / "sudoku_decoding.yaml"
BATCH, LENGTH, CELLS = 16, 82, 81
SETTINGS = (("confidence", "confidence", {}), ("info-gain", "info-gain", {}),
            ("info-gain C=2", "info-gain", {"candidates": 2}),
            ("info-gain surprisal", "info-gain", {"commit_cost": "surprisal"}), ("margin", "margin", {}),
            ("remask 0.5", "confidence", {"remask": 0.5, "remask_candidates": 8}),
            ("remask 1", "confidence", {"remask": 1.0, "remask_candidates": 8}),
            *((f"remask {r:g} n={n}", "confidence", {"remask": r, "remask_candidates": n})
              for r in (0.5, 1.0) for n in (24, 81)),  # more of the committed cells re-scored
            *((f"remask {r:g} resample", "confidence",
               {"remask": r, "remask_candidates": 8, "remask_resample": True}) for r in (0.5, 1.0)),
            ("threshold 0.9", "threshold", {"threshold": 0.9}),
            ("threshold 0.7", "threshold", {"threshold": 0.7}),
            ("Prophet 5", "confidence", {"prophet": 5.0}), ("Prophet 2.5", "confidence", {"prophet": 2.5}),
            ("learned 0.9", "learned", {"filter_threshold": 0.9}),
            ("learned 0.5", "learned", {"filter_threshold": 0.5}),
            ("guided", "guided", {"guide": "l2r", "guide_threshold": 0.1}),
            ("guided product", "guided",
             {"guide": "l2r", "guide_threshold": 0.1, "guide_fallback": "product"}),
            ("l2r alone", "ar", {}),  # the guide's own samples, on the l2r run (unprompted rows only)
            )  # (label, sampler, options); the guided ones and "l2r alone" need the sweep's l2r run
OTHER_RUN = {"l2r alone": "l2r"}  # settings decoded by another run of the sweep than the mdm
TRACE_ROWS, TRACE_KEY = 64, 1000  # the learned filter's traces: other rows, other keys than the decodes


def grid_cells(tokens_L: np.ndarray, tokenizer) -> str:
    """The grid of a row of tokens by position: its first 81 tokens, each a digit 1-9 or 0 (a missing
    digit: anything else, specials included), so every cell stays at its place whatever was generated."""
    chars = (tokenizer.decode(np.asarray([t])) for t in np.asarray(tokens_L)[:81])
    return "".join(c if len(c) == 1 and c in "123456789" else "0" for c in chars)


def outcome_stats(valid_N: np.ndarray, conflicts_N: np.ndarray) -> dict:
    """Valid (or solved) count and fraction with its binomial s.e., and conflicts per grid ± s.e."""
    n = len(valid_N)
    p = float(np.mean(valid_N))
    return {"samples": n, "valid": int(np.sum(valid_N)), "valid_fraction": p,
            "valid_se": float(math.sqrt(p * (1 - p) / n)), "conflicts": float(np.mean(conflicts_N)),
            "conflicts_se": float(np.std(conflicts_N, ddof=1) / math.sqrt(n))}


def grid_stats(lines: list[str]) -> dict:
    """`outcome_stats` of 81-character lines (a line of another length counts as an empty grid, 27 * 9
    conflicts)."""
    valid = np.asarray([is_valid_grid(x) for x in lines], np.float64)
    conflicts = np.asarray([grid_conflicts(x) if len(x) == 81 else 27 * 9 for x in lines], np.float64)
    return outcome_stats(valid, conflicts)


def windows_of(cfg, count: int) -> tuple[np.ndarray, float]:
    """The first `count` validation windows [count, 82] of the run's data, and bytes per token."""
    data = make_data(cfg.data)
    rows = np.concatenate(data.val_batches(-(-count // cfg.data.batch_size)))[:count]
    return rows, data.val_bytes_per_token


def templates(windows: np.ndarray, givens: int, mask: int) -> np.ndarray:
    """Rows with `givens` random cells of each grid kept, the other cells MASK, the separator kept."""
    rng = np.random.default_rng(0)
    rows = windows.copy()
    for row in rows:
        row[rng.permutation(CELLS)[givens:]] = mask
    return rows


def measure(cfg, params, tokenizer, label: str, name: str, options: dict, per_step: int,
            rows_NL: np.ndarray, runs: Path) -> dict:
    """One setting on the rows (all MASK, or puzzles): per-row outcomes and the setting's summary."""
    mask = special_ids(cfg.model).mask
    generated = int((rows_NL[0] == mask).sum())
    steps = -(-generated // per_step)
    sampler = sampling.resolve(cfg, name)
    given = {"temperature": 1.0, **options, **companion_dirs(sampler, options, runs)}
    if "steps" in sampler.options:
        given["steps"] = steps
    opts = sampling.make_options(sampler, given)
    companions = load_companions(sampler, opts)
    givens = int(CELLS - (rows_NL[0, :CELLS] == mask).sum())
    given_lines = [grid_cells(np.where(r == mask, tokenizer.pad_id, r), tokenizer) for r in rows_NL]
    lines, uncertainty, nfe, t0 = [], [], 0, time.perf_counter()
    for i in range(0, len(rows_NL), BATCH):
        out = jax.device_get(sampling.sample(params, cfg, rows_NL[i:i + BATCH], jax.random.key(i // BATCH),
                                             sampler, opts, companions=companions))
        lines += [grid_cells(t, tokenizer) for t in np.asarray(out["tokens"])]
        unsure_B = out.get("uncertainty", np.full(len(out["tokens"]), np.nan))  # AR samplers have none
        uncertainty += list(np.asarray(unsure_B) / generated)
        nfe += int(out["nfe"])
    solved_N = np.asarray([solves(x, g) for x, g in zip(lines, given_lines)], np.float64)
    conflicts_N = np.asarray([grid_conflicts(x) for x in lines], np.float64)
    n = len(lines)
    return {"sampler": label, "sampler_name": name, "per_step": per_step, "steps": steps, "givens": givens,
            **options, **outcome_stats(solved_N, conflicts_N),
            "uncertainty_per_token": float(np.mean(uncertainty)),
            "passes_per_token": nfe / (-(-n // BATCH) * generated),
            "seconds": time.perf_counter() - t0,
            "per_row": {"valid": solved_N.tolist(), "conflicts": conflicts_N.tolist(),
                        "uncertainty": [float(u) for u in uncertainty]}}


def commit_filter_of(cfg, params, run_dir: Path, out: Path) -> str:
    """The learned settings' filter: trained (once, into OUT/filter) on traces of one-token-per-step
    `confidence` decodes of TRACE_ROWS unprompted rows, one batch keyed TRACE_KEY (decodes: 0, 1, ...)."""
    path = out / "filter" / "commit_filter.yaml"
    if not path.exists():
        rows = np.full((TRACE_ROWS, LENGTH), special_ids(cfg.model).mask, np.int32)
        opts = sampling.SamplerOptions(steps=LENGTH, temperature=1.0)
        header = record_confidence_traces(params, cfg, rows, opts, TRACE_KEY, out / "traces.npz",
                                          run_dir.name)
        filt = train_filter(run_dir, header["path"], out=out / "filter", log=None)
        print(f"filter: {header['rows']} trace rows, label rate {header['label_rate']:.3f}, held-out AUC "
              f"{filt['metrics']['held_out']['auc']:.3f}", flush=True)
    return str(path)


def add_paired(results: list[dict]) -> None:
    """Paired differences of each row from `confidence` at the same commits per step and givens."""
    base = {(r["per_step"], r["givens"]): r for r in results if r["sampler"] == "confidence"}
    for r in results:
        b = base.get((r["per_step"], r["givens"]))
        if b is None or b is r or b["samples"] != r["samples"]:
            continue
        for key in ("valid", "conflicts", "uncertainty"):
            r[f"d_{key}"] = mean_se(np.subtract(r["per_row"][key], b["per_row"][key]))


def markdown(results: list[dict]) -> str:
    lines = ["| givens | sampler | commits/step (steps) | valid or solved | Δ vs confidence | "
             "conflicts/grid | Δ conflicts | uncertainty (nats/token) | Δ uncertainty | passes/token |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def delta(r: dict, key: str, fmt: str) -> str:
        return f"{r[key][0]:+{fmt}} ± {r[key][1]:{fmt}}" if key in r else ""

    for r in results:
        lines.append(f"| {r['givens']} | {r['sampler']} | {r['per_step']} ({r['steps']}) | "
                     f"{r['valid']}/{r['samples']} ({r['valid_fraction']:.3f} ± {r['valid_se']:.3f}) | "
                     f"{delta(r, 'd_valid', '.3f')} | {r['conflicts']:.2f} ± {r['conflicts_se']:.2f} | "
                     f"{delta(r, 'd_conflicts', '.2f')} | {r['uncertainty_per_token']:.3f} | "
                     f"{delta(r, 'd_uncertainty', '.3f')} | {r['passes_per_token']:.2f} |")
    return "\n".join(lines)


def plot(results: list[dict], out_dir: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    givens = sorted({r["givens"] for r in results})
    names = list(dict.fromkeys(r["sampler"] for r in results))
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, 20))
    fig, axes = plt.subplots(1, len(givens), figsize=(5.5 * len(givens) + 2.5, 4.5), squeeze=False)
    for ax, g in zip(axes[0], givens):
        for i, name in enumerate(names):  # one color and marker per setting across both panels
            rs = sorted((r for r in results if r["sampler"] == name and r["givens"] == g),
                        key=lambda r: r["per_step"])
            ax.errorbar([r["per_step"] for r in rs], [r["conflicts"] for r in rs],
                        yerr=[r["conflicts_se"] for r in rs], marker="osD^v<>p*h"[i % 10], capsize=2,
                        color=colors[i % 20], label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("commits per step")
        ax.set_ylabel("conflicts per grid (0 = valid)")
        ax.set_title("unprompted" if g == 0 else f"{g} givens")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 2.5 / fig.get_figwidth(), 1))
    fig.savefig(out_dir / "sudoku.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(REPO / "runs" / "sweeps" / "sudoku_decoding"))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--per-step", default="1,2,4", help="commits per step (a comma list)")
    parser.add_argument("--givens", default="0", help="cells kept per puzzle, 0 = unprompted (a comma list)")
    parser.add_argument("--samplers", default="confidence,info-gain,margin",
                        help="comma list of the labels of SETTINGS (guided needs the l2r run)")
    args = parser.parse_args()
    runs = Path(args.runs)
    if not (runs / "mdm" / "checkpoints").is_dir():
        import subprocess
        subprocess.run([sys.executable, "-m", "jaxorder.cli", "sweep", str(SWEEP), "--out", str(runs)],
                       check=True)
    cfg, params, step = load_params(runs / "mdm")
    tokenizer = run_tokenizer(cfg, runs / "mdm")
    mask = special_ids(cfg.model).mask
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{stamp}; {machine_line()}; sudoku mdm step {step}", flush=True)
    wanted = args.samplers.split(",")
    windows = windows_of(cfg, args.samples)[0]
    results, out = [], runs / "bench"
    out.mkdir(parents=True, exist_ok=True)
    filter_path = (commit_filter_of(cfg, params, runs / "mdm", out)
                   if any(name == "learned" and label in wanted for label, name, _ in SETTINGS) else "")
    for g in (int(x) for x in args.givens.split(",")):
        rows_NL = np.full((args.samples, LENGTH), mask, np.int32) if g == 0 else templates(windows, g, mask)
        for k in (int(x) for x in args.per_step.split(",")):
            for label, name, options in SETTINGS:
                if label not in wanted:
                    continue
                given = dict(options, commit_filter=filter_path) if name == "learned" else options
                if label in OTHER_RUN:  # an l2r run decodes left to right: no givens, no commits per step
                    if g > 0 or k != 1:
                        continue
                    run_cfg, run_params, _ = load_params(runs / OTHER_RUN[label])
                    r = measure(run_cfg, run_params, tokenizer, label, name, given, k, rows_NL, runs)
                else:
                    r = measure(cfg, params, tokenizer, label, name, given, k, rows_NL, runs)
                results.append(r)
                print(f"givens {g:>2}  {label:<13} {k}/step ({r['steps']:>2} steps)  valid {r['valid']}/"
                      f"{r['samples']}  conflicts {r['conflicts']:.2f}±{r['conflicts_se']:.2f}  "
                      f"uncertainty {r['uncertainty_per_token']:.3f}  "
                      f"passes/token {r['passes_per_token']:.2f}  ({r['seconds']:.0f} s)", flush=True)
    path = out / "sudoku.json"
    if path.exists():  # rows of earlier invocations stay unless this one measured the same setting
        key = lambda r: (r["sampler"], r.get("per_step"), r.get("givens", 0))  # noqa: E731
        new = {key(r) for r in results}
        old = json.loads(path.read_text())["rows"]
        results = [r for r in old if key(r) not in new and "per_row" in r] + results
    add_paired(results)
    path.write_text(json.dumps({"date": stamp, "machine": machine_line(), "step": step,
                                "rows": results}, indent=1))
    header = f"{stamp}; {machine_line()}; sudoku mdm step {step}"
    (out / "sudoku.md").write_text(f"{header}\n\n{markdown(results)}\n")
    plot(results, out)
    print(markdown(results))


if __name__ == "__main__":
    main()
