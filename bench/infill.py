"""Infilling a span of unknown length: ilm (told nothing about the length) against mdm (told the true
length, its best case, and lengths 50% too short and too long). Prints a table, writes a PNG.

Windows: the first `--windows` validation windows of the runs' data (256 tokens each). In window i a
span of k_i ~ U{2..20} tokens starting at s_i ~ U{40..100} is removed; the row keeps T = 200 tokens
of text around it:
  - ilm:  prefix, 40 MASK (an open insertion point: the MASK count is only a cap), the suffix up to
          token T, PAD to a common row length; the `insert` sampler fills the gap;
  - nothing inserted: prefix and suffix joined (the hole left empty), the baseline a fill must beat;
  - mdm:  prefix, k' MASK, then the suffix w[s+k : s+k+T-s-k'] (T tokens per row, so every row has the
          same length), k' = k (true), round(1.5k) (+50%), max(1, round(0.5k)) (-50%); the default
          sampler (confidence), one token per step.
Scores, under the judge (the l2r run, exact left-to-right NLL, byte tokenizer; one pass over each
filled row): the bits/byte of the fill itself (given the prefix; windows with an empty fill left
out), the suffix excess bits, NLL(the first 70 suffix tokens | prefix, fill) - NLL(the same tokens |
prefix, true span) (0 for a fill equal to the true span; measures how well the fill joins the text
after it, whatever its length), and the bits/byte of the whole row. ilm's length error is
(inserted tokens - k). Mean +- standard error over windows.

    python bench/infill.py [--runs runs/sweeps/decoding] [--windows 64] [--png infill.png]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from bench.decoding_common import machine_line, mean_se
from jaxorder import sampling
from jaxorder.data import make_data
from jaxorder.evaluation.runs import load_params
from jaxorder.objectives import l2r
from jaxorder.objectives.common import special_ids

CONTEXT, HOLE, SPAN, STARTS = 200, 40, (2, 20), (40, 100)
SUFFIX = CONTEXT - STARTS[1] - int(round(1.5 * SPAN[1]))  # suffix tokens every row has: 70


def judge_bits(judge, rows: list[np.ndarray]) -> list[np.ndarray]:
    """Exact l2r NLL in bits of every token of each row (rows of any length: padded on the right,
    which a causal judge never sees)."""
    cfg, params, _ = judge
    width = max(len(r) for r in rows)
    tokens = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = r
    nll = np.asarray(jax.jit(lambda p, t: l2r.sequence_token_nll(p, t, cfg))(params, jnp.asarray(tokens)),
                     np.float64) / math.log(2.0)
    return [nll[i, :len(r)] for i, r in enumerate(rows)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/sweeps/decoding")
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--png", default="infill.png")
    args = ap.parse_args()
    runs = Path(args.runs)
    loaded = {}
    for name in ("l2r", "mdm", "ilm"):
        cfg, params, step = load_params(runs / name)
        loaded[name] = (cfg, params, step)
        print(f"{name}: step {step}/{cfg.train.steps}", flush=True)
    judge = loaded["l2r"]
    if judge[0].data.tokenizer != "byte":
        raise SystemExit("bench/infill.py scores token ids as bytes: the runs must use the byte tokenizer")
    data = make_data(judge[0].data)
    windows = np.concatenate([np.asarray(b) for b in data.val_batches(args.windows)])[:args.windows]
    N = len(windows)
    rng = np.random.default_rng(args.seed)
    k = rng.integers(SPAN[0], SPAN[1] + 1, N)
    s = rng.integers(STARTS[0], STARTS[1] + 1, N)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine_line()}; {N} windows", flush=True)
    ids = special_ids(loaded["ilm"][0].model)
    results = {}

    # ilm: one open gap, no length given
    width = CONTEXT - SPAN[0] + HOLE
    rows = np.full((N, width), ids.pad, np.int32)
    for i in range(N):
        row = np.concatenate([windows[i, :s[i]], np.full(HOLE, ids.mask), windows[i, s[i] + k[i]:CONTEXT]])
        rows[i, :len(row)] = row
    cfg, params, _ = loaded["ilm"]
    t0 = time.perf_counter()
    out = jax.device_get(sampling.sample(params, cfg, rows, jax.random.key(args.seed), "insert"))
    seconds = time.perf_counter() - t0
    fill = np.asarray(out["length"]) - (CONTEXT - k)
    filled = [np.asarray(out["tokens"][i, :out["length"][i]]) for i in range(N)]
    results["ilm (length unknown)"] = (filled, fill, int(out["nfe"]), seconds)
    print(f"ilm: {int(out['nfe'])} passes, {seconds:.1f} s, stopped by the model in "
          f"{int(np.sum(out['eos']))}/{N} rows", flush=True)

    # the hole left empty: what a fill has to beat
    empty = [np.concatenate([windows[i, :s[i]], windows[i, s[i] + k[i]:CONTEXT]]) for i in range(N)]
    results["nothing inserted"] = (empty, np.zeros(N, int), 0, 0.0)

    # mdm: told a length
    cfg, params, _ = loaded["mdm"]
    for label, told in (("mdm (true length)", k), ("mdm (length +50%)", np.round(1.5 * k).astype(int)),
                        ("mdm (length -50%)", np.maximum(1, np.round(0.5 * k).astype(int)))):
        rows = np.stack([np.concatenate([windows[i, :s[i]], np.full(told[i], ids.mask),
                                         windows[i, s[i] + k[i]:s[i] + k[i] + CONTEXT - s[i] - told[i]]])
                         for i in range(N)]).astype(np.int32)
        t0 = time.perf_counter()
        out = jax.device_get(sampling.sample(params, cfg, rows, jax.random.key(args.seed), None,
                                             sampling.SamplerOptions(steps=int(told.max()))))
        seconds = time.perf_counter() - t0
        results[label] = ([np.asarray(t) for t in out["tokens"]], told, int(out["nfe"]), seconds)

    truth = judge_bits(judge, [windows[i, :CONTEXT] for i in range(N)])
    true_suffix = np.array([truth[i][s[i] + k[i]:s[i] + k[i] + SUFFIX].sum() for i in range(N)])
    print("\n| method | fill length | length error (mean abs) | fill bits/byte | suffix excess bits "
          "| row bits/byte | passes |\n|---|---|---|---|---|---|---|")
    table = {}
    for label, (filled, fill, nfe, _) in results.items():
        bits = judge_bits(judge, filled)
        fill_bpb = [bits[i][s[i]:s[i] + fill[i]].mean() for i in range(N) if fill[i] > 0] or [np.nan, np.nan]
        suffix = np.array([bits[i][s[i] + fill[i]:s[i] + fill[i] + SUFFIX].sum() for i in range(N)])
        excess = suffix - true_suffix
        row_bpb = [b.mean() for b in bits]
        err = np.asarray(fill) - k
        table[label] = (mean_se(excess), err)
        (f_m, f_se), (x_m, x_se), (r_m, r_se), (e_m, e_se) = (mean_se(fill_bpb), mean_se(excess),
                                                              mean_se(row_bpb), mean_se(err))
        n_fills = int(np.sum(np.asarray(fill) > 0))
        print(f"| {label} | {np.mean(fill):.1f} | {e_m:+.1f} +- {e_se:.1f} ({np.mean(np.abs(err)):.1f}) | "
              f"{f_m:.2f} +- {f_se:.2f} ({n_fills} fills) | {x_m:.1f} +- {x_se:.1f} | "
              f"{r_m:.3f} +- {r_se:.3f} | {nfe} |")
    true_fill = [truth[i][s[i]:s[i] + k[i]].mean() for i in range(N)]
    (t_m, t_se), (w_m, w_se) = mean_se(true_fill), mean_se([t.mean() for t in truth])
    print(f"| original text | {np.mean(k):.1f} | 0 | {t_m:.2f} +- {t_se:.2f} | 0 | {w_m:.3f} +- {w_se:.3f} "
          f"| |")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    labels = list(table)
    a.bar(range(len(labels)), [table[x][0][0] for x in labels], yerr=[table[x][0][1] for x in labels],
          capsize=4)
    a.set_xticks(range(len(labels)), [x.replace(" (", "\n(") for x in labels], fontsize=8)
    a.set_ylabel("suffix excess judge bits (mean +- s.e.)")
    b.scatter(k + rng.uniform(-0.2, 0.2, N), results["ilm (length unknown)"][1], s=12)
    b.plot(SPAN, SPAN, "k--", lw=1)
    b.set_xlabel("true span length k")
    b.set_ylabel("tokens ilm inserted")
    fig.suptitle(f"infilling {N} windows: ilm step {loaded['ilm'][2]}, mdm step {loaded['mdm'][2]}")
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
