"""The training loop: init or resume, jitted step, periodic validation, checkpoints, metrics.

`train(cfg, run_dir)` is resumable: re-running it on a run directory continues from the newest
readable checkpoint (params, optimizer state, step and the data iterator's position), so an
interrupted run ends with the same parameters as an uninterrupted one. SIGTERM (Cloud TPU
preemption) saves a checkpoint and raises `Preempted`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import optax
from etils import epath

from jaxorder import config as config_lib
from jaxorder import model, objectives
from jaxorder.config import Config, ConfigError
from jaxorder.data import make_data, save_tokenizer
from jaxorder.data.run_tokenizer import require_same_tokenizer
from jaxorder.evaluation.yardstick import evaluate, make_nll_fn
from jaxorder.interop.hf_import import init_params_from_hf
from jaxorder.model.attention import settle_model_config
from jaxorder.objectives.common import special_ids
from jaxorder.platform import compile_cache, progress
from jaxorder.platform.distributed import is_main_process, log
from jaxorder.training.checkpoint import Checkpointer
from jaxorder.training.health import BadSteps, all_finite
from jaxorder.training.metrics import MetricsWriter
from jaxorder.training.observe import ProfileWindow, StepClock, make_throughput, run_log, speed_text
from jaxorder.training.optimizer import make_optimizer
from jaxorder.training.preemption import AgreedStops
from jaxorder.training.run_dir import checkpoint_steps, make_run_dir, prepare_run_dir, record_start
from jaxorder.training.run_lock import RunLock
from jaxorder.training.state import Placement, init_state, make_placement
from jaxorder.training.step import compile_train_step
from jaxorder.training.trackers import make_trackers


class Preempted(Exception):
    """Training stopped by SIGTERM after saving a checkpoint; re-run the same command to resume."""


def with_absolute_paths(cfg: Config) -> Config:
    """data.path relative to the working directory becomes absolute, so the run dir works from anywhere.

    URLs (gs://bucket/x) are left alone: pathlib would make them $PWD/gs:/bucket/x."""
    if cfg.data.path and "://" not in cfg.data.path and not Path(cfg.data.path).is_absolute():
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data,
                                                                 path=str(Path(cfg.data.path).absolute())))
    return cfg


def train(cfg: Config, run_dir: str | os.PathLike, name: str | None = None) -> dict:
    """Trains (or resumes) a run; returns the final evaluation dict (also written to eval.json).

    `run_dir` may be local or remote (gs://...; needs gcsfs), as every process of a pod must see it.
    This is one run: train.restarts is read by jaxorder.experiments.restarts.train_with_restarts,
    which calls this for each candidate and for the continued one.
    """
    run_dir = epath.Path(run_dir)
    name = name or run_dir.name
    cfg = with_absolute_paths(cfg)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file, not a directory; choose another path")
    data = make_data(cfg.data, jax.process_index(), jax.process_count())
    tok = data.tokenizer
    ids = special_ids(cfg.model)
    if tok.vocab_size != cfg.model.vocab_size or (tok.mask_id, tok.bos_id) != (ids.mask, ids.bos):
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} does not match the {cfg.data.tokenizer} "
                          f"tokenizer's vocabulary of {tok.vocab_size}; set "
                          f"model.vocab_size={tok.vocab_size}")
    val_batches = data.val_batches(cfg.eval.batches)
    make_run_dir(run_dir)
    # One writer per run directory (process 0 writes the run's files; the others follow it).
    with RunLock(run_dir) if is_main_process() else contextlib.nullcontext(), run_log(run_dir):
        if checkpoint_steps(run_dir):  # a resume: the run's ids must mean what they meant
            require_same_tokenizer(run_dir, tok, cfg)
        changes = prepare_run_dir(cfg, run_dir)  # saves the config as given (`auto` stays auto)
        if is_main_process():
            record_start(run_dir, changes)
        cfg = dataclasses.replace(cfg, model=settle_model_config(cfg.model))
        if is_main_process():  # the run carries its tokenizer (JSON)
            save_tokenizer(tok, run_dir / "tokenizer.json")

        cache = compile_cache.configure(cfg.compile, run_dir)
        if cache:
            log(f"[{name}] persistent compilation cache: {cache}")
        optimizer = make_optimizer(cfg)
        placement = make_placement(cfg, optimizer)
        with placement.active():
            return _train_placed(cfg, run_dir, name, data, val_batches, optimizer, placement)


def _train_placed(cfg: Config, run_dir: epath.Path, name: str, data: Any, val_batches: list,
                  optimizer: optax.GradientTransformation, placement: Placement) -> dict:
    state = jax.jit(lambda: init_state(cfg, optimizer), out_shardings=placement.state)()
    n_params = model.count_params(state["params"])
    iterator = data.train_iterator()
    ckpt = Checkpointer(run_dir / "checkpoints", cfg.train.max_to_keep, cfg.train.async_checkpointing)
    restored = ckpt.restore_latest(placement.abstract_state(cfg, optimizer), iterator)
    start_step = 0
    if restored is not None:
        start_step, state = restored
        log(f"[{name}] resumed from checkpoint at step {start_step}")
        finished = run_dir / "eval.json"
        if start_step == cfg.train.steps and finished.exists():
            ckpt.close()
            log(f"[{name}] already trained ({start_step} steps); using {finished}")
            return json.loads(finished.read_text())
    imported = restored is None and bool(cfg.model.init_from)  # a resumed run continues from its own state
    if imported:
        params = init_params_from_hf(cfg.model.init_from, cfg, state["params"],
                                     objectives.of(cfg).target_positions)
        state = {**state, "params": jax.device_put(params, placement.state["params"])}
        log(f"[{name}] initialized the weights from {cfg.model.init_from}")
    config_dict = config_lib.to_dict(cfg)

    step_fn = compile_train_step(cfg, optimizer, placement)
    nll_fn = make_nll_fn(cfg, placement.replicated)
    trackers = make_trackers(cfg, run_dir, name, config_dict) if is_main_process() else []
    metrics_out = MetricsWriter(run_dir, start_step, enabled=is_main_process(),
                                tensorboard=cfg.logging.tensorboard, trackers=trackers)
    seconds_before = metrics_out.last_value("train", "wall_seconds", 0.0)
    bad = BadSteps(cfg.train.max_bad_steps, int(metrics_out.last_value("train", "bad_steps", 0)),
                   lambda: (ckpt.steps() or [None])[-1])

    stops = AgreedStops.for_processes(cfg.train.checkpoint_every_minutes)  # SIGTERM and the clock, agreed

    def save(step: int, force: bool = False) -> None:
        """A checkpoint of the current state, only from finite parameters (never a NaN step)."""
        bad.flush()
        if not bool(all_finite(state["params"])):
            raise FloatingPointError(f"the parameters are not finite at step {step}; no checkpoint "
                                     f"written; lower optimizer.lr")
        ckpt.save(step, state, iterator, config_dict, force=force)
        metrics_out.flush()  # remote run dirs: the lines up to this checkpoint become an object
        stops.saved()

    def save_and_wait(step: int) -> None:
        """A checkpoint of this step (unless it has just been saved), written before returning: the
        run stops here (SIGTERM, train.stop_at)."""
        if step not in ckpt.steps():
            save(step, force=True)
        ckpt.wait()

    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    total = cfg.train.steps
    if start_step == 0:
        log(f"[{name}] {cfg.objective.name}: {n_params / 1e6:.2f}M params, {total} steps x "
            f"{tokens_per_step} tokens, run dir {run_dir}")
    throughput, peak_note = make_throughput(cfg, state["params"], placement.mesh.size,
                                            placement.mesh.devices.flat[0].device_kind)
    log(f"[{name}] {peak_note}")
    clock, profile = StepClock(), ProfileWindow(cfg.profile, run_dir)

    def run_eval(step: int) -> dict:
        bad.flush()
        result = evaluate(state["params"], cfg, val_batches, data.val_bytes_per_token, nll_fn,
                          placement.put_batch)
        metrics_out.write(step, "val", {k: result[k] for k in ("bpb", "bpb_stderr", "nll_per_token")})
        log(f"[{name}] step {step}/{total} val {result['bpb']:.3f} bits/byte ({result['kind']})")
        return result

    if imported:  # the starting point's validation score, the baseline of an adaptation run
        run_eval(0)
    started = time.time()
    step = start_step
    bar = progress.Bar(total, name, unit="step", initial=start_step)  # a terminal only; log lines stay
    stop = cfg.train.stop_at or total
    try:
        with stops:
            for step in range(start_step + 1, stop + 1):
                batch = next(iterator)
                profile.before_step(step)
                state, step_metrics = step_fn(state, placement.put_batch(batch["tokens"]))
                profile.after_step(step, step_metrics)
                bad.observe(step, step_metrics["finite"])
                if step == start_step + 1:  # keep compilation out of the throughput numbers
                    clock.start(step_metrics)
                else:
                    clock.step()
                bar.update()
                if step % cfg.train.log_every == 0 or step == total:
                    bad.flush()
                    values = {k: float(v) for k, v in jax.device_get(step_metrics).items() if k != "finite"}
                    values["bad_steps"] = bad.total
                    speed = throughput.values(*clock.window())
                    values.update(speed)
                    eta = f" | eta {(total - step) * speed['step_seconds']:.0f}s" if speed else ""
                    values["tokens_seen"] = step * tokens_per_step
                    values["wall_seconds"] = seconds_before + time.time() - started
                    metrics_out.write(step, "train", values)
                    skipped = "" if bool(step_metrics["finite"]) else " (non-finite: step skipped)"
                    shown = "".join(f" {k} {values[k]:.3g}" for k in objectives.of(cfg).log_metrics
                                    if k in values)
                    log(f"[{name}] step {step}/{total} loss {values['loss']:.4f}{shown}{skipped}"
                        f"{speed_text(speed)}{eta}")
                if step % cfg.train.checkpoint_every == 0 and step != total:
                    with clock.excluded(state):
                        save(step)
                if step % cfg.train.eval_every == 0 and step != total:
                    with clock.excluded(state):
                        run_eval(step)
                agreed = stops.at_boundary()  # the same decision on every process
                if agreed.checkpoint and step != total and step not in ckpt.steps():
                    with clock.excluded(state):
                        save(step)
                if agreed.stop:
                    save_and_wait(step)
                    log(f"[{name}] SIGTERM: saved checkpoint at step {step}; re-run the "
                        f"same command to resume")
                    raise Preempted(step)
            if stop < total:  # train.stop_at: a resumable pause, no final evaluation
                save_and_wait(step)
                log(f"[{name}] paused at step {step} (train.stop_at); re-run with train.stop_at=0 to go on")
                return {"run": name, "step": step, "paused": True}
            if total not in ckpt.steps():
                save(total, force=True)
        result = run_eval(total)
        metrics_out.summary({k: result[k] for k in ("bpb", "bpb_stderr", "nll_per_token", "kind")}
                            | {"step": total, "params": n_params})
    finally:
        profile.close()
        bar.close()
        ckpt.close()
        metrics_out.close()
    result.update({"run": name, "step": total, "tokens_seen": total * tokens_per_step, "params": n_params,
                   "entropy_floor_bpb": data.info.get("entropy_floor_bits_per_byte"),
                   "unique_train_tokens": data.info.get("unique_train_tokens"),  # epochs = tokens_seen / it
                   "train_seconds": round(seconds_before + time.time() - started, 1)})
    if is_main_process():
        (run_dir / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
