"""Long prompts: the chunked prompt cache against full attention and the dense prefix cache, 256
tokens generated after 1k-4k-token prompts (one token per step, blocks of 32, batch 1).

    python bench/decoding.py --long-prompts [--prompt-lengths 1024,2048,4096]
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np
from decoding_common import BLOCK, LENGTH, ensure_runs, machine_line, paired_difference, quality, timed_call

from jaxorder import sampling
from jaxorder.data import make_data
from jaxorder.evaluation.runs import load_params, run_tokenizer
from jaxorder.objectives.common import special_ids
from jaxorder.sampling import SamplerOptions

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
