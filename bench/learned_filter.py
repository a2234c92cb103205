"""The learned commit filter on prompted text (issue #19): passes per token and quality against the
one-token-per-step `confidence` decode, at a temperature (0 by default: greedy decoding).

    python bench/learned_filter.py [--runs runs/sweeps/decoding] [--out DIR] [--temperature 0]
                                   [--prompts 32] [--trace-prompts 32] [--trace-length 160]
                                   [--thresholds 0.9,0.7,0.5] [--hidden 64] [--features NAMES]

Runs: the decoding sweep's `mdm` (decoded) and `l2r` (the judge). Prompts are validation windows: the
first --prompts are decoded, the next --trace-prompts record the filter's traces (other texts).
Each prompted row keeps its window's first 64 tokens and generates the rest.

1. Traces: `confidence`, one token per step, blocks of 32, at --trace-length tokens (another length
   and step budget than the decodes), at --temperature, key 1 (`jaxorder.sampling.traces`).
2. Filter: `train_filter` on them (defaults: all features, 64 hidden units), written to DIR/filter.
3. Decodes at 256 tokens, blocks of 32, batches of 8 (batch i keyed by i; the same keys for every
   row): `confidence` with one token per step (the reference) and `learned` with at most as many
   steps at each --threshold and each --floors value (which position a step commits when the
   filter accepts none: the filter's favourite, or the confidence rule's). Per setting: passes per
   generated token of the batch (a batch waits for its slowest row) and per row (its last commit
   step + 1), judge bits/byte and unigram entropy of the generated text (prompt excluded) with
   standard errors, their paired differences from the reference, and the share of generated
   tokens equal to the reference's.

Writes DIR/learned_filter.{json,md,png} (judge against passes per token).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import numpy as np
from decoding_common import (
    BATCH,
    BLOCK,
    LENGTH,
    PROMPT,
    REPO,
    machine_line,
    mean_se,
    paired_difference,
    prompt_windows,
    prompted,
    quality,
    record_confidence_traces,
)

from jaxorder import sampling
from jaxorder.evaluation.filter_training import train_filter
from jaxorder.evaluation.runs import load_params, run_tokenizer


def record(params, cfg, rows: np.ndarray, temperature: float, fixed_noise: bool, path: Path,
           run: str) -> dict:
    opts = sampling.SamplerOptions(steps=rows.shape[1] - PROMPT, block_length=BLOCK, temperature=temperature,
                                   fixed_noise=fixed_noise)
    return {**record_confidence_traces(params, cfg, rows, opts, 1, path, run), "length": rows.shape[1]}


def decode(params, cfg, tokenizer, rows: np.ndarray, name: str, given: dict, judge) -> dict:
    generated = rows.shape[1] - PROMPT
    sampler = sampling.resolve(cfg, name)
    opts = sampling.make_options(sampler, {"steps": generated, "block_length": BLOCK, **given})
    tokens, batch_passes, row_passes, t0 = [], [], [], time.perf_counter()
    for i in range(0, len(rows), BATCH):
        out = jax.device_get(sampling.sample(params, cfg, rows[i:i + BATCH], jax.random.key(i // BATCH),
                                             sampler, opts))
        tokens.append(np.asarray(out["tokens"]))
        batch_passes.append(int(out["nfe"]) / generated)
        committed = np.asarray(out["committed_at"])[:, PROMPT:]
        row_passes += list((committed.max(axis=1) + 1) / generated)
    tokens_NL = np.concatenate(tokens)
    texts = [tokenizer.decode(t[PROMPT:][t[PROMPT:] != tokenizer.pad_id]) for t in tokens_NL]
    return {"sampler": name, **{k: v for k, v in given.items() if k != "commit_filter"},
            "passes_batch": float(np.mean(batch_passes)), "passes_row": mean_se(row_passes),
            "seconds": time.perf_counter() - t0, **quality(texts, judge), "_tokens": tokens_NL}


def label(r: dict) -> str:
    """A setting's name in the table, the plot and the progress lines."""
    return (r["sampler"] + (f", threshold {r['filter_threshold']}, floor {r['filter_floor']}"
                            if "filter_threshold" in r else "")
            + (", fixed noise" if r.get("fixed_noise") else ""))


def table(rows: list[dict]) -> list[str]:
    out = ["| sampler | passes/token (batch of 8) | per row | judge bpb | Δ judge | unigram H (bits) | Δ H | "
           "tokens as the reference |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = (f"{r['d_judge']:+.3f} ± {r['d_judge_se']:.3f} | {r['entropy']:.3f} | "
             f"{r['d_entropy']:+.3f} ± {r['d_entropy_se']:.3f}" if "d_judge" in r
             else f"(reference) | {r['entropy']:.3f} | (reference)")
        per_row = f"{r['passes_row'][0]:.3f} ± {r['passes_row'][1]:.3f}"
        out.append(f"| {label(r)} | {r['passes_batch']:.3f} | {per_row} | "
                   f"{r['judge_bpb']:.3f} ± {r['judge_bpb_se']:.3f} | {d} | {r['agreement']:.3f} |")
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.errorbar(r["passes_batch"], r["judge_bpb"], yerr=r["judge_bpb_se"], marker="o", capsize=2,
                    label=label(r))
    ax.set_xlabel("passes per generated token (batch of 8)")
    ax.set_ylabel("judge bits/byte (prompted)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "sweeps" / "decoding")
    p.add_argument("--out", type=Path, default=None, help="default RUNS/learned_filter")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--fixed-noise", action="store_true",
                   help="traces, reference and learned decodes with each position's noise fixed for the "
                        "decode (--fixed-noise); adds the fresh-noise confidence decode as a second row")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--trace-prompts", type=int, default=32)
    p.add_argument("--trace-length", type=int, default=160)
    p.add_argument("--thresholds", default="0.9,0.7,0.5")
    p.add_argument("--floors", default="filter,confidence",
                   help="the learned sampler's filter_floor values to run (a comma list)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--features", default=None, help="the filter's features (default: all)")
    args = p.parse_args()
    if args.prompts % BATCH or args.trace_length <= PROMPT or (args.trace_length - PROMPT) % BLOCK:
        p.error(f"--prompts must be a multiple of {BATCH} and --trace-length {PROMPT} + a multiple of "
                f"{BLOCK}")
    out = args.out or args.runs / "learned_filter"
    out.mkdir(parents=True, exist_ok=True)
    run_dir = args.runs / "mdm"
    cfg, params, step = load_params(run_dir)
    tokenizer = run_tokenizer(cfg, run_dir)
    jcfg, jparams, _ = load_params(args.runs / "l2r")
    judge = (jcfg, jparams, run_tokenizer(jcfg, args.runs / "l2r"))
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    noise = "fixed noise" if args.fixed_noise else "fresh noise each step"
    print(f"{stamp}; {machine_line()}; mdm step {step}; temperature {args.temperature}, {noise}", flush=True)
    windows = prompt_windows(cfg, args.prompts + args.trace_prompts)
    trace = record(params, cfg, prompted(cfg, windows[args.prompts:], args.trace_length), args.temperature,
                   args.fixed_noise, out / "traces.npz", run_dir.name)
    print(f"traces: {trace['rows']} rows, label rate {trace['label_rate']:.3f} ({trace['seconds']:.0f} s)",
          flush=True)
    filt = train_filter(run_dir, trace["path"], out=out / "filter", hidden=args.hidden,
                        features=args.features, log=None)
    held = filt["metrics"]["held_out"]
    print(f"filter: held-out AUC {held['auc']:.3f}, log loss {held['log_loss']:.3f}", flush=True)
    rows_NL = prompted(cfg, windows[:args.prompts])
    fixed = {"fixed_noise": True} if args.fixed_noise else {}
    settings = [("confidence", fixed)] + [("confidence", {})] * args.fixed_noise + [
        ("learned", {"filter_threshold": float(t), "filter_floor": floor, "commit_filter": filt["filter"],
                     **fixed})
        for floor in args.floors.split(",") for t in args.thresholds.split(",")]
    results = []
    for name, given in settings:
        r = decode(params, cfg, tokenizer, rows_NL, name, {"temperature": args.temperature, **given}, judge)
        if results:
            r.update(paired_difference(r, results[0]))
        gen = rows_NL == tokenizer.mask_id
        r["agreement"] = float((r["_tokens"][gen] == (results[0] if results else r)["_tokens"][gen]).mean())
        results.append(r)
        print(f"{label(r)}: passes/token {r['passes_batch']:.3f} (batch), "
              f"{r['passes_row'][0]:.3f} (row); judge {r['judge_bpb']:.3f} ± {r['judge_bpb_se']:.3f}; "
              f"H {r['entropy']:.3f}; agreement {r['agreement']:.3f} ({r['seconds']:.0f} s)", flush=True)
    lines = [f"{stamp}; {machine_line()}; mdm {run_dir} step {step}; temperature {args.temperature}, "
             f"{noise}; {args.prompts} prompts of {PROMPT} tokens, {LENGTH - PROMPT} generated, "
             f"blocks of {BLOCK}",
             f"traces: {args.trace_prompts} other prompts at {args.trace_length} tokens, {trace['rows']} "
             f"rows, label rate {trace['label_rate']:.3f}; filter held-out AUC {held['auc']:.3f}", "",
             *table(results)]
    print("\n".join(lines))
    (out / "learned_filter.md").write_text("\n".join(lines) + "\n")
    plain = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
    (out / "learned_filter.json").write_text(json.dumps(
        {"date": stamp, "machine": machine_line(), "run": str(run_dir), "step": step,
         "temperature": args.temperature, "fixed_noise": args.fixed_noise, "traces": trace, "filter": filt,
         "rows": plain},
        indent=1, default=str))
    plot(results, out / "learned_filter.png")


if __name__ == "__main__":
    main()
