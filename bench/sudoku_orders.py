"""Learned generation orders on Sudoku (issue 20): bits per cell, valid samples, solving from clues and
the order each sampler fills a grid in, for the runs of configs/sweeps/sudoku_orders.yaml.

    python bench/sudoku_orders.py [--runs runs/sweeps/sudoku_orders] [--names l2r,mdm,ao_ar,learned_order]
                                  [--windows 128] [--samples 128] [--givens 36,60]
                                  [--sampler-for RUN=SAMPLER,...]

Each run (trained first with `jaxorder sweep` if the directory has none of them) is decoded with its
objective's natural sampler at temperature 1 (l2r: ar; mdm: confidence, 82 steps, one commit per step;
ao_ar: greedy; learned_order: policy; --sampler-for names another for a run, e.g. a control run trained
in one order), every sampler with ignore_eos so each row keeps its 82 tokens:

(a) bits per grid cell: the run's yardstick (as `jaxorder eval`: exact for l2r, exact in the l2r order
    for ao_ar, upper bounds for mdm and learned_order) on the first --windows validation windows: a
    window's bits (81 cells and the separator) / 81, ± s.e. over windows;
(b) --samples unprompted rows (batches of 16, key = batch index): valid grids and conflicts per grid
    (bench/sudoku.py's grid_stats; a cell holding anything but a digit is an empty cell);
(c) solving: the first --samples validation grids with G random cells kept for each G of --givens (the
    same cells for every run, numpy seed 0) and the others masked, the separator kept: the fraction
    solved (a valid grid that keeps every given, synthetic.solves);
(d) fill orders of (b) and (c) (the samplers' committed_at; ar: reading order), cells only: per fill,
    the filled peers (same row, column or box) of the chosen cell minus the mean over the cells still
    open (commit_order.filled_neighbours; a uniformly random order scores 0 in expectation, exactly);
    for learned_order also q's Plackett-Luce mode argsort(-s) on the --windows validation windows.

Writes DIR/bench/sudoku_orders.json, sudoku_orders.md, sudoku_orders_fill_rank.png (mean fill rank of
each cell per sampler, and q's mode) and sudoku_orders_constrained.png (the difference per fill index).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import numpy as np
from decoding_common import REPO, machine_line
from sudoku import BATCH, CELLS, LENGTH, grid_cells, grid_stats, templates, windows_of

from jaxorder import objectives, sampling
from jaxorder.data.synthetic import solves, sudoku_peers
from jaxorder.evaluation.commit_order import filled_neighbours, most_constrained_order
from jaxorder.evaluation.runs import load_params, run_tokenizer
from jaxorder.evaluation.yardstick import LN2, evaluate
from jaxorder.objectives import learned_order, order_posterior
from jaxorder.objectives.common import special_ids

SWEEP = REPO / "configs" / "sweeps" / "sudoku_orders.yaml"
NATURAL = {"l2r": ("ar", {}), "mdm": ("confidence", {"steps": LENGTH}), "ao_ar": ("greedy", {}),
           "learned_order": ("policy", {})}  # objective -> its natural sampler and options


def bits_per_cell(result: dict, bytes_per_token: float) -> tuple[float, float]:
    """A yardstick's bits/byte (and s.e.) as bits per grid cell: a window's bits over its 81 cells."""
    scale = bytes_per_token * LENGTH / CELLS
    return result["bpb"] * scale, result["bpb_stderr"] * scale


def decode(cfg, params, rows: np.ndarray, sampler: str, options: dict) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [N, 82], committed_at [N, 82]) of the sampler on the rows, in batches of 16 (key: batch
    index); the ar sampler's order is the reading order."""
    opts = sampling.make_options(sampling.resolve(cfg, sampler),
                                 {"temperature": 1.0, "ignore_eos": True, **options})
    tokens, committed = [], []
    for i in range(0, len(rows), BATCH):
        out = jax.device_get(sampling.sample(params, cfg, rows[i:i + BATCH], jax.random.key(i // BATCH),
                                             sampler, opts))
        tokens.append(np.asarray(out["tokens"]))
        generated = rows[i:i + BATCH] == special_ids(cfg.model).mask
        committed.append(np.asarray(out["committed_at"]) if "committed_at" in out
                         else np.where(generated, np.arange(rows.shape[1]), -1))
    return np.concatenate(tokens), np.concatenate(committed)


def order_summary(committed_NL: np.ndarray) -> dict:
    """Filled peers of each chosen cell minus the open cells' mean (mean over a grid's fills, then ±
    s.e. over grids), the same per fill index, and each cell's mean fill rank (0 = first). Also the
    plain mean of the filled peers at fill time beside its exact expectation under a uniformly random
    order (given-to-hole peer pairs + hole pairs / 2, per hole): equal for every order."""
    peers = sudoku_peers()
    per_grid, per_index, ranks, plain, random = [], [], [], [], []
    for committed in committed_NL[:, :CELLS]:
        chosen, open_mean = filled_neighbours(committed, peers)
        gen = committed >= 0
        plain.append(chosen.mean())
        random.append((peers[np.ix_(gen, ~gen)].sum() + peers[np.ix_(gen, gen)].sum() / 2) / gen.sum())
        per_grid.append(float((chosen - open_mean).mean()))
        per_index.append(chosen - open_mean)
        filled = committed >= 0
        rank = np.full(CELLS, np.nan)
        rank[filled] = np.argsort(np.argsort(committed[filled], kind="stable"), kind="stable")
        ranks.append(rank)
    d = np.asarray(per_grid)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0  # one order: no spread
    return {"excess": float(d.mean()), "excess_se": se,
            "excess_by_fill": np.mean(np.stack(per_index), axis=0).tolist(),
            "filled_peers": float(np.mean(plain)), "filled_peers_random": float(np.mean(random)),
            "fill_rank": np.nanmean(np.stack(ranks), axis=0).tolist()}


def q_mode(cfg, params, windows: np.ndarray) -> dict:
    """q's mode on the windows (Plackett-Luce: argsort(-s); with q_transitions the greedy order): the
    order statistics of its cell order, and how many distinct cell orders the windows get."""
    scores = jax.jit(learned_order.q_scores)(params, windows)
    mode_NL = np.asarray(order_posterior.mode(scores, learned_order.q_table(params)))
    committed = np.argsort(mode_NL, axis=1)[:, :CELLS]  # each position's rank, separator dropped
    summary = order_summary(committed)
    summary["distinct_modes"] = len({tuple(np.argsort(c)) for c in committed})
    return summary


def solve(cfg, params, tokenizer, windows: np.ndarray, givens: int, sampler: str, options: dict) -> dict:
    """(c) and (d) on the windows' grids with `givens` cells kept."""
    mask = special_ids(cfg.model).mask
    puzzles = templates(windows, givens, mask)
    tokens, committed = decode(cfg, params, puzzles, sampler, options)
    lines = [grid_cells(t, tokenizer) for t in tokens]
    given_lines = [grid_cells(np.where(p == mask, tokenizer.pad_id, p), tokenizer) for p in puzzles]
    solved = np.asarray([solves(x, g) for x, g in zip(lines, given_lines)], np.float64)
    peers = sudoku_peers()  # the reference order: most filled peers first
    reference = order_summary(np.stack([most_constrained_order(p[:CELLS] != mask, peers) for p in puzzles]))
    return {**grid_stats(lines), "givens": givens, "solved": int(solved.sum()),
            "solved_fraction": float(solved.mean()),
            "solved_se": float(math.sqrt(solved.mean() * (1 - solved.mean()) / len(solved))),
            **order_summary(committed), "reference": reference}


def measure_run(name: str, runs: Path, n_windows: int, n_samples: int, givens: list[int],
                sampler: str | None = None) -> dict:
    cfg, params, step = load_params(runs / name)
    tokenizer = run_tokenizer(cfg, runs / name)
    natural, options = NATURAL[cfg.objective.name]
    sampler, options = (natural, options) if sampler in (None, natural) else (sampler, {})
    windows, bytes_per_token = windows_of(cfg, max(n_windows, n_samples))
    t0 = time.perf_counter()
    ys = evaluate(params, cfg, [windows[:n_windows]], bytes_per_token,
                  extras=objectives.of(cfg).eval_extras is not None)
    bpc, bpc_se = bits_per_cell(ys, bytes_per_token)
    row = {"run": name, "objective": cfg.objective.name, "step": step, "sampler": sampler, **options,
           "yardstick": ys["kind"], "windows": ys["windows"], "bits_per_cell": bpc,
           "bits_per_cell_se": bpc_se}
    if "extras" in ys:  # learned_order: the ELBO of the same draws
        elbo = ys["extras"]["elbo_nll"]
        row["elbo_bits_per_cell"] = elbo["mean"] / LN2 / CELLS
        row["elbo_bits_per_cell_se"] = elbo["stderr"] / LN2 / CELLS
    mask = special_ids(cfg.model).mask
    unprompted = np.full((n_samples, LENGTH), mask, np.int32)
    tokens, committed = decode(cfg, params, unprompted, sampler, options)
    row["unprompted"] = {**grid_stats([grid_cells(t, tokenizer) for t in tokens]), **order_summary(committed)}
    row["solving"] = [solve(cfg, params, tokenizer, windows[:n_samples], g, sampler, options) for g in givens]
    if objectives.of(cfg).own_params is learned_order.own_params:  # a run with a posterior q over orders
        row["q_mode"] = q_mode(cfg, params, windows[:n_windows])
    row["unprompted"]["reference"] = order_summary(most_constrained_order(np.zeros(CELLS, bool),
                                                                          sudoku_peers())[None])
    row["seconds"] = time.perf_counter() - t0
    return row


def markdown(rows: list[dict]) -> str:
    counts = [x["givens"] for x in rows[0]["solving"]]
    out = ["| run | sampler | bits per cell (yardstick) | valid grids (unprompted) | conflicts per grid | "
           + " | ".join(f"solved, {g} givens | conflicts, {g} givens" for g in counts) + " |",
           "|---|---|---|---|---|" + "---|---|" * len(counts)]
    for r in rows:
        u = r["unprompted"]
        cells = [f"{s['solved']}/{s['samples']} ({s['solved_fraction']:.3f} ± {s['solved_se']:.3f}) | "
                 f"{s['conflicts']:.2f} ± {s['conflicts_se']:.2f}" for s in r["solving"]]
        out.append(f"| {r['run']} | {r['sampler']} | {r['bits_per_cell']:.3f} ± {r['bits_per_cell_se']:.3f} "
                   f"({r['yardstick']}) | {u['valid']}/{u['samples']} ({u['valid_fraction']:.3f} ± "
                   f"{u['valid_se']:.3f}) | {u['conflicts']:.2f} ± {u['conflicts_se']:.2f} | "
                   + " | ".join(cells) + " |")
    out += ["", "Filled peers of the chosen cell − mean over the open cells, per fill (random order: 0):",
            "",
            "| run | order | unprompted | " + " | ".join(f"{g} givens" for g in counts) + " |",
            "|---|---|---|" + "---|" * len(counts)]

    def cell(x: dict) -> str:
        return f"{x['excess']:+.3f} ± {x['excess_se']:.3f}"

    for r in rows:
        out.append(f"| {r['run']} | {r['sampler']} | {cell(r['unprompted'])} | "
                   + " | ".join(cell(s) for s in r["solving"]) + " |")
        if "q_mode" in r:
            q = r["q_mode"]
            out.append(f"| {r['run']} | q's PL mode ({q['distinct_modes']} distinct cell orders) | "
                       f"{cell(q)} | " + " | ".join("" for _ in counts) + " |")
    first = rows[0]["unprompted"]["reference"]["excess"]
    out.append(f"| reference | most filled peers first | {first:+.3f} | "
               + " | ".join(cell(s["reference"]) for s in rows[0]["solving"]) + " |")
    out.append("| reference | uniformly random | 0 | " + " | ".join("0" for _ in counts) + " |")
    return "\n".join(out)


def plot(rows: list[dict], out_dir: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(f"{r['run']}: {r['sampler']}", r["unprompted"]["fill_rank"]) for r in rows]
    panels += [(f"{r['run']}: q's PL mode", r["q_mode"]["fill_rank"]) for r in rows if "q_mode" in r]
    cols = min(len(panels), 4)
    n_rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(3.2 * cols, 3.3 * n_rows + 0.3), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, rank) in zip(axes.flat, panels):
        grid = np.asarray(rank).reshape(9, 9)
        ax.imshow(grid, cmap="viridis", vmin=0, vmax=CELLS - 1)
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6,
                    color="white" if v < CELLS / 2 else "black")
        for k in (2.5, 5.5):
            ax.axhline(k, color="red", lw=1)
            ax.axvline(k, color="red", lw=1)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("mean fill rank of each cell (0 = filled first), unprompted samples", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "sudoku_orders_fill_rank.png", dpi=120)
    plt.close(fig)

    parts = [("unprompted", lambda r: r["unprompted"])]
    parts += [(f"solving, {s['givens']} givens", lambda r, i=i: r["solving"][i])
              for i, s in enumerate(rows[0]["solving"])]
    fig, axes = plt.subplots(1, len(parts), figsize=(5 * len(parts), 3.8), squeeze=False)
    for ax, (title, part) in zip(axes[0], parts):
        for r in rows:
            y = part(r)["excess_by_fill"]
            ax.plot(np.arange(len(y)), y, label=f"{r['run']} ({r['sampler']})")
        y = part(rows[0])["reference"]["excess_by_fill"]
        ax.plot(np.arange(len(y)), y, color="gray", lw=0.8, label="most filled peers first")
        ax.axhline(0, color="black", lw=0.8, ls="--", label="uniformly random (expectation)")
        ax.set_xlabel("fill index (cells)")
        ax.set_ylabel("filled peers of the chosen cell − open-cell mean")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "sudoku_orders_constrained.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(REPO / "runs" / "sweeps" / "sudoku_orders"))
    parser.add_argument("--names", default="l2r,mdm,ao_ar,learned_order")
    parser.add_argument("--windows", type=int, default=128, help="validation windows of the yardstick")
    parser.add_argument("--samples", type=int, default=128, help="unprompted samples and puzzles per run")
    parser.add_argument("--givens", default="36,60", help="cells kept per puzzle (a comma list)")
    parser.add_argument("--sampler-for", default="", help="RUN=SAMPLER,...: another sampler for those runs")
    args = parser.parse_args()
    runs, names = Path(args.runs), args.names.split(",")
    if not any((runs / n / "checkpoints").is_dir() for n in names):
        subprocess.run([sys.executable, "-m", "jaxorder.cli", "sweep", str(SWEEP), "--out", str(runs)],
                       check=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{stamp}; {machine_line()}", flush=True)
    rows = []
    for name in names:
        givens = [int(g) for g in args.givens.split(",")]
        chosen = dict(x.split("=") for x in args.sampler_for.split(",") if x)
        rows.append(measure_run(name, runs, args.windows, args.samples, givens, chosen.get(name)))
        r = rows[-1]
        solved = "  ".join(f"solved {s['solved']}/{s['samples']} ({s['givens']})" for s in r["solving"])
        print(f"{name:<16} {r['bits_per_cell']:.3f}±{r['bits_per_cell_se']:.3f} bits/cell  valid "
              f"{r['unprompted']['valid']}/{r['unprompted']['samples']}  {solved}  excess "
              f"{r['unprompted']['excess']:+.3f}  ({r['seconds']:.0f} s)", flush=True)
    out = runs / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sudoku_orders.json").write_text(json.dumps({"date": stamp, "machine": machine_line(),
                                                        "args": vars(args), "rows": rows}, indent=1))
    (out / "sudoku_orders.md").write_text(f"{stamp}; {machine_line()}\n\n{markdown(rows)}\n")
    plot(rows, out)
    print(markdown(rows))


if __name__ == "__main__":
    main()
