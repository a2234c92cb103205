"""The config schema: one frozen dataclass per section, their defaults, and the allowed values."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Sequence

from jaxorder.errors import ConfigError
from jaxorder.registry import OBJECTIVES


def closest_key_hint(name: str, options: Sequence[str]) -> str:
    match = difflib.get_close_matches(str(name), list(options), n=1, cutoff=0.5)  # YAML keys may be numbers
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(options)}"


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
                              f"{closest_key_hint(unknown[0], ['name', *sorted(declared)])}")
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
    stop_at: int = 0  # pause after this step (checkpointed, resumable, no final evaluation); 0 = run to steps
    restarts: int = 1  # > 1: train seeds train.seed, +1, ... for restart_steps each, continue the one
    # with the lowest validation bound on windows apart from the reported ones (experiments/restarts.py)
    restart_steps: int = 0


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
