"""Whole-config validation: each section's values, cross-section rules, then the family's own checks."""
from __future__ import annotations

import re
from typing import Sequence

from jaxorder.config.schema import (
    ATTENTION_IMPLS,
    BACKWARD_REWRITES,
    DATA_SOURCES,
    DATA_TRANSFORMS,
    DISTRIBUTED_MODES,
    DTYPES,
    MULTIPLY_MAX_DIGITS,
    POSITION_KINDS,
    QUERY_POSITIONS,
    REMAT_POLICIES,
    TOKENIZERS,
    WANDB_MODES,
    Config,
)
from jaxorder.errors import ConfigError
from jaxorder.registry import OBJECTIVES


def _choice(value: str, options: Sequence[str], where: str) -> None:
    if value not in options:
        raise ConfigError(f"{where}='{value}' is not one of: {', '.join(options)}")


def _positive(value: float, where: str) -> None:
    if value <= 0:
        raise ConfigError(f"{where} must be > 0, got {value}")


# Models from this size up (the 1b and 8b configs; 350m has 0.37B) may not train on the embedded
# corpus without data.allow_embedded_corpus=true.
EMBEDDED_CORPUS_MAX_PARAMS = 500_000_000


def validate(cfg: Config) -> None:
    m, o, d, opt, t, e = cfg.model, cfg.objective, cfg.data, cfg.optimizer, cfg.train, cfg.eval
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_len"):
        _positive(getattr(m, name), f"model.{name}")
    if m.d_model % m.n_heads:
        raise ConfigError(f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}; "
                          f"pick n_heads that divides d_model")
    if m.head_dim % 2:
        raise ConfigError(f"head dim d_model/n_heads={m.head_dim} must be even for RoPE; "
                          f"change d_model or n_heads")
    if m.d_ff < 0:
        raise ConfigError(f"model.d_ff must be >= 0 (0 = 8/3 * d_model), got {m.d_ff}")
    _positive(m.rope_base, "model.rope_base")
    _choice(m.positions, POSITION_KINDS, "model.positions")
    if m.init_from and m.positions != "rope":
        raise ConfigError(f"model.init_from needs model.positions=rope (Llama-family checkpoints use RoPE), "
                          f"got model.positions={m.positions}")
    _choice(m.dtype, DTYPES, "model.dtype")
    _choice(m.param_dtype, DTYPES, "model.param_dtype")
    _choice(m.attention_impl, ATTENTION_IMPLS, "model.attention_impl")
    _choice(m.backward_rewrites, BACKWARD_REWRITES, "model.backward_rewrites")
    _choice(m.remat, REMAT_POLICIES, "model.remat")
    _choice(m.query_positions, QUERY_POSITIONS, "model.query_positions")
    if m.init_from and not m.init_from.startswith("hf:"):
        raise ConfigError(f"model.init_from='{m.init_from}' must be hf:PATH (a local Hugging Face model "
                          f"directory) or empty")
    if t.grad_accum_steps < 1 or d.batch_size % t.grad_accum_steps:
        raise ConfigError(f"train.grad_accum_steps={t.grad_accum_steps} must be >= 1 and divide "
                          f"data.batch_size={d.batch_size}")
    _choice(o.name, OBJECTIVES.names(), "objective.name")
    if m.query_positions == "target" and not OBJECTIVES.get(o.name).target_positions:
        raise ConfigError(f"model.query_positions=target needs an objective with target positions (ao_ar, "
                          f"latent_order); objective {o.name} has none: use auto or current")
    if m.target_adaln and not OBJECTIVES.get(o.name).target_positions:
        raise ConfigError(f"model.target_adaln needs an objective with target positions (ao_ar, "
                          f"latent_order); objective {o.name} has none: set it to false")
    if m.target_embed_std < 0:
        raise ConfigError(f"model.target_embed_std={m.target_embed_std} must be >= 0")
    if m.query_positions == "target" and m.positions != "rope":
        raise ConfigError(f"model.query_positions=target rotates queries by RoPE: it needs "
                          f"model.positions=rope, got {m.positions}")
    _choice(d.source, DATA_SOURCES, "data.source")
    _choice(d.transform, DATA_TRANSFORMS, "data.transform")
    if d.transform == "swap05" and d.seq_len < 6:
        raise ConfigError(f"data.transform=swap05 needs data.seq_len >= 6, got {d.seq_len}")
    if d.source == "markov" and not 2 <= d.markov_vocab <= 256:
        raise ConfigError(f"data.markov_vocab must be in [2, 256] (symbols are bytes), got {d.markov_vocab}")
    if not 0 <= d.markov_sparsity < 1:
        raise ConfigError(f"data.markov_sparsity must be in [0, 1), got {d.markov_sparsity}")
    _positive(d.markov_temperature, "data.markov_temperature")
    _positive(d.synthetic_tokens, "data.synthetic_tokens")
    if not 1 <= d.multiply_digits <= MULTIPLY_MAX_DIGITS:
        raise ConfigError(f"data.multiply_digits must be in [1, {MULTIPLY_MAX_DIGITS}], "
                          f"got {d.multiply_digits}")
    if d.max_train_tokens < 0:
        raise ConfigError(f"data.max_train_tokens must be >= 0 (0 = all), got {d.max_train_tokens}")
    if d.max_train_tokens and d.source == "prepared":
        raise ConfigError("data.max_train_tokens does not apply to data.source=prepared; set it when "
                          "preparing (jaxorder data prepare data.max_train_tokens=N) and 0 here")
    if d.source == "text" and not d.path:
        raise ConfigError("data.source=text needs data.path=FILE_OR_DIR (a text file or a "
                          "directory of .txt files)")
    if d.source == "prepared" and not d.path:
        raise ConfigError("data.source=prepared needs data.path=DIR (made by `jaxorder data prepare`; local "
                          "or gs://BUCKET/...): set data.path")
    big = m.param_count() >= EMBEDDED_CORPUS_MAX_PARAMS
    if d.source == "shakespeare" and big and not d.allow_embedded_corpus:
        # ~5 MB of text would be memorized many times over: such a run is a mistake, not an experiment
        raise ConfigError(f"a model of {m.param_count() / 1e9:.2f}B parameters on the embedded Shakespeare "
                          f"corpus (data.source=shakespeare); set data.source=prepared data.path=DIR or "
                          f"gs://BUCKET/... (or data.allow_embedded_corpus=true to do it anyway)")
    _choice(d.tokenizer, TOKENIZERS, "data.tokenizer")
    if d.bpe_vocab_size < 260:
        raise ConfigError(f"data.bpe_vocab_size must be >= 260 (256 bytes + 4 specials), "
                          f"got {d.bpe_vocab_size}")
    if d.num_workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {d.num_workers}")
    _positive(d.seq_len, "data.seq_len")
    _positive(d.batch_size, "data.batch_size")
    if d.seq_len > m.max_len:
        raise ConfigError(f"data.seq_len={d.seq_len} is longer than model.max_len={m.max_len}; "
                          f"lower data.seq_len or raise model.max_len")
    if not 0 < d.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {d.val_fraction}")
    _positive(opt.lr, "optimizer.lr")
    if opt.warmup_steps < 0 or not 0 <= opt.min_lr_ratio <= 1 or opt.grad_clip < 0:
        raise ConfigError("optimizer: need warmup_steps >= 0, 0 <= min_lr_ratio <= 1 and grad_clip >= 0")
    for name in ("b1", "b2"):
        if not 0 <= getattr(opt, name) < 1:
            raise ConfigError(f"optimizer.{name} must be in [0, 1) (Adam's moment decay), "
                              f"got {getattr(opt, name)}")
    if opt.weight_decay < 0:
        raise ConfigError(f"optimizer.weight_decay must be >= 0, got {opt.weight_decay}")
    _positive(t.steps, "train.steps")
    for name in ("log_every", "eval_every", "checkpoint_every"):
        _positive(getattr(t, name), f"train.{name}")
    _positive(t.max_bad_steps, "train.max_bad_steps")
    if not 0 <= t.stop_at <= t.steps:
        raise ConfigError(f"train.stop_at={t.stop_at} must be in [0, train.steps={t.steps}] (0: no pause)")
    if t.restarts < 1:
        raise ConfigError(f"train.restarts={t.restarts} must be >= 1 (1: no restarts)")
    if t.restarts > 1 and not 0 < t.restart_steps < t.steps:
        raise ConfigError(f"train.restarts={t.restarts} needs 0 < train.restart_steps < train.steps="
                          f"{t.steps} (the step the candidates are compared at), got {t.restart_steps}")
    if t.restarts > 1 and t.stop_at:
        raise ConfigError("train.stop_at and train.restarts cannot be combined; drop train.stop_at")
    if t.peak_tflops < 0:
        raise ConfigError(f"train.peak_tflops must be >= 0 (0 = detect from the device), got {t.peak_tflops}")
    if cfg.profile.steps < 0 or cfg.profile.start_step < 1:
        raise ConfigError(f"profile.start_step must be >= 1 and profile.steps >= 0 (0 = off), got "
                          f"{cfg.profile.start_step} and {cfg.profile.steps}")
    if cfg.compile.cache_min_seconds < 0:
        raise ConfigError(f"compile.cache_min_seconds must be >= 0, got {cfg.compile.cache_min_seconds}")
    if t.checkpoint_every_minutes < 0:
        raise ConfigError(f"train.checkpoint_every_minutes must be >= 0 (0 = off), "
                          f"got {t.checkpoint_every_minutes}")
    if t.max_to_keep < 2:
        raise ConfigError(f"train.max_to_keep must be >= 2 so a corrupted newest checkpoint has a "
                          f"fallback, got {t.max_to_keep}")
    mesh_sizes = [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor]
    if any(x == 0 or x < -1 for x in mesh_sizes) or mesh_sizes.count(-1) > 1 or cfg.mesh.dcn_data < 1:
        raise ConfigError(f"mesh sizes data/fsdp/tensor={mesh_sizes} must be >= 1 with at most one -1 "
                          f"(fill), and mesh.dcn_data >= 1")
    _choice(cfg.distributed.mode, DISTRIBUTED_MODES, "distributed.mode")
    if cfg.distributed.mode == "explicit" and not cfg.distributed.coordinator:
        raise ConfigError("distributed.mode=explicit needs distributed.coordinator=HOST:PORT "
                          "(process 0's address)")
    if not re.fullmatch(r"auto|all|\d+(,\d+)*", cfg.distributed.local_devices):
        raise ConfigError(f"distributed.local_devices='{cfg.distributed.local_devices}' is not auto, all or "
                          f"comma-separated device ids like 0,1")
    if not 0 <= cfg.distributed.process_id < max(cfg.distributed.num_processes, 1):
        raise ConfigError(f"distributed.process_id={cfg.distributed.process_id} must be in "
                          f"[0, num_processes={cfg.distributed.num_processes})")
    _choice(cfg.logging.wandb.mode, WANDB_MODES, "logging.wandb.mode")
    _positive(e.batches, "eval.batches")
    _positive(e.mdm_time_samples, "eval.mdm_time_samples")
    OBJECTIVES.get(o.name).validate_config(cfg)  # the family's own checks
