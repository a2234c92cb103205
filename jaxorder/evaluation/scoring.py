"""`jaxorder score RUN_DIR [INPUT]`: the NLL of each input line under a trained run.

Each line is tokenized with the run's own tokenizer and scored as `eval` scores a validation
window: every token is a target, the first one predicted from BOS alone. Without `--order` the
score is the run's yardstick (its objective's `nll`: exact, or an upper bound for mdm, bd3 and
latent_order); with `--order` it is the exact chain rule in that order (`order_nll` of the
families with fixed-order scoring). Per-token terms, where the family has them, are in position
order and sum to the line's nats.

A line longer than one window (`--window`, default the run's model.max_len) is scored in strided
windows when its terms are a chain rule in one reading direction: the first window scores all
its tokens, every later one moves `--stride` tokens on and scores only its new tokens, the rest
being context (the usual sliding-window perplexity; each token is scored once). Yardsticks without
such terms (the bounds) score the line as independent windows, a bound on a model that generates
the windows independently. A bad line (not UTF-8, empty, bad JSON) gets an error record and the
rest are still scored.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder import objectives
from jaxorder import orders as perm_orders
from jaxorder.config import Config, ConfigError
from jaxorder.evaluation.fixed_orders import OrderSpec, parse_orders, require_order_scoring
from jaxorder.evaluation.runs import load_params, run_tokenizer

LN2 = math.log(2.0)
ORDER_KINDS = ("l2r", "r2l", "random", "perm")


@dataclass(frozen=True)
class Window:
    """Tokens [start, end) of a line go through the model; offsets [keep_from, keep_to) of the
    window are the tokens it scores."""

    start: int
    end: int
    keep_from: int
    keep_to: int


def plan_windows(n: int, window: int, stride: int, direction: str | None) -> list[Window]:
    """Windows covering n tokens, each token scored exactly once.

    direction "l2r": context on the left, the first window scores all its tokens; "r2l": the
    mirror image (context on the right); None: independent windows of `window` tokens."""
    if n <= window:
        return [Window(0, n, 0, n)]
    if direction is None:
        return [Window(s, min(s + window, n), 0, min(s + window, n) - s) for s in range(0, n, window)]
    plan = [Window(0, window, 0, window)]
    scored = window
    while scored < n:
        end = min(scored + stride, n)
        plan.append(Window(end - window, end, scored - (end - window), window))
        scored = end
    if direction == "r2l":  # mirror: reading order is right to left
        plan = [Window(n - w.end, n - w.start, w.end - w.start - w.keep_to, w.end - w.start - w.keep_from)
                for w in plan]
    return plan


def term_function(cfg: Config, order: OrderSpec | None) -> tuple[Callable, bool]:
    """(jitted (params, tokens [B, L], orders [B, L], rng) -> (nats [B], per-token terms [B, L] or
    None), whether per-token terms exist)."""
    objective = objectives.of(cfg)
    if order is None:
        if objective.token_nll is not None:
            def terms(params, tokens_BL, orders_BL, rng):
                terms_BL = objective.token_nll(params, tokens_BL, cfg)
                return terms_BL.sum(axis=1), terms_BL
            return jax.jit(terms), True
        return jax.jit(lambda p, t, o, r: (objective.nll(p, {"tokens": t}, r, cfg), None)), False
    scoring = require_order_scoring(cfg)
    if scoring.order_token_nll is not None:
        def order_terms(params, tokens_BL, orders_BL, rng):
            terms_BL = scoring.order_token_nll(params, tokens_BL, orders_BL, cfg)
            return terms_BL.sum(axis=1), terms_BL
        return jax.jit(order_terms), True
    return jax.jit(lambda p, t, o, r: (scoring.order_nll(p, t, o, cfg), None)), False


def window_direction(cfg: Config, order: OrderSpec | None, has_terms: bool) -> str | None:
    """The reading direction whose chain rule lets windows share context, or None."""
    if not has_terms:
        return None
    if order is None:
        return objectives.of(cfg).reading_order
    return order.kind if order.kind in ("l2r", "r2l") else None


def line_order(order: OrderSpec, n: int, index: int, seed: int) -> np.ndarray:
    """The order [n] of input line `index`: l2r, r2l, a seeded random permutation, or its perm."""
    if order.kind == "l2r":
        return np.arange(n, dtype=np.int32)
    if order.kind == "r2l":
        return np.arange(n, dtype=np.int32)[::-1].copy()
    if order.kind == "random":
        key = jax.random.fold_in(jax.random.key(seed), index)
        return np.asarray(jax.random.permutation(key, n), np.int32)
    perm = order.perms[index] if len(order.perms) > 1 else order.perms[0]
    return perm_orders.resolve(perm, n, order.label)


def _window_order(full_order: np.ndarray | None, w: Window, direction: str | None) -> np.ndarray:
    """The order of one window: the line's own when the window is the whole line, else the
    reading direction's (windows exist only for the l2r and r2l orders)."""
    length = w.end - w.start
    if full_order is not None and len(full_order) == length:
        return full_order
    ascending = np.arange(length, dtype=np.int32)
    return ascending[::-1].copy() if direction == "r2l" else ascending


def score_rows(params: Any, cfg: Config, rows: list[np.ndarray], order: OrderSpec | None = None,
               window: int | None = None, stride: int | None = None, seed: int = 0,
               batch_size: int = 16) -> list[dict]:
    """Scores token rows [n_r] each; one dict per row: `nats`, `terms` (per-token NLLs [n_r] in
    position order, or None), `windows` (the Window plan), or `error`.

    Windows of equal length are batched (one compilation per length)."""
    window = cfg.model.max_len if window is None else window
    stride = max(1, window // 2) if stride is None else stride
    if not 1 <= stride <= window:
        raise ConfigError(f"--stride must be in 1..{window} (the window), got {stride}")
    if order is not None and order.kind == "perm" and len(order.perms) not in (1, len(rows)):
        raise ConfigError(f"{order.label} has {len(order.perms)} permutations for {len(rows)} input lines; "
                          f"give one line (the same order everywhere) or exactly one per input line")
    fn, has_terms = term_function(cfg, order)
    direction = window_direction(cfg, order, has_terms)
    results: list[dict] = [{} for _ in rows]
    jobs: dict[int, list[tuple[int, Window, np.ndarray, np.ndarray]]] = {}  # window length -> jobs
    for r, ids in enumerate(rows):
        n = len(ids)
        if order is not None and direction is None and n > window:
            results[r] = {"error": f"{n} tokens do not fit one window of {window}; the {order.label} "
                                   f"order scores whole lines only"}
            continue
        try:
            full_order = line_order(order, n, r, seed) if order is not None else None
        except ConfigError as e:  # a perm that does not fit this line
            results[r] = {"error": str(e)}
            continue
        plan = plan_windows(n, window, stride, direction)
        results[r] = {"windows": plan, "nats": 0.0, "terms": np.zeros(n) if has_terms else None}
        for w in plan:
            jobs.setdefault(w.end - w.start, []).append(
                (r, w, np.asarray(ids[w.start:w.end], np.int32), _window_order(full_order, w, direction)))
    rng = jax.random.key(seed)
    batches = 0
    for length, items in sorted(jobs.items()):
        if not _fits(fn, params, length):
            for r, *_ in items:
                results[r] = {"error": f"a {cfg.objective.name} run cannot score a window of {length} "
                                       f"tokens"}
            continue
        for b in range(0, len(items), batch_size):
            chunk = items[b:b + batch_size]
            tokens_BL = jnp.asarray(np.stack([c[2] for c in chunk]))
            orders_BL = jnp.asarray(np.stack([c[3] for c in chunk]))
            key = jax.random.fold_in(rng, batches)
            nats_B, terms_BL = jax.device_get(fn(params, tokens_BL, orders_BL, key))
            batches += 1
            for k, (r, w, _, _) in enumerate(chunk):
                if "error" in results[r]:  # another of its windows could not be scored
                    continue
                if terms_BL is None:  # independent windows: add up the whole windows' values
                    results[r]["nats"] += float(nats_B[k])
                    continue
                kept = np.asarray(terms_BL[k][w.keep_from:w.keep_to], np.float64)
                results[r]["terms"][w.start + w.keep_from:w.start + w.keep_to] = kept
                results[r]["nats"] += float(kept.sum())
    return results


def _fits(fn: Callable, params: Any, length: int) -> bool:
    """Whether the objective can score windows of `length` tokens (bd3: whole blocks), checked on
    shapes only, before any compilation."""
    shape = jax.ShapeDtypeStruct((1, length), jnp.int32)
    try:
        jax.eval_shape(fn, params, shape, shape, jax.random.key(0))
    except (TypeError, ValueError):
        return False
    return True


def read_lines(data: bytes, jsonl: bool) -> list[tuple[int, str | None, str | None]]:
    """(line number from 1, text or None, error or None) per input line."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":  # the final newline ends the last line, it starts none
        lines.pop()
    out = []
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            out.append((number, None, f"not UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start}"))
            continue
        if jsonl and text.strip():
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                out.append((number, None, f"not JSON ({e.msg} at column {e.colno})"))
                continue
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                out.append((number, None, "no string field 'text' in this JSON line"))
                continue
            text = record["text"]
        out.append((number, text, None) if text and (text.strip() or not jsonl)
                   else (number, None, "empty line: nothing to score"))
    return out


def score_texts(run_dir: str | os.PathLike, entries: list[tuple[int, str | None, str | None]],
                order: str | None = None, per_token: bool = False, window: int | None = None,
                stride: int | None = None, seed: int = 0) -> Iterable[dict]:
    """One JSON-able record per entry of `read_lines`."""
    spec = _one_order(order) if order else None
    cfg, params, _ = load_params(run_dir)
    objective = objectives.of(cfg)
    if spec is not None:
        require_order_scoring(cfg)
    if per_token and not term_function(cfg, spec)[1]:
        able = [o.name for o in objectives.all_objectives() if o.token_nll is not None]
        raise ConfigError(f"--per-token: a {cfg.objective.name} run has no per-token terms of "
                          f"{'this order' if spec else 'its yardstick'}; use --order with it, or a run of "
                          f"{', '.join(able)}")
    tokenizer = run_tokenizer(cfg, run_dir)
    window = cfg.model.max_len if window is None else window
    if not 1 <= window <= cfg.model.max_len:
        raise ConfigError(f"--window must be in 1..{cfg.model.max_len} (the run's model.max_len), "
                          f"got {window}")
    good = [(number, np.asarray(tokenizer.encode(text), np.int32), len(text.encode("utf-8")))
            for number, text, error in entries if error is None]
    scored = iter(score_rows(params, cfg, [ids for _, ids, _ in good], spec, window, stride, seed))
    by_number = {number: (ids, size, next(scored)) for number, ids, size in good}
    exact = spec is not None or objective.exact
    for number, _, error in entries:
        if error is not None:
            yield {"line": number, "error": error}
            continue
        ids, size, result = by_number[number]
        if "error" in result:
            yield {"line": number, "error": result["error"]}
            continue
        record = {"line": number, "bpb": result["nats"] / (LN2 * size), "nats": result["nats"],
                  "bytes": size,
                  "tokens": int(len(ids)), "yardstick": "exact" if exact else "bound",
                  "order": _order_label(spec, objective, ids, number - 1, seed)}
        if len(result["windows"]) > 1:
            record["note"] = _window_note(result["windows"], window, len(ids), result["terms"] is not None)
        if per_token:
            record["per_token"] = [float(x) for x in result["terms"]]
        yield record


def _one_order(text: str) -> OrderSpec:
    specs = parse_orders(text)
    if len(specs) != 1 or specs[0].kind not in ORDER_KINDS or specs[0].count != 1:
        raise ConfigError(f"--order takes one order: l2r, r2l, random, perm:INDICES or perm@FILE, "
                          f"not '{text}'")
    return specs[0]


def _order_label(spec: OrderSpec | None, objective: objectives.Objective, ids: np.ndarray, index: int,
                 seed: int) -> str | None:
    if spec is None:  # the yardstick: a reading order for the exact families, none for the bounds
        return objective.reading_order if objective.exact else None
    if spec.kind == "random":
        return f"random (seed {seed})"
    if spec.kind == "perm":
        return perm_orders.canonical(line_order(spec, len(ids), index, seed))
    return spec.label


def _window_note(plan: list[Window], window: int, n: int, context: bool) -> str:
    if not context:
        return (f"{n} tokens scored as {len(plan)} independent windows of up to {window} tokens (no context "
                f"across windows)")
    least = min((w.end - w.start) - (w.keep_to - w.keep_from) for w in plan[1:])
    return (f"{n} tokens scored in {len(plan)} strided windows of {window} tokens, each token once, with at "
            f"least {least} tokens of context after the first window")


def run_command(args: argparse.Namespace) -> int:
    source = args.input or "-"
    try:
        data = sys.stdin.buffer.read() if source == "-" else open(source, "rb").read()
    except OSError as e:
        raise ConfigError(f"cannot read {source} ({e.strerror}); give a text file or - for stdin") from None
    jsonl = args.jsonl or source.endswith(".jsonl")
    scored = 0
    for record in score_texts(args.run_dir, read_lines(data, jsonl), args.order, args.per_token,
                              args.window, args.stride, args.seed):
        scored += "error" not in record
        print(json.dumps(record, allow_nan=False), flush=True)
    if not scored:
        print("error: no input line could be scored (see the error records)", file=sys.stderr)
        return 2
    return 0


def add_command(sub) -> None:
    """`jaxorder score` on the CLI's subcommands."""
    p = sub.add_parser("score", help="NLL and bits/byte of each input line under a run",
                       description="Score each line of INPUT (a file, or stdin) with a run's newest "
                                   "checkpoint and its own tokenizer, as `eval` scores a window (the "
                                   "first token predicted from BOS). Prints one JSON line per input line: "
                                   "line (from 1), bpb, nats, bytes, tokens, yardstick (exact, or bound "
                                   "for mdm, bd3 "
                                   "and latent_order runs) and order; bad lines get {line, error}. Exit "
                                   "status 0 if any line was scored, 2 if none.",
                       epilog="Lines longer than --window tokens: l2r/r2l/ao_ar yardsticks and the l2r/r2l "
                              "orders use strided windows (each token scored once, the rest of the window "
                              "is context); the bounds add up independent windows; random and perm orders "
                              "refuse them. Order syntax: perm:5,1-4,0,6- (indices, ranges a-b, a last k- "
                              "for every remaining index >= k) or perm@FILE (one per line).")
    p.add_argument("run_dir", help="a run directory made by `jaxorder train` or `jaxorder sweep`")
    p.add_argument("input", nargs="?", help="text file, one input per line (default or -: stdin)")
    p.add_argument("--jsonl", action="store_true",
                   help="the input is JSON lines with a string field 'text' (default: on for a .jsonl file)")
    p.add_argument("--order", help="mdm, ao_ar, latent_order runs: the exact NLL under this order instead of "
                                   "the yardstick: l2r, r2l, random (seeded by --seed), perm:... or "
                                   "perm@FILE")
    p.add_argument("--per-token", action="store_true",
                   help="add per_token: each token's NLL in nats, in text order; they sum to nats")
    p.add_argument("--window", type=int, help="tokens per model call (default: the run's model.max_len)")
    p.add_argument("--stride", type=int, help="long lines: tokens newly scored per later window "
                                              "(default half the window)")
    p.add_argument("--seed", type=int, default=0, help="random order and the bounds' noise (default 0)")
    p.set_defaults(func=run_command)
