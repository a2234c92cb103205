"""Restarts selected by a held-out bound (`train.restarts`, `train.restart_steps`).

Train seeds train.seed, train.seed + 1, ... for restart_steps each (same schedule as the full run),
score each on validation windows disjoint from the reported ones, and continue the lowest to
train.steps in the run directory itself. For training that can lock into one of several basins (a
learned order posterior collapsing onto one order), this picks a basin by what it is worth on held
out text, at a cost of (restarts - 1) * restart_steps extra steps, which the result reports.

Layout: RUN/restarts/seed<S>/ (each candidate, kept for inspection), RUN/restarts.json (scores and
the choice, written as they come, so a re-run of the same command resumes where it stopped), and
RUN/ itself: the chosen candidate's files at restart_steps, then trained on as any run.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
from etils import epath

from jaxorder.config import Config, ConfigError
from jaxorder.data import make_data
from jaxorder.evaluation.runs import load_params
from jaxorder.evaluation.yardstick import evaluate
from jaxorder.platform.distributed import barrier, is_main_process, log
from jaxorder.training.loop import train

RECORD = "restarts.json"
CANDIDATES = "restarts"


def train_with_restarts(cfg: Config, run_dir: str | os.PathLike, name: str | None = None) -> dict:
    """`loop.train` when train.restarts is 1; otherwise the procedure above. Returns the continued
    run's evaluation with result["restarts"] (candidates' selection scores, the chosen seed, the
    steps spent in all)."""
    if cfg.train.restarts <= 1:
        return train(cfg, run_dir, name)
    run_dir = epath.Path(run_dir)
    name = name or run_dir.name
    record = _read_record(run_dir, cfg)
    if "chosen_seed" not in record:
        record = _select(cfg, run_dir, name, record)
    t = cfg.train
    result = train(dataclasses.replace(cfg, train=dataclasses.replace(t, seed=record["chosen_seed"])),
                   run_dir, name)
    result["restarts"] = record
    return result


def total_steps(cfg: Config) -> int:
    """Steps the procedure trains in all: each candidate's restart_steps, then the rest of one run."""
    t = cfg.train
    return t.steps if t.restarts <= 1 else t.restarts * t.restart_steps + t.steps - t.restart_steps


def candidate_seeds(cfg: Config) -> list[int]:
    return [cfg.train.seed + r for r in range(cfg.train.restarts)]


def _select(cfg: Config, run_dir: epath.Path, name: str, record: dict) -> dict:
    t = cfg.train
    data = make_data(cfg.data, jax.process_index(), jax.process_count())
    batches = data.val_batches(cfg.eval.batches, shifted=True)
    windows = sum(len(b) for b in batches) * jax.process_count()
    apart = len(data.val_windows) >= 2 * windows
    if not apart:
        log(f"[{name}] restarts: the validation split has {len(data.val_windows)} windows, fewer than twice "
            f"the {windows} scored: the selection windows overlap the reported ones")
    scored = {c["seed"]: c for c in record["candidates"]}
    for seed in candidate_seeds(cfg):
        if seed in scored:
            continue
        cand_dir = run_dir / CANDIDATES / f"seed{seed}"
        candidate = dataclasses.replace(t, seed=seed, stop_at=t.restart_steps, restarts=1, restart_steps=0)
        train(dataclasses.replace(cfg, train=candidate), cand_dir, f"{name}/seed{seed}")
        cand_cfg, params, step = load_params(cand_dir)
        r = evaluate(params, cand_cfg, batches, data.val_bytes_per_token)
        scored[seed] = {"seed": seed, "step": step, "bpb": r["bpb"], "bpb_stderr": r["bpb_stderr"]}
        log(f"[{name}] restart seed {seed}: {r['bpb']:.4f} ± {r['bpb_stderr']:.4f} bits/byte at step {step} "
            f"({r['kind']}, {windows} selection windows)")
        record["candidates"] = sorted(scored.values(), key=lambda c: c["seed"])
        _write_record(run_dir, record)
    best = min(record["candidates"], key=lambda c: c["bpb"])
    if is_main_process():
        _copy_tree(run_dir / CANDIDATES / f"seed{best['seed']}", run_dir)
    barrier("restarts-copied")
    record.update(chosen_seed=best["seed"], selection_windows=windows, selection_apart_from_reported=apart,
                  total_steps=total_steps(cfg))
    _write_record(run_dir, record)
    log(f"[{name}] restarts: continuing seed {best['seed']} (lowest selection bound) from step "
        f"{t.restart_steps} to {t.steps}; {record['total_steps']} steps in all")
    return record


def _read_record(run_dir: epath.Path, cfg: Config) -> dict:
    path = run_dir / RECORD
    fresh = {"base_seed": cfg.train.seed, "restarts": cfg.train.restarts,
             "restart_steps": cfg.train.restart_steps, "candidates": []}
    if not path.exists():
        return fresh
    record = json.loads(path.read_text())
    if any(record.get(k) != fresh[k] for k in ("base_seed", "restarts", "restart_steps")):
        raise ConfigError(f"{path} was made with train.seed={record.get('base_seed')}, train.restarts="
                          f"{record.get('restarts')}, train.restart_steps={record.get('restart_steps')}; "
                          f"use those settings to resume, or a new --run-dir")
    return record


def _write_record(run_dir: epath.Path, record: dict) -> None:
    if is_main_process():
        (run_dir / RECORD).write_text(json.dumps(record, indent=1) + "\n")


def _copy_tree(src: epath.Path, dst: epath.Path) -> None:
    """Every file of the chosen candidate (checkpoints, metrics, logs, tokenizer, config) into the run
    directory, so the continued run resumes from it with its history; not its lock."""
    for path in src.iterdir():  # a walk of our own: remote paths have no recursive glob
        if path.is_dir():
            _copy_tree(path, dst / path.name)
        elif path.name != "train.lock":
            dst.mkdir(parents=True, exist_ok=True)
            path.copy(dst / path.name, overwrite=True)
