"""The learned commit filter's end-of-text stop on short answers in long windows (issue #19).

    python bench/end_of_text.py [--out runs/end_of_text] [--digits 2] [--length 48] [--questions 128]

Task: one line ``a*b=c`` (``jaxorder.data.multiply``: c = a * b, factors of ``--digits`` digits) per
document, written to OUT/multiply.jsonl and trained with ``data.source=text data.eos=true``, so every
window is one line, one EOS and EOS padding to ``--length`` tokens. The (a, b) pairs are drawn
without replacement; the last ``--questions`` + ``--trace-questions`` pairs are left out of the file:
the held-out questions and the questions whose decodes train the filter. The mdm run (the study's
tiny model, ``--train-steps`` x ``--batch`` windows) is trained into OUT/mdm unless it exists.

Filter: traces of ``confidence`` (one token per step, blocks of ``--block``) on the trace questions,
at ``--length`` (training) and at ``--transfer-length`` (the eval traces of ``jaxorder
train-filter``: another window length), then the default filter (all features, 64 hidden units).

Decoding: every held-out question as the prompt ``a*b=`` (MASK to the end), one token per step
(``steps`` = the generated positions, which the blocks of ``--block`` tile), ``--temperature``, at
batch 1 (question i with key fold_in(key(seed), i), the same for every setting) and once as one
batch (key(seed)).
Settings: ``confidence``; ``learned`` with the stop on and off (``eos_stop``), each with and without
``ignore_eos`` (without it every masked sampler fills the positions after a committed EOS,
``jaxorder.sampling.eos``, which is itself a way to skip padding). Per setting: passes per question
at batch 1 (mean +- s.e.), passes of the batch, the share of questions the stop ended and the
padding positions it filled (and those the EOS fill filled), exact match (the text before the first
EOS equals ``a*b=c``) +- s.e. (with the well-formed share and the last-digit accuracy, for a model
that does not multiply), and wall seconds. Writes OUT/end_of_text.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import numpy as np
from decoding_common import REPO, machine_line, mean_se, record_confidence_traces

from jaxorder import sampling
from jaxorder.data.multiply import format_line, parse_line, sample_pairs
from jaxorder.evaluation.filter_training import train_filter
from jaxorder.evaluation.runs import load_params, run_tokenizer, text_ids
from jaxorder.sampling.prompts import prompt_tokens

CONFIG = REPO / "configs" / "experiments" / "study.yaml"
# (label, sampler, options): the rows of the table, each at every length
SETTINGS = (("confidence", "confidence", {}),
            ("confidence, ignore_eos", "confidence", {"ignore_eos": True}),
            ("learned, stop", "learned", {}),
            ("learned, no stop", "learned", {"eos_stop": False}),
            ("learned, stop, ignore_eos", "learned", {"ignore_eos": True}),
            ("learned, no stop, ignore_eos", "learned", {"eos_stop": False, "ignore_eos": True}))


def write_data(path: Path, digits: int, held: int, seed: int) -> np.ndarray:
    """Writes every pair but the last ``held`` of a seeded draw of all ``digits``-digit pairs to
    ``path`` (one ``{"text": "a*b=c"}`` per line) and returns the held-out pairs [held, 2]."""
    width = 9 * 10 ** (digits - 1)
    pairs = sample_pairs(width * width, digits, seed)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"text": format_line(int(a), int(b), False)}) + "\n"
                                for a, b in pairs[:-held]))
    return pairs[-held:]


def ensure_run(run_dir: Path, data: Path, length: int, steps: int, batch: int) -> None:
    if (run_dir / "checkpoints").is_dir():
        return
    overrides = ["objective.name=mdm", "data.source=text", f"data.path={data}", "data.eos=true",
                 f"data.seq_len={length}", f"data.batch_size={batch}", f"train.steps={steps}",
                 "train.log_every=250", "train.eval_every=1000", "train.checkpoint_every=1000"]
    print(f"training {run_dir} ...", flush=True)
    subprocess.run([sys.executable, "-m", "jaxorder.cli", "train", str(CONFIG), "--run-dir", str(run_dir),
                    *overrides], check=True)


def question_rows(pairs: np.ndarray, tokenizer, length: int) -> tuple[np.ndarray, int]:
    """(rows [N, length]: the prompt ``a*b=`` of each pair, then MASK; the step count that commits one
    token per step, i.e. the most masks of any row)."""
    rows = np.stack([prompt_tokens(f"{a}*{b}=", tokenizer, length) for a, b in pairs])
    return rows, int((rows == tokenizer.mask_id).sum(axis=1).max())


def answers(tokens_NL: np.ndarray, rows_NL: np.ndarray, tokenizer) -> list[str]:
    """Each row's text before its first generated EOS."""
    generated_NL = rows_NL == tokenizer.mask_id
    return [tokenizer.decode(text_ids(t, g, tokenizer, ignore_eos=False))
            for t, g in zip(tokens_NL, generated_NL)]


def scores(texts: list[str], pairs: np.ndarray) -> dict[str, np.ndarray]:
    """Per question, 1.0 or 0.0: ``exact`` (the text is exactly ``a*b=c``), ``well_formed`` (a line
    ``a*b=n``, any number n), ``last_digit`` (n's last digit is c's)."""
    parsed = [parse_line(t, False) for t in texts]
    lines = [format_line(int(a), int(b), False) for a, b in pairs]
    return {"exact": np.asarray([float(t == line) for t, line in zip(texts, lines)]),
            "well_formed": np.asarray([float(q is not None) for q in parsed]),
            "last_digit": np.asarray([float(q is not None and q[2] % 10 == int(a * b) % 10)
                                      for q, (a, b) in zip(parsed, pairs)])}


def record_traces(params, cfg, tokenizer, pairs, length: int, block: int, temperature: float, seed: int,
                  path: Path, run: str) -> dict:
    rows, steps = question_rows(pairs, tokenizer, length)
    opts = sampling.SamplerOptions(steps=steps, block_length=block, temperature=temperature)
    return record_confidence_traces(params, cfg, rows, opts, seed, path, run)


def measure(params, cfg, tokenizer, pairs, length: int, block: int, temperature: float, seed: int,
            label: str, name: str, given: dict, filter_path: str) -> dict:
    rows, steps = question_rows(pairs, tokenizer, length)
    sampler = sampling.resolve(cfg, name)
    extra = {"commit_filter": filter_path} if name == "learned" else {}
    opts = sampling.make_options(sampler, {"steps": steps, "block_length": block, "temperature": temperature,
                                           **extra, **given})
    key = jax.random.key(seed)

    def one(i):
        return sampling.sample(params, cfg, rows[i:i + 1], jax.random.fold_in(key, i), sampler, opts)

    jax.block_until_ready(one(0))  # compile
    outs, t0 = [], time.perf_counter()
    for i in range(len(rows)):
        outs.append(jax.device_get(one(i)))
    seconds_b1 = time.perf_counter() - t0
    tokens = np.concatenate([o["tokens"] for o in outs])
    passes = np.asarray([int(o["nfe"]) for o in outs])
    stop = np.concatenate([o.get("stop_filled", np.zeros(1, np.int32)) for o in outs])
    fill = np.concatenate([o["eos_filled"] for o in outs]) - stop
    texts = answers(tokens, rows, tokenizer)
    score = scores(texts, pairs)

    def batch():
        return sampling.sample(params, cfg, rows, key, sampler, opts)

    jax.block_until_ready(batch())
    t0 = time.perf_counter()
    bout = jax.device_get(batch())
    seconds_batch = time.perf_counter() - t0
    return {"label": label, "sampler": name, **given, "length": length, "steps": steps, "block": block,
            "temperature": temperature,
            "questions": len(rows), "passes": mean_se(passes), "stopped": float(np.mean(stop > 0)),
            "stop_filled": mean_se(stop), "eos_filled": mean_se(fill), "exact": mean_se(score["exact"]),
            "well_formed": float(score["well_formed"].mean()),
            "last_digit": float(score["last_digit"].mean()),
            "seconds_b1": seconds_b1, "batch_passes": int(bout["nfe"]),
            "batch_exact": mean_se(scores(answers(np.asarray(bout["tokens"]), rows, tokenizer),
                                          pairs)["exact"]),
            "seconds_batch": seconds_batch, "texts": texts[:8], "_passes": passes}


def paired(row: dict, ref: dict, key: str) -> tuple[float, float]:
    return mean_se(row[key] - ref[key])


def table(rows: list[dict]) -> list[str]:
    out = ["| length | setting | passes / question (b1) | Δ passes vs learned, no stop | batch passes | "
           "stopped | filled by the stop | filled after EOS | exact match (b1) | well-formed | last digit | "
           "exact (batch) | wall s (b1, all) | wall s (batch) |", "|" + "---|" * 14]
    for r in rows:
        ref = next(x for x in rows if x["length"] == r["length"] and x["label"] == "learned, no stop"
                   + (", ignore_eos" if r.get("ignore_eos") else ""))
        d = paired(r, ref, "_passes") if r["sampler"] == "learned" and r is not ref else None
        out.append(f"| {r['length']} | {r['label']} | {r['passes'][0]:.2f} ± {r['passes'][1]:.2f} | "
                   + (f"{d[0]:+.2f} ± {d[1]:.2f}" if d else "") + f" | {r['batch_passes']} | "
                   f"{r['stopped']:.2f} | {r['stop_filled'][0]:.1f} | {r['eos_filled'][0]:.1f} | "
                   f"{r['exact'][0]:.3f} ± {r['exact'][1]:.3f} | {r['well_formed']:.2f} | "
                   f"{r['last_digit']:.2f} | "
                   f"{r['batch_exact'][0]:.3f} | "
                   f"{r['seconds_b1']:.1f} | {r['seconds_batch']:.2f} |")
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["length"] for r in rows})
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(lengths)
    for k, length in enumerate(lengths):
        sel = [r for r in rows if r["length"] == length]
        x = np.arange(len(sel)) + k * width
        ax.bar(x, [r["passes"][0] for r in sel], width, yerr=[r["passes"][1] for r in sel],
               label=f"{length} tokens")
    ax.set_xticks(np.arange(len(SETTINGS)) + width * (len(lengths) - 1) / 2)
    ax.set_xticklabels([s[0] for s in SETTINGS], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("forward passes per question (batch 1)")
    ax.set_title("a*b= in EOS-padded windows, one token per step, blocks")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "runs" / "end_of_text")
    p.add_argument("--run", type=Path, default=None, help="the mdm run (default OUT/mdm, trained if missing)")
    p.add_argument("--digits", type=int, default=2)
    p.add_argument("--length", type=int, default=48)
    p.add_argument("--transfer-length", type=int, default=62)
    p.add_argument("--block", type=int, default=7)
    p.add_argument("--questions", type=int, default=192)
    p.add_argument("--trace-questions", type=int, default=64)
    p.add_argument("--train-steps", type=int, default=5000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0, help="of traces and decodes (0: argmax)")
    args = p.parse_args()
    prompt = 2 * args.digits + 2  # "a*b=" in bytes
    for n in (args.length, args.transfer_length):
        if (n - prompt) % args.block:
            p.error(f"--block {args.block} does not tile the {n - prompt} generated positions at length {n} "
                    f"(one token per step needs whole blocks); choose lengths {prompt} + k * block")
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.run or args.out / "mdm"
    held = write_data(args.out / "multiply.jsonl", args.digits, args.questions + args.trace_questions, 0)
    questions, trace_questions = held[:args.questions], held[args.questions:]
    ensure_run(run_dir, args.out / "multiply.jsonl", args.length, args.train_steps, args.batch)
    cfg, params, step = load_params(run_dir)
    tokenizer = run_tokenizer(cfg, run_dir)
    print(machine_line(), flush=True)
    traces = {n: record_traces(params, cfg, tokenizer, trace_questions, n, args.block, args.temperature,
                               args.seed + 1,
                               args.out / f"traces_{n}.npz", run_dir.name)
              for n in (args.length, args.transfer_length)}
    t0 = time.perf_counter()
    filt = train_filter(run_dir, traces[args.length]["path"], out=args.out / "filter",
                        eval_traces=traces[args.transfer_length]["path"], log=None)
    filt_seconds = time.perf_counter() - t0
    rows = []
    for length in (args.length, args.transfer_length):
        for label, name, given in SETTINGS:
            rows.append(measure(params, cfg, tokenizer, questions, length, args.block, args.temperature,
                                args.seed, label, name, given, filt["filter"]))
            r = rows[-1]
            print(f"{length} {label}: passes {r['passes'][0]:.2f} ± {r['passes'][1]:.2f}, exact "
                  f"{r['exact'][0]:.3f}, stopped {r['stopped']:.2f}", flush=True)
    metrics = {k: filt["metrics"]["held_out"][k] for k in ("auc", "log_loss")}
    lines = [f"mdm run {run_dir} (step {step}), temperature {args.temperature}; {machine_line()}",
             f"traces: {json.dumps(traces)}",
             f"filter ({filt_seconds:.1f} s): held out {metrics}, at {args.transfer_length} tokens "
             f"auc {filt['eval']['metrics']['auc']}", "", *table(rows)]
    print("\n".join(lines))
    (args.out / "end_of_text.md").write_text("\n".join(lines) + "\n")
    plain = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    (args.out / "end_of_text.json").write_text(json.dumps(
        {"run": str(run_dir), "step": step, "traces": traces, "filter": filt, "rows": plain}, indent=1,
        default=str))
    plot(rows, args.out / "end_of_text.png")


if __name__ == "__main__":
    main()
