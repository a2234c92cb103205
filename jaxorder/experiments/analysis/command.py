"""`jaxorder analyze`: the attention diagnostics of a run (and of a second one, side by side), the
slash-head ablation (`--ablate-slash K`) and the order mixtures, loss profiles and gradient SNR
(`profiles.py`), kept here beside what they run (argparse)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxorder.experiments.analysis import profiles
from jaxorder.experiments.analysis.ablation import DEFAULT_DRAWS, ablation_text, run_slash_ablation
from jaxorder.experiments.analysis.attention import analyze_run
from jaxorder.experiments.analysis.outputs import summary_text, write_compare, write_outputs


def cmd_analyze(args: argparse.Namespace) -> int:
    if args.what != "attention":
        return profiles.run(args)
    options = dict(inputs=args.inputs, max_offset=args.max_offset, windows=args.windows,
                   mask_rate=args.mask_rate, seed=args.seed, threshold=args.slash_threshold)
    run_dir = Path(args.run_dir)
    suffix = args.inputs + (f"_mask{args.mask_rate:g}" if args.mask_rate else "")
    run_dirs = [run_dir] + ([Path(args.compare)] if args.compare else [])
    analyses = [analyze_run(r, **options) for r in run_dirs]
    names = [a.table["run"] for a in analyses]
    if len(names) == 2 and names[0] == names[1]:
        names = [f"a_{names[0]}", f"b_{names[1]}"]
    if args.out:
        out = Path(args.out)
    elif args.compare:
        out = run_dir / "analysis" / f"compare_{names[1]}_{suffix}"
    else:
        out = run_dir / "analysis" / f"attention_{suffix}"
    if args.ablate_slash:  # before any file is written: a bad K is a one-line error
        for a, r in zip(analyses, run_dirs):
            a.table["ablation"] = run_slash_ablation(r, a, args.ablate_slash, args.ablate_draws,
                                                     args.windows, args.seed)
    files = []
    for a, name in zip(analyses, names):
        files += write_outputs(a, out / name if args.compare else out, args.top_k)
    if args.compare:
        files += write_compare(analyses[0], analyses[1], out)
    if args.json:
        print(json.dumps({"out": str(out), "runs": [a.table for a in analyses]}, allow_nan=False))
    else:
        print(summary_text(analyses), end="")
        for a, name in zip(analyses, names):
            if "ablation" in a.table:
                print(f"{name} " + ablation_text(a.table["ablation"]), end="")
        print(f"wrote {len(files)} files to {out}")
    return 0


def add_command(sub) -> None:
    """`jaxorder analyze` on the CLI's subcommands."""
    p = sub.add_parser("analyze", help="diagnostics of a trained run (attention: slash heads, rank-one q/k)",
                       description="Analyses of a run directory's newest checkpoint. `analyze attention`: "
                                   "per layer and head, the slash score (mean attention mass on each "
                                   "Δ-diagonal, Δ = key - query), the dominant Δ != 0 and its score, the "
                                   "rank-one-ness of the pre-RoPE queries and keys, attention entropy and "
                                   "first-token (sink) mass; writes heads.json, heads.csv, "
                                   "attention_heads.png and slash_vs_offset.png.")
    p.add_argument("what", choices=["attention", *profiles.WHATS],
                   help="attention, or mixtures | loss-profile | grad-snr (docs/analysis.md)")
    p.add_argument("run_dir", help="a run directory made by `jaxorder train` or `jaxorder sweep`")
    p.add_argument("--inputs", default="corpus",
                   help="corpus (validation windows) or random (uniformly random tokens); default corpus")
    p.add_argument("--max-offset", type=int, default=16, help="slash scores for Δ in [-D, D] (default 16)")
    p.add_argument("--windows", type=int, default=32, help="windows analysed (default 32)")
    p.add_argument("--mask-rate", type=float, default=0.0,
                   help="mdm runs: share of input tokens replaced by MASK (default 0: clean windows; "
                        "causal runs ignore it)")
    p.add_argument("--slash-threshold", type=float, default=0.5,
                   help="a head is slash-dominant when its best Δ != 0 slash score is >= this (default 0.5)")
    p.add_argument("--compare", metavar="RUN_DIR2", help="analyse a second run and put both side by side")
    p.add_argument("--top-k", type=int, default=8, help="heads in the heatmap grid (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of random inputs, --mask-rate masking and "
                                                       "--ablate-slash's random heads")
    p.add_argument("--ablate-slash", type=int, default=0, metavar="K",
                   help="also zero the K heads with the highest best Δ != 0 slash score and report the "
                        "change of the validation loss (the objective's nll per token, --windows "
                        "validation windows) against zeroing K random heads (default 0: off)")
    p.add_argument("--ablate-draws", type=int, default=DEFAULT_DRAWS,
                   help=f"random draws of K heads for --ablate-slash (default {DEFAULT_DRAWS})")
    p.add_argument("--out", help="output directory (default RUN_DIR/analysis/attention_<inputs> or "
                                 "RUN_DIR/analysis/compare_<run2>_<inputs>)")
    p.add_argument("--json", action="store_true", help="print the full tables as one JSON object on stdout")
    profiles.add_arguments(p)
    p.set_defaults(func=cmd_analyze)
