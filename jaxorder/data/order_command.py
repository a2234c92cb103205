"""`jaxorder data order`: the pairwise-statistics order of a config's training windows (`pairwise_order.py`),
printed and written as a perm file for `objective.q_init=perm@FILE`."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from jaxorder import config as config_lib
from jaxorder import orders
from jaxorder.data.pairwise_order import chain_order, link_information, mutual_information
from jaxorder.data.pipeline import make_data
from jaxorder.errors import ConfigError
from jaxorder.jsonout import dumps

LN2 = float(np.log(2.0))


def spread_indices(total: int, count: int) -> np.ndarray:
    """`count` window indices spread evenly over `total` (all of them when count >= total)."""
    return np.arange(total) if count >= total else np.linspace(0, total - 1, count).round().astype(np.int64)


def file_text(order: np.ndarray) -> str:
    """One perm line for every window length >= len(order): the order, then the open range of the rest."""
    return f"{orders.canonical(order)},{len(order)}-\n"


def progress_printer(every_s: float = 10.0):
    """progress(done, total) for `mutual_information`: a line on stderr at most every `every_s` seconds
    (long windows with many pairs take minutes)."""
    last = [time.monotonic()]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s and done < total:
            last[0] = now
            print(f"pairwise statistics: {done}/{total} positions", file=sys.stderr, flush=True)
    return progress


def run_command(args: argparse.Namespace) -> int:
    if args.windows < 2:
        raise ConfigError(f"--windows {args.windows} must be >= 2 (the statistics need at least two windows)")
    cfg = config_lib.load(args.config, args.overrides)
    bundle = make_data(cfg.data)
    idx = spread_indices(len(bundle.train_windows), args.windows)
    windows_NL = np.asarray(bundle.train_windows[idx])
    mi_LL = mutual_information(windows_NL, progress_printer())
    order = chain_order(mi_LL)
    links_bits = link_information(mi_LL, order) / LN2
    text = file_text(order)
    if args.out:
        Path(args.out).write_text(text)
    L = len(order)
    off_bits = float((mi_LL.sum() - np.trace(mi_LL)) / (L * (L - 1)) / LN2) if L > 1 else 0.0
    summary = {"order": text.strip(), "windows": len(idx), "seq_len": L,
               "is_l2r": bool((order == np.arange(L)).all()),
               "is_r2l": bool((order == np.arange(L)[::-1]).all()),
               "link_bits_mean": float(links_bits.mean()) if L > 1 else 0.0,
               "link_bits_min": float(links_bits.min()) if L > 1 else 0.0,
               "pair_bits_mean": off_bits, "out": args.out}
    if args.json:
        print(dumps(summary))
        return 0
    print(f"pairwise order of {len(idx)} training windows of {L} tokens: {summary['order']}")
    print(f"information between consecutive positions of the chain: mean {summary['link_bits_mean']:.3f}, "
          f"weakest {summary['link_bits_min']:.3f} bits (all pairs: mean {off_bits:.3f})")
    if args.out:
        print(f"wrote {args.out}; start learned_order there with objective.q_init=perm@{args.out}")
    return 0
