"""The decoding frontier: sample quality against speed for every sampler, on trained study-size models.

    python bench/decoding.py                   # the full grid on runs/sweeps/decoding
    python bench/decoding.py --quick           # fewer rows and samples (a smoke run)
    python bench/decoding.py --only mdm        # one run (l2r, l2r_draft, mdm, bd3_b4, ao_ar)
    python bench/decoding.py --lengths         # prefix / dual cache against length (512, 1024 tokens)
    python bench/decoding.py --long-prompts    # chunked prompt cache against full attention, 1k-4k prompts

Runs: `--runs DIR` holds the runs of configs/sweeps/decoding.yaml (the order study's tiny model on
256-token windows); missing ones are trained first with `jaxorder sweep` on that file, or on `--sweep
FILE` (about 5-10 minutes a run on 2 CPU cores). `l2r` is also the judge.

Each row is one sampler setting on one run, decoding
- unprompted windows: 256 MASK positions, `--samples` samples (batches of 8, one seed each);
- prompted windows: the first 64 tokens of validation windows, then 192 MASK positions (`--prompts`,
  default 8, in batches of 8);
and reports, for the unprompted samples, the judge's bits/byte (mean over samples ± its standard
error) and the unigram entropy of the samples pooled (± a bootstrap standard error over samples),
the same for the prompted ones (judge bits/byte of the whole window, prompt included), forward
passes (network calls) per generated token, positions run through the model per generated token,
and tokens/s at batch 1 and batch 8 (generated tokens / wall time of one compiled call in steady
state; the median of `--repeats` calls). Approximate caches also report their token agreement with
the uncached sampler of the same rule and seed. Rows are at temperature 1 except the `greedy` rows
(temperature 0, compared with greedy one-token-per-step decoding).

Writes DIR/decoding.json, decoding.md (the table) and PNGs: judge bits/byte and unigram entropy
against forward passes per token and against tokens/s (batch 1).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench modules

import jax
import numpy as np
from decoding_common import (
    BATCH,
    BLOCK,
    LENGTH,
    PROMPT,
    REPO,
    ensure_runs,
    machine_line,
    paired_difference,
    prompt_windows,
    prompted,
    quality,
    texts_of,
    timed_call,
    unprompted,
)
from decoding_grid import Row, grid, select_rows
from decoding_lengths import bench_lengths
from decoding_long_prompts import bench_long_prompts

from jaxorder import model, sampling
from jaxorder.evaluation.commit_order import order_stats
from jaxorder.evaluation.runs import companion_dirs, load_companions, load_params, run_tokenizer
from jaxorder.platform.host_memory import configure_host_malloc


def measure(row: Row, run, judge, windows: np.ndarray, samples: int, repeats: int, runs_dir: Path) -> dict:
    cfg, params, tokenizer = run
    sampler = sampling.resolve(cfg, row.sampler)
    options = {**row.options, **companion_dirs(sampler, row.options, runs_dir)}
    opts = sampling.make_options(sampler, options)
    companions = load_companions(sampler, opts)
    result = {"run": row.run, "label": row.label, "sampler": row.sampler, "baseline": row.baseline,
              **row.options}

    def call(rows, seed):
        return lambda: sampling.sample(params, cfg, rows, jax.random.key(seed), sampler, opts,
                                       companions=companions)

    outs, times = [], []
    for seed in range(max(samples // BATCH, 1)):
        out, dt = timed_call(call(unprompted(cfg, BATCH), seed), 1 if seed else repeats)
        outs.append(out)
        times.append(dt)
    tokens_gen = [generated_tokens(o, LENGTH) for o in outs]
    result["tok_s_b8"] = float(np.sum(tokens_gen) / np.sum(times))
    result["nfe_per_token"] = passes_per_token(outs, tokens_gen)
    if "rows" in outs[0]:
        result["rows_per_token"] = passes_per_token(outs, tokens_gen, count="rows")
    texts = [t for o in outs for t in texts_of(o, tokenizer)]
    if "uncertainty" in outs[0]:  # summed entropy at commit time (nats), per generated token
        result["uncertainty_per_token"] = float(np.sum([np.sum(o["uncertainty"]) for o in outs])
                                                / np.sum(tokens_gen))
    result.update(quality(texts, judge))
    if "committed_at" in outs[0]:  # what order the sampler used
        result.update(order_stats(np.concatenate([o["committed_at"] for o in outs])))
    out1, dt1 = timed_call(call(unprompted(cfg, 1), 100), repeats)
    generated1 = generated_tokens(out1, LENGTH)
    result["tok_s_b1"] = float(generated1 / dt1)
    result["nfe_per_token_b1"] = int(out1["nfe"]) / generated1
    outps = [timed_call(call(prompted(cfg, windows[i:i + BATCH]), 200 + i // BATCH), 1)[0]
             for i in range(0, len(windows), BATCH)]
    qp = quality([t for o in outps for t in texts_of(o, tokenizer)], judge)
    result["prompted_nfe_per_token"] = passes_per_token(outps, [generated_tokens(o, LENGTH - PROMPT)
                                                                for o in outps])
    result.update({"prompted_judge_bpb": qp["judge_bpb"], "prompted_judge_bpb_se": qp["judge_bpb_se"],
                   "_prompted": qp, "_prompted_tokens": np.concatenate([o["tokens"] for o in outps]),
                   "_tokens": np.concatenate([o["tokens"] for o in outs])})
    return result


def generated_tokens(out: dict, per_row: int) -> int:
    """Tokens one sample call generated: the sampler's `generated` count where it reports one (AR
    rows stop at EOS), else `per_row` (its masked positions) in every row."""
    return int(np.sum(out["generated"])) if "generated" in out else out["tokens"].shape[0] * per_row


def passes_per_token(outs: list[dict], generated: list[int], count: str = "nfe") -> float:
    """Network calls (or another per-call `count`, e.g. positions run) per generated token, per row (a
    batch's calls serve each of its rows), averaged over the calls."""
    return float(np.mean([int(o[count]) * o["tokens"].shape[0] / g for o, g in zip(outs, generated)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(REPO / "runs" / "sweeps" / "decoding"))
    parser.add_argument("--sweep", default=str(REPO / "configs" / "sweeps" / "decoding.yaml"),
                        help="the sweep that trains missing runs into --runs "
                        "(e.g. configs/sweeps/decoding_long.yaml)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", help="comma-separated runs (l2r, l2r_draft, mdm, bd3_b4, ao_ar)")
    parser.add_argument("--labels", help="';'-separated substrings (labels have commas): only the rows whose "
                        "label has one (and the first row of each run, the reference of the paired "
                        "differences, and the baselines of the chosen rows)")
    parser.add_argument("--exclude", help="';'-separated substrings: drop the rows whose label has one "
                        "(the references stay)")
    parser.add_argument("--list", action="store_true", help="print the chosen rows and stop")
    parser.add_argument("--samples", type=int, default=None, help="unprompted samples per row (default 32; "
                        "--quick 16)")
    parser.add_argument("--prompts", type=int, default=BATCH, help="prompted windows per row (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per speed number (median)")
    parser.add_argument("--lengths", action="store_true", help="cache speed against length instead")
    parser.add_argument("--long-prompts", action="store_true",
                        help="chunked prompt cache against full attention at 1k-4k-token prompts instead")
    parser.add_argument("--prompt-lengths", default="1024,2048,4096", help="--long-prompts: prompt lengths")
    parser.add_argument("--out", help="output directory (default: --runs/frontier)")
    args = parser.parse_args()
    configure_host_malloc()
    runs_dir = Path(args.runs)
    out_dir = Path(args.out) if args.out else runs_dir / "frontier"
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.lengths:
        return bench_lengths(out_dir, args.repeats)
    if args.long_prompts:
        return bench_long_prompts(runs_dir, out_dir, args.repeats, args.samples or 4,
                                  [int(n) for n in args.prompt_lengths.split(",")])
    rows = grid(args.quick)
    if args.only:
        keep = set(args.only.split(","))
        rows = [r for r in rows if r.run in keep]
    rows = select_rows(rows, args.labels.split(";") if args.labels else None,
                       args.exclude.split(";") if args.exclude else [])
    if args.list:
        print("\n".join(f"{r.run}: {r.label}" for r in rows))
        return
    companions = {r.options[k] for r in rows for k in ("draft", "guide") if r.options.get(k)}
    ensure_runs(runs_dir, sorted({"l2r", *(r.run for r in rows), *companions}), Path(args.sweep))
    samples = args.samples or (16 if args.quick else 32)
    loaded = {}
    for name in sorted({"l2r", *(r.run for r in rows)}):
        cfg, params, step = load_params(runs_dir / name)
        loaded[name] = (cfg, params, run_tokenizer(cfg, runs_dir / name))
        print(f"{name}: step {step}, {model.count_params(params) / 1e6:.2f}M params", flush=True)
    judge = loaded["l2r"]
    windows = prompt_windows(judge[0], args.prompts)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine_line()}")
    results = []
    for row in rows:
        t0 = time.perf_counter()
        res = measure(row, loaded[row.run], judge, windows, samples, args.repeats, runs_dir)
        if row.baseline:
            ref = next(r for r in results if r["label"] == row.baseline and r["run"] == row.run)
            res["agreement"] = float(np.mean(res["_tokens"] == ref["_tokens"]))
            if "_prompted_tokens" in res:
                res["prompted_agreement"] = float(np.mean(res["_prompted_tokens"] == ref["_prompted_tokens"]))
            res["vs_baseline"] = paired_difference(res, ref)
            res["vs_baseline"].update({f"prompted_{k}": v for k, v in
                                       paired_difference(res["_prompted"], ref["_prompted"]).items()})
        first = next((r for r in results if r["run"] == row.run), None)
        if first is not None:
            res.update(paired_difference(res, first))
        res["bench_seconds"] = time.perf_counter() - t0
        results.append(res)
        print(format_row(res), flush=True)
    for r in results:
        for k in [k for k in r if k.startswith("_")]:
            r.pop(k)
    header = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine_line(),
              "length": LENGTH, "prompt": PROMPT, "samples": samples, "block_length": BLOCK}
    (out_dir / "decoding.json").write_text(json.dumps({"header": header, "rows": results}, indent=1))
    table = markdown_table(results)
    (out_dir / "decoding.md").write_text(f"{header['date']}; {header['machine']}\n\n{table}\n")
    print(table)
    plot(results, out_dir)
    print(f"wrote {out_dir}/decoding.json, decoding.md, frontier_*.png")


def format_row(r: dict) -> str:
    return (f"{r['run']:<7} {r['label']:<42} b1 {r['tok_s_b1']:8.0f} tok/s  b8 {r['tok_s_b8']:8.0f} tok/s  "
            f"nfe/tok {r['nfe_per_token']:.3f} (prompted {r['prompted_nfe_per_token']:.3f})  "
            f"judge {r['judge_bpb']:.3f}±{r['judge_bpb_se']:.3f}  "
            f"H {r['entropy']:.3f}  Δjudge {r.get('d_judge', 0):+.3f}±{r.get('d_judge_se', 0):.3f}  "
            f"ΔH {r.get('d_entropy', 0):+.3f}±{r.get('d_entropy_se', 0):.3f}  "
            f"prompted {r.get('prompted_judge_bpb', float('nan')):.3f}  "
            f"agree {r.get('agreement', float('nan')):.3f}  "
            f"uncertainty {r.get('uncertainty_per_token', float('nan')):.3f}{vs_baseline_text(r)}  "
            f"({r['bench_seconds']:.0f} s)")


def vs_baseline_text(r: dict) -> str:
    """Paired differences against the row's own baseline (the table's Δ: against the run's first row)."""
    if "vs_baseline" not in r:
        return ""
    d = r["vs_baseline"]
    return (f"  vs {r['baseline']}: Δjudge {d['d_judge']:+.3f}±{d['d_judge_se']:.3f} "
            f"ΔH {d['d_entropy']:+.3f}±{d['d_entropy_se']:.3f} prompted Δjudge "
            f"{d['prompted_d_judge']:+.3f}±{d['prompted_d_judge_se']:.3f}")


def markdown_table(results: list[dict]) -> str:
    """One row per setting; speed-ups against the mdm one-token-per-step confidence row, quality
    differences against the first row of the same run (paired by sample)."""
    ref = next((r for r in results if r["run"] == "mdm" and r["label"] == "confidence, 1 token/step"), None)
    lines = ["| run | sampler | tok/s b1 | tok/s b8 | ×b1 | ×b8 | passes/tok (b1 / prompted) | positions/tok "
             "| judge bpb "
             "| Δ judge | unigram H (bits) | Δ H | prompted judge bpb | agreement | AR-ness |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    # passes/tok: network calls per generated token at batch 1, unprompted, and on the prompted windows
    # (batches of 8: a batch waits for its slowest row)
    for r in results:
        x1 = f"{r['tok_s_b1'] / ref['tok_s_b1']:.1f}" if ref else ""
        x8 = f"{r['tok_s_b8'] / ref['tok_s_b8']:.1f}" if ref else ""
        pos = f"{r['rows_per_token']:.1f}" if "rows_per_token" in r else ""
        dj = f"{r['d_judge']:+.3f} ± {r['d_judge_se']:.3f}" if "d_judge" in r else "(reference)"
        dh = f"{r['d_entropy']:+.3f} ± {r['d_entropy_se']:.3f}" if "d_entropy" in r else "(reference)"
        pj = f"{r['prompted_judge_bpb']:.3f} ± {r['prompted_judge_bpb_se']:.3f}"
        agree = (f"{r['agreement']:.3f} / {r['prompted_agreement']:.3f}" if "agreement" in r else "")
        lines.append(f"| {r['run']} | {r['label']} | {r['tok_s_b1']:.0f} | {r['tok_s_b8']:.0f} | {x1} | {x8} "
                     f"| {r['nfe_per_token_b1']:.3f} / {r['prompted_nfe_per_token']:.3f} | {pos} "
                     f"| {r['judge_bpb']:.3f} ± {r['judge_bpb_se']:.3f} "
                     f"| {dj} | {r['entropy']:.3f} ± {r['entropy_se']:.3f} | {dh} | {pj} | {agree} "
                     f"| {ar_ness_cell(r)} |")
    return "\n".join(lines)


def ar_ness_cell(r: dict) -> str:
    """AR-ness of the commit order (masked, block, any-order rows; AR rows are left to right)."""
    return f"{r['ar_ness']:.2f}" if r.get("ar_ness") is not None else ""


def plot(results: list[dict], out_dir: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"l2r": "s", "mdm": "o", "bd3_b4": "^", "ao_ar": "D"}
    for x_key, x_label, name in (("nfe_per_token_b1", "network calls per generated token, batch 1", "passes"),
                                 ("tok_s_b1", "tokens/s, batch 1", "speed_b1"),
                                 ("tok_s_b8", "tokens/s, batch 8", "speed_b8")):
        fig, axes = plt.subplots(1, 2, figsize=(13, 5))
        for ax, (y_key, y_label) in zip(axes, (("judge_bpb", "judge bits/byte (lower: more likely text)"),
                                               ("entropy", "unigram entropy, bits (diversity)"))):
            for r in results:
                ax.errorbar(r[x_key], r[y_key], yerr=r[f"{y_key}_se"], marker=markers.get(r["run"], "o"),
                            capsize=2, linestyle="none")
                ax.annotate(f"{r['run']}: {r['label']}", (r[x_key], r[y_key]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
            ax.set_xscale("log")
            ax.set_xlabel(x_label)
            ax.set_ylabel(y_label)
            ax.grid(alpha=0.3)
        fig.suptitle(f"decoding frontier: {LENGTH} tokens, temperature 1")
        fig.tight_layout()
        fig.savefig(out_dir / f"frontier_{name}.png", dpi=120)
        plt.close(fig)






if __name__ == "__main__":
    main()
