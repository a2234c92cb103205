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
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
from etils import epath
import jax
import jax.numpy as jnp
import optax

from jaxorder import config as config_lib
from jaxorder import model, objectives, sharding
from jaxorder.checkpoint import Checkpointer
from jaxorder.config import Config, ConfigError
from jaxorder.data import make_data, save_tokenizer
from jaxorder.distributed import is_main_process
from jaxorder.evaluate import evaluate, make_nll_fn
from jaxorder.metrics import MetricsWriter
from jaxorder.model.attention import settle_model_config
from jaxorder.objectives.common import special_ids

# Fields that may change when a run directory is resumed (they do not change what is computed).
# A checkpoint restores onto any mesh, so mesh and process layout may change too.
RESUMABLE_CHANGES = ("train.log_every", "train.eval_every", "train.checkpoint_every",
                     "train.async_checkpointing", "eval.", "mesh.", "distributed.", "data.num_workers",
                     "model.attention_impl", "model.backward_rewrites")


class Preempted(Exception):
    """Training stopped by SIGTERM after saving a checkpoint; re-run the same command to resume."""


def log(message: str) -> None:
    """Progress on stderr, from process 0 only."""
    if is_main_process():
        print(message, file=sys.stderr, flush=True)


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    o = cfg.optimizer
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=o.lr, warmup_steps=min(o.warmup_steps, cfg.train.steps - 1),
        decay_steps=cfg.train.steps, end_value=o.lr * o.min_lr_ratio)
    decay_mask = lambda params: jax.tree_util.tree_map_with_path(_is_matrix, params)  # noqa: E731 - no decay on norms
    chain = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
    chain.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask))
    return optax.chain(*chain)


def _is_matrix(path, p) -> bool:
    """Weight matrices (decayed) vs vectors (norm scales); the stacked layer axis of scanned params
    (model.scan_layers, under "layers") does not count."""
    stacked = any(getattr(k, "key", None) == "layers" for k in path)
    return p.ndim - stacked >= 2


def init_boxed_state(cfg: Config, optimizer: optax.GradientTransformation) -> dict:
    """Train state whose parameter-shaped leaves carry logical axis names (nn.LogicallyPartitioned)."""
    target_positions = getattr(objectives.get(cfg.objective.name), "TARGET_POSITIONS", False)  # ao_ar, latent_order
    params = model.init_boxed_params(cfg.model, jax.random.key(cfg.train.seed), cfg.data.seq_len, target_positions)
    return {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}


def init_state(cfg: Config, optimizer: optax.GradientTransformation) -> dict:
    return nn.meta.unbox(init_boxed_state(cfg, optimizer))


@dataclass(frozen=True)
class Placement:
    """Where a run lives: its mesh, logical rules and the shardings of state and batches."""
    mesh: Any
    rules: tuple
    state: Any  # pytree of NamedShardings matching init_state
    batch: Any  # NamedSharding of [B, L] token batches
    replicated: Any

    @contextlib.contextmanager
    def active(self):
        """Mesh and logical-axis rules in force while tracing (activation sharding constraints)."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(list(self.rules)):
            yield

    def abstract_state(self, cfg: Config, optimizer: optax.GradientTransformation) -> Any:
        shapes = jax.eval_shape(lambda: init_state(cfg, optimizer))
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, self.state)

    def put_batch(self, local_BL) -> jax.Array:
        return sharding.global_batch(local_BL, self.batch)


def make_placement(cfg: Config, optimizer: optax.GradientTransformation, devices: list | None = None) -> Placement:
    mesh = sharding.make_mesh(cfg.mesh, devices)
    sharding.check_divisible(cfg.data.batch_size, mesh)
    rules = cfg.mesh.rules
    state = sharding.state_shardings(lambda: init_boxed_state(cfg, optimizer), mesh, rules)
    return Placement(mesh, rules, state, sharding.batch_sharding(mesh), sharding.replicated(mesh))


def compile_train_step(cfg: Config, optimizer: optax.GradientTransformation, placement: Placement):
    """The jitted step with explicit in/out shardings and the state donated."""
    return jax.jit(make_train_step(cfg, optimizer), in_shardings=(placement.state, placement.batch),
                   out_shardings=(placement.state, placement.replicated), donate_argnums=(0,))


def make_train_step(cfg: Config, optimizer: optax.GradientTransformation):
    """Pure (state, tokens [B, L]) -> (state, metrics); the step's rng is derived from the step.

    Dtypes. The state stores float32 parameters ("master weights") and float32 optimizer state
    whatever model.param_dtype is; the optimizer updates the float32 copy. The forward pass
    (model.apply) casts the parameters to model.param_dtype, and each matmul casts its weight and
    activations to model.dtype (the compute dtype); RMSNorm statistics, softmax and the logits /
    loss are float32. Gradients flow back through the casts, so they reach the optimizer as float32.

    Gradient accumulation (train.grad_accum_steps = k > 1). The global batch [B, L] is split into
    k micro-batches [B/k, L] (micro-batch i = rows i, i+k, i+2k, ..., so each device keeps its own
    rows when B is sharded), the gradients are computed one micro-batch at a time under
    jax.lax.scan and averaged, as are the metrics; then one optimizer update. Micro-batch i draws
    its randomness from fold_in(step rng, i). For losses that are a mean over equally many tokens
    per row (l2r, r2l) the result equals the one-batch step up to float rounding; for objectives
    that draw per-row randomness from the rng (mdm's antithetic noise levels, ao_ar/latent_order
    orders, bd3) the draws differ from the one-batch step (same distribution, different samples).
    """
    objective = objectives.get(cfg.objective.name)
    base_rng = jax.random.key(cfg.train.seed + 1)
    k = cfg.train.grad_accum_steps

    def grads_of(params, tokens_BL, rng):
        grad_fn = jax.value_and_grad(lambda p: objective.loss(p, {"tokens": tokens_BL}, rng, cfg), has_aux=True)
        (_, metrics), grads = grad_fn(params)
        return grads, metrics

    def accumulated(params, tokens_BL, rng):
        B, L = tokens_BL.shape
        micro_kBL = tokens_BL.reshape(B // k, k, L).swapaxes(0, 1)

        def body(acc, xs):
            i, micro_BL = xs
            grads, metrics = grads_of(params, micro_BL, jax.random.fold_in(rng, i))
            return jax.tree.map(jnp.add, acc, (grads, metrics)), None

        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grads_of, params, micro_kBL[0], rng))
        total, _ = jax.lax.scan(body, zeros, (jnp.arange(k), micro_kBL))
        return jax.tree.map(lambda x: x / k, total)

    def step_fn(state: dict, tokens_BL: jnp.ndarray) -> tuple[dict, dict]:
        rng = jax.random.fold_in(base_rng, state["step"])
        if k == 1:
            grads, metrics = grads_of(state["params"], tokens_BL, rng)
        else:
            grads, metrics = accumulated(state["params"], tokens_BL, rng)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    return step_fn


def prepare_run_dir(cfg: Config, run_dir: epath.Path) -> None:
    """Creates the run directory or checks that its checkpoints were made with a compatible config.

    The saved config binds the directory only once a checkpoint exists: a start that failed before
    training (say, a wrong data path) may be re-run with the corrected settings.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file, not a directory; choose another path")
    run_dir.mkdir(parents=True, exist_ok=True)
    saved_path = run_dir / "config.yaml"
    has_checkpoints = (run_dir / "checkpoints").is_dir() and any(
        p.name.isdigit() for p in (run_dir / "checkpoints").iterdir())
    if saved_path.exists() and has_checkpoints:
        try:
            saved = config_lib.load_saved(saved_path)
        except ConfigError as e:
            raise ConfigError(f"{saved_path} is not a valid jaxorder config ({e}); use a new --run-dir") from None
        conflicts = [d for d in config_lib.diff(saved, cfg) if not d.startswith(RESUMABLE_CHANGES)]
        if conflicts:
            raise ConfigError(f"run directory {run_dir} was made with a different config ({'; '.join(conflicts)}); "
                              f"use a new --run-dir or the same settings to resume")
    if is_main_process():
        config_lib.save(cfg, saved_path)


class _SigtermFlag:
    """Turns SIGTERM into a flag the loop checks between steps (main thread only)."""

    def __init__(self) -> None:
        self.raised = False
        self._previous = None

    def __enter__(self) -> "_SigtermFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.raised = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def with_absolute_paths(cfg: Config) -> Config:
    """data.path relative to the working directory becomes absolute, so the run dir works from anywhere."""
    if cfg.data.path and not Path(cfg.data.path).is_absolute():
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(Path(cfg.data.path).absolute())))
    return cfg


def _format_rate(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def train(cfg: Config, run_dir: str | os.PathLike, name: str | None = None) -> dict:
    """Trains (or resumes) a run; returns the final evaluation dict (also written to eval.json).

    `run_dir` may be local or remote (gs://...; needs gcsfs), as every process of a pod must see it.
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
                          f"tokenizer's vocabulary of {tok.vocab_size}; set model.vocab_size={tok.vocab_size}")
    val_batches = data.val_batches(cfg.eval.batches)
    prepare_run_dir(cfg, run_dir)  # saves the config as given (`auto` choices stay auto)
    cfg = dataclasses.replace(cfg, model=settle_model_config(cfg.model))
    if is_main_process():  # the run carries its tokenizer (JSON)
        save_tokenizer(tok, run_dir / "tokenizer.json")

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
    config_dict = config_lib.to_dict(cfg)

    step_fn = compile_train_step(cfg, optimizer, placement)
    nll_fn = make_nll_fn(cfg, placement.replicated)
    metrics_out = MetricsWriter(run_dir, start_step, enabled=is_main_process())
    seconds_before = metrics_out.last_value("train", "wall_seconds", 0.0)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    total = cfg.train.steps
    if start_step == 0:
        log(f"[{name}] {cfg.objective.name}: {n_params / 1e6:.2f}M params, {total} steps x "
            f"{tokens_per_step} tokens, run dir {run_dir}")

    def run_eval(step: int) -> dict:
        result = evaluate(state["params"], cfg, val_batches, data.val_bytes_per_token, nll_fn, placement.put_batch)
        metrics_out.write(step, "val", {k: result[k] for k in ("bpb", "bpb_stderr", "nll_per_token")})
        log(f"[{name}] step {step}/{total} val {result['bpb']:.3f} bits/byte ({result['kind']})")
        return result

    started = time.time()
    step = start_step
    try:
        with _SigtermFlag() as sigterm:
            window_start, window_steps = time.time(), 0
            for step in range(start_step + 1, total + 1):
                batch = next(iterator)
                state, step_metrics = step_fn(state, placement.put_batch(batch["tokens"]))
                if step == start_step + 1:  # keep compilation out of the throughput numbers
                    jax.block_until_ready(step_metrics)
                    window_start = time.time()
                else:
                    window_steps += 1
                if step % cfg.train.log_every == 0 or step == total:
                    values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                    elapsed = time.time() - window_start
                    speed = ""
                    if window_steps:
                        values["tokens_per_s"] = window_steps * tokens_per_step / max(elapsed, 1e-9)
                        speed = (f" | {_format_rate(values['tokens_per_s'])} tok/s"
                                 f" | eta {(total - step) * elapsed / window_steps:.0f}s")
                    values["tokens_seen"] = step * tokens_per_step
                    values["wall_seconds"] = seconds_before + time.time() - started
                    metrics_out.write(step, "train", values)
                    log(f"[{name}] step {step}/{total} loss {values['loss']:.4f}{speed}")
                    if not math.isfinite(values["loss"]):
                        raise FloatingPointError(f"loss is {values['loss']} at step {step}; lower optimizer.lr")
                    window_start, window_steps = time.time(), 0
                if step % cfg.train.checkpoint_every == 0 and step != total:
                    ckpt.save(step, state, iterator, config_dict)
                if step % cfg.train.eval_every == 0 and step != total:
                    run_eval(step)
                if sigterm.raised:
                    if step not in ckpt.steps():  # this step may have just been checkpointed
                        ckpt.save(step, state, iterator, config_dict, force=True)
                    ckpt.wait()
                    log(f"[{name}] SIGTERM: saved checkpoint at step {step}; re-run the same command to resume")
                    raise Preempted(step)
            if total not in ckpt.steps():
                ckpt.save(total, state, iterator, config_dict, force=True)
        result = run_eval(total)
    finally:
        ckpt.close()
        metrics_out.close()
    result.update({"run": name, "step": total, "tokens_seen": total * tokens_per_step, "params": n_params,
                   "entropy_floor_bpb": data.info.get("entropy_floor_bits_per_byte"),
                   "train_seconds": round(seconds_before + time.time() - started, 1)})
    if is_main_process():
        (run_dir / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
