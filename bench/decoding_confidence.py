"""How sure a masked-diffusion model is while it decodes: what the threshold rules can commit.

Records the traces of a one-token-per-step `confidence` decode (256 tokens, blocks of 32; every
still-masked position of the current block at every step, `jaxorder.sampling.traces`) and counts,
per step, the positions whose drawn token has probability >= tau: a threshold rule at tau commits
all of them, so a step with two or more is a step where it decodes in parallel. Temperature 1 on
unprompted windows (the frontier's setting) and temperature 0 after the frontier's 64-token prompts.
For the unprompted windows it also decodes with `confidence` and `threshold` 0.9 and reports, per
row, the steps the row took and the share of spaces in its text (confidence-first decoding can
collapse into runs of spaces, and a batch's pass count hides rows that finished early).

    python bench/decoding_confidence.py [RUN_DIR ...] [--samples 16] [--out DIR]

Default runs: the mdm of configs/sweeps/decoding.yaml and of configs/sweeps/decoding_long.yaml (the
same model trained 5x longer). Writes DIR/confidence.json and confidence.png.
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
from decoding_common import BATCH, BLOCK, LENGTH, REPO, machine_line, prompt_windows, prompted, unprompted

from jaxorder import sampling
from jaxorder.evaluation.runs import load_params, run_tokenizer
from jaxorder.sampling import SamplerOptions, traces
from jaxorder.sampling.commit_filter import SCALAR_FEATURES

TAUS = (0.5, 0.7, 0.9)


def summary(trace: dict) -> dict:
    """Mean confidence, and per tau: the share of positions at confidence >= tau and how many of the
    decoded (sample, step) pairs have at least one / at least two of them."""
    conf = confidence_of(trace)
    step_ids = trace["sample"].astype(np.int64) * 1_000_000 + trace["step"]
    _, step_of_row = np.unique(step_ids, return_inverse=True)
    out = {"positions": int(len(conf)), "mean_confidence": float(conf.mean()),
           "final_rate": float(trace["label"].mean())}
    for tau in TAUS:
        n = np.bincount(step_of_row, weights=conf >= tau)  # per step: positions a threshold rule commits
        out[f"share_above_{tau}"] = float(np.mean(conf >= tau))
        out[f"steps_one_{tau}"] = float(np.mean(n >= 1))
        out[f"steps_several_{tau}"] = float(np.mean(n >= 2))
        out[f"per_step_{tau}"] = float(n.mean())
    return out


def confidence_of(trace: dict) -> np.ndarray:
    return trace["scalars"][:, SCALAR_FEATURES.index("confidence")]


def row_stats(name: str, seed: int, out: dict, tokenizer) -> list[dict]:
    """Per row of one decode: the steps the row itself took (distinct `committed_at`) and the share of
    spaces in its text."""
    stats = []
    for row_at, row_tokens in zip(np.asarray(out["committed_at"]), np.asarray(out["tokens"])):
        text = tokenizer.decode(row_tokens[row_tokens != tokenizer.pad_id])
        stats.append({"sampler": name, "seed": seed, "steps": int(len(np.unique(row_at[row_at >= 0]))),
                      "space_share": text.count(" ") / max(len(text), 1)})
    return stats


def record(cfg, params, rows, batches: int, temperature: float) -> tuple[list[dict], dict]:
    """`batches` one-token-per-step `confidence` decodes of `rows` (seeds 0..): their outputs and their
    traces joined (sample ids of batch i follow those of the earlier batches)."""
    opts = SamplerOptions(steps=LENGTH, block_length=BLOCK, temperature=temperature)
    outs, parts = [], []
    for seed in range(batches):
        out, part = traces.sample_and_record(params, cfg, rows, jax.random.key(seed), "confidence", opts)
        part["sample"] = part["sample"] + seed * len(rows)
        outs.append(out)
        parts.append(part)
    return outs, {k: np.concatenate([p[k] for p in parts]) for k in ("sample", "step", "scalars", "label")}


def threshold_rows(cfg, params, tokenizer, batches: int) -> list[dict]:
    """row_stats of `threshold` 0.9 decodes of the unprompted rows, at the seeds of `record`."""
    sampler = sampling.resolve(cfg, "threshold")
    opts = sampling.make_options(sampler, dict(steps=LENGTH, block_length=BLOCK, threshold=0.9))
    stats = []
    for seed in range(batches):
        out = jax.device_get(sampling.sample(params, cfg, unprompted(cfg, BATCH), jax.random.key(seed),
                                             sampler, opts))
        stats += row_stats("threshold", seed, out, tokenizer)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    runs = REPO / "runs" / "sweeps"
    parser.add_argument("runs", nargs="*", default=[str(runs / "decoding" / "mdm"),
                                                     str(runs / "decoding_long" / "mdm")])
    parser.add_argument("--samples", type=int, default=16, help="unprompted decodes per run (batches of 8)")
    parser.add_argument("--out", default=str(runs / "decoding" / "frontier"))
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    batches = max(args.samples // BATCH, 1)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine_line()}")
    results = []
    for run in map(Path, args.runs):
        cfg, params, step = load_params(run)
        tokenizer = run_tokenizer(cfg, run)
        evals = json.loads((run / "eval.json").read_text()) if (run / "eval.json").exists() else {}
        for temperature, what in ((1.0, "unprompted"), (0.0, "prompted")):
            if what == "unprompted":
                outs, trace = record(cfg, params, unprompted(cfg, BATCH), batches, temperature)
            else:
                outs, trace = record(cfg, params, prompted(cfg, prompt_windows(cfg, BATCH)), 1, temperature)
            res = {"run": str(run), "step": int(step), "val_bpb": evals.get("bpb"),
                   "val_bpb_se": evals.get("bpb_stderr"),
                   "temperature": temperature, "windows": what, **summary(trace),
                   "_confidence": confidence_of(trace)}
            if what == "unprompted":
                res["rows"] = [s for seed, out in enumerate(outs)
                               for s in row_stats("confidence", seed, out, tokenizer)]
                res["rows"] += threshold_rows(cfg, params, tokenizer, batches)
                for name in ("confidence", "threshold"):
                    rows = [r for r in res["rows"] if r["sampler"] == name]
                    spaces = [r for r in rows if r["space_share"] > 0.9]
                    print(f"  {name}: {len(spaces)} of {len(rows)} rows are > 90 % spaces (steps "
                          f"{sorted(r['steps'] for r in spaces)}); the others took "
                          f"{sorted(r['steps'] for r in rows if r['space_share'] <= 0.9)} steps", flush=True)
            results.append(res)
            print(f"{run.parent.name}/{run.name} step {step} T={temperature:g} {what}: mean confidence "
                  f"{res['mean_confidence']:.3f}; " + "; ".join(
                      f"tau {t}: positions {res[f'share_above_{t}']:.3f}, steps with >=1 "
                      f"{res[f'steps_one_{t}']:.3f}, >=2 {res[f'steps_several_{t}']:.3f}" for t in TAUS),
                  flush=True)
    plot(results, out_dir / "confidence.png")
    for r in results:
        r.pop("_confidence")
    header = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine_line()}
    (out_dir / "confidence.json").write_text(json.dumps({"header": header, "rows": results}, indent=1))
    print(f"wrote {out_dir}/confidence.json, confidence.png")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    bins = np.linspace(0, 1, 41)
    for r in results:
        label = f"{Path(r['run']).parent.name} (step {r['step']}), T={r['temperature']:g} {r['windows']}"
        ax.hist(r["_confidence"], bins=bins, histtype="step", density=True, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("confidence of the drawn token at a masked position of the current block")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
