"""Infilling a span of unknown length: ilm (told nothing about the length) against mdm (told the true
length, its best case, and lengths 50% too short and too long). Prints a table, writes a PNG.

Windows: the first `--windows` validation windows of the runs' data (256 tokens each). In window i a
span of k_i ~ U{2..20} tokens starting at s_i ~ U{40..100} is removed; the row keeps T = 200 tokens
of text around it:
  - ilm:  prefix, 40 MASK (an open insertion point: the MASK count is only a cap), the suffix up to
          token T, PAD to a common row length; the `insert` sampler fills the gap;
  - mdm:  prefix, k' MASK, then the suffix w[s+k : s+k+T-s-k'] (T tokens per row, so every row has the
          same length), k' = k (true), round(1.5k) (+50%), max(1, round(0.5k)) (-50%); the default
          sampler (confidence), one token per step.
Scores, under the judge (the l2r run, exact left-to-right NLL, byte tokenizer): the judge bits/byte
of the whole filled window, and the excess bits of the fill, NLL(filled window) - NLL(the original
text over the same extent), which is 0 for a fill equal to the true span (the shared context
cancels). ilm's length error is (inserted tokens - k). Mean +- standard error over windows.

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

from bench.decoding_common import machine_line
from jaxorder import sampling
from jaxorder.data import make_data
from jaxorder.evaluation.runs import load_params
from jaxorder.objectives import l2r
from jaxorder.objectives.common import special_ids

CONTEXT, HOLE, SPAN = 200, 40, (2, 20)


def mean_se(x) -> tuple[float, float]:
    x = np.asarray(x, np.float64)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x)))


def judge_bits(judge, rows: list[np.ndarray]) -> np.ndarray:
    """Exact l2r NLL in bits of each token row (rows of any length: padded, causal, summed over the row)."""
    cfg, params, _ = judge
    width = max(len(r) for r in rows)
    tokens = np.zeros((len(rows), width), np.int32)
    real = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        tokens[i, :len(r)], real[i, :len(r)] = r, True
    nll = jax.jit(lambda p, t: l2r.sequence_token_nll(p, t, cfg))(params, jnp.asarray(tokens))
    return np.where(real, np.asarray(nll, np.float64), 0.0).sum(axis=1) / math.log(2.0)


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
    s = rng.integers(40, 101, N)
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
    results["ilm (length unknown)"] = (filled, [windows[i, :CONTEXT] for i in range(N)], fill,
                                       int(out["nfe"]), seconds)
    print(f"ilm: {int(out['nfe'])} passes, {seconds:.1f} s, stopped by the model in "
          f"{int(np.sum(out['eos']))}/{N} rows", flush=True)

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
        originals = [windows[i, :CONTEXT + k[i] - told[i]] for i in range(N)]
        results[label] = ([np.asarray(t) for t in out["tokens"]], originals, told, int(out["nfe"]), seconds)

    print("\n| method | judge bits/byte (window) | excess bits of the fill | fill length | length error "
          "| passes |\n|---|---|---|---|---|---|")
    table = {}
    for label, (filled, originals, fill, nfe, _) in results.items():
        bits = judge_bits(judge, filled)
        excess = bits - judge_bits(judge, originals)
        bpb = bits / np.array([len(f) for f in filled])
        err = np.asarray(fill) - k
        table[label] = (mean_se(bpb), mean_se(excess), err)
        (b_m, b_se), (x_m, x_se), (e_m, e_se) = mean_se(bpb), mean_se(excess), mean_se(err)
        print(f"| {label} | {b_m:.3f} +- {b_se:.3f} | {x_m:.1f} +- {x_se:.1f} | {np.mean(fill):.1f} | "
              f"{e_m:+.1f} +- {e_se:.1f} (mean abs {np.mean(np.abs(err)):.1f}) | {nfe} |")
    true_bpb = judge_bits(judge, [windows[i, :CONTEXT] for i in range(N)]) / CONTEXT
    print(f"| original text | {mean_se(true_bpb)[0]:.3f} +- {mean_se(true_bpb)[1]:.3f} | 0 | "
          f"{np.mean(k):.1f} | 0 | |")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    labels = list(table)
    a.bar(range(len(labels)), [table[x][1][0] for x in labels], yerr=[table[x][1][1] for x in labels],
          capsize=4)
    a.set_xticks(range(len(labels)), [x.replace(" (", "\n(") for x in labels], fontsize=8)
    a.set_ylabel("excess judge bits of the fill (mean +- s.e.)")
    b.scatter(k + rng.uniform(-0.2, 0.2, N), results["ilm (length unknown)"][2], s=12)
    b.plot(SPAN, SPAN, "k--", lw=1)
    b.set_xlabel("true span length k")
    b.set_ylabel("tokens ilm inserted")
    fig.suptitle(f"infilling {N} windows: ilm step {loaded['ilm'][2]}, mdm step {loaded['mdm'][2]}")
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
