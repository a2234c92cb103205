"""Typed experiment configs: YAML files with `include:`, dotted overrides, strict validation.

A config file is a YAML mapping whose top-level keys are the sections below (``model``,
``objective``, ``data``, ``optimizer``, ``train``, ``eval``) plus an optional ``include:`` list
of other YAML files (paths relative to the including file) that are merged first, later files
and the including file winning. Overrides are ``section.field=value`` strings whose values are
parsed as YAML scalars and then checked against the field's type.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from jaxorder.errors import ConfigError
from jaxorder.paths import as_path, is_url
from jaxorder.registry import OBJECTIVES

__all__ = ["ConfigError"]  # re-exported: `from jaxorder.config import ConfigError` is the usual spelling


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 260  # byte tokenizer: 256 bytes + PAD, MASK, BOS, EOS
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 0  # 0 = SwiGLU default: 8/3 * d_model rounded up to a multiple of 64
    max_len: int = 512
    positions: str = "rope"  # rope | learned | none: rotary q/k (rope_base), a learned absolute embedding
    # [max_len, d_model] added to the input by position id, or no position signal at all (NoPE)
    rope_base: float = 10000.0  # read only when positions=rope
    dtype: str = "float32"  # compute dtype: float32 on CPU, bfloat16 on accelerators
    param_dtype: str = "float32"
    attention_impl: str = "auto"  # auto | xla | pallas (fused RoPE flash attention; on CPU its plain-JAX
    # reference). auto: pallas on TPU/GPU if a compile probe at run start passes, else xla
    backward_rewrites: str = "auto"  # auto | cpu | none: backward passes rewritten for XLA:CPU (same math;
    # jaxorder/model/cpu_rewrites.py) or JAX's autodiff of the plain formulas. auto: cpu on CPU, else none
    query_positions: str = "auto"  # auto | current | target: the position RoPE rotates an any-order
    # model's queries by (keys: always their own). auto: the objective's registered choice (settled when
    # the config is built); target needs an objective with target positions and positions=rope
    target_adaln: bool = False  # any-order models: the target embedding also modulates every block's norms
    # (adaLN-Zero: h * (1 + scale) + shift, a zero-initialized [d_model, 4, d_model] map per layer)
    target_embed_std: float = 1.0  # any-order models: init std of the target-position embedding (0: starts
    # at zero, so an untrained model's input is the token embedding alone, as in l2r)
    scan_layers: bool = False  # one compiled layer body under nn.scan (compile time flat in depth)
    remat: str = "none"  # rematerialization per layer: none | full | dots_saveable |
    # dots_with_no_batch_dims_saveable
    pallas_interpret: bool = False  # pallas on CPU: run the kernel itself in Pallas interpret mode
    # (slow; tests)
    init_from: str = ""  # hf:PATH = start from a local Hugging Face Llama-family checkpoint of this shape
    # (any objective: AR-to-diffusion adaptation); '' = random init. Read only at a run's first start

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ff_dim(self) -> int:
        if self.d_ff:
            return self.d_ff
        return -(-(8 * self.d_model // 3) // 64) * 64

    def param_count(self, target_positions: bool = False) -> int:
        """Parameters of the Transformer this config builds (equals model.count_params of its init):
        embedding and untied head, per layer 4 attention projections, SwiGLU's 3 and 2 RMSNorm scales,
        the final RMSNorm, the learned position embedding (positions=learned), the target-position
        embedding of any-order models and their per-layer adaLN maps (target_adaln)."""
        d = self.d_model
        per_layer = 4 * d * d + 3 * d * self.ff_dim + 2 * d
        target = self.max_len * d if target_positions else 0
        learned = self.max_len * d if self.positions == "learned" else 0
        adaln = self.n_layers * 4 * d * d if target_positions and self.target_adaln else 0
        return 2 * self.vocab_size * d + self.n_layers * per_layer + d + target + learned + adaln


@dataclass(frozen=True)
class ObjectiveConfig:
    """The order family (a registered objective's name) and the options the families declare.

    Each family file declares its own options (`Objective.options`: name, default, help); in YAML
    and overrides they are flat keys of this section (`objective.block_size=8`) and in code
    attributes (`cfg.objective.block_size`). Every registered family's options are present, so a
    saved config lists them all; a family reads only its own."""

    name: str = "l2r"
    options: tuple = ()  # sorted (name, value) pairs, filled with the declared defaults

    def __post_init__(self) -> None:
        declared = declared_objective_options()
        unknown = [k for k, _ in self.options if k not in declared]
        if unknown:
            raise ConfigError(f"unknown config key 'objective.{unknown[0]}'"
                              f"{_closest(unknown[0], ['name', *sorted(declared)])}")
        values = {k: option.default for k, option in declared.items()} | dict(self.options)
        object.__setattr__(self, "options", tuple(sorted(values.items())))

    def __getattr__(self, key: str) -> Any:  # only reached for names that are not fields
        for name, value in object.__getattribute__(self, "options"):
            if name == key:
                return value
        raise AttributeError(f"objective option '{key}' is declared by no registered family")


def declared_objective_options() -> dict[str, Any]:
    """name -> declared option (with `default` and `help`) over every registered family."""
    return {option.name: option for objective in OBJECTIVES.values() for option in objective.options}


@dataclass(frozen=True)
class DataConfig:
    source: str = "shakespeare"  # shakespeare (embedded corpus) | text | markov | sudoku | multiply |
    # prepared
    path: str = ""  # source=text: a file or directory of text files; source=prepared: the dataset dir
    transform: str = "none"  # none | swap05 (swap positions 0 and 5 of every window)
    markov_vocab: int = 16  # markov: number of states (symbols)
    markov_temperature: float = 1.0  # markov: softmax temperature of the random transition logits
    markov_sparsity: float = 0.0  # markov: share of transitions set to zero probability
    synthetic_tokens: int = 2_000_000  # markov/sudoku/multiply: tokens generated (train + validation)
    multiply_digits: int = 3  # multiply: digits of each factor (no leading zeros)
    multiply_reverse: bool = False  # multiply: write every number least-significant digit first
    max_train_tokens: int = 0  # keep only the first N training tokens (0 = all): data-constrained runs
    bpe_vocab_size: int = 4096  # tokenizer=bpe: vocabulary incl. the 4 specials (set model.vocab_size
    # to match)
    num_workers: int = 0  # grain worker processes for source=prepared (0 = in-process)
    tokenizer: str = "byte"
    seq_len: int = 128  # tokens per training/validation window
    batch_size: int = 32  # global batch (windows per step)
    val_fraction: float = 0.1  # share of documents (whole works) held out, at least one
    eos: bool = False  # one document per window, then EOS up to the end (docs/data.md); False: packed
    seed: int = 0
    allow_embedded_corpus: bool = False  # let a model of EMBEDDED_CORPUS_MAX_PARAMS+ train on shakespeare


@dataclass(frozen=True)
class OptimizerConfig:
    lr: float = 3e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    grad_clip: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    seed: int = 0
    log_every: int = 25
    eval_every: int = 100  # validation bits/byte every N steps (and at the end)
    checkpoint_every: int = 100
    checkpoint_every_minutes: float = 0.0  # also save when this long passed since the last save (0 = off)
    max_to_keep: int = 3
    grad_accum_steps: int = 1  # micro-batches per step (data.batch_size is the global batch per step)
    async_checkpointing: bool = True
    max_bad_steps: int = 10  # this many consecutive non-finite steps (skipped, params kept) stop the run
    peak_tflops: float = 0.0  # peak TFLOP/s per device for MFU in the logs; 0 = from the device kind
    # (TPU v4/v5e/v5p/v6e, A100/H100/H200/L4; jaxorder/platform/flops.py), unknown on CPU: MFU omitted


@dataclass(frozen=True)
class EvalConfig:
    batches: int = 4  # validation batches (of data.batch_size windows) per evaluation
    mdm_time_samples: int = 4  # diffusion times per sequence for the MDM ELBO
    slash_threshold: float = 0.5  # attention analysis: a head is slash-dominant if its best offset != 0
    # scores >= this
    seed: int = 1234


DEFAULT_RULES = (  # logical axis -> mesh axes, by priority (a mesh axis is used once per array)
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("length", None),
)


@dataclass(frozen=True)
class MeshConfig:
    data: int = -1  # devices along each mesh axis; one axis may be -1 = all remaining devices
    fsdp: int = 1
    tensor: int = 1
    dcn_data: int = 1  # slices (multi-slice: data parallel across slices over DCN)
    rules: tuple = DEFAULT_RULES  # YAML: a list of [logical_axis, mesh_axis | [mesh_axes] | null]


@dataclass(frozen=True)
class DistributedConfig:
    mode: str = "none"  # none (one process) | auto (Cloud TPU / SLURM detection) | explicit | slurm
    coordinator: str = ""  # explicit: host:port of process 0; slurm: overrides the first node + job-id port
    num_processes: int = 1  # explicit only (slurm: SLURM_NTASKS)
    process_id: int = 0  # explicit only (slurm: SLURM_PROCID)
    local_devices: str = "auto"  # explicit/slurm: auto | all | ids like "0,1" (this process's GPUs)


@dataclass(frozen=True)
class WandbConfig:
    project: str = ""  # Weights & Biases project; "" = off (needs the [wandb] extra when set)
    mode: str = "offline"  # offline (files under RUN_DIR/wandb, `wandb sync` later) | online
    entity: str = ""  # team or user ("" = the logged-in default)


@dataclass(frozen=True)
class LoggingConfig:
    """Experiment trackers besides metrics.jsonl (the source of truth, always written)."""

    tensorboard: bool = True  # TensorBoard events under RUN_DIR/tensorboard (local run dirs)
    wandb: WandbConfig = field(default_factory=WandbConfig)  # YAML: wandb: {project: P, mode: offline}


@dataclass(frozen=True)
class ProfileConfig:
    """A jax.profiler trace of a few training steps into RUN_DIR/profile/ (process 0 only)."""

    start_step: int = 10  # first traced step (steps count from 1; the first one compiles)
    steps: int = 0  # traced steps; 0 = no trace


@dataclass(frozen=True)
class CompileConfig:
    cache_dir: str = ""  # JAX's persistent compilation cache: local or gs:// path; '' = off. A relative
    # path is relative to the run directory (`jaxorder compile`: to runs/<config name>, train's default)
    cache_min_seconds: float = 1.0  # cache programs that took at least this long to compile (JAX's
    # default); 0 = every program, even tiny CPU ones


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    compile: CompileConfig = field(default_factory=CompileConfig)


DATA_SOURCES = ("shakespeare", "text", "markov", "sudoku", "multiply", "prepared")
MULTIPLY_MAX_DIGITS = 9  # a * b < 10**18 fits int64
TOKENIZERS = ("byte", "bpe")
DATA_TRANSFORMS = ("none", "swap05")
MESH_AXES = ("data", "fsdp", "tensor")
DISTRIBUTED_MODES = ("none", "auto", "explicit", "slurm")
DTYPES = ("float32", "bfloat16")
ATTENTION_IMPLS = ("auto", "xla", "pallas")
POSITION_KINDS = ("rope", "learned", "none")
QUERY_POSITIONS = ("auto", "current", "target")
BACKWARD_REWRITES = ("auto", "cpu", "none")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
WANDB_MODES = ("offline", "online")


# ----------------------------------------------------------------------------- loading

def _closest(name: str, options: Sequence[str]) -> str:
    match = difflib.get_close_matches(str(name), list(options), n=1, cutoff=0.5)  # YAML keys may be numbers
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(options)}"


def _read_yaml(path: Any, seen: tuple[Any, ...] = ()) -> dict:
    """Reads one YAML file (local or gs://) and merges its ``include:`` files underneath it."""
    path = as_path(path) if is_url(path) else Path(path).resolve()
    if path in seen:
        raise ConfigError(f"config include cycle: {' -> '.join(str(p) for p in seen + (path,))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (check the path)")
    raw = read_yaml_mapping(path, "a config")
    includes = raw.pop("include", []) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(inc, str) for inc in includes):
        raise ConfigError(f"{path}: include must be a file name or a list of file names, got {includes!r}")
    merged: dict = {}
    for inc in includes:
        merged = _deep_merge(merged, _read_yaml(path.parent / inc, seen + (path,)))
    return _deep_merge(merged, raw)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Parses ``section.field=value`` into (dotted key, YAML-parsed value)."""
    if not isinstance(text, str):  # e.g. a YAML flow list split an unquoted value at its commas
        raise ConfigError(f"override {text!r} is not a string section.field=value; in a YAML list, quote "
                          f"values that contain commas (e.g. 'objective.candidate_orders=perm:5,1,0,2-')")
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form section.field=value (e.g. train.steps=500)")
    key, value = text.split("=", 1)
    key = key.strip()
    if key.count(".") != 1:
        raise ConfigError(f"override key '{key}' must name section.field (e.g. model.n_layers)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for ov in overrides:
        key, value = parse_override(ov)
        section, name = key.split(".")
        sec = out.setdefault(section, {})
        if not isinstance(sec, dict):
            raise ConfigError(f"config section '{section}' must be a mapping")
        sec[name] = value
    return out


def _coerce_rules(value: Any, where: str) -> tuple:
    """[[logical, mesh | [mesh, ...] | null], ...] -> tuple of (logical, mesh spec) pairs."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where} must be a list of [logical_axis, mesh_axes] pairs")
    rules = []
    for rule in value:
        if not (isinstance(rule, (list, tuple)) and len(rule) == 2 and isinstance(rule[0], str)):
            raise ConfigError(f"{where}: rule {rule!r} must be [logical_axis, mesh_axis "
                              f"| [mesh_axes] | null]")
        logical, target = rule
        targets = [target] if isinstance(target, str) else list(target or [])
        unknown = [t for t in targets if t not in MESH_AXES]
        if unknown:
            raise ConfigError(f"{where}: unknown mesh axis {unknown[0]!r} in rule for '{logical}'; "
                              f"mesh axes are {', '.join(MESH_AXES)}")
        rules.append((logical, tuple(targets) if isinstance(target, (list, tuple)) else target))
    return tuple(rules)


def _coerce_mapping(value: Any, cls: Any, where: str) -> Any:
    """A nested config mapping (e.g. logging.wandb: {project: P}) -> its frozen dataclass."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, e.g. {{{dataclasses.fields(cls)[0].name}: ...}}, "
                          f"got {value!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in value:
        if k not in names:
            raise ConfigError(f"unknown config key '{where}.{k}'{_closest(str(k), names)}")
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in value.items()})


def _coerce(value: Any, typ: Any, where: str) -> Any:
    if dataclasses.is_dataclass(typ):
        return _coerce_mapping(value, typ, where)
    if typ is tuple:
        return _coerce_rules(value, where)
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads '1e-3' as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):  # no setting means anything at nan or inf
                raise ConfigError(f"{where} must be a finite number, got {value!r}")
            return number
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    tname = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"{where} must be {tname}, got {value!r} ({type(value).__name__})")


def from_dict(raw: dict) -> Config:
    """Builds a validated Config from a nested mapping (unknown keys are errors)."""
    sections = {f.name: f for f in dataclasses.fields(Config)}
    kwargs = {}
    for sec_name, sec_val in raw.items():
        if sec_name not in sections:
            raise ConfigError(f"unknown config section '{sec_name}'{_closest(sec_name, list(sections))}")
        if sec_val is None:
            sec_val = {}
        if not isinstance(sec_val, dict):
            raise ConfigError(f"config section '{sec_name}' must be a mapping, got {sec_val!r}")
        cls = sections[sec_name].default_factory  # type: ignore[misc]
        if cls is ObjectiveConfig:
            kwargs[sec_name] = _objective_section(sec_val)
            continue
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {}
        for k, v in sec_val.items():
            if k not in fields:
                raise ConfigError(f"unknown config key '{sec_name}.{k}'{_closest(k, sorted(fields))}")
            values[k] = _coerce(v, hints[k], f"{sec_name}.{k}")
        kwargs[sec_name] = cls(**values)
    cfg = Config(**kwargs)
    validate(cfg)
    return settle_query_positions(cfg)


def settle_query_positions(cfg: Config) -> Config:
    """`cfg` with model.query_positions=auto replaced by its objective's registered choice, so a saved
    run config names the mode its network was trained in."""
    if cfg.model.query_positions != "auto":
        return cfg
    mode = OBJECTIVES.get(cfg.objective.name).query_positions
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, query_positions=mode))


def _objective_section(raw: dict) -> ObjectiveConfig:
    """The objective section: `name` and the declared options, each coerced to its default's type."""
    declared = declared_objective_options()
    options = []
    for k, v in raw.items():
        if k == "name":
            continue
        if k not in declared:
            raise ConfigError(f"unknown config key 'objective.{k}'{_closest(k, ['name', *sorted(declared)])}")
        listed = isinstance(v, list) and all(isinstance(x, str) for x in v)
        if listed and isinstance(declared[k].default, str):
            v = ",".join(v)  # a comma-list option written as a YAML list (objective.candidate_orders)
        options.append((k, _coerce(v, type(declared[k].default), f"objective.{k}")))
    name = _coerce(raw.get("name", ObjectiveConfig.name), str, "objective.name")
    return ObjectiveConfig(name=name, options=tuple(options))


def load(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> Config:
    raw = _read_yaml(path) if path else {}
    return from_dict(apply_overrides(raw, overrides))


def read_yaml_mapping(path: Any, what: str) -> dict:
    """`yaml.safe_load` of a local or remote (gs://) file that must hold a mapping; one-line errors."""
    from etils import epath

    path = epath.Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                          f"save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or e}); check the path") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {what} must be a YAML mapping, got {type(raw).__name__}")
    return raw


def load_saved(path: Any) -> Config:
    """A resolved config saved by `save` (no includes), from a local or remote (gs://) path.

    A config saved before model.query_positions existed is read with `current`: the only mode
    its run can have been trained in."""
    raw = read_yaml_mapping(path, "a saved config")
    if isinstance(raw.get("model"), dict) and "query_positions" not in raw["model"]:
        raw = {**raw, "model": {**raw["model"], "query_positions": "current"}}
    return from_dict(raw)


def to_dict(cfg: Config) -> dict:
    """Plain nested dict (tuples as lists), suitable for YAML/JSON."""
    def plain(v: Any) -> Any:
        return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v
    out = {sec: {k: plain(v) for k, v in vals.items()} for sec, vals in dataclasses.asdict(cfg).items()}
    out["objective"] = {"name": cfg.objective.name, **dict(cfg.objective.options)}  # options as flat keys
    return out


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save(cfg: Config, path: Any) -> None:
    """Writes the resolved config (local or gs:// path)."""
    from etils import epath

    epath.Path(path).write_text(to_yaml(cfg))


def diff(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ, as 'key: a -> b'."""
    out = []
    da, db = to_dict(a), to_dict(b)
    for sec in da:
        for k in da[sec]:
            if da[sec][k] != db[sec][k]:
                out.append(f"{sec}.{k}: {da[sec][k]!r} -> {db[sec][k]!r}")
    return out


# ----------------------------------------------------------------------------- validation

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
