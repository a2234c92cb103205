"""The decoding frontier: sample quality against speed for every sampler, on trained study-size models.

    python bench/decoding.py                   # the full grid on runs/sweeps/decoding
    python bench/decoding.py --quick           # fewer rows and samples (a smoke run)
    python bench/decoding.py --only mdm        # one run (l2r, mdm, bd3_b4, ao_ar)
    python bench/decoding.py --lengths         # prefix / dual cache against length (512, 1024 tokens)
    python bench/decoding.py --long-prompts    # chunked prompt cache against full attention, 1k-4k prompts

Runs: `--runs DIR` holds the runs of configs/sweeps/decoding.yaml (the order study's tiny model and
token budget on 256-token windows); missing ones are trained first with `jaxorder sweep` on that
file (about 10 minutes a run on 2 CPU cores). `l2r` is also the judge.

Each row is one sampler setting on one run, decoding
- unprompted windows: 256 MASK positions, `--samples` samples (batches of 8, one seed each);
- prompted windows: the first 64 tokens of validation windows, then 192 MASK positions (8 samples);
and reports, for the unprompted samples, the judge's bits/byte (mean over samples ± its standard
error) and the unigram entropy of the samples pooled (± a bootstrap standard error over samples),
the same for the prompted ones (judge bits/byte of the whole window, prompt included), forward
passes (network calls) per generated token, positions run through the model per generated token,
and tokens/s at batch 1 and batch 8 (generated tokens / wall time of one compiled call in steady
state; the median of `--repeats` calls). Approximate caches also report their token agreement with
the uncached sampler of the same rule and seed. Everything is at temperature 1 (the model's own
distribution; the comparison is between samplers of one model).

Writes DIR/decoding.json, decoding.md (the table) and PNGs: judge bits/byte and unigram entropy
against forward passes per token and against tokens/s (batch 1).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import numpy as np

from jaxorder import config as config_lib
from jaxorder import model, sampling
from jaxorder.data import make_data
from jaxorder.evaluation.commit_order import order_stats
from jaxorder.evaluation.runs import companion_dirs, load_companions, load_params, run_tokenizer
from jaxorder.evaluation.sample_quality import judge_nll_params, unigram_entropy_bits
from jaxorder.objectives.common import special_ids
from jaxorder.platform.host_memory import configure_host_malloc
from jaxorder.sampling import SamplerOptions

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "configs" / "sweeps" / "decoding.yaml"
LENGTH, PROMPT, BATCH, BLOCK = 256, 64, 8, 32


@dataclasses.dataclass(frozen=True)
class Row:
    run: str
    sampler: str
    options: dict
    label: str
    baseline: str | None = None  # label of the uncached row this approximate-cache row is compared to


def grid(quick: bool) -> list[Row]:
    """The sampler settings of the frontier, per run (--quick: a smoke subset)."""
    mdm = dict(block_length=BLOCK)
    rows = [Row("l2r", "ar", {}, "ar (KV cache)")]
    for k in ((4,) if quick else (2, 4, 8)):  # the draft: a smaller l2r run of the same sweep
        rows.append(Row("l2r", "speculative", dict(draft="l2r_draft", draft_length=k),
                        f"speculative, draft l2r_draft, k={k}"))
    base = Row("mdm", "confidence", dict(steps=LENGTH, **mdm), "confidence, 1 token/step")
    rows += [base, Row("mdm", "confidence", dict(steps=64, **mdm), "confidence, 64 steps")]
    for cache in (("dual",) if quick else ("prefix", "dual", "free")):
        rows.append(Row("mdm", "confidence", dict(steps=LENGTH, approx_cache=cache, **mdm),
                        f"confidence, 1 token/step, {cache} cache", baseline=base.label))
    for tau, caches in (((0.9, ("dual",)),) if quick else ((0.9, ("dual", "free")), (0.7, ("dual",)))):
        plain = Row("mdm", "threshold", dict(steps=LENGTH, threshold=tau, **mdm), f"threshold {tau}")
        rows.append(plain)
        for cache in caches:
            rows.append(Row("mdm", "threshold", dict(steps=LENGTH, threshold=tau, approx_cache=cache, **mdm),
                            f"threshold {tau}, {cache} cache", baseline=plain.label))
    rows.append(Row("mdm", "factor", dict(steps=LENGTH, factor=1.0, **mdm), "factor 1"))
    if not quick:
        rows.append(Row("mdm", "factor", dict(steps=LENGTH, factor=1.0, approx_cache="dual", **mdm),
                        "factor 1, dual cache", baseline="factor 1"))
    rows.append(Row("mdm", "confidence", dict(steps=LENGTH, prophet=5.0, **mdm), "confidence + Prophet 5"))
    if not quick:
        rows.append(Row("mdm", "confidence", dict(steps=LENGTH, prophet=2.5, **mdm),
                        "confidence + Prophet 2.5"))
        rows.append(Row("mdm", "threshold", dict(steps=LENGTH, threshold=0.9, prophet=5.0,
                                                 approx_cache="dual", **mdm),
                        "threshold 0.9, dual cache + Prophet 5", baseline="threshold 0.9"))
    rows += [Row("bd3_b4", "confidence", dict(steps=LENGTH), "confidence, 1 token/step (exact cache)"),
             Row("bd3_b4", "threshold", dict(steps=LENGTH, threshold=0.9), "threshold 0.9 (exact cache)"),
             Row("ao_ar", "random", {}, "random order (KV cache)")]
    for k in ((4,) if quick else (2, 4, 8)):
        rows.append(Row("ao_ar", "speculative", dict(draft_length=k), f"any-subset speculative, k={k}"))
    return rows


def machine_line() -> str:
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} CPU cores, "
            f"JAX {jax.__version__} ({jax.default_backend()}), load average {load}")


def ensure_runs(runs: Path, names: list[str]) -> None:
    missing = [n for n in names if not (runs / n / "checkpoints").is_dir()]
    if missing:
        print(f"training the missing runs {', '.join(missing)} with `jaxorder sweep {SWEEP.name}` ...",
              flush=True)
        subprocess.run([sys.executable, "-m", "jaxorder.cli", "sweep", str(SWEEP), "--out", str(runs)],
                       check=True)


def unprompted(cfg, batch: int, length: int = LENGTH) -> np.ndarray:
    return np.full((batch, length), special_ids(cfg.model).mask, np.int32)


def prompted(cfg, windows: np.ndarray) -> np.ndarray:
    rows = np.full((len(windows), LENGTH), special_ids(cfg.model).mask, np.int32)
    rows[:, :PROMPT] = windows[:, :PROMPT]
    return rows


def texts_of(out: dict, tokenizer) -> list[str]:
    tokens = np.asarray(out["tokens"])
    return [tokenizer.decode(t[t != tokenizer.pad_id]) for t in tokens]


def timed_call(fn, repeats: int) -> tuple[dict, float]:
    """(host outputs of the last call, median wall seconds) after one untimed compiling call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return jax.device_get(out), float(np.median(times))


BOOTSTRAP = 200


def quality(texts: list[str], judge) -> dict:
    jcfg, jparams, jtok = judge
    per = np.asarray(judge_nll_params(jparams, jcfg, texts, jtok)["per_sample_bpb"], np.float64)
    boot = [unigram_entropy_bits([texts[i] for i in idx]) for idx in bootstrap_indices(len(texts))]
    return {"judge_bpb": float(per.mean()), "judge_bpb_se": float(per.std(ddof=1) / math.sqrt(len(per))),
            "entropy": unigram_entropy_bits(texts), "entropy_se": float(np.std(boot, ddof=1)),
            "_per_sample": per, "_texts": texts}


def bootstrap_indices(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)  # the same resamples for every row: paired differences
    return [rng.integers(0, n, n) for _ in range(BOOTSTRAP)]


def paired_difference(row: dict, ref: dict) -> dict:
    """Judge bits/byte and unigram entropy of `row` minus `ref`, sample i against sample i (same seed
    and batch position), with standard errors: of the mean difference, and by a paired bootstrap."""
    d = row["_per_sample"] - ref["_per_sample"]
    boot = [unigram_entropy_bits([row["_texts"][i] for i in idx])
            - unigram_entropy_bits([ref["_texts"][i] for i in idx]) for idx in bootstrap_indices(len(d))]
    return {"d_judge": float(d.mean()), "d_judge_se": float(d.std(ddof=1) / math.sqrt(len(d))),
            "d_entropy": row["entropy"] - ref["entropy"], "d_entropy_se": float(np.std(boot, ddof=1))}


def measure(row: Row, run, judge, windows: np.ndarray, samples: int, repeats: int, runs_dir: Path) -> dict:
    cfg, params, tokenizer = run
    sampler = sampling.resolve(cfg, row.sampler)
    options = {**row.options, **companion_dirs(sampler, row.options, runs_dir)}
    opts = sampling.make_options(sampler, options)
    companions = load_companions(sampler, opts)
    result = {"run": row.run, "label": row.label, "sampler": row.sampler, **row.options}

    def call(rows, seed):
        return lambda: sampling.sample(params, cfg, rows, jax.random.key(seed), sampler, opts,
                                       companions=companions)

    generated = LENGTH
    outs, times = [], []
    for seed in range(max(samples // BATCH, 1)):
        out, dt = timed_call(call(unprompted(cfg, BATCH), seed), 1 if seed else repeats)
        outs.append(out)
        times.append(dt)
    tokens_gen = [int(np.sum(o["generated"])) if "generated" in o else BATCH * generated for o in outs]
    result["tok_s_b8"] = float(np.sum(tokens_gen) / np.sum(times))
    result["nfe_per_token"] = float(np.mean([int(o["nfe"]) * BATCH / g for o, g in zip(outs, tokens_gen)]))
    if "rows" in outs[0]:
        result["rows_per_token"] = float(np.mean([int(o["rows"]) * BATCH / g
                                                  for o, g in zip(outs, tokens_gen)]))
    texts = [t for o in outs for t in texts_of(o, tokenizer)]
    result.update(quality(texts, judge))
    if "committed_at" in outs[0]:  # what order the sampler used
        result.update(order_stats(np.concatenate([o["committed_at"] for o in outs])))
    out1, dt1 = timed_call(call(unprompted(cfg, 1), 100), repeats)
    generated1 = int(np.sum(out1["generated"])) if "generated" in out1 else generated
    result["tok_s_b1"] = float(generated1 / dt1)
    result["nfe_per_token_b1"] = int(out1["nfe"]) / generated1
    outp, _ = timed_call(call(prompted(cfg, windows), 200), 1)
    qp = quality(texts_of(outp, tokenizer), judge)
    result.update({"prompted_judge_bpb": qp["judge_bpb"], "prompted_judge_bpb_se": qp["judge_bpb_se"],
                   "_prompted_tokens": np.asarray(outp["tokens"]),
                   "_tokens": np.concatenate([o["tokens"] for o in outs])})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(REPO / "runs" / "sweeps" / "decoding"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", help="comma-separated runs (l2r, mdm, bd3_b4, ao_ar)")
    parser.add_argument("--samples", type=int, default=None, help="unprompted samples per row (default 32; "
                        "--quick 16)")
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
    ensure_runs(runs_dir, sorted({"l2r", *(r.run for r in rows), *(r.options.get("draft") for r in rows
                                                                    if r.options.get("draft"))}))
    samples = args.samples or (16 if args.quick else 32)
    loaded = {}
    for name in sorted({"l2r", *(r.run for r in rows)}):
        cfg, params, step = load_params(runs_dir / name)
        loaded[name] = (cfg, params, run_tokenizer(cfg, runs_dir / name))
        print(f"{name}: step {step}, {model.count_params(params) / 1e6:.2f}M params", flush=True)
    judge = loaded["l2r"]
    jcfg = judge[0]
    data = make_data(jcfg.data)
    windows = np.concatenate([np.asarray(b) for b in data.val_batches(1)])[:BATCH]
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
            f"nfe/tok {r['nfe_per_token']:.3f}  judge {r['judge_bpb']:.3f}±{r['judge_bpb_se']:.3f}  "
            f"H {r['entropy']:.3f}  Δjudge {r.get('d_judge', 0):+.3f}±{r.get('d_judge_se', 0):.3f}  "
            f"ΔH {r.get('d_entropy', 0):+.3f}±{r.get('d_entropy_se', 0):.3f}  "
            f"prompted {r.get('prompted_judge_bpb', float('nan')):.3f}  "
            f"agree {r.get('agreement', float('nan')):.3f}  ({r['bench_seconds']:.0f} s)")


def markdown_table(results: list[dict]) -> str:
    """One row per setting; speed-ups against the mdm one-token-per-step confidence row, quality
    differences against the first row of the same run (paired by sample)."""
    ref = next((r for r in results if r["run"] == "mdm" and r["label"] == "confidence, 1 token/step"), None)
    lines = ["| run | sampler | tok/s b1 | tok/s b8 | ×b1 | ×b8 | passes/tok | positions/tok | judge bpb "
             "| Δ judge | unigram H (bits) | Δ H | prompted judge bpb | agreement | AR-ness |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    # passes/tok: network calls per generated token at batch 1 (a batch of 8 waits for its slowest row)
    for r in results:
        x1 = f"{r['tok_s_b1'] / ref['tok_s_b1']:.1f}" if ref else ""
        x8 = f"{r['tok_s_b8'] / ref['tok_s_b8']:.1f}" if ref else ""
        pos = f"{r['rows_per_token']:.1f}" if "rows_per_token" in r else ""
        dj = f"{r['d_judge']:+.3f} ± {r['d_judge_se']:.3f}" if "d_judge" in r else "(reference)"
        dh = f"{r['d_entropy']:+.3f} ± {r['d_entropy_se']:.3f}" if "d_entropy" in r else "(reference)"
        pj = f"{r['prompted_judge_bpb']:.3f} ± {r['prompted_judge_bpb_se']:.3f}"
        agree = (f"{r['agreement']:.3f} / {r['prompted_agreement']:.3f}" if "agreement" in r else "")
        lines.append(f"| {r['run']} | {r['label']} | {r['tok_s_b1']:.0f} | {r['tok_s_b8']:.0f} | {x1} | {x8} "
                     f"| {r['nfe_per_token_b1']:.3f} | {pos} "
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


def bench_lengths(out_dir: Path, repeats: int) -> None:
    """Speed only (random weights: one token per step does not depend on them): the confidence sampler
    (one token per step, blocks of 32, batch 1) without cache, with the prefix cache and with the dual
    cache, at total lengths 256, 512 and 1024, unprompted (every position generated) and prompted
    (the last 256 positions generated after a prompt of the rest)."""
    tiny = REPO / "configs" / "model" / "tiny.yaml"
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine_line()}")
    print("confidence sampler, 1 token/step, blocks of 32, batch 1, tiny model with random weights, "
          "max_len 1024")
    print(f"{'length':>7} {'generated':>10} {'no cache tok/s':>15} {'prefix tok/s':>13} {'×':>5} "
          f"{'dual tok/s':>11} {'×':>5}")
    results = []
    for length in (256, 512, 1024):
        cfg = config_lib.load(tiny, ["objective.name=mdm", f"data.seq_len={length}", "model.max_len=1024"])
        params = model.init_params(cfg.model, jax.random.key(0))
        for generated in sorted({length, LENGTH}, reverse=True):
            rows = unprompted(cfg, 1, length)
            rows[:, :length - generated] = 101  # a prompt (the weights are random: its text does not matter)
            speeds = {}
            for cache in ("none", "prefix", "dual"):
                opts = SamplerOptions(steps=generated, block_length=BLOCK, approx_cache=cache)
                fn = sampling.compile_sample(params, cfg, rows, jax.random.key(0), "confidence", opts)
                _, dt = timed_call(fn, repeats)
                speeds[cache] = generated / dt
            results.append({"length": length, "generated": generated, **speeds})
            print(f"{length:>7} {generated:>10} {speeds['none']:>15.1f} {speeds['prefix']:>13.1f} "
                  f"{speeds['prefix'] / speeds['none']:>5.1f} {speeds['dual']:>11.1f} "
                  f"{speeds['dual'] / speeds['none']:>5.1f}", flush=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    payload = {"date": stamp, "machine": machine_line(), "rows": results}
    (out_dir / "lengths.json").write_text(json.dumps(payload, indent=1))


LONG_SETTINGS = (("full attention (no cache)", dict(approx_cache="none")),
                 ("prefix cache (dense prompt)", dict(approx_cache="prefix")),
                 ("chunked, 256-token chunks, top-4 + last", dict(approx_cache="chunked", chunk_length=256,
                                                                  chunks=4)),
                 ("chunked, 256-token chunks, top-2 + last", dict(approx_cache="chunked", chunk_length=256,
                                                                  chunks=2)))


def bench_long_prompts(runs_dir: Path, out_dir: Path, repeats: int, samples: int,
                       prompt_lengths: list[int]) -> None:
    """The chunked prompt cache against full attention: the mdm run (model.max_len raised: RoPE needs
    no new parameters; the model was trained on 256-token windows, so every setting runs it far
    beyond its training length) continues `samples` validation texts of each prompt length by 256
    tokens, confidence rule, one token per step, blocks of 32, batch 1, temperature 1, one seed per
    prompt shared by the settings. Reports tokens/s (median of `repeats` timed calls of the first
    prompt), positions run through the model per generated token, agreement of the generated
    tokens with full attention, and the judge's bits/byte and unigram entropy of the generated text
    alone, with paired differences against full attention."""
    ensure_runs(runs_dir, ["l2r", "mdm"])
    cfg, params, step = load_params(runs_dir / "mdm")
    tokenizer = run_tokenizer(cfg, runs_dir / "mdm")
    jcfg, jparams, _ = load_params(runs_dir / "l2r")
    judge = (jcfg, jparams, run_tokenizer(jcfg, runs_dir / "l2r"))
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{stamp}; {machine_line()}; mdm step {step}")
    results = []
    for P in prompt_lengths:
        total = P + LENGTH
        run_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, max_len=total))
        data = make_data(dataclasses.replace(cfg.data, seq_len=total, batch_size=1))
        windows = np.concatenate([np.asarray(b) for b in data.val_batches(samples)])[:samples]
        rows = np.full((len(windows), total), special_ids(cfg.model).mask, np.int32)
        rows[:, :P] = windows[:, :P]
        ref = None
        for label, options in LONG_SETTINGS:
            opts = SamplerOptions(steps=LENGTH, block_length=BLOCK, **options)
            outs, seconds = [], 0.0
            for i in range(len(rows)):
                fn = sampling.compile_sample(params, run_cfg, rows[i:i + 1], jax.random.key(300 + i),
                                             "confidence", opts)
                if i == 0:  # timed (the first call compiles, untimed); the other prompts reuse the program
                    out, seconds = timed_call(fn, repeats)
                else:
                    out = jax.device_get(fn())
                outs.append(out)
            generated = np.concatenate([o["tokens"][:, P:] for o in outs])
            texts = [tokenizer.decode(t[t != tokenizer.pad_id]) for t in generated]
            res = {"prompt": P, "label": label, **options, "tok_s_b1": LENGTH / seconds,
                   "rows_per_token": float(np.mean([int(o["rows"]) for o in outs])) / LENGTH,
                   **quality(texts, judge), "_tokens": generated}
            if ref is None:
                ref = res
            else:
                res["agreement"] = float(np.mean(generated == ref["_tokens"]))
                res["speedup"] = res["tok_s_b1"] / ref["tok_s_b1"]
                res.update(paired_difference(res, ref))
            results.append(res)
            print(format_long_row(res), flush=True)
            partial = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]  # a kill loses
            (out_dir / "long_prompts.partial.json").write_text(json.dumps(partial, indent=1))  # nothing
    for r in results:
        for k in [k for k in r if k.startswith("_")]:
            r.pop(k)
    lines = ["| prompt tokens | setting | tok/s b1 | × full | positions/tok | judge bpb | Δ judge "
             "| unigram H | Δ H | agreement |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        dj = f"{r['d_judge']:+.3f} ± {r['d_judge_se']:.3f}" if "d_judge" in r else "(reference)"
        dh = f"{r['d_entropy']:+.3f} ± {r['d_entropy_se']:.3f}" if "d_entropy" in r else "(reference)"
        agree = f"{r['agreement']:.3f}" if "agreement" in r else ""
        lines.append(f"| {r['prompt']} | {r['label']} | {r['tok_s_b1']:.1f} | {r.get('speedup', 1.0):.1f} "
                     f"| {r['rows_per_token']:.0f} | {r['judge_bpb']:.3f} ± {r['judge_bpb_se']:.3f} | {dj} "
                     f"| {r['entropy']:.3f} ± {r['entropy_se']:.3f} | {dh} | {agree} |")
    table = "\n".join(lines)
    header = {"date": stamp, "machine": machine_line(), "generated": LENGTH, "block_length": BLOCK,
              "samples": samples, "mdm_step": step}
    (out_dir / "long_prompts.json").write_text(json.dumps({"header": header, "rows": results}, indent=1))
    (out_dir / "long_prompts.md").write_text(f"{stamp}; {machine_line()}\n\n{table}\n")
    print(table)
    plot_long_prompts(results, out_dir)
    print(f"wrote {out_dir}/long_prompts.json, long_prompts.md, long_prompts.png")


def format_long_row(r: dict) -> str:
    return (f"prompt {r['prompt']:>5}  {r['label']:<42} {r['tok_s_b1']:7.1f} tok/s  "
            f"×{r.get('speedup', 1):4.1f}  positions/tok {r['rows_per_token']:7.1f}  "
            f"judge {r['judge_bpb']:.3f}±{r['judge_bpb_se']:.3f}  "
            f"Δ {r.get('d_judge', 0):+.3f}±{r.get('d_judge_se', 0):.3f}  H {r['entropy']:.3f}  "
            f"ΔH {r.get('d_entropy', 0):+.3f}±{r.get('d_entropy_se', 0):.3f}  "
            f"agree {r.get('agreement', 1):.3f}")


def plot_long_prompts(results: list[dict], out_dir: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for label in dict.fromkeys(r["label"] for r in results):
        rs = [r for r in results if r["label"] == label]
        axes[0].plot([r["prompt"] for r in rs], [r["tok_s_b1"] for r in rs], marker="o", label=label)
        axes[1].errorbar([r["prompt"] for r in rs], [r["judge_bpb"] for r in rs],
                         yerr=[r["judge_bpb_se"] for r in rs], marker="o", capsize=2, label=label)
    for ax, y in zip(axes, ("tokens/s, batch 1", "judge bits/byte of the generated text")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel(y)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"long prompts: {LENGTH} generated tokens, 1 token/step, blocks of {BLOCK}")
    fig.tight_layout()
    fig.savefig(out_dir / "long_prompts.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
