"""Paired standard error of the difference of two bits/byte scores on the same validation windows.

    python tools/paired_se.py RUN_A[@STEP]:SCORE RUN_B[@STEP]:SCORE [--windows 64] [--json]

SCORE is `yardstick` (the run's validation number, as `jaxorder eval` computes it, with the same
eval rng) or one order spec of `jaxorder eval --orders` (l2r, r2l, random:K, perm:...; random:K
is the mean of its K orders per window, with eval's order draws). Both scores are taken per window
on the first `--windows` validation windows, as `eval --orders` takes them; the difference A - B
is averaged over windows (which must hold the same tokens, or with --other-windows only the same
count, paired by index) and its standard error is std(a - b) / sqrt(N). Two scores of the same
windows are correlated, so this error is smaller than either score's own when the correlation is
positive. Each score's mean is checked against the library's own number (`evaluate`,
`score_orders`), so the per-window values are the ones `jaxorder eval` averages.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass

import jax
import numpy as np

from jaxorder.config import ConfigError
from jaxorder.data import make_data
from jaxorder.evaluation.fixed_orders import order_matrix, parse_orders, require_order_scoring, score_orders
from jaxorder.evaluation.runs import load_params
from jaxorder.evaluation.yardstick import evaluate, make_nll_fn

LN2 = math.log(2.0)


@dataclass(frozen=True)
class Scored:
    label: str
    bpb_N: np.ndarray  # bits/byte per window
    windows_NL: np.ndarray  # the windows scored (to check both sides saw the same ones)


def parse_side(text: str) -> tuple[str, int | None, str]:
    """'RUN[@STEP]:SCORE' -> (run, step, score)."""
    head, slash, tail = text.rpartition("/")
    name, sep, score = tail.partition(":")  # the first ':' after the run's directory name
    run = head + slash + name
    if not sep or not name or not score:
        raise ConfigError(f"'{text}' is not RUN[@STEP]:SCORE, e.g. runs/x/corpus_mdm:l2r")
    run, at, step = run.partition("@")
    if at and not step.isdigit():
        raise ConfigError(f"'{text}': the step after @ must be a number, e.g. RUN@500:yardstick")
    return run, int(step) if at else None, score


def first_windows(data, cfg, windows: int) -> list[np.ndarray]:
    """The validation batches `eval --orders --windows N` scores: the first N windows."""
    batches = data.val_batches(cfg.eval.batches)
    wanted = -(-windows // len(batches[0]))
    if wanted > len(batches):
        batches = data.val_batches(wanted)
    out, left = [], windows
    for b in batches:
        if left > 0:
            out.append(np.asarray(b[:left]))
            left -= len(out[-1])
    return out


def per_window(run: str, step: int | None, score: str, windows: int, check: bool = True) -> Scored:
    """Bits/byte per window of one run under one score, and the windows it scored."""
    cfg, params, step = load_params(run, step)
    data = make_data(cfg.data)
    batches = first_windows(data, cfg, windows)
    to_bpb = 1.0 / (LN2 * data.val_bytes_per_token)
    values = []
    if score == "yardstick":
        nll_fn, rng = make_nll_fn(cfg), jax.random.key(cfg.eval.seed)
        for i, tokens_BL in enumerate(batches):  # evaluate's rng per batch: the same time draws
            nll_B = np.asarray(nll_fn(params, tokens_BL, jax.random.fold_in(rng, i)))
            values.append(nll_B / tokens_BL.shape[1])
        reference = evaluate(params, cfg, batches, data.val_bytes_per_token)["bpb"] if check else None
    else:
        specs = parse_orders(score)
        if len(specs) != 1 or specs[0].kind == "greedy":
            raise ConfigError(f"score '{score}' must be yardstick or one of l2r, r2l, random:K, perm:...")
        spec, scoring = specs[0], require_order_scoring(cfg)
        fixed = jax.jit(lambda p, t, o: scoring.order_nll(p, t, o, cfg))
        rng, total, first = jax.random.key(cfg.eval.seed), sum(len(b) for b in batches), 0
        for i, tokens_BL in enumerate(batches):  # score_orders' draws: fold_in(seed, batch index)
            batch, length = tokens_BL.shape
            orders = order_matrix(spec, batch, length, jax.random.fold_in(rng, i), first, total)
            first += batch
            stacked = np.tile(tokens_BL, (len(orders) // batch, 1))
            values.append(np.asarray(fixed(params, stacked, orders)).reshape(-1, batch).mean(axis=0) / length)
        reference = (score_orders(params, cfg, batches, data.val_bytes_per_token, [spec], cfg.eval.seed)
                     [spec.label]["bpb"] if check else None)
    bpb_N = np.concatenate(values) * to_bpb
    if reference is not None and not math.isclose(bpb_N.mean(), reference, rel_tol=1e-5, abs_tol=1e-5):
        raise RuntimeError(f"{run}:{score}: per-window mean {bpb_N.mean():.6f} is not eval's {reference:.6f}")
    return Scored(f"{run}@{step}:{score}", bpb_N, np.concatenate(batches))


def paired(a_N: np.ndarray, b_N: np.ndarray) -> dict:
    """Mean of a - b over windows, its standard error, and each side's mean and s.e."""
    n = len(a_N)
    if n < 2 or len(b_N) != n:
        raise ValueError(f"need two equal sides of >= 2 windows, got {len(a_N)} and {len(b_N)}")
    diff_N = a_N - b_N
    return {"windows": n, "a": float(a_N.mean()), "a_stderr": float(a_N.std(ddof=1) / math.sqrt(n)),
            "b": float(b_N.mean()), "b_stderr": float(b_N.std(ddof=1) / math.sqrt(n)),
            "diff": float(diff_N.mean()), "diff_stderr": float(diff_N.std(ddof=1) / math.sqrt(n)),
            "correlation": float(np.corrcoef(a_N, b_N)[0, 1])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="RUN[@STEP]:SCORE, SCORE = yardstick or an order (l2r, r2l, random:K, perm:...)")
    p.add_argument("b", help="the other side, on the same validation windows")
    p.add_argument("--windows", type=int, default=64, help="validation windows (default 64, as eval)")
    p.add_argument("--other-windows", action="store_true",
                   help="pair windows by index even where their tokens differ (the same documents under "
                        "another data.transform, e.g. corpus and swap05); the counts must still match")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = p.parse_args(argv)
    try:
        if args.windows < 2:
            raise ConfigError(f"--windows {args.windows}: a standard error needs at least 2 windows")
        a, b = (per_window(*parse_side(side), args.windows) for side in (args.a, args.b))
        same = a.windows_NL.shape == b.windows_NL.shape and (args.other_windows
                                                             or np.array_equal(a.windows_NL, b.windows_NL))
        if not same:
            raise ConfigError(f"{a.label} and {b.label} scored different windows (other data or seq_len); "
                              f"pair runs trained on the same data (or --other-windows for transforms)")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = {"a_label": a.label, "b_label": b.label, **paired(a.bpb_N, b.bpb_N)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"A {a.label}: {result['a']:.4f} ± {result['a_stderr']:.4f}\n"
              f"B {b.label}: {result['b']:.4f} ± {result['b_stderr']:.4f}\n"
              f"A - B: {result['diff']:+.4f} ± {result['diff_stderr']:.4f} bits/byte "
              f"(paired over {result['windows']} windows, correlation {result['correlation']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
