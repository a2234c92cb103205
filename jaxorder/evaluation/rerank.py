"""`jaxorder rerank`: sample N continuations per prompt with one run, pick one with another, judge
the picks with a third.

For each prompt x the generator samples N continuations y_1..y_N. The scorer gives each sequence
x + y_k a value, lower is better:
  - a scorer that reads right to left (r2l): -log p(x | y_k), the r2l NLL of the prompt tokens of
    x + y_k, which under r2l are predicted from the tokens after them, the continuation first;
  - any other scorer: its yardstick NLL of the whole sequence x + y_k (exact for l2r, a bound for
    mdm). For an l2r scorer this is -log p(x) - log p(y_k | x), so it ranks like log p(y_k | x).
The judge (an l2r run: --judge, else the generator if it is l2r) reports each candidate's bits per
byte, -log2 p_judge(y_k | x) / bytes(y_k). Per prompt and over all prompts (mean and standard
error over prompts) it compares the scorer's top-1, a random candidate, the generator's best-of-N
by its own log-probability, the judge's own best (an oracle) and the mean over all candidates.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Mapping

import jax
import numpy as np

from jaxorder import objectives, sampling
from jaxorder.config import ConfigError
from jaxorder.data.run_tokenizer import tokenizer_json
from jaxorder.evaluation.runs import load_companions, load_params, run_tokenizer
from jaxorder.evaluation.scoring import LN2, read_lines, score_rows
from jaxorder.jsonout import dumps
from jaxorder.sampling.flags import add_sampler_flags, given_options, sampler_help

PICKS = ("scorer_top1", "random", "generator_best", "judge_best", "all_candidates")


def scorer_values(cfg, params, prompt_len: int, sequences: list[np.ndarray]) -> np.ndarray:
    """The scorer's value of each sequence (nats, lower is better; see the module docstring)."""
    scored = score_rows(params, cfg, sequences)
    if objectives.of(cfg).reading_order == "r2l":  # -log p(prompt | continuation)
        return np.asarray([r["terms"][:prompt_len].sum() for r in scored])
    return np.asarray([r["nats"] for r in scored])


def judge_bpb(cfg, params, tokenizer: Any, prompt_len: int, sequences: list[np.ndarray]) -> np.ndarray:
    """Bits per byte of each continuation given its prompt under the judge (nan for 0 bytes)."""
    scored = score_rows(params, cfg, sequences)
    out = []
    for seq, r in zip(sequences, scored):
        size = tokenizer.num_bytes(seq[prompt_len:])
        out.append(r["terms"][prompt_len:].sum() / (LN2 * size) if size else math.nan)
    return np.asarray(out)


def _mean_se(values: list[float]) -> dict:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return {"mean": float(v.mean()) if len(v) else math.nan, "stderr": se, "prompts": int(len(v))}


def rerank(generator: str | os.PathLike, scorer: str | os.PathLike, prompts: list[str], n: int,
           max_new_tokens: int, judge: str | os.PathLike | None = None, sampler: str | None = None,
           options: Mapping[str, Any] = {}, seed: int = 0) -> tuple[list[dict], dict]:
    """(one record per prompt, summary); see the module docstring."""
    if n < 1 or max_new_tokens < 1:
        raise ConfigError(f"-n and --max-new-tokens must be >= 1, got {n} and {max_new_tokens}")
    gen_cfg, gen_params, _ = load_params(generator)
    if objectives.of(gen_cfg).reading_order == "r2l":
        raise ConfigError(f"the generator {generator} generates right to left; rerank continues prompts "
                          f"to the right: use an l2r, mdm, bd3 or any-order run")
    chosen = sampling.resolve(gen_cfg, sampler)
    options = dict(options)
    if "ignore_eos" in chosen.options:  # every candidate gets max_new_tokens tokens
        options.setdefault("ignore_eos", True)
    opts = sampling.run_file_options(chosen, sampling.make_options(chosen, options), str(generator))
    companions = load_companions(chosen, opts)
    tokenizer = run_tokenizer(gen_cfg, generator)
    sc_cfg, sc_params, _ = load_params(scorer)
    judge = judge if judge is not None else (generator if objectives.of(gen_cfg).judge else None)
    if judge is None:
        raise ConfigError(f"the generator is a {gen_cfg.objective.name} run, not an l2r judge; name an l2r "
                          f"run with --judge")
    j_cfg, j_params, _ = load_params(judge)
    if not objectives.of(j_cfg).judge or objectives.of(j_cfg).token_nll is None:
        raise ConfigError(f"--judge {judge} is a {j_cfg.objective.name} run; the judge must be an l2r run")
    for path, cfg in ((scorer, sc_cfg), (judge, j_cfg)):
        if tokenizer_json(run_tokenizer(cfg, path)) != tokenizer_json(tokenizer):
            raise ConfigError(f"{path} has another tokenizer than the generator {generator}; all runs of "
                              f"rerank must share one")
    rng = np.random.default_rng(seed)
    records, picked = [], {k: [] for k in PICKS}
    for p, prompt in enumerate(prompts):
        ids = np.asarray(tokenizer.encode(prompt), np.int32)
        length = len(ids) + max_new_tokens
        limit = min(c.model.max_len for c in (gen_cfg, sc_cfg, j_cfg))
        if length > limit:
            raise ConfigError(f"prompt {p + 1} is {len(ids)} tokens: with --max-new-tokens {max_new_tokens} "
                              f"that is {length}, more than max_len={limit}")
        row = np.concatenate([ids, np.full(max_new_tokens, tokenizer.mask_id, np.int32)])
        out = jax.device_get(sampling.sample(gen_params, gen_cfg, np.tile(row, (n, 1)),
                                             jax.random.fold_in(jax.random.key(seed), p), chosen, opts,
                                             companions))
        sequences = [np.concatenate([ids, t[len(ids):][t[len(ids):] != tokenizer.pad_id]])
                     for t in np.asarray(out["tokens"])]
        values = scorer_values(sc_cfg, sc_params, len(ids), sequences)
        bpb = judge_bpb(j_cfg, j_params, tokenizer, len(ids), sequences)
        choice = {"scorer_top1": int(np.argmin(values)), "random": int(rng.integers(n)),
                  "generator_best": int(np.argmax(np.asarray(out["logprob"]))),
                  "judge_best": int(np.nanargmin(bpb)) if np.isfinite(bpb).any() else 0}
        record = {"prompt": p + 1, "text": prompt}
        for name, k in choice.items():
            record[name] = {"index": k, "judge_bpb": float(bpb[k])}
            picked[name].append(float(bpb[k]))
        mean_bpb = float(np.nanmean(bpb)) if np.isfinite(bpb).any() else math.nan
        record["all_candidates"] = {"judge_bpb": mean_bpb}
        picked["all_candidates"].append(record["all_candidates"]["judge_bpb"])
        record["candidates"] = [{"text": tokenizer.decode(s[len(ids):]),
                                 "tokens": [int(t) for t in s[len(ids):]],
                                 "bytes": tokenizer.num_bytes(s[len(ids):]), "scorer_nats": float(v),
                                 "judge_bpb": float(b), "generator_logprob": float(lp)}
                                for s, v, b, lp in zip(sequences, values, bpb, np.asarray(out["logprob"]))]
        records.append(record)
    diff = [a - b for a, b in zip(picked["scorer_top1"], picked["random"])]
    summary = {"generator": str(generator), "scorer": str(scorer), "judge": str(judge),
               "sampler": chosen.name,
               "n": n, "max_new_tokens": max_new_tokens, "seed": seed, "prompts": len(prompts),
               **{k: _mean_se(v) for k, v in picked.items()}, "scorer_top1_minus_random": _mean_se(diff)}
    return records, summary


def _prompts(path: str) -> list[str]:
    try:
        data = open(path, "rb").read()
    except OSError as e:
        raise ConfigError(f"cannot read --prompts {path} ({e.strerror}); give a text file, one prompt a line")
    prompts = []
    for number, text, error in read_lines(data, path.endswith(".jsonl")):
        if error is not None:
            raise ConfigError(f"--prompts {path} line {number}: {error}")
        prompts.append(text)
    if not prompts:
        raise ConfigError(f"--prompts {path} has no prompts; write one per line")
    return prompts


def run_command(args: argparse.Namespace) -> int:
    options = given_options(args)
    records, summary = rerank(args.generator, args.scorer, _prompts(args.prompts), args.n,
                              args.max_new_tokens, args.judge, args.sampler, options, args.seed)
    for record in records:
        print(dumps(record))
    print(dumps({"summary": summary}))
    for name in (*PICKS, "scorer_top1_minus_random"):
        s = summary[name]
        print(f"{name:<25} {s['mean']:.4f} ± {s['stderr']:.4f} judge bits/byte ({s['prompts']} prompts)",
              file=sys.stderr)
    return 0


def add_command(sub) -> None:
    """`jaxorder rerank` on the CLI's subcommands."""
    p = sub.add_parser("rerank",
                       help="sample N continuations per prompt, pick one with a scorer run, judge it",
                       description=__doc__.split("\n\n", 1)[1].replace("\n", " "))
    p.add_argument("--generator", required=True, help="the run that samples (any objective with a sampler)")
    p.add_argument("--scorer", required=True, help="the run that picks: r2l runs score -log p(prompt | "
                                                   "continuation), others the NLL of prompt + continuation")
    p.add_argument("--judge", help="an l2r run that reports bits/byte (default: the generator, if l2r)")
    p.add_argument("--prompts", required=True, help="a text file, one prompt a line (.jsonl: field 'text')")
    p.add_argument("-n", type=int, default=8, help="candidates per prompt (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per candidate (default 64)")
    p.add_argument("--sampler", help=sampler_help())
    p.add_argument("--steps", type=int, help="mdm/bd3 generators: denoising steps")
    p.add_argument("--seed", type=int, default=0, help="sampling and the random pick (default 0)")
    add_sampler_flags(p)
    p.set_defaults(func=run_command)
