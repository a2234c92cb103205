"""`jaxorder analyze mixtures|loss-profile|grad-snr RUN_DIR`: the order-mixture, loss-profile and
gradient-SNR analyses of a run (mixtures.py, loss_profile.py, grad_snr.py), each a JSON file and PNGs
under RUN_DIR/analysis/<what>/ (or --out)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from jaxorder import objectives
from jaxorder.config import ConfigError
from jaxorder.data import make_data
from jaxorder.evaluation.runs import checkpoint_steps, load_params
from jaxorder.experiments.analysis import grad_snr, loss_profile, mixtures
from jaxorder.experiments.analysis.attention import input_windows

WHATS = ("mixtures", "loss-profile", "grad-snr")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the three analyses (beside attention's --windows, --seed, --out, --json)."""
    p.add_argument("--ks", default="1,4,16,64",
                   help="mixtures: K orders of the bound, each dividing the largest (default 1,4,16,64)")
    p.add_argument("--bins", type=int, default=10, help="loss-profile, grad-snr: mask-rate bins (default 10)")
    p.add_argument("--draws", type=int, default=4,
                   help="loss-profile: maskings (and bd3 position draws) per window (default 4)")
    p.add_argument("--batches", type=int, default=32, help="grad-snr: gradients per value (default 32)")
    p.add_argument("--checkpoints", choices=["all", "newest"], default="all",
                   help="grad-snr: every kept checkpoint or the newest (default all)")


def check_args(args: argparse.Namespace) -> None:
    """One-line errors for out-of-range counts (also run by `jaxorder study` before any training)."""
    for flag, value in (("--windows", args.windows), ("--bins", args.bins), ("--draws", args.draws),
                        ("--batches", args.batches)):
        if value < (2 if flag == "--batches" else 1):
            raise ConfigError(f"{flag} must be >= {2 if flag == '--batches' else 1}, got {value}")


def run_mixtures(run_dir: Path, args: argparse.Namespace) -> dict:
    ks = mixtures.parse_ks(args.ks)
    cfg, params, step = load_params(run_dir)
    windows_WL = input_windows(cfg, "corpus", args.windows, args.seed)
    l_WM, orders_WML = mixtures.order_log_likelihoods(params, cfg, windows_WL, ks[-1],
                                                      jax.random.key(args.seed))
    return {"step": step, **mixtures.mixture_table(l_WM, orders_WML, ks)}


def run_loss_profile(run_dir: Path, args: argparse.Namespace) -> dict:
    cfg, params, step = load_params(run_dir)
    if objectives.of(cfg).position_nll is None and objectives.of(cfg).rate_nll is None:
        raise ConfigError(f"loss-profile has no curves for objective '{cfg.objective.name}'")
    windows_WL = input_windows(cfg, "corpus", args.windows, args.seed)
    return {"step": step, "windows": len(windows_WL),
            "by_mask_rate": loss_profile.mask_rate_profile(params, cfg, windows_WL, args.draws, args.bins,
                                                           args.seed),
            "by_position": loss_profile.position_profile(params, cfg, windows_WL, args.draws, args.seed)}


def run_grad_snr(run_dir: Path, args: argparse.Namespace) -> dict:
    steps = checkpoint_steps(run_dir)
    steps = steps[-1:] if args.checkpoints == "newest" else steps
    by_step = {}
    for s in steps:
        cfg, params, _ = load_params(run_dir, s)
        windows = make_data(cfg.data).train_windows.astype(np.int32)
        batches = grad_snr.training_batches(windows, args.batches, cfg.data.batch_size, args.seed)
        by_step[s] = grad_snr.snr_at(params, cfg, batches, args.bins, args.seed)
    return {"batch_size": cfg.data.batch_size, "by_step": by_step}


def run(args: argparse.Namespace) -> int:
    """Runs args.what on args.run_dir, writes <what>.json and its PNGs, prints JSON or a short line."""
    check_args(args)
    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir / "analysis" / args.what
    result = {"run": run_dir.name, "what": args.what,
              **{"mixtures": run_mixtures, "loss-profile": run_loss_profile, "grad-snr": run_grad_snr}[
                  args.what](run_dir, args)}
    out.mkdir(parents=True, exist_ok=True)
    title = f"{result['run']} ({args.what})"
    files = [out / f"{args.what}.json"]
    if args.what == "mixtures":
        files.append(out / "mixtures.png")
        mixtures.plot_mixtures(result, files[-1], title)
    elif args.what == "loss-profile":
        if result["by_mask_rate"]:
            files.append(out / "loss_by_mask_rate.png")
            loss_profile.plot_rate(result["by_mask_rate"], files[-1], title)
        if result["by_position"]:
            files.append(out / "loss_by_position.png")
            loss_profile.plot_positions(result["by_position"], files[-1], title)
    else:
        files.append(out / "grad_snr.png")
        grad_snr.plot_snr(result["by_step"], files[-1], title)
    text = json.dumps(result, allow_nan=False, default=str)
    files[0].write_text(text + "\n")
    print(text if args.json else f"wrote {len(files)} files to {out}")
    return 0
